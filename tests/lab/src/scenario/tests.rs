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
            SMALL.replace("version = 1", "version = 2"),
            "version must be 1",
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

/// The oracle's `--json` paths, when the shared scenarios and python3 are here.
fn oracle(file: &Path) -> Option<serde_json::Value> {
    let tool = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/tools/scenario.py");
    if !tool.exists() {
        return None;
    }
    let out = std::process::Command::new("python3")
        .arg(&tool)
        .arg(file)
        .arg("--json")
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).ok()
}

fn scenario_files() -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for dir in [
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/scenarios"),
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

#[test]
fn routing_agrees_with_the_oracle_on_every_scenario() {
    let files = scenario_files();
    let mut compared = 0;
    for f in &files {
        let Some(doc) = oracle(f) else {
            eprintln!(
                "skipped: the oracle (shared/tools/scenario.py) is not beside this repository"
            );
            return;
        };
        let w = World::load(f).unwrap();
        for (t, pairs) in doc["paths"].as_object().unwrap() {
            let t: f64 = t.parse().unwrap();
            for (pair, hops) in pairs.as_object().unwrap() {
                let (vn, tn) = pair.split_once('>').unwrap();
                let ours = w
                    .hops(w.vantage(vn).unwrap(), w.target(tn).unwrap(), t)
                    .unwrap();
                let theirs = hops.as_array().unwrap();
                assert_eq!(ours.len(), theirs.len(), "{f:?} {pair} at {t}");
                for ((ttl, addr, rtt), h) in ours.iter().zip(theirs) {
                    assert_eq!(*ttl as u64, h[0].as_u64().unwrap());
                    match h[1].as_str() {
                        Some("DEST") => assert!(addr.is_none()),
                        Some(a) => assert_eq!(
                            addr.map(|x| x.to_string()).as_deref(),
                            Some(a),
                            "{pair} t={t} ttl {ttl}"
                        ),
                        None => assert!(addr.is_none(), "{pair} t={t} ttl {ttl} silent"),
                    }
                    let want = h[2].as_f64().unwrap();
                    assert!(
                        (rtt - want).abs() < 0.0011,
                        "{pair} t={t} ttl {ttl}: {rtt} vs {want}"
                    );
                    compared += 1;
                }
            }
        }
    }
    eprintln!(
        "{compared} hops agree with the oracle over {} scenarios",
        files.len()
    );
}
