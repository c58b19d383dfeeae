//! Mesh evidence for diversion records, pure: when a diverted pair is two agents that
//! measure each other, which direction of the pair it is, and how the one-way delay of
//! that direction (and of the other) moved while it lasted. A diversion that shows in one
//! direction's one-way delay and not in the other's is one-way, which a round trip time
//! alone cannot tell.

use std::net::IpAddr;

use serde::Serialize;
use tracemesh_proto::v1;

/// One mesh sample as evidence needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshPoint {
    pub src: String,
    pub dst: String,
    pub src_addr: Option<IpAddr>,
    pub dst_addr: Option<IpAddr>,
    /// The round's instant, Unix seconds.
    pub at: f64,
    /// Least one-way delay of the train, ms (`None`: nothing arrived).
    pub owd_ms: Option<f64>,
}

impl MeshPoint {
    pub fn from_proto(m: &v1::MeshSample) -> MeshPoint {
        MeshPoint {
            src: m.src.clone(),
            dst: m.dst.clone(),
            src_addr: m.src_addr.parse().ok(),
            dst_addr: m.dst_addr.parse().ok(),
            at: m.at_ns as f64 / 1e9,
            owd_ms: m.owd_min_ns.map(|n| n as f64 / 1e6),
        }
    }
}

/// What the mesh says about one diverted direction.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MeshEvidence {
    /// `forward` when the diverted direction runs from the pair's first agent (by name)
    /// to the second, `reverse` otherwise; the record's vantage is its source.
    pub direction: &'static str,
    /// The agent at the other end.
    pub peer: String,
    /// Median one-way delay of this direction before the episode and during it, ms.
    pub owd_before_ms: Option<f64>,
    pub owd_during_ms: Option<f64>,
    /// during − before: the diversion's one-way cost.
    pub owd_step_ms: Option<f64>,
    /// The same step for the other direction over the same rounds (near zero when the
    /// diversion is one-way).
    pub reverse_owd_step_ms: Option<f64>,
    pub samples_before: usize,
    pub samples_during: usize,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// (before, during) medians of the `src`→`dst` direction around `[first, last]`.
fn step(
    samples: &[MeshPoint],
    src: &str,
    dst: &str,
    first: f64,
    last: f64,
) -> (Option<f64>, Option<f64>, usize, usize) {
    // Trace start times trail the round's instant by the probing; a second of slack.
    let (lo, hi) = (first - 1.0, last + 1.0);
    let dir = samples.iter().filter(|s| s.src == src && s.dst == dst);
    let before: Vec<f64> = dir
        .clone()
        .filter(|s| s.at < lo)
        .filter_map(|s| s.owd_ms)
        .collect();
    let during: Vec<f64> = dir
        .filter(|s| s.at >= lo && s.at <= hi)
        .filter_map(|s| s.owd_ms)
        .collect();
    let (nb, nd) = (before.len(), during.len());
    (median(before), median(during), nb, nd)
}

/// The evidence for a record of `vantage` toward `target` seen from `first` to `last`
/// (Unix s), if `target` is the mesh address of another agent `vantage` measured.
pub fn evidence(
    samples: &[MeshPoint],
    vantage: &str,
    target: IpAddr,
    first: f64,
    last: f64,
) -> Option<MeshEvidence> {
    let peer = samples
        .iter()
        .find(|s| s.src == vantage && s.dst_addr == Some(target))
        .map(|s| s.dst.clone())?;
    let (b, d, nb, nd) = step(samples, vantage, &peer, first, last);
    let (rb, rd, _, _) = step(samples, &peer, vantage, first, last);
    Some(MeshEvidence {
        direction: if vantage < peer.as_str() {
            "forward"
        } else {
            "reverse"
        },
        owd_before_ms: b.map(r3),
        owd_during_ms: d.map(r3),
        owd_step_ms: b.zip(d).map(|(b, d)| r3(d - b)),
        reverse_owd_step_ms: rb.zip(rd).map(|(b, d)| r3(d - b)),
        samples_before: nb,
        samples_during: nd,
        peer,
    })
}

/// Adds `direction` and `mesh` to every record of a `diversions --json` document whose
/// pair is two agents measuring each other.
pub fn annotate_json(doc: &mut serde_json::Value, samples: &[MeshPoint]) {
    let Some(records) = doc.get_mut("diversions").and_then(|d| d.as_array_mut()) else {
        return;
    };
    for r in records {
        let (Some(v), Some(t), Some(first), Some(last)) = (
            r["vantage"].as_str(),
            r["target"].as_str().and_then(|t| t.parse::<IpAddr>().ok()),
            r["first_seen"].as_f64(),
            r["last_seen"].as_f64(),
        ) else {
            continue;
        };
        if let Some(e) = evidence(samples, v, t, first, last) {
            r["direction"] = e.direction.into();
            r["mesh"] = serde_json::to_value(&e).unwrap_or_default();
        }
    }
}

/// The text view's lines for the same evidence.
pub fn text_lines(doc: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for r in doc["diversions"].as_array().into_iter().flatten() {
        let m = &r["mesh"];
        if m.is_null() {
            continue;
        }
        let f = |v: &serde_json::Value| v.as_f64().map_or("?".into(), |x| format!("{x:+.1}"));
        out.push(format!(
            "  {} -> {} ({}): one-way delay {} ms ({} -> {} ms over {} samples); the other direction {} ms",
            r["vantage"].as_str().unwrap_or("?"),
            m["peer"].as_str().unwrap_or("?"),
            m["direction"].as_str().unwrap_or("?"),
            f(&m["owd_step_ms"]),
            m["owd_before_ms"].as_f64().map_or("?".into(), |x| format!("{x:.1}")),
            m["owd_during_ms"].as_f64().map_or("?".into(), |x| format!("{x:.1}")),
            m["samples_during"],
            f(&m["reverse_owd_step_ms"]),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(src: &str, dst: &str, at: f64, owd: f64) -> MeshPoint {
        let addr = |n: &str| -> Option<IpAddr> {
            Some(
                if n == "a" { "192.0.2.1" } else { "192.0.2.2" }
                    .parse()
                    .unwrap(),
            )
        };
        MeshPoint {
            src: src.into(),
            dst: dst.into(),
            src_addr: addr(src),
            dst_addr: addr(dst),
            at,
            owd_ms: Some(owd),
        }
    }

    #[test]
    fn a_one_way_diversion_shows_in_its_direction_only() {
        let mut s = Vec::new();
        for k in 0..10 {
            let at = 100.0 + 10.0 * f64::from(k);
            let diverted = (3..=6).contains(&k);
            s.push(p("b", "a", at, if diverted { 148.0 } else { 92.5 }));
            s.push(p("a", "b", at, 92.2));
        }
        let e = evidence(&s, "b", "192.0.2.1".parse().unwrap(), 130.2, 160.2).unwrap();
        assert_eq!(e.direction, "reverse");
        assert_eq!(e.peer, "a");
        assert_eq!(e.owd_step_ms, Some(55.5));
        assert_eq!(e.reverse_owd_step_ms, Some(0.0));
        assert_eq!((e.samples_before, e.samples_during), (3, 4));
        // A target that is no agent gets nothing.
        assert!(evidence(&s, "b", "198.51.100.1".parse().unwrap(), 130.0, 160.0).is_none());
    }

    #[test]
    fn annotate_adds_direction_and_mesh() {
        let s = vec![p("a", "b", 10.0, 5.0), p("a", "b", 20.0, 9.0)];
        let mut doc = serde_json::json!({"diversions": [
            {"vantage": "a", "target": "192.0.2.2", "first_seen": 20.1, "last_seen": 20.1},
            {"vantage": "a", "target": "203.0.113.9", "first_seen": 20.1, "last_seen": 20.1},
        ]});
        annotate_json(&mut doc, &s);
        assert_eq!(doc["diversions"][0]["direction"], "forward");
        assert_eq!(doc["diversions"][0]["mesh"]["owd_step_ms"], 4.0);
        assert!(doc["diversions"][1].get("direction").is_none());
        assert_eq!(text_lines(&doc).len(), 1);
    }
}
