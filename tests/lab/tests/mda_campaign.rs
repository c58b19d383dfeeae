#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! A campaign with multipath rounds end to end with real processes: the real coordinator
//! in the lab's control namespace, one real agent in vantage v's namespace of diamond-v2
//! (the TUN emulator: router a balances flows over b1 and b2 by the flow hash FORMAT.md
//! gives), `tracemesh campaign create --mda`, and `tracemesh mda --json` reading the
//! diamond back: at TTL 2 both branches, b1 answering from its incoming interface
//! 10.9.0.2 and b2 from 10.0.0.3, and the links a->b1, a->b2, b1->c, b2->c.

mod common;

use std::time::Instant;

use common::{DiamondLab, output, wait_for};
use serde_json::Value;

#[test]
#[ignore = "needs root, /dev/net/tun, built tracemesh and tracemesh-agent"]
fn an_mda_campaign_stores_both_branches_of_the_diamond() {
    let lab = DiamondLab::start(200);
    let cli = |args: &[&str]| lab.cli(args);
    let id = lab.create_campaign(&[
        "--targets",
        "10.2.0.1",
        "--agents",
        "name:v",
        "--proto",
        "udp",
        "--attempts",
        "2",
        "--wait-ms",
        "500",
        "--mda",
        "--confidence",
        "99",
    ]);
    let started = Instant::now();
    let line: Value = wait_for("the multipath trace", 90, || {
        let out = output(cli(&["mda", "--campaign", &id, "--json"])).ok()?;
        serde_json::from_str(out.lines().next()?).ok()
    });
    let took = started.elapsed();
    assert_eq!(line["vantage"], "v", "{line}");
    assert_eq!(line["dst"], "10.2.0.1", "{line}");
    assert_eq!(line["confidence"], 99, "{line}");
    assert_eq!(line["stop_reason"], "completed", "{line}");
    let at = |ttl: u64| -> Vec<String> {
        let mut v: Vec<String> = line["hops"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["ttl"] == ttl)
            .flat_map(|h| h["interfaces"].as_array().unwrap().iter())
            .map(|i| i["addr"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(at(1), ["10.0.0.1"], "{line}");
    assert_eq!(at(2), ["10.0.0.3", "10.9.0.2"], "both branches: {line}");
    assert_eq!(at(3), ["10.0.0.4"], "{line}");
    let links: Vec<(String, String)> = line["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["from"].as_str().unwrap().to_string(),
                l["to"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (f, t) in [
        ("10.0.0.1", "10.9.0.2"),
        ("10.0.0.1", "10.0.0.3"),
        ("10.9.0.2", "10.0.0.4"),
        ("10.0.0.3", "10.0.0.4"),
    ] {
        assert!(
            links.contains(&(f.to_string(), t.to_string())),
            "link {f}->{t}: {line}"
        );
    }
    // The round's Paris trace was stored too: the MDA round adds to it, not replaces it.
    let traces = output(cli(&["traces", "--campaign", &id, "--json"])).unwrap();
    assert_eq!(traces.lines().count(), 1, "{traces}");
    eprintln!(
        "mda campaign {id}: {} probes, {} flows, served {:.1} s after creation",
        line["probes_sent"],
        line["flows"],
        took.as_secs_f64()
    );
    lab.emu.stop();
}
