#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! Alias resolution end to end with real processes: the real coordinator in the lab's
//! control namespace, one real agent in vantage v's namespace of diamond-v2 (the TUN
//! emulator answering alias probes), an alias campaign created with
//! `tracemesh campaign create --alias both`, and `tracemesh aliases --json` reading the
//! merged sets back. Router b1 has 10.0.0.2 and 10.9.0.2; c (10.0.0.4) and d
//! (10.0.0.6) one address each.

mod common;

use std::time::Instant;

use common::{DiamondLab, output, wait_for};
use serde_json::Value;

#[test]
#[ignore = "needs root, /dev/net/tun, built tracemesh and tracemesh-agent"]
fn an_alias_campaign_groups_b1s_addresses_through_the_coordinator() {
    let lab = DiamondLab::start(100);
    let cli = |args: &[&str]| lab.cli(args);
    let id = lab.create_campaign(&[
        "--alias",
        "both",
        "--targets",
        "10.0.0.2",
        "10.9.0.2",
        "10.0.0.4",
        "10.0.0.6",
        "--agents",
        "name:v",
    ]);
    let started = Instant::now();
    let aliases: Value = wait_for("the alias result", 60, || {
        let v: Value = serde_json::from_str(&output(cli(&["aliases", "--json"])).ok()?).ok()?;
        (!v["aliases"].as_array()?.is_empty()).then_some(v)
    });
    let took = started.elapsed();
    let sets = aliases["aliases"].as_array().unwrap();
    let addrs = |s: &Value| -> Vec<String> {
        s["addrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect()
    };
    let b1 = sets
        .iter()
        .find(|s| addrs(s).contains(&"10.0.0.2".to_string()))
        .unwrap_or_else(|| panic!("10.0.0.2 in no set: {aliases}"));
    assert_eq!(addrs(b1), ["10.0.0.2", "10.9.0.2"], "{aliases}");
    let methods: Vec<&str> = b1["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["method"].as_str().unwrap())
        .collect();
    assert!(
        methods.contains(&"ipid") && methods.contains(&"mercator"),
        "{aliases}"
    );
    for e in b1["evidence"].as_array().unwrap() {
        assert_eq!(e["vantage"], "v", "{aliases}");
        assert_eq!(e["campaign_id"], id.as_str(), "{aliases}");
    }
    assert!(b1["first_seen"].as_f64().unwrap() > 1e9, "{aliases}");
    for s in sets {
        let a = addrs(s);
        assert!(
            !(a.contains(&"10.0.0.4".to_string()) && a.contains(&"10.0.0.6".to_string())),
            "c and d are different routers: {aliases}"
        );
    }
    // The text form names the same set.
    let text = output(cli(&["aliases"])).unwrap();
    assert!(text.contains("10.0.0.2 10.9.0.2"), "{text}");
    eprintln!("{text}");
    eprintln!(
        "alias campaign {id}: result served {:.1} s after creation",
        took.as_secs_f64()
    );
    lab.emu.stop();
}
