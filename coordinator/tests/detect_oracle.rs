//! Development oracle loop: for every shared scenario (and the project's own in scenarios/),
//! take the ground-truth hop lists from `scenario.py --json`, synthesise the traces a
//! lab run would collect, run the detector, and score its report with `score.py`.
//! Needs ../shared beside the repository (CI and the development machine have it) and
//! python3: ignored by default, run with `cargo test -- --ignored`.

// Helpers outside #[test] functions unwrap too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tracemesh::annotate::Annotator;
use tracemesh::detect::{Adversary, Detector, Trace, TraceHop, VantageInfo};
use tracemesh::geo::{Gazetteer, GeoPoint};

/// `shared/` beside the repository, as on the development machine and in CI.
const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared");
const T0: f64 = 1_795_400_000.25;

fn python_json(args: &[&str]) -> Value {
    let out = Command::new("python3")
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python3 {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from python")
}

/// Scenario facts the lab hands the coordinator: prefix table, AS names, vantage
/// metadata, probed addresses. Router positions are deliberately not extracted.
fn scenario_inputs(file: &Path) -> Value {
    let script = format!(
        r#"
import sys, json
sys.path.insert(0, "{SHARED}/tools")
from scenario import Scenario
s = Scenario(sys.argv[1])
print(json.dumps({{
  "adversary_asns": sorted(s.adversary_asns),
  "ases": [{{"asn": a["asn"], "name": a["name"], "country": a["country"], "prefixes": a["prefixes"]}} for a in s.ases.values()],
  "vantages": [{{"name": v["name"], "loc": v["loc"], "country": v["country"], "asn": v["asn"]}} for v in s.vantages.values()],
  "targets": {{**{{t["name"]: t["probe"] for t in s.targets.values()}}, **{{v["name"]: [v["addr"]] for v in s.vantages.values()}}}},
}}))
"#
    );
    python_json(&["-c", &script, file.to_str().expect("utf-8 path")])
}

/// Deterministic stand-in for the emulator's up-to-0.2 ms jitter.
fn jitter(seed: u64) -> f64 {
    let x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((x >> 33) % 200) as f64 / 1000.0
}

/// The built-in gazetteer, with exchange counts from PeeringDB as a deployment that
/// loads PeeringDB would have them.
fn gazetteer() -> Gazetteer {
    let mut g = Gazetteer::builtin();
    if std::env::var_os("TRACEMESH_ORACLE_NO_PEERINGDB").is_some() {
        return g;
    }
    let ixp = Path::new(SHARED).join("data/ixp");
    if let Ok(lans) = tracemesh::annotate::load_peeringdb(
        &ixp.join("peeringdb-2016-10-19-ix.json"),
        &ixp.join("peeringdb-2016-10-19-ixlan.json"),
        &ixp.join("peeringdb-2016-10-19-ixpfx.json"),
    ) {
        let cities = tracemesh::annotate::exchange_cities(&lans);
        g.add_exchange_cities(cities.iter().map(|(c, cc)| (c.as_str(), cc.as_str())));
    }
    g
}

struct Scored {
    name: String,
    metrics: Value,
}

fn run_scenario(file: &Path) -> Scored {
    let truth = python_json(&[
        &format!("{SHARED}/tools/scenario.py"),
        file.to_str().unwrap(),
        "--json",
    ]);
    let inputs = scenario_inputs(file);
    let dir = tempfile::tempdir().unwrap();

    // The lab loads the scenario's prefixes the way a user loads pfx2as: do the same.
    let mut pfx2as = String::new();
    let mut names = serde_json::Map::new();
    for a in inputs["ases"].as_array().unwrap() {
        let asn = a["asn"].as_u64().unwrap();
        for p in a["prefixes"].as_array().unwrap() {
            let (addr, len) = p.as_str().unwrap().split_once('/').unwrap();
            pfx2as.push_str(&format!("{addr}\t{len}\t{asn}\n"));
        }
        names.insert(
            asn.to_string(),
            Value::String(format!(
                "{}, {}",
                a["name"].as_str().unwrap(),
                a["country"].as_str().unwrap()
            )),
        );
    }
    std::fs::write(dir.path().join("pfx2as.txt"), pfx2as).unwrap();
    std::fs::write(
        dir.path().join("asnames.json"),
        Value::Object(names).to_string(),
    )
    .unwrap();
    let mut annot = Annotator::new();
    annot
        .load_prefix_file(&dir.path().join("pfx2as.txt"))
        .unwrap();
    annot
        .load_asnames(&dir.path().join("asnames.json"))
        .unwrap();

    let adversary = Adversary::from_asns(
        inputs["adversary_asns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_u64().unwrap() as u32),
    );
    let mut det = Detector::new(adversary);
    for v in inputs["vantages"].as_array().unwrap() {
        let loc = v["loc"].as_array().unwrap();
        det.set_vantage(VantageInfo {
            name: v["name"].as_str().unwrap().to_owned(),
            loc: Some(GeoPoint::new(
                loc[0].as_f64().unwrap(),
                loc[1].as_f64().unwrap(),
            )),
            country: v["country"].as_str().map(str::to_owned),
            asn: v["asn"].as_u64().map(|a| a as u32),
        });
    }

    let duration = truth["duration_s"].as_f64().unwrap();
    let round_s = truth["round_s"].as_f64().unwrap();
    let mut edges: Vec<(f64, &serde_json::Map<String, Value>)> = truth["paths"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(t, p)| (t.parse::<f64>().unwrap(), p.as_object().unwrap()))
        .collect();
    edges.sort_by(|a, b| a.0.total_cmp(&b.0));
    let targets: BTreeMap<String, Vec<IpAddr>> = inputs["targets"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().parse().unwrap())
                    .collect(),
            )
        })
        .collect();

    // Version 2: every branch of a balanced pair; a Paris trace keeps one (picked per
    // pair here, as a fixed flow id picks it in the lab).
    let ecmp = truth.get("ecmp_paths").and_then(Value::as_object);
    let mut round = 0u64;
    let mut seed = 0u64;
    let mut traces = 0usize;
    // Halfway, a twin from the detector's checkpoint (as `serve --adversary` restarts):
    // fed the same rounds after that, it must report exactly what the original does.
    let half = (duration / round_s / 2.0).floor() as u64;
    let mut twin: Option<Detector> = None;
    while (round as f64) * round_s < duration {
        if round == half {
            twin = Some(Detector::from_checkpoint(det.adversary(), &det.checkpoint()).unwrap());
        }
        let t = round as f64 * round_s;
        // Paths are piecewise constant between event edges.
        let (edge, paths) = edges.iter().rev().find(|(e, _)| *e <= t).unwrap();
        for (pair, main) in *paths {
            let (vantage, tname) = pair.split_once('>').unwrap();
            let branches: Vec<&Value> = ecmp
                .and_then(|m| m.iter().find(|(k, _)| k.parse::<f64>().ok() == Some(*edge)))
                .and_then(|(_, m)| m.get(pair))
                .and_then(Value::as_array)
                .map(|b| b.iter().collect())
                .unwrap_or_else(|| vec![main]);
            let pick = pair
                .bytes()
                .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
            let hops_json = branches[(pick % branches.len() as u64) as usize];
            for dst in &targets[tname] {
                let hops = hops_json
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|h| {
                        seed += 1;
                        let mut addr = match h[1].as_str() {
                            Some("DEST") => Some(*dst),
                            Some(a) => Some(a.parse().unwrap()),
                            None => None,
                        };
                        let lo = h[2].as_f64().unwrap();
                        let rtt = match h.get(3).and_then(Value::as_f64) {
                            // v2: anywhere in the oracle's range; a rate-limited router
                            // is silent now and then.
                            Some(hi) => {
                                if h[4] == true && jitter(seed * 7) < 0.05 {
                                    addr = None;
                                }
                                lo + (hi - lo) * jitter(seed * 13) / 0.2
                            }
                            None => lo + jitter(seed),
                        };
                        TraceHop {
                            ttl: h[0].as_u64().unwrap() as u8,
                            addr,
                            rtt_ms: addr.map(|_| rtt),
                        }
                    })
                    .collect();
                let trace = Trace {
                    round,
                    vantage: vantage.to_owned(),
                    dst: *dst,
                    start: T0 + t + jitter(seed) / 10.0,
                    hops,
                };
                det.ingest(&trace, &annot);
                if let Some(twin) = twin.as_mut() {
                    twin.ingest(&trace, &annot);
                }
                traces += 1;
            }
        }
        round += 1;
    }
    let report = det.report(&annot, &gazetteer(), T0 + duration);
    let twin = twin.expect("a scenario of at least two rounds");
    assert_eq!(
        serde_json::to_string(&twin.report(&annot, &gazetteer(), T0 + duration)).unwrap(),
        serde_json::to_string(&report).unwrap(),
        "{}: the detector restored from its checkpoint reports otherwise",
        file.display()
    );
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("diversions.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    std::fs::write(
        out.join("lab.json"),
        serde_json::json!({ "t0": T0 }).to_string(),
    )
    .unwrap();
    if std::env::var_os("TRACEMESH_ORACLE_DUMP").is_some() {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.diversions).unwrap()
        );
    }
    let metrics = python_json(&[
        &format!("{SHARED}/tools/score.py"),
        file.to_str().unwrap(),
        out.to_str().unwrap(),
        "--json",
    ]);
    println!(
        "{}: {traces} traces, {} records -> {metrics}",
        file.display(),
        report.diversions.len()
    );
    Scored {
        name: truth["name"].as_str().unwrap().to_owned(),
        metrics,
    }
}

fn scenario_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in [
        PathBuf::from(format!("{SHARED}/scenarios")),
        PathBuf::from(format!("{SHARED}/scenarios/v2")),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios"),
    ] {
        let mut here: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        here.retain(|p| p.extension().is_some_and(|e| e == "toml"));
        here.sort();
        files.extend(here);
    }
    files
}

/// Scenarios whose ingress position is scored but not gated: ecmp-belarus-2013 tests
/// branch changes before a hand-off, and its only European vantage is London, whose
/// 1,010 km disc holds Frankfurt (the truth), Paris and Amsterdam alike; the US
/// vantages bound nothing there. Its position (~470 km off: Paris) is reported, as
/// `.ci/run` does for it.
const POSITION_UNGATED: &[&str] = &["ecmp-belarus-2013"];

fn f(m: &Value, k: &str) -> f64 {
    m[k].as_f64().unwrap_or(f64::NAN)
}

#[test]
#[ignore = "needs ../shared (the oracle's scenario.py and score.py) and python3"]
fn oracle_scenarios_score_within_bounds() {
    assert!(
        Path::new(SHARED).join("tools/score.py").exists(),
        "this test needs {SHARED} (../shared beside the repository): the oracle loop runs its tools/scenario.py and tools/score.py"
    );
    let files = scenario_files();
    assert!(files.len() >= 2, "no scenarios found");
    let mut failures = Vec::new();
    let mut all_errs_ok = true;
    for file in &files {
        let s = run_scenario(file);
        let m = &s.metrics;
        let round_s = python_json(&[
            &format!("{SHARED}/tools/scenario.py"),
            file.to_str().unwrap(),
            "--json",
        ])["round_s"]
            .as_f64()
            .unwrap();
        let mut check = |ok: bool, what: &str| {
            if !ok {
                failures.push(format!("{}: {what} ({m})", s.name));
            }
        };
        check(f(m, "recall") >= 0.99, "recall");
        check(f(m, "precision") >= 0.99, "precision");
        if m["expected"].as_u64().unwrap_or(0) > 0 {
            check(f(m, "ingress_addr") >= 0.99, "ingress addr");
            check(f(m, "handoff_addr") >= 0.95, "hand-off addr");
            check(f(m, "adversary_asn") >= 0.99, "adversary asn");
            check(f(m, "onset_s_median") <= round_s, "onset");
            if !POSITION_UNGATED.contains(&s.name.as_str()) {
                check(f(m, "ingress_km_median") <= 100.0, "ingress km median");
                check(f(m, "ingress_km_p90") <= 500.0, "ingress km p90");
            }
        }
        all_errs_ok &= failures.is_empty();
    }
    assert!(
        failures.is_empty(),
        "oracle failures:\n{}",
        failures.join("\n")
    );
    assert!(all_errs_ok);
}
