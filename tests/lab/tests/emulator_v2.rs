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
use std::sync::atomic::Ordering;

use serde_json::Value;
use tracemesh_lab::net::{Emulator, Topology, unix_ns};
use tracemesh_lab::scenario::World;

const SCAMPER: &str = "/usr/bin/scamper";

/// Both tests build the same scenario's namespaces: one at a time.
static LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());

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
    let _lab = LAB
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
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
    let exceeded = time_exceeded(ns, 3, 40, "0.005", "10.2.0.1");
    assert!(
        (10..=13).contains(&exceeded),
        "{exceeded} of 40 answered by a router limited to 10/s"
    );
    // The same from b's hop (no limit): every probe answered.
    assert_eq!(time_exceeded(ns, 2, 40, "0.005", "10.2.0.1"), 40);

    emu.stop();
    drop(topo);
}

/// Time Exceeded answers to `count` pings with TTL `ttl`, `interval` seconds apart, from
/// `ns` to `dst` (what ping printed goes to stderr, for a failure's report).
fn time_exceeded(ns: &str, ttl: u8, count: u32, interval: &str, dst: &str) -> usize {
    let out = Command::new("timeout")
        .arg("20")
        .args(["ip", "netns", "exec", ns, "ping", "-n", "-t"])
        .arg(ttl.to_string())
        .arg("-c")
        .arg(count.to_string())
        .args(["-i", interval, "-W", "1", dst])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let n = text
        .lines()
        .filter(|l| l.contains("Time to live exceeded"))
        .count();
    eprintln!(
        "ping -t {ttl} {dst}: {n} of {count} answered Time Exceeded\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    n
}

/// The soak's probe-path cut (`--flap-probe`): while it is on, the vantage's access
/// router still answers and nothing beyond it does, and every dropped probe is counted;
/// restored, the path answers again. And the emulator times probes from the kernel's
/// stamp of their transmission (its taps), not from its read: an emulator that stopped
/// using its taps passes RTT checks on a quiet machine and fails them on a busy one.
#[test]
#[ignore = "needs root, /dev/net/tun and ping (iputils-ping)"]
fn a_cut_probe_path_answers_the_first_hop_only_and_probes_are_timed_from_their_taps() {
    let _lab = LAB
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    tracemesh_lab::net::require_lab();
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/diamond-v2.toml");
    let w = Arc::new(World::load(&file).unwrap());
    let topo = Topology::build(&w).unwrap();
    let emu = Emulator::spawn(w.clone(), &topo).unwrap();
    emu.set_t0(unix_ns() as f64 / 1e9);
    let v = w.vantage("v").unwrap();
    let ns = &topo.vantages[v];
    let cut = |e: &Emulator| e.stats.cut.load(Ordering::Relaxed);

    assert_eq!(
        time_exceeded(ns, 2, 10, "0.02", "10.2.0.1"),
        10,
        "path up: hop 2 answers"
    );
    assert_eq!(cut(&emu), 0);

    emu.set_probe_path(v, false);
    assert_eq!(
        time_exceeded(ns, 1, 10, "0.02", "10.2.0.1"),
        10,
        "cut: the access router still answers"
    );
    assert_eq!(
        time_exceeded(ns, 2, 10, "0.02", "10.2.0.1"),
        0,
        "cut: nothing beyond the first hop answers"
    );
    assert_eq!(
        cut(&emu),
        10,
        "every probe beyond the first hop dropped and counted"
    );

    emu.set_probe_path(v, true);
    assert_eq!(
        time_exceeded(ns, 2, 10, "0.02", "10.2.0.1"),
        10,
        "restored: hop 2 answers again"
    );
    assert_eq!(cut(&emu), 10);

    let read = emu.stats.packets_in.load(Ordering::Relaxed);
    let untapped = emu.stats.untapped.load(Ordering::Relaxed);
    assert!(read >= 40, "{read} probes read");
    assert!(
        untapped * 10 <= read,
        "{untapped} of {read} probes timed from their read, not their tap"
    );
    emu.stop();
    drop(topo);
}
