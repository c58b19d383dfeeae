//! Import and export on the real Atlas and scamper files in ../shared/data, through the
//! real binary: `tracemesh import` into a fresh store, `tracemesh serve` on loopback,
//! `traces --json` and `export`, and scamper's own `sc_warts2json` reading our warts.
//! Ignored by default: they need ../shared/data (and scamper for the warts checks).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_tracemesh");
const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data");

fn require_data() -> PathBuf {
    let d = PathBuf::from(DATA);
    assert!(
        d.join("atlas").is_dir() && d.join("scamper").is_dir(),
        "this test needs the shared data: {DATA} (../shared/data beside the repository) is not there"
    );
    d
}

fn require_scamper() {
    let ok = Command::new("sc_warts2json")
        .arg("/dev/null")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        ok,
        "this test needs scamper's sc_warts2json (apt-get install scamper)"
    );
}

fn files(dir: &Path, prefix: &str, exts: &[&str]) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            n.starts_with(prefix) && exts.iter().any(|e| n.ends_with(e))
        })
        .collect();
    v.sort();
    v
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(data: &Path) -> Serve {
    let addr_file = data.join("coordinator.addr");
    let _ = std::fs::remove_file(&addr_file);
    let child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .env_remove("TRACEMESH_DATA")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn tracemesh serve");
    let s = Serve(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&addr_file).map_or(true, |a| a.trim().is_empty()) {
        assert!(Instant::now() < deadline, "coordinator did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    s
}

fn tm(data: &Path, args: &[&str], extra: &[PathBuf]) -> String {
    let out = Command::new(BIN)
        .arg("--data")
        .arg(data)
        .args(args)
        .args(extra)
        .env_remove("TRACEMESH_DATA")
        .output()
        .expect("run tracemesh");
    assert!(
        out.status.success(),
        "tracemesh {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn lines(s: &str) -> Vec<Value> {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The records of an Atlas file as its authors wrote them.
fn atlas_records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    if path.extension().is_some_and(|e| e == "jsonl") {
        return lines(&text);
    }
    match serde_json::from_str::<Value>(&text).unwrap() {
        Value::Array(a) => a,
        Value::Object(o) => o["results"].as_array().unwrap().clone(),
        _ => panic!("{}: neither array nor object", path.display()),
    }
}

type Key = (u64, u64, u64);
/// (ttl, address, RTT in µs) of each TTL's first answer.
type Hops = Vec<(u64, String, i64)>;

fn us(ms: f64) -> i64 {
    (ms * 1000.0).round() as i64
}

/// Per Atlas result: each TTL's first reply with an address and an RTT (late and
/// duplicate replies aside), read straight from the JSON.
fn atlas_first_answers(v: &Value) -> Option<(Key, Hops)> {
    v.get("dst_addr")?;
    let key = (
        v["msm_id"].as_u64()?,
        v["prb_id"].as_u64()?,
        v["timestamp"].as_u64()?,
    );
    let mut hops = Vec::new();
    for h in v["result"].as_array()? {
        let Some(ttl) = h.get("hop").and_then(Value::as_u64) else {
            continue;
        };
        let first = h.get("result").and_then(Value::as_array).and_then(|rs| {
            rs.iter().find(|r| {
                r.get("from").is_some()
                    && r.get("rtt").is_some()
                    && r.get("late").is_none()
                    && r.get("dup").is_none()
            })
        });
        if let Some(r) = first {
            hops.push((ttl, r["from"].as_str()?.to_string(), us(r["rtt"].as_f64()?)));
        }
    }
    Some((key, hops))
}

#[test]
#[ignore = "needs ../shared/data"]
fn atlas_files_round_trip_through_store_and_export() {
    let shared = require_data();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let inputs = files(&shared.join("atlas"), "", &[".json", ".jsonl"]);
    let probes = shared.join("atlas/ripe-atlas-monitor-1033154.json");
    let first = tm(
        &data,
        &["import", "--format", "atlas", "--json", "--atlas-probes"],
        &[&[probes], inputs.as_slice()].concat(),
    );
    let first: Value = serde_json::from_str(&first).unwrap();
    let again: Value = serde_json::from_str(&tm(
        &data,
        &["import", "--format", "atlas", "--json"],
        &inputs,
    ))
    .unwrap();
    // Stored once however often imported.
    assert_eq!(again["stored"], 0, "{again}");
    assert_eq!(again["duplicates"], first["stored"], "{again}");
    assert_eq!(first["malformed"], 0, "{first}");

    let _serve = serve(&data);
    let traces = lines(&tm(
        &data,
        &["traces", "--since", "1970-01-01T00:00:00Z", "--json"],
        &[],
    ));
    assert_eq!(traces.len() as u64, first["stored"].as_u64().unwrap());
    assert!(traces.iter().all(|t| t["source"] == "atlas"));
    assert!(
        traces
            .iter()
            .all(|t| t["vantage"].as_str().unwrap().starts_with("atlas:"))
    );
    // The probe file gave the vantages of msm 1033154 their country, AS and position.
    let agents: Value = serde_json::from_str(&tm(&data, &["agents", "--json"], &[])).unwrap();
    let with_loc = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| !a["loc"].is_null() && a["country"] != "")
        .count();
    // The 77 results of msm 1033154 that ran come from probes the file describes.
    assert!(
        with_loc >= 77,
        "{with_loc} vantages with metadata: {agents}"
    );
    eprintln!("{with_loc} atlas vantages with country and position from the probe file");

    let out = dir.path().join("atlas-export.jsonl");
    tm(
        &data,
        &["export", "--format", "atlas", "--out"],
        std::slice::from_ref(&out),
    );
    let exported: BTreeMap<Key, Hops> = lines(&std::fs::read_to_string(&out).unwrap())
        .iter()
        .map(|v| atlas_first_answers(v).unwrap())
        .collect();
    assert_eq!(exported.len(), traces.len());
    let mut total_hops = 0;
    for f in &inputs {
        let mut records = 0;
        let mut hops = 0;
        for v in atlas_records(f) {
            let Some((key, want)) = atlas_first_answers(&v) else {
                continue;
            };
            let got = exported
                .get(&key)
                .unwrap_or_else(|| panic!("{}: {key:?} not exported", f.display()));
            assert_eq!(got, &want, "{}: {key:?}", f.display());
            records += 1;
            hops += want.len();
        }
        eprintln!(
            "{}: {records} results, {hops} answered hops: addresses and RTTs equal after import and export",
            f.file_name().unwrap().to_string_lossy()
        );
        total_hops += hops;
    }
    eprintln!(
        "atlas total: {} results, {total_hops} answered hops equal",
        exported.len()
    );
}

/// Per scamper JSON trace: (monitor if `by_monitor`, dst, start sec, usec) → each
/// TTL's first reply.
fn scamper_first_answers(
    text: &str,
    by_monitor: bool,
) -> BTreeMap<(String, String, u64, u64), Hops> {
    let mut out = BTreeMap::new();
    let mut monitor = String::new();
    for v in lines(text) {
        if v["type"] == "cycle-start" && by_monitor {
            monitor = v["hostname"].as_str().unwrap().to_string();
        }
        if v["type"] != "trace" {
            continue;
        }
        let mut hops: Hops = Vec::new();
        for h in v["hops"].as_array().into_iter().flatten() {
            let ttl = h["probe_ttl"].as_u64().unwrap();
            if hops.iter().any(|x| x.0 == ttl) {
                continue;
            }
            hops.push((
                ttl,
                h["addr"].as_str().unwrap().to_string(),
                us(h["rtt"].as_f64().unwrap()),
            ));
        }
        hops.sort();
        let key = (
            monitor.clone(),
            v["dst"].as_str().unwrap().to_string(),
            v["start"]["sec"].as_u64().unwrap(),
            v["start"]["usec"].as_u64().unwrap(),
        );
        out.insert(key, hops);
    }
    out
}

fn warts2json(path: &Path) -> String {
    let out = Command::new("sc_warts2json").arg(path).output().unwrap();
    assert!(
        out.status.success(),
        "sc_warts2json {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
#[ignore = "needs ../shared/data and scamper (sc_warts2json)"]
fn scamper_files_round_trip_and_scamper_reads_our_warts() {
    let shared = require_data();
    require_scamper();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sc = shared.join("scamper");
    let warts_in = files(&sc, "trace_", &[".warts"]);
    let json_in = files(&sc, "mlab-", &[".jsonl"]);
    let atlas_in = files(&shared.join("atlas"), "", &[".json", ".jsonl"]);
    tm(&data, &["import", "--format", "warts"], &warts_in);
    tm(&data, &["import", "--format", "scamper-json"], &json_in);
    tm(&data, &["import", "--format", "atlas"], &atlas_in);

    let _serve = serve(&data);
    // Original scamper traces → store → scamper JSON export: the same first answers.
    let out = dir.path().join("scamper-export.jsonl");
    tm(
        &data,
        &[
            "export",
            "--format",
            "scamper-json",
            "--campaign",
            "scamper",
            "--out",
        ],
        std::slice::from_ref(&out),
    );
    let exported = scamper_first_answers(&std::fs::read_to_string(&out).unwrap(), false);
    let mut originals = 0;
    for f in warts_in.iter().chain(&json_in) {
        let text = if f.extension().is_some_and(|e| e == "warts") {
            warts2json(f)
        } else {
            std::fs::read_to_string(f).unwrap()
        };
        for (key, want) in scamper_first_answers(&text, false) {
            assert_eq!(exported.get(&key), Some(&want), "{}: {key:?}", f.display());
            eprintln!(
                "{}: trace to {} with {} answered hops: equal after import and export",
                f.file_name().unwrap().to_string_lossy(),
                key.1,
                want.len()
            );
            originals += 1;
        }
    }
    assert_eq!(originals, 3);
    assert_eq!(exported.len(), originals);

    // Everything stored (Atlas and scamper) as warts, read back by scamper's own tool:
    // hop for hop what `traces --json` says.
    let w = dir.path().join("all.warts");
    tm(
        &data,
        &["export", "--format", "warts", "--out"],
        std::slice::from_ref(&w),
    );
    let read_back = scamper_first_answers(&warts2json(&w), true);
    let traces = lines(&tm(
        &data,
        &["traces", "--since", "1970-01-01T00:00:00Z", "--json"],
        &[],
    ));
    assert_eq!(read_back.len(), traces.len());
    let mut hops = 0;
    for t in &traces {
        let start = t["start"].as_f64().unwrap();
        let sec = start.floor();
        let key = (
            t["vantage"].as_str().unwrap().to_string(),
            t["dst"].as_str().unwrap().to_string(),
            sec as u64,
            ((start - sec) * 1e6).round() as u64,
        );
        let want: Hops = t["hops"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| !h["addr"].is_null())
            .map(|h| {
                (
                    h["ttl"].as_u64().unwrap(),
                    h["addr"].as_str().unwrap().to_string(),
                    us(h["rtt_ms"].as_f64().unwrap()),
                )
            })
            .collect();
        assert_eq!(read_back.get(&key), Some(&want), "{key:?}");
        hops += want.len();
    }
    eprintln!(
        "warts export read by sc_warts2json: {} traces, {hops} answered hops equal to traces --json",
        traces.len()
    );
}
