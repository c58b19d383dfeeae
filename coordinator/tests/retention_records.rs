//! A closed episode outlives its traces: `serve --adversary` detects it live and stores
//! its record; `tracemesh retain` archives and deletes the traces; `tracemesh
//! diversions` (without `--archive`) still lists the record, as it listed it before,
//! once — read back from the store's `diversion_records`, not recomputed.

// Helpers outside #[test] functions unwrap too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tracemesh::store::{SledStore, Store};
use tracemesh_proto::v1;

const BIN: &str = env!("CARGO_BIN_EXE_tracemesh");
const DST: &str = "211.192.1.10";
const PFX2AS: &str =
    "24.114.0.0/16\t812\n62.115.0.0/16\t1299\n211.192.0.0/13\t4766\n202.97.0.0/16\t4134\n";
const DAY: f64 = 86_400.0;

/// Ottawa → Korea, a round every 6 hours from 40 days ago: diverted through AS4134 in
/// rounds 3..6 (39 days ago), clean before and after, up to now.
fn traces() -> Vec<v1::TraceRecord> {
    let now = tracemesh::server::now_ns() as f64 / 1e9;
    // Half a round off the 30-day cut.
    let t0 = now - 40.0 * DAY + DAY / 8.0;
    let normal = [
        ("24.114.255.1", 0.4),
        ("24.114.255.2", 5.7),
        ("62.115.10.1", 13.0),
        ("211.192.255.1", 150.0),
        (DST, 150.4),
    ];
    let diverted = [
        ("24.114.255.1", 0.4),
        ("24.114.255.2", 5.7),
        ("202.97.10.1", 5.8),
        ("202.97.10.5", 66.0),
        ("202.97.33.1", 190.0),
        ("211.192.255.1", 200.0),
        (DST, 200.4),
    ];
    (0..160u32)
        .map(|round| {
            let hops: &[(&str, f64)] = if (3..6).contains(&round) {
                &diverted
            } else {
                &normal
            };
            v1::TraceRecord {
                result_id: tracemesh_proto::result_id("c1", round, DST),
                campaign_id: "c1".into(),
                round,
                vantage: "ottawa".into(),
                dst: DST.into(),
                start: t0 + f64::from(round) * DAY / 4.0,
                probes_sent: hops.len() as u32,
                hops: hops
                    .iter()
                    .enumerate()
                    .map(|(i, (a, rtt))| v1::Hop {
                        ttl: i as u32 + 1,
                        addr: Some((*a).into()),
                        rtt_ms: Some(*rtt),
                        icmp_type: Some(if *a == DST { 0 } else { 11 }),
                        icmp_code: Some(0),
                        probes: 1,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }
        })
        .collect()
}

/// `tracemesh serve` on `data`; with `wait_for`, until its log says that.
fn serve(data: &Path, extra: &[&str], wait_for: Option<&str>) -> Child {
    let addr_file = data.join("coordinator.addr");
    let _ = std::fs::remove_file(&addr_file);
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .args(extra)
        .env_remove("TRACEMESH_DATA")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let want = wait_for.map(str::to_owned);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if want.as_ref().is_some_and(|w| line.contains(w.as_str())) {
                let _ = tx.send(());
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&addr_file).is_ok_and(|a| !a.trim().is_empty()) {
        assert!(Instant::now() < deadline, "coordinator did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    if wait_for.is_some() {
        rx.recv_timeout(Duration::from_secs(30))
            .expect("live detection never got ready");
    }
    child
}

fn stop(mut child: Child) {
    // SIGTERM: the coordinator flushes and exits; then sled's lock is free.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
}

fn cli(data: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .arg("--data")
        .arg(data)
        .env_remove("TRACEMESH_DATA")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tracemesh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_closed_episode_is_listed_from_its_stored_record_after_retention() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pfx2as = dir.path().join("pfx2as.txt");
    std::fs::write(&pfx2as, PFX2AS).unwrap();
    let pfx = pfx2as.to_str().unwrap();
    {
        let store = SledStore::open(&tracemesh::server::DataDir(data.clone()).db_dir()).unwrap();
        for o in store.ingest_many(&traces()).unwrap() {
            o.unwrap();
        }
        store.flush().unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let detect = [
        "diversions",
        "--adversary",
        "4134",
        "--pfx2as",
        pfx,
        "--json",
    ];

    // Live detection finds the episode in the stored traces and stores its record.
    let c = serve(
        &data,
        &["--adversary", "4134", "--pfx2as", pfx],
        Some("live detection ready"),
    );
    let before: serde_json::Value = serde_json::from_str(&cli(&data, &detect)).unwrap();
    stop(c);
    let ds = before["diversions"].as_array().unwrap();
    assert_eq!(ds.len(), 1, "{before:#}");
    assert_eq!(ds[0]["rounds"], 3);
    assert_eq!(ds[0]["active"], false);
    // Its traces are still stored: nothing comes from the stored records.
    assert_eq!(before["stored_records"], 0, "{before:#}");

    // Retention takes every trace older than 30 days, the episode's among them.
    let r: serde_json::Value = serde_json::from_str(&cli(
        &data,
        &[
            "retain",
            "--older-than",
            "30d",
            "--archive",
            dir.path().join("archive").to_str().unwrap(),
            "--json",
        ],
    ))
    .unwrap();
    assert_eq!(r["deleted"], 40, "{r}");

    let c = serve(&data, &[], None);
    let after: serde_json::Value = serde_json::from_str(&cli(&data, &detect)).unwrap();
    let text = cli(&data, &detect[..detect.len() - 1]);
    stop(c);
    // The record, as listed before, once.
    assert_eq!(after["diversions"], before["diversions"], "{after:#}");
    assert_eq!(after["stored_records"], 1);
    assert!(
        text.contains("Closed episodes the coordinator kept")
            && text.contains("ottawa -> 211.192.1.10: AS4134 via ingress 202.97.10.1, 3 rounds"),
        "{text}"
    );
}
