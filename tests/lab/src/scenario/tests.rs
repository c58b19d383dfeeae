use super::route::Hop;
use super::*;

pub(crate) const SMALL: &str = r#"
version = 1
name = "tiny"
summary = "a square with a diversion"
duration_s = 30
round_s = 5
adversary_asns = [64666]

[[as]]
asn = 64500
name = "HOME"
country = "CA"
prefixes = ["198.51.100.0/24", "2001:db8:100::/40"]

[[as]]
asn = 64666
name = "EVIL"
country = "CN"
prefixes = ["203.0.113.0/24"]

[[router]]
name = "a"
asn = 64500
addr = "198.51.100.1"
addr6 = "2001:db8:100::1"
loc = [45.0, -75.0]

[[router]]
name = "b"
asn = 64500
addr = "198.51.100.2"
addr6 = "2001:db8:100::2"
mpls = [24001, 16]
loc = [45.0, -74.0]

[[router]]
name = "c"
asn = 64500
addr = "198.51.100.3"
loc = [46.0, -74.0]
respond = false

[[router]]
name = "x"
asn = 64666
addr = "203.0.113.1"
loc = [45.0, -75.0]

[[link]]
a = "a"
b = "b"
delay_ms = 1.0

[[link]]
a = "b"
b = "c"
delay_ms = 1.0

[[link]]
a = "a"
b = "x"
delay_ms = 5.0

[[link]]
a = "x"
b = "c"
delay_ms = 5.0

[[vantage]]
name = "v"
router = "a"
addr = "198.51.100.100"
addr6 = "2001:db8:100:1::100"

[[vantage]]
name = "w"
router = "c"
addr = "198.51.100.101"

[[target]]
name = "t"
prefix = "198.51.100.128/25"
router = "c"

[[target]]
name = "t6"
prefix = "2001:db8:180::/48"
router = "c"

[[event]]
kind = "diversion"
start_s = 12
end_s = 22
from = ["*"]
to = ["t"]
at = "a"
via = ["x"]
adversary_asn = 64666
"#;

#[test]
fn normal_and_diverted_paths_with_rtts() {
    let w = World::parse(SMALL).unwrap();
    let (v, t) = (w.vantage("v").unwrap(), w.target("t").unwrap());
    let hops = w.hops(v, t, 0.0).unwrap();
    let addrs: Vec<_> = hops.iter().map(|h| h.1.map(|a| a.to_string())).collect();
    assert_eq!(
        addrs,
        [
            Some("198.51.100.1".into()),
            Some("198.51.100.2".into()),
            None,
            None
        ]
    );
    let rtts: Vec<f64> = hops
        .iter()
        .map(|h| (h.2 * 1000.0).round() / 1000.0)
        .collect();
    assert_eq!(rtts, [0.4, 2.4, 4.4, 4.8]);
    assert_eq!(
        w.probes[t],
        vec!["198.51.100.129".parse::<IpAddr>().unwrap()]
    );
    let (p, ev) = w.path(v, t, 12.0).unwrap();
    assert_eq!(ev, Some(0));
    assert_eq!(p.len(), 3, "a, x, c");
    assert_eq!(
        w.hops(v, t, 12.0).unwrap()[1].1,
        Some("203.0.113.1".parse().unwrap())
    );
    assert_eq!(w.path(v, t, 22.0).unwrap().1, None, "end is exclusive");
}

#[test]
fn bad_scenarios_are_refused_with_a_reason() {
    for (edit, needle) in [
        (
            SMALL.replace("version = 1", "version = 3"),
            "version must be 1 or 2",
        ),
        (
            SMALL.replace("respond = false", "respond = false\nhidden = true"),
            "router c: hidden is a version-2 key",
        ),
        (
            SMALL.replace("round_s = 5", "round_s = 5\nmesh = true"),
            "set version = 2",
        ),
        (
            SMALL.replace("round_s = 5", "round_s = 5\ncolour = 1"),
            "unknown field",
        ),
        (
            SMALL.replace("b = \"c\"\ndelay_ms = 1.0", "b = \"zz\"\ndelay_ms = 1.0"),
            "unknown router zz",
        ),
        (
            SMALL.replace("addr = \"198.51.100.2\"", "addr = \"203.0.113.9\""),
            "originated by AS64666",
        ),
        (
            SMALL.replace("via = [\"x\"]", "via = [\"b\"]"),
            "via[0] must belong",
        ),
        (
            SMALL.replace(
                "router = \"c\"\n\n[[event]]",
                "router = \"c\"\nprobe = [\"8.8.8.8\"]\n\n[[event]]",
            ),
            "outside",
        ),
        (
            SMALL.replace("name = \"tiny\"", "name = \"Tiny!\""),
            "must match",
        ),
        ("not toml at all [".to_string(), "scenario"),
    ] {
        let e = World::parse(&edit).unwrap_err().to_string();
        assert!(e.contains(needle), "{needle}: {e}");
    }
}

/// Where the shared scenarios and the oracle live, beside the repository.
fn shared() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

/// The oracle's `--json` output for a scenario file.
fn oracle(file: &Path) -> serde_json::Value {
    let tool = shared().join("tools/scenario.py");
    assert!(
        tool.exists(),
        "{} is missing: this test needs ../shared beside the repository",
        tool.display()
    );
    let out = std::process::Command::new("python3")
        .arg(&tool)
        .arg(file)
        .arg("--json")
        .output()
        .expect("python3 runs (apt-get install python3)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the oracle prints JSON")
}

/// Every scenario here: shared v1 and v2, the project's own, the lab's test scenarios.
pub(crate) fn scenario_files() -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for dir in [
        shared().join("scenarios"),
        shared().join("scenarios/v2"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios"),
    ] {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.path().extension().is_some_and(|x| x == "toml") {
                    files.push(e.path());
                }
            }
        }
    }
    files.sort();
    files
}

/// One expected hop as the oracle writes it: `[ttl, addr, rtt]` (v1) or `[ttl, addr,
/// rtt_min, rtt_max, may_be_silent]` (v2), compared with ours.
fn same_hop(ours: &Hop, theirs: &serde_json::Value, v2: bool, what: &str) {
    assert_eq!(ours.ttl as u64, theirs[0].as_u64().unwrap(), "{what}");
    match (&ours.addr, theirs[1].as_str()) {
        (None, Some("DEST")) => {}
        (Some(Some(a)), Some(b)) => assert_eq!(a.to_string(), b, "{what}"),
        (Some(None), None) => {}
        (o, t) => panic!("{what}: ours {o:?}, oracle {t:?}"),
    }
    let close = |x: f64, y: &serde_json::Value| (x - y.as_f64().unwrap()).abs() < 0.0011;
    assert!(
        close(ours.lo, &theirs[2]),
        "{what}: rtt {} vs {}",
        ours.lo,
        theirs[2]
    );
    if v2 {
        assert!(
            close(ours.hi, &theirs[3]),
            "{what}: rtt max {} vs {}",
            ours.hi,
            theirs[3]
        );
        assert_eq!(
            Some(ours.rated),
            theirs[4].as_bool(),
            "{what}: may be silent"
        );
    } else {
        assert!((ours.lo - ours.hi).abs() < 1e-9, "{what}: v1 has one RTT");
    }
}

#[test]
#[ignore = "needs ../shared (the oracle scenario.py and the shared scenarios) and python3"]
fn routing_agrees_with_the_oracle_on_every_scenario() {
    let files = scenario_files();
    let (mut hops, mut branches, mut pairs) = (0, 0, 0);
    let mut v2_files = 0;
    for f in &files {
        let doc = oracle(f);
        let w = World::load(f).unwrap();
        v2_files += usize::from(w.is_v2());
        for (t, paths) in doc["paths"].as_object().unwrap() {
            let tf: f64 = t.parse().unwrap();
            for (pair, main) in paths.as_object().unwrap() {
                let (vn, yn) = pair.split_once('>').unwrap();
                let (v, y) = (w.vantage(vn).unwrap(), w.endpoint(yn).unwrap());
                let ours = w.expected(v, y, tf);
                pairs += 1;
                // Every branch the oracle lists, in its order (the main one alone when
                // the pair does not balance).
                let theirs: Vec<serde_json::Value> = match doc["ecmp_paths"][t].get(pair) {
                    Some(list) => list.as_array().unwrap().clone(),
                    None => vec![main.clone()],
                };
                assert_eq!(ours.len(), theirs.len(), "{f:?} {pair} t={t}: branch count");
                for (b, (o, th)) in ours.iter().zip(&theirs).enumerate() {
                    let th = th.as_array().unwrap();
                    assert_eq!(o.len(), th.len(), "{f:?} {pair} t={t} branch {b}: hops");
                    for (h, x) in o.iter().zip(th) {
                        same_hop(h, x, w.is_v2(), &format!("{f:?} {pair} t={t} branch {b}"));
                        hops += 1;
                    }
                    branches += 1;
                }
            }
        }
    }
    assert!(v2_files >= 4, "the shared v2 scenarios are missing");
    eprintln!(
        "oracle agreement: {hops} hops on {branches} branches of {pairs} pair-instants agree \
         over {} scenarios ({v2_files} version 2)",
        files.len()
    );
}
