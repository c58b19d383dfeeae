#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! Alias resolution end to end with real processes: the real coordinator in the lab's
//! control namespace, one real agent in vantage v's namespace of diamond-v2 (the TUN
//! emulator answering alias probes), an alias campaign created with
//! `tracemesh campaign create --alias both`, and `tracemesh aliases --json` reading the
//! merged sets back. Router b1 has 10.0.0.2 and 10.9.0.2; c (10.0.0.4) and d
//! (10.0.0.6) one address each.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tracemesh_lab::net::{COORDINATOR_ADDR, Emulator, Topology, in_netns, unix_ns};
use tracemesh_lab::scenario::World;

/// Kills its child when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn output(mut c: Command) -> Result<String, String> {
    let out = c.stdin(Stdio::null()).output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
#[ignore = "needs root, /dev/net/tun, built tracemesh and tracemesh-agent"]
fn an_alias_campaign_groups_b1s_addresses_through_the_coordinator() {
    let (coord, agent) = (
        tracemesh_lab::net::require_lab_bin("tracemesh"),
        tracemesh_lab::net::require_lab_bin("tracemesh-agent"),
    );
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/diamond-v2.toml");
    let w = Arc::new(World::load(&file).unwrap());
    let topo = Topology::build(&w).unwrap();
    let emu = Emulator::spawn(w.clone(), &topo).unwrap();
    emu.set_t0(unix_ns() as f64 / 1e9);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("coordinator");
    let listen = format!("{COORDINATOR_ADDR}:7443");
    let log = std::fs::File::create(tmp.path().join("coordinator.log")).unwrap();
    let mut serve = in_netns(&topo.control, &coord);
    serve
        .args(["serve", "--data"])
        .arg(&data)
        .args(["--listen", &listen])
        .stdout(Stdio::null())
        .stderr(log);
    let _serve = Killed(serve.spawn().unwrap());
    let cli = |args: &[&str]| {
        let mut c = in_netns(&topo.control, &coord);
        c.arg("--data").arg(&data).args(args);
        c
    };
    wait_for("the coordinator", 30, || {
        output(cli(&["agents", "--json"])).ok()
    });
    let token = output(cli(&["token", "create", "--name", "v"]))
        .unwrap()
        .trim()
        .to_string();
    let ns = &topo.vantages[w.vantage("v").unwrap()];
    let alog = std::fs::File::create(tmp.path().join("agent.log")).unwrap();
    let mut run = in_netns(ns, &agent);
    run.args(["run", "--state"])
        .arg(tmp.path().join("agent"))
        .args(["--token", &token, "--coordinator", &listen])
        .args(["--rate", "100", "--allow", "10.0.0.0/8"])
        .stdout(Stdio::null())
        .stderr(alog);
    let _agent = Killed(run.spawn().unwrap());
    wait_for("the agent's session", 30, || {
        let v: Value = serde_json::from_str(&output(cli(&["agents", "--json"])).ok()?).ok()?;
        (v["agents"][0]["connected"] == true).then_some(())
    });

    let created = output(cli(&[
        "campaign",
        "create",
        "--alias",
        "both",
        "--targets",
        "10.0.0.2",
        "10.9.0.2",
        "10.0.0.4",
        "10.0.0.6",
        "--agents",
        "name:v",
        "--json",
    ]))
    .unwrap();
    let created: Value = serde_json::from_str(&created).unwrap();
    let id = created["id"].as_str().unwrap().to_string();
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
    emu.stop();
}
