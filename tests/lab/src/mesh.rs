//! What agents measuring each other should have seen: FORMAT.md's one-way rule (the
//! sender's access delay, its path's link delays at that time, the receiver's access
//! delay, plus up to every crossed link's jitter), over every ECMP branch the pair may
//! take, against the samples a lab run wrote to `mesh.jsonl`.

use std::net::IpAddr;

use serde_json::{Value, json};

use crate::scenario::Ep;
use crate::scenario::World;

/// Least and greatest one-way delay (ms) from vantage `src` to vantage `dst` at `t` s
/// after campaign start, over the pair's branches; `None` if there is no route.
pub fn expected_owd(w: &World, src: usize, dst: usize, t: f64) -> Option<(f64, f64)> {
    let (x, y) = (Ep::Vantage(src), Ep::Vantage(dst));
    let access = w.ep_access(x) + w.ep_access(y);
    w.routes(x, y, t)
        .iter()
        .map(|(p, _)| {
            let (d, j) = w.cross(p);
            (access + d, access + d + j)
        })
        .reduce(|(a, b), (c, d)| (a.min(c), b.max(d)))
}

/// One sample checked: its one-way delay against the range, with `tol_ms` either side.
#[derive(Debug, Clone)]
pub struct Checked {
    pub src: String,
    pub dst: String,
    pub round: u64,
    pub owd_ms: f64,
    pub lo: f64,
    pub hi: f64,
    pub ok: bool,
}

/// Checks every sample of `mesh.jsonl` (one JSON object per line, as `tracemesh mesh
/// --json` prints them) against the scenario, rounds `round_s` apart. The train leaves
/// at the round's instant and lasts well under a second: its delays are those in force
/// a few ms after the instant (events change on round edges).
pub fn check(w: &World, jsonl: &str, tol_ms: f64) -> Result<Vec<Checked>, String> {
    let mut out = Vec::new();
    for (i, line) in jsonl.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value =
            serde_json::from_str(line).map_err(|e| format!("mesh.jsonl line {}: {e}", i + 1))?;
        let addr = |k: &str| -> Result<usize, String> {
            let a: IpAddr = v[k]
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("mesh.jsonl line {}: no {k}", i + 1))?;
            w.vantage_by_addr(a)
                .ok_or_else(|| format!("mesh.jsonl line {}: {a} is no vantage", i + 1))
        };
        let (s, d) = (addr("src_addr")?, addr("dst_addr")?);
        let round = v["round"].as_u64().unwrap_or(0);
        let Some(owd) = v["owd_ms"].as_f64() else {
            // Nothing arrived: counted as a miss.
            out.push(Checked {
                src: w.s.vantages[s].name.clone(),
                dst: w.s.vantages[d].name.clone(),
                round,
                owd_ms: f64::NAN,
                lo: f64::NAN,
                hi: f64::NAN,
                ok: false,
            });
            continue;
        };
        let t = round as f64 * w.s.round_s + 0.01;
        let (lo, hi) = expected_owd(w, s, d, t).ok_or_else(|| {
            format!(
                "no route {} -> {}",
                w.s.vantages[s].name, w.s.vantages[d].name
            )
        })?;
        out.push(Checked {
            src: w.s.vantages[s].name.clone(),
            dst: w.s.vantages[d].name.clone(),
            round,
            owd_ms: owd,
            lo,
            hi,
            ok: owd >= lo - tol_ms && owd <= hi + tol_ms,
        });
    }
    Ok(out)
}

/// The figures `check-mesh` prints.
pub fn summary(checked: &[Checked], tol_ms: f64) -> Value {
    let ok = checked.iter().filter(|c| c.ok).count();
    let mut errs: Vec<f64> = checked
        .iter()
        .filter(|c| c.owd_ms.is_finite())
        .map(|c| {
            if c.owd_ms < c.lo {
                c.owd_ms - c.lo
            } else if c.owd_ms > c.hi {
                c.owd_ms - c.hi
            } else {
                0.0
            }
        })
        .collect();
    errs.sort_by(|a, b| a.abs().total_cmp(&b.abs()));
    let pct = |q: f64| {
        errs.get(((errs.len() as f64 - 1.0) * q).round().max(0.0) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    json!({
        "samples": checked.len(),
        "within_tolerance": ok,
        "share": if checked.is_empty() { 0.0 } else { ok as f64 / checked.len() as f64 },
        "tolerance_ms": tol_ms,
        "error_ms_p50": pct(0.5),
        "error_ms_p95": pct(0.95),
        "error_ms_max": errs.last().copied().unwrap_or(f64::NAN),
        "outside": checked.iter().filter(|c| !c.ok).take(20).map(|c| json!({
            "src": c.src, "dst": c.dst, "round": c.round, "owd_ms": c.owd_ms,
            "expected_ms": [c.lo, c.hi],
        })).collect::<Vec<_>>(),
    })
}

/// Diversion records between agents (a target that is a vantage's address) must say which
/// direction of the pair they are (`forward` from the pair's first agent by name) and
/// carry the one-way delay step of that direction. Returns one line per such record, or
/// the first problem.
pub fn check_directions(w: &World, diversions: &Value) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for r in diversions["diversions"].as_array().into_iter().flatten() {
        let Some(t) = r["target"].as_str().and_then(|t| t.parse::<IpAddr>().ok()) else {
            continue;
        };
        let Some(peer) = w.vantage_by_addr(t) else {
            continue;
        };
        let v = r["vantage"].as_str().unwrap_or("");
        let peer = w.s.vantages[peer].name.as_str();
        let want = if v < peer { "forward" } else { "reverse" };
        if r["direction"] != want {
            return Err(format!(
                "{v} -> {peer}: direction {} where {want} was due",
                r["direction"]
            ));
        }
        let step = r["mesh"]["owd_step_ms"].as_f64();
        if step.is_none() {
            return Err(format!("{v} -> {peer}: no one-way delay step as evidence"));
        }
        out.push(json!({
            "vantage": v, "peer": peer, "direction": want,
            "owd_step_ms": step, "reverse_owd_step_ms": r["mesh"]["reverse_owd_step_ms"],
        }));
    }
    Ok(out)
}
