#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! A campaign with multipath rounds end to end with real processes: the real coordinator
//! in the lab's control namespace, one real agent in vantage v's namespace of diamond-v2
//! (the TUN emulator: router a balances flows over b1 and b2 by the flow hash FORMAT.md
//! gives), `tracemesh campaign create --mda`, and `tracemesh mda --json` reading the
//! diamond back: at TTL 2 both branches, b1 answering from its incoming interface
//! 10.9.0.2 and b2 from 10.0.0.3, and the links a->b1, a->b2, b1->c, b2->c.

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
fn an_mda_campaign_stores_both_branches_of_the_diamond() {
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
        .args(["--rate", "200", "--allow", "10.0.0.0/8"])
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
        "--json",
    ]))
    .unwrap();
    let created: Value = serde_json::from_str(&created).unwrap();
    let id = created["id"].as_str().unwrap().to_string();
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
    emu.stop();
}
