//! Diversion records read back from the store (`diversion_records`, written by
//! `live_checkpoint::store_records` as live detection publishes them): an episode whose
//! traces retention has removed is no longer found by detecting over the store, but
//! its record stays. Pure: which stored records join a report's, without duplicates.

use serde_json::Value;

/// (vantage, target, first_seen, last_seen) of a record as `diversions --json` lists it.
fn span(r: &Value) -> Option<(&str, &str, f64, f64)> {
    Some((
        r.get("vantage")?.as_str()?,
        r.get("target")?.as_str()?,
        r.get("first_seen")?.as_f64()?,
        r.get("last_seen")?.as_f64()?,
    ))
}

/// The stored records (JSON) to list beside `detected` (the report's `diversions`):
/// those no detected record of the same vantage and target overlaps in time (a
/// detected one covers what of the episode is still in the store, and is newer), in
/// key order. Unreadable ones are skipped and counted.
pub fn to_add<'a>(
    detected: &[Value],
    stored: impl IntoIterator<Item = &'a str>,
) -> (Vec<Value>, usize) {
    let spans: Vec<_> = detected.iter().filter_map(span).collect();
    let (mut out, mut bad) = (Vec::new(), 0);
    for json in stored {
        let Ok(r) = serde_json::from_str::<Value>(json) else {
            bad += 1;
            continue;
        };
        let Some((v, t, first, last)) = span(&r) else {
            bad += 1;
            continue;
        };
        let covered = spans
            .iter()
            .any(|&(dv, dt, df, dl)| dv == v && dt == t && df <= last && first <= dl);
        if !covered {
            out.push(r);
        }
    }
    (out, bad)
}

/// One line per record for the text report.
pub fn text_line(r: &Value) -> String {
    let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
    let t = |k: &str| {
        r.get(k).and_then(Value::as_f64).map_or("?".into(), |x| {
            tracemesh_proto::time::format_rfc3339(x, tracemesh_proto::time::Precision::Seconds)
        })
    };
    format!(
        "{} -> {}: AS{} via ingress {}, {} rounds, {} .. {}",
        s("vantage"),
        s("target"),
        r.get("adversary_asn").and_then(Value::as_u64).unwrap_or(0),
        r.pointer("/ingress/addr")
            .and_then(Value::as_str)
            .unwrap_or("?"),
        r.get("rounds").and_then(Value::as_u64).unwrap_or(0),
        t("first_seen"),
        t("last_seen"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(v: &str, t: &str, first: f64, last: f64) -> Value {
        json!({"vantage": v, "target": t, "first_seen": first, "last_seen": last,
               "adversary_asn": 4134, "rounds": 3, "ingress": {"addr": "202.97.10.1"}})
    }

    #[test]
    fn stored_records_join_unless_a_detected_one_overlaps() {
        let detected = vec![rec("a", "x", 100.0, 200.0)];
        let stored = [
            rec("a", "x", 10.0, 50.0).to_string(),   // older episode: joins
            rec("a", "x", 150.0, 180.0).to_string(), // the detected one: no
            rec("a", "x", 40.0, 100.0).to_string(),  // touches it: no
            rec("b", "x", 150.0, 180.0).to_string(), // another vantage: joins
            "not json".to_string(),
        ];
        let (add, bad) = to_add(&detected, stored.iter().map(String::as_str));
        assert_eq!(bad, 1);
        assert_eq!(
            add,
            vec![rec("a", "x", 10.0, 50.0), rec("b", "x", 150.0, 180.0)]
        );
        assert!(text_line(&add[0]).starts_with("a -> x: AS4134 via ingress 202.97.10.1, 3 rounds"));
    }
}
