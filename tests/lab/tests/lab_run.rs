#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! The whole lab on the project's own small scenario: namespaces, the TUN emulator, the
//! real coordinator and two real agents. Every trace must follow the scenario's routing
//! (checked against our router model, itself checked against the oracle in unit tests),
//! and the diversion must be reported with the right hand-off and ingress.

use std::path::Path;

use tracemesh_lab::run::{RunOptions, run};
use tracemesh_lab::scenario::World;

#[test]
#[ignore = "needs root and /dev/net/tun, and the workspace's binaries built"]
fn a_small_scenario_runs_end_to_end_through_the_lab() {
    tracemesh_lab::net::require_lab_bin("tracemesh");
    tracemesh_lab::net::require_lab_bin("tracemesh-agent");
    let scenario =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios/tiny-diversion.toml");
    let out = tempfile::tempdir().unwrap();
    let lab = run(&RunOptions {
        scenario: scenario.clone(),
        out: out.path().to_path_buf(),
        rate: 1000,
        emu_threads: None,
        peeringdb: None,
        clock_skew: Vec::new(),
        mda: None,
        faults: None,
    })
    .expect("the lab runs");
    assert_eq!(lab["traces_stored"], lab["traces_expected"], "{lab}");

    let world = World::load(&scenario).unwrap();
    let t0 = lab["t0"].as_f64().unwrap();
    let edges = [6.0, 18.0];
    let (mut hops, mut addr_ok, mut matched) = (0, 0, 0);
    // Judged against what the emulator really did: its own late answers are expected late.
    let late = tracemesh_lab::late::LateLog::load(out.path()).unwrap();
    let text = std::fs::read_to_string(out.path().join("traces.jsonl")).unwrap();
    for line in text.lines() {
        let tr: serde_json::Value = serde_json::from_str(line).unwrap();
        let t = tr["start"].as_f64().unwrap() - t0;
        // A trace here lasts under 3 s (a silent hop costs two 1 s waits): only one
        // spanning an edge is ambiguous.
        if edges.iter().any(|e| (t - 0.2..t + 3.5).contains(e)) {
            continue;
        }
        let v = world.vantage(tr["vantage"].as_str().unwrap()).unwrap();
        let expected = world.hops(v, 0, t).unwrap();
        let got = tr["hops"].as_array().unwrap();
        for (ttl, addr, rtt) in &expected {
            hops += 1;
            let h = got.iter().find(|h| h["ttl"].as_u64() == Some(*ttl as u64));
            let want = if *ttl == expected.len() {
                Some(tr["dst"].as_str().unwrap().to_string())
            } else {
                addr.map(|a| a.to_string())
            };
            let (addr_matches, rtt_matches) = match (want, h) {
                (None, None) => (true, true),
                (None, Some(h)) => (h["addr"].is_null(), true),
                (Some(w), Some(h)) => {
                    let vantage = tr["vantage"].as_str().unwrap();
                    let dst = tr["dst"].as_str().unwrap();
                    let ttl = u8::try_from(*ttl).unwrap();
                    let late_ms = late.late_ms(vantage, dst, ttl, t - 0.1, t + 3.5);
                    let rtt_ms = h["rtt_ms"].as_f64().unwrap() - late_ms;
                    (
                        h["addr"].as_str() == Some(w.as_str()),
                        (rtt_ms - rtt).abs() <= 0.1 * rtt + 0.5,
                    )
                }
                (Some(_), None) => (false, false),
            };
            addr_ok += usize::from(addr_matches);
            if addr_matches && rtt_matches {
                matched += 1;
            } else {
                eprintln!("mismatch at t={t:.1}: ttl {ttl} want {addr:?} {rtt:.3} ms, got {h:?}");
            }
        }
        // Router ntt-sea carries an MPLS label, which the agent decodes from the
        // emulator's RFC 4950 extension.
        let sea = got.iter().find(|h| h["addr"] == "129.250.2.1");
        if let Some(sea) = sea {
            assert_eq!(sea["mpls"][0]["label"], 24017, "{sea}");
        }
    }
    eprintln!(
        "{matched}/{hops} hops match the scenario in address and RTT, {addr_ok} in address; \
         {} answers the emulator logged as late",
        late.len()
    );
    assert!(hops >= 40, "only {hops} hops compared");
    assert_eq!(addr_ok, hops, "every hop's address follows the scenario");
    // RTTs carry scheduling noise on a loaded 2-core machine (sub-millisecond hops are
    // the hardest); nearly all must still be within 10% + 0.5 ms.
    assert!(
        matched * 10 >= hops * 9,
        "{matched}/{hops} within the RTT tolerance"
    );

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("diversions.json")).unwrap())
            .unwrap();
    let recs = report["diversions"].as_array().unwrap();
    assert_eq!(recs.len(), 1, "{report}");
    let r = &recs[0];
    assert_eq!(r["vantage"], "toronto-rogers");
    assert_eq!(r["target"], "211.37.1.10");
    assert_eq!(r["handoff"]["addr"], "24.114.255.1");
    assert_eq!(r["ingress"]["addr"], "202.97.12.1");
    let first = r["first_seen"].as_f64().unwrap() - t0;
    assert!(
        (6.0..=6.0 + world.s.round_s + 1.0).contains(&first),
        "onset at {first} s"
    );
    // The drawn report names the same incident, hand-off and ingress.
    let text = std::fs::read_to_string(out.path().join("diversions.txt")).unwrap();
    assert!(text.contains("Incident 1: AS4134"), "{text}");
    let handoff = text.lines().find(|l| l.contains("<- hand-off")).unwrap();
    assert!(handoff.contains("24.114.255.1"), "{text}");
    let ingress = text.lines().find(|l| l.contains("<- ingress")).unwrap();
    assert!(ingress.contains("!202.97.12.1"), "{text}");
    // And the map: report.html carries the same record, with the vantage's position.
    let html = std::fs::read_to_string(out.path().join("report.html")).unwrap();
    let open = "<script id=\"tm-data\" type=\"application/json\">";
    let start = html.find(open).unwrap() + open.len();
    let end = start + html[start..].find("</script>").unwrap();
    let view: serde_json::Value = serde_json::from_str(&html[start..end]).unwrap();
    assert_eq!(view["diversions"].as_array().unwrap().len(), 1);
    assert_eq!(view["diversions"][0]["ingress"]["addr"], "202.97.12.1");
    let toronto = view["vantages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "toronto-rogers")
        .unwrap();
    assert!(toronto["loc"][0].is_f64(), "{toronto}");
}
