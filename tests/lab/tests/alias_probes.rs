#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! `tracemesh-agent alias` with real packets through the TUN emulator, from a vantage's
//! namespace. In diamond-v2, router b1 has 10.0.0.2 (its address) and 10.9.0.2 (its end
//! of the a–b1 link), router a has 10.0.0.1 and 10.9.0.1, and c (10.0.0.4) and d
//! (10.0.0.6) one address each. The emulator answers as FORMAT.md version 2 says: echo
//! from the probed address, UDP with a Port Unreachable from the router's address, and
//! one IPv4 identification counter per router. IP-ID series must group b1's two
//! addresses and keep c and d apart; Mercator must map 10.9.0.2 to 10.0.0.2. The test
//! also prints what resolution cost in probes per address.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use serde_json::Value;
use tracemesh_lab::net::{Emulator, Topology, unix_ns};
use tracemesh_lab::scenario::World;

/// `tracemesh-agent alias --json` in namespace `ns`.
fn alias(agent: &Path, ns: &str, method: &str, addrs: &[&str]) -> Value {
    let out = Command::new("timeout")
        .arg("60")
        .args(["ip", "netns", "exec", ns])
        .arg(agent)
        .args([
            "alias",
            "--json",
            "--allow",
            "10.0.0.0/8",
            "--method",
            method,
        ])
        .args(["--rate", "100", "--rounds", "8", "--wait-ms", "500"])
        .args(addrs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "alias --method {method} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "alias --json printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn groups(report: &Value, method: &str) -> Vec<BTreeSet<String>> {
    report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["method"] == method)
        .map(|g| {
            g["addrs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect()
        })
        .collect()
}

fn set(addrs: &[&str]) -> BTreeSet<String> {
    addrs.iter().map(|a| (*a).to_string()).collect()
}

fn grouped_with(gs: &[BTreeSet<String>], a: &str) -> Option<BTreeSet<String>> {
    gs.iter().find(|g| g.contains(a)).cloned()
}

#[test]
#[ignore = "needs root, /dev/net/tun"]
fn alias_probes_find_routers_in_the_emulated_internet() {
    let agent = tracemesh_lab::net::require_lab_bin("tracemesh-agent");
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/diamond-v2.toml");
    let w = Arc::new(World::load(&file).unwrap());
    let topo = Topology::build(&w).unwrap();
    let emu = Emulator::spawn(w.clone(), &topo).unwrap();
    // Scenario time 0 is now; the a-x diversion (20-40 s) stays in the future.
    emu.set_t0(unix_ns() as f64 / 1e9);
    let ns = &topo.vantages[w.vantage("v").unwrap()];
    let addrs = [
        "10.0.0.1", "10.9.0.1", "10.0.0.2", "10.9.0.2", "10.0.0.4", "10.0.0.6",
    ];

    // IP-ID series alone.
    let ipid = alias(&agent, ns, "ipid", &addrs);
    let g = groups(&ipid, "ipid");
    assert_eq!(
        grouped_with(&g, "10.0.0.2"),
        Some(set(&["10.0.0.2", "10.9.0.2"])),
        "b1's addresses share one counter: {ipid}"
    );
    assert_eq!(
        grouped_with(&g, "10.0.0.1"),
        Some(set(&["10.0.0.1", "10.9.0.1"])),
        "so do a's: {ipid}"
    );
    assert_eq!(grouped_with(&g, "10.0.0.4"), None, "c is alone: {ipid}");
    assert_eq!(grouped_with(&g, "10.0.0.6"), None, "d is alone: {ipid}");
    assert!(
        ipid["unusable"].as_array().unwrap().is_empty(),
        "every emulated router has a usable counter: {ipid}"
    );
    for a in addrs {
        assert_eq!(
            ipid["samples"][a].as_array().unwrap().len(),
            8,
            "{a}: {ipid}"
        );
        assert_eq!(ipid["probes_per_addr"][a], 8, "{a}: {ipid}");
    }

    // Mercator alone.
    let merc = alias(&agent, ns, "mercator", &addrs);
    assert_eq!(merc["mercator"]["10.9.0.2"], "10.0.0.2", "{merc}");
    assert_eq!(merc["mercator"]["10.9.0.1"], "10.0.0.1", "{merc}");
    assert_eq!(merc["mercator"]["10.0.0.4"], "10.0.0.4", "{merc}");
    let g = groups(&merc, "mercator");
    let mut want = vec![
        set(&["10.0.0.1", "10.9.0.1"]),
        set(&["10.0.0.2", "10.9.0.2"]),
    ];
    want.sort();
    let mut got = g.clone();
    got.sort();
    assert_eq!(got, want, "{merc}");

    // Both, as an operator would run it: the cost per address.
    let both = alias(&agent, ns, "both", &addrs);
    assert_eq!(groups(&both, "ipid"), groups(&ipid, "ipid"), "{both}");
    assert_eq!(groups(&both, "mercator"), g, "{both}");

    // The human form names the same groups.
    let out = Command::new("timeout")
        .arg("60")
        .args(["ip", "netns", "exec", ns])
        .arg(&agent)
        .args(["alias", "--allow", "10.0.0.0/8", "--wait-ms", "500"])
        .args(addrs)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("10.9.0.2 answered from 10.0.0.2"),
        "text form: {text}"
    );
    eprintln!("{text}");

    emu.stop();
    drop(topo);

    for (name, r) in [("ipid", &ipid), ("mercator", &merc), ("both", &both)] {
        let per = &r["probes_per_addr"];
        let sizes: Vec<usize> = r["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["addrs"].as_array().unwrap().len())
            .collect();
        eprintln!(
            "alias --method {name}: {} probes for {} addresses, per address {per}, groups (sizes) {sizes:?}",
            r["probes_sent"],
            addrs.len(),
        );
    }
}
