#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! Version-2 rules with real packets through the TUN emulator, seen by independent
//! tools in a vantage's namespace: scamper's Paris UDP traces with different source
//! ports cross different branches of an ECMP diamond (and one port stays on one branch),
//! scamper's pings to two addresses of one router see one interleaved IP-ID counter, and
//! iputils ping finds a rate-limited router quiet above its rate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use serde_json::Value;
use tracemesh_lab::net::{Emulator, Topology, unix_ns};
use tracemesh_lab::scenario::World;

const SCAMPER: &str = "/usr/bin/scamper";

/// scamper's JSON objects of `type` from one run of `command` on `dsts` in `ns`.
fn scamper(ns: &str, command: &str, dsts: &[&str], kind: &str) -> Vec<Value> {
    let out = Command::new("timeout")
        .arg("30")
        .args([
            "ip", "netns", "exec", ns, SCAMPER, "-O", "json", "-p", "100", "-c",
        ])
        .arg(command)
        .arg("-i")
        .args(dsts)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let found: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == kind)
        .collect();
    assert!(
        !found.is_empty(),
        "no {kind} from scamper {command}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    found
}

#[test]
#[ignore = "needs root, /dev/net/tun and scamper"]
fn real_packets_follow_the_v2_rules() {
    tracemesh_lab::net::require_lab();
    assert!(
        Path::new(SCAMPER).exists(),
        "needs {SCAMPER} (apt-get install scamper)"
    );
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/diamond-v2.toml");
    let w = Arc::new(World::load(&file).unwrap());
    let topo = Topology::build(&w).unwrap();
    let emu = Emulator::spawn(w.clone(), &topo).unwrap();
    // Scenario time 0 is now; the a-x diversion (20-40 s) stays in the future.
    emu.set_t0(unix_ns() as f64 / 1e9);
    let ns = &topo.vantages[w.vantage("v").unwrap()];

    // ECMP: Paris UDP traces whose flows differ only in the source port.
    let mut by_port: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
    for _round in 0..2 {
        for sport in 40_000..40_012u16 {
            let cmd = format!("trace -P udp-paris -s {sport} -q 1 -w 1 -m 3");
            let tr = &scamper(ns, &cmd, &["10.2.0.1"], "trace")[0];
            let hop2 = tr["hops"]
                .as_array()
                .unwrap()
                .iter()
                .find(|h| h["probe_ttl"] == 2)
                .map(|h| h["addr"].as_str().unwrap().to_string())
                .unwrap_or_else(|| panic!("no hop 2 in {tr}"));
            by_port.entry(sport).or_default().insert(hop2);
        }
    }
    let branches: BTreeSet<&String> = by_port.values().flatten().collect();
    assert_eq!(
        branches,
        BTreeSet::from([&"10.0.0.3".to_string(), &"10.9.0.2".to_string()]),
        "two branches, b1 seen by its incoming interface: {by_port:?}"
    );
    assert!(
        by_port.values().all(|s| s.len() == 1),
        "a flow stays on its branch: {by_port:?}"
    );

    // Alias probes: pings to b1's interface and loopback addresses, interleaved, come
    // back from the probed address with IDs from one counter.
    let pings = scamper(
        ns,
        "ping -P icmp-echo -c 5 -i 1",
        &["10.9.0.2", "10.0.0.2"],
        "ping",
    );
    let mut ids: Vec<(f64, u64, String)> = Vec::new();
    for p in &pings {
        for r in p["responses"].as_array().unwrap() {
            assert_eq!(r["from"], p["dst"], "echo answered from the probed address");
            let tx = r["tx"]["sec"].as_f64().unwrap() + r["tx"]["usec"].as_f64().unwrap() / 1e6;
            ids.push((tx, r["reply_ipid"].as_u64().unwrap(), p["dst"].to_string()));
        }
    }
    ids.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(ids.len() >= 8, "{ids:?}");
    assert!(
        ids.windows(2).all(|x| x[1].1 == (x[0].1 + 1) % 65_536),
        "one counter, +1 per packet across both addresses: {ids:?}"
    );

    // Rate limit: c answers at most 10 Time Exceeded a second (burst 10); 40 probes in
    // ~0.2 s get 10 and a refill's one or two, never all.
    let out = Command::new("timeout")
        .arg("20")
        .args([
            "ip", "netns", "exec", ns, "ping", "-n", "-t", "3", "-c", "40",
        ])
        .args(["-i", "0.005", "-W", "1", "10.2.0.1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let exceeded = text
        .lines()
        .filter(|l| l.contains("Time to live exceeded"))
        .count();
    assert!(
        (10..=13).contains(&exceeded),
        "{exceeded} of 40 answered by a router limited to 10/s: {text}"
    );
    // The same from b's hop (no limit): every probe answered.
    let out = Command::new("timeout")
        .arg("20")
        .args([
            "ip", "netns", "exec", ns, "ping", "-n", "-t", "2", "-c", "40",
        ])
        .args(["-i", "0.005", "-W", "1", "10.2.0.1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let all = text
        .lines()
        .filter(|l| l.contains("Time to live exceeded"))
        .count();
    assert_eq!(all, 40, "{text}");

    emu.stop();
    drop(topo);
}
