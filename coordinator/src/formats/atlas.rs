//! RIPE Atlas traceroute results (the JSON the Atlas API and probes write, firmware
//! 4520 on) ↔ `TraceRecord`, and Atlas probe objects → vantage metadata.
//!
//! Atlas sends several packets per TTL and lists every reply; a tracemesh hop holds one
//! answer per TTL, so the first reply that carries an address and an RTT is the hop's
//! answer (late and duplicate replies aside) and `probes` is how many packets Atlas
//! listed there. Atlas does not record ICMP types: a reply from the destination is the
//! protocol's final answer (echo reply, or port unreachable for UDP), one with `err`
//! the unreachable it names, any other a time exceeded.

use serde_json::{Value, json};
use tracemesh_proto::v1;

use super::{Item, Origin, Position, json_records};
use crate::store::AgentMeta;

/// Every record of an Atlas document: JSON lines, a JSON array, or a measurement dump
/// with the results under `results`.
pub fn decode(data: &[u8]) -> Vec<Item> {
    json_records(data, "results")
        .into_iter()
        .map(|(at, v)| match v {
            Err(why) => Item::Malformed { at, why },
            Ok(v) => item_of(at, &v),
        })
        .collect()
}

/// One line of a JSON-lines input (`lineno` 1-based); `None` for a blank line.
pub fn decode_line(lineno: u64, line: &[u8]) -> Option<Item> {
    if line.iter().all(|b| b.is_ascii_whitespace()) {
        return None;
    }
    let at = Position::Line(lineno);
    Some(match serde_json::from_slice::<Value>(line) {
        Err(e) => Item::Malformed {
            at,
            why: e.to_string(),
        },
        Ok(v) => item_of(at, &v),
    })
}

fn item_of(at: Position, v: &Value) -> Item {
    match record(v) {
        Ok(Some(t)) => Item::Trace(Box::new(t)),
        Ok(None) => Item::Skipped {
            at,
            why: skipped_why(v),
        },
        Err(why) => Item::Malformed { at, why },
    }
}

fn skipped_why(v: &Value) -> String {
    if v.get("type").and_then(Value::as_str) != Some("traceroute") {
        return format!(
            "not a traceroute (type {})",
            v.get("type").unwrap_or(&Value::Null)
        );
    }
    let err = v
        .get("result")
        .and_then(|r| r.get(0))
        .and_then(|r| r.get("error"))
        .and_then(Value::as_str)
        .unwrap_or("no destination address");
    format!("no traceroute ran: {err}")
}

fn uint(v: &Value, key: &str) -> Result<Option<u64>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("{key} is not a non-negative integer: {x}")),
    }
}

fn small(v: &Value, key: &str) -> Result<Option<u32>, String> {
    uint(v, key)?
        .map(|n| u32::try_from(n).map_err(|_| format!("{key} out of range: {n}")))
        .transpose()
}

fn addr(v: &Value, key: &str) -> Result<Option<String>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .parse::<std::net::IpAddr>()
            .map(|a| Some(a.to_string()))
            .map_err(|_| format!("{key} is not an IP address: {s:?}")),
        Some(x) => Err(format!("{key} is not a string: {x}")),
    }
}

/// One Atlas result; `Ok(None)` for a well-formed result with no trace in it (another
/// measurement type, or a traceroute that never ran).
pub fn record(v: &Value) -> Result<Option<v1::TraceRecord>, String> {
    if !v.is_object() {
        return Err("not a JSON object".into());
    }
    if v.get("type").and_then(Value::as_str) != Some("traceroute") {
        // Results straight from a probe omit `type`; they are traceroutes when they have
        // a per-hop `result` array.
        let looks = v.get("type").is_none()
            && v.get("result").is_some_and(|r| {
                r.as_array()
                    .is_some_and(|a| a.iter().any(|h| h.get("hop").is_some()))
            });
        if !looks {
            return Ok(None);
        }
    }
    let prb_id = uint(v, "prb_id")?.ok_or("no prb_id")?;
    let msm_id = uint(v, "msm_id")?.ok_or("no msm_id")?;
    let timestamp = uint(v, "timestamp")?.ok_or("no timestamp")?;
    let Some(dst) = addr(v, "dst_addr")? else {
        return Ok(None);
    };
    let src = addr(v, "src_addr")?;
    let proto = match v.get("proto").and_then(Value::as_str) {
        Some(p) if p.eq_ignore_ascii_case("icmp") => v1::ProbeProtocol::Icmp,
        Some(p) if p.eq_ignore_ascii_case("udp") => v1::ProbeProtocol::Udp,
        Some(p) if p.eq_ignore_ascii_case("tcp") => v1::ProbeProtocol::Tcp,
        Some(p) => return Err(format!("unknown proto {p:?}")),
        None => v1::ProbeProtocol::Unspecified,
    };
    let v6 = dst.contains(':');
    let results = v
        .get("result")
        .and_then(Value::as_array)
        .ok_or("no result array")?;
    let mut hops = Vec::with_capacity(results.len());
    let mut probes_sent = 0u32;
    let mut reached = false;
    let mut unreachable = false;
    for h in results {
        if h.get("error").is_some() && h.get("hop").is_none() {
            continue;
        }
        let ttl = small(h, "hop")?.ok_or("a hop without its number")?;
        let replies = match h.get("result") {
            Some(Value::Array(a)) => a.as_slice(),
            // A hop-level error ("error": "sendto failed") lists no replies.
            None if h.get("error").is_some() => &[],
            _ => return Err(format!("hop {ttl}: no result array")),
        };
        let mut hop = v1::Hop {
            ttl,
            probes: replies.len() as u32,
            ..Default::default()
        };
        probes_sent += hop.probes;
        for r in replies {
            if !r.is_object() {
                return Err(format!("hop {ttl}: a reply that is not an object"));
            }
            let from = addr(r, "from").map_err(|e| format!("hop {ttl}: {e}"))?;
            let late = r.get("late").is_some() || r.get("dup").is_some();
            let Some(from) = from else { continue };
            let Some(rtt) = r.get("rtt") else { continue };
            let rtt = rtt
                .as_f64()
                .ok_or_else(|| format!("hop {ttl}: rtt is not a number: {rtt}"))?;
            if late || hop.addr.is_some() {
                continue;
            }
            let err = r.get("err");
            let (ty, code) =
                icmp_of(err, from == dst, proto, v6).map_err(|e| format!("hop {ttl}: {e}"))?;
            reached |= from == dst;
            unreachable |= err.is_some() && from != dst;
            hop.rtt_ms = Some(rtt);
            hop.icmp_type = Some(ty);
            hop.icmp_code = Some(code);
            hop.reply_ttl = small(r, "ttl").map_err(|e| format!("hop {ttl}: {e}"))?;
            hop.quoted_ttl = small(r, "ittl").map_err(|e| format!("hop {ttl}: {e}"))?;
            hop.mpls = mpls(r.get("icmpext")).map_err(|e| format!("hop {ttl}: {e}"))?;
            hop.addr = Some(from);
        }
        hops.push(hop);
    }
    hops.sort_by_key(|h| h.ttl);
    let stop = if reached {
        v1::StopReason::Completed
    } else if unreachable {
        v1::StopReason::Unreachable
    } else {
        v1::StopReason::Unspecified
    };
    let origin = Origin::from_value(v);
    let (campaign_id, round, start) = match &origin {
        Some(o) => (o.campaign.clone(), o.round, o.start),
        None => (
            format!("atlas-{msm_id}"),
            // Rounds order a pair's results; an Atlas result's own time does that.
            u32::try_from(timestamp).map_err(|_| "timestamp out of range")?,
            timestamp as f64,
        ),
    };
    Ok(Some(v1::TraceRecord {
        result_id: format!("atlas/{msm_id}/{prb_id}/{dst}/{timestamp}"),
        campaign_id,
        round,
        vantage: format!("atlas:{prb_id}"),
        dst,
        src,
        proto: proto as i32,
        stop_reason: stop as i32,
        start,
        probes_sent,
        hops,
        received_at_ns: 0,
    }))
}

/// ICMP type and code of a reply, from Atlas's `err` (a letter or the code itself).
fn icmp_of(
    err: Option<&Value>,
    from_dst: bool,
    proto: v1::ProbeProtocol,
    v6: bool,
) -> Result<(u32, u32), String> {
    let unreach = if v6 { 1 } else { 3 };
    match err {
        None if from_dst => Ok(match (proto, v6) {
            (v1::ProbeProtocol::Udp, false) => (3, 3),
            (v1::ProbeProtocol::Udp, true) => (1, 4),
            (_, false) => (0, 0),
            (_, true) => (129, 0),
        }),
        None => Ok(if v6 { (3, 0) } else { (11, 0) }),
        Some(Value::String(s)) => {
            let code = match (s.as_str(), v6) {
                ("N", false) => 0,
                ("H", false) => 1,
                ("P", false) => 2,
                ("p", false) => 3,
                ("A", false) => 13,
                ("N", true) => 0,
                ("A", true) => 1,
                ("H", true) => 3,
                ("p", true) => 4,
                ("P", true) => 4,
                _ => return Err(format!("unknown err {s:?}")),
            };
            Ok((unreach, code))
        }
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|c| u32::try_from(c).ok())
            .map(|c| (unreach, c))
            .ok_or_else(|| format!("err is not a code: {n}")),
        Some(x) => Err(format!("err is neither a letter nor a code: {x}")),
    }
}

fn mpls(ext: Option<&Value>) -> Result<Vec<v1::MplsLabel>, String> {
    let Some(ext) = ext else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for o in ext
        .get("obj")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for l in o
            .get("mpls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let field = |k: &str| small(l, k).map(|x| x.unwrap_or(0));
            out.push(v1::MplsLabel {
                label: field("label")?,
                tc: field("exp")?,
                s: field("s")? != 0,
                ttl: field("ttl")?,
            });
        }
    }
    Ok(out)
}

/// A trace as an Atlas result: `msm_id` and `prb_id` are given (our campaigns and
/// vantages have names, Atlas numbers); the record also carries `"tracemesh"`
/// ([`Origin`]) so a re-import keeps its campaign, round and exact start.
pub fn to_value(t: &v1::TraceRecord, msm_id: u64, prb_id: u32) -> Value {
    serde_json::to_value(result(t, msm_id, prb_id)).unwrap_or(Value::Null)
}

/// [`to_value`] as a typed value, serialised without building a JSON tree (what the
/// export writes).
pub fn result(t: &v1::TraceRecord, msm_id: u64, prb_id: u32) -> AtlasResult<'_> {
    let v6 = t.dst.contains(':');
    let proto = match v1::ProbeProtocol::try_from(t.proto) {
        Ok(v1::ProbeProtocol::Udp) => "UDP",
        Ok(v1::ProbeProtocol::Tcp) => "TCP",
        _ => "ICMP",
    };
    let hops = t
        .hops
        .iter()
        .map(|h| {
            let mut replies = Vec::new();
            if let (Some(a), Some(rtt)) = (&h.addr, h.rtt_ms) {
                replies.push(Reply::Answer {
                    from: a,
                    rtt,
                    ttl: h.reply_ttl,
                    ittl: h.quoted_ttl,
                    err: err_of(h, v6),
                    icmpext: (!h.mpls.is_empty()).then(|| IcmpExt {
                        version: 2,
                        rfc4884: 0,
                        obj: [ExtObj {
                            class: 1,
                            ty: 1,
                            mpls: h
                                .mpls
                                .iter()
                                .map(|m| Mpls {
                                    label: m.label,
                                    exp: m.tc,
                                    s: u32::from(m.s),
                                    ttl: m.ttl,
                                })
                                .collect(),
                        }],
                    }),
                });
            }
            let silent = h.probes.saturating_sub(replies.len() as u32);
            for _ in 0..silent.max(u32::from(replies.is_empty())) {
                replies.push(Reply::Star { x: "*" });
            }
            HopResult {
                hop: h.ttl,
                result: replies,
            }
        })
        .collect();
    let ts = t.start.floor().max(0.0) as u64;
    let end = t.hops.iter().filter_map(|h| h.rtt_ms).fold(0.0, f64::max);
    let src = t.src.as_deref().unwrap_or("");
    AtlasResult {
        ty: "traceroute",
        msm_id,
        prb_id,
        af: if v6 { 6 } else { 4 },
        proto,
        dst_addr: &t.dst,
        dst_name: &t.dst,
        src_addr: src,
        from: src,
        timestamp: ts,
        endtime: (t.start + end / 1000.0).ceil().max(ts as f64) as u64,
        paris_id: 0,
        msm_name: "Traceroute",
        result: hops,
        tracemesh: Origin::of(t),
    }
}

/// An Atlas traceroute result as our export writes it (fields as Atlas names them).
#[derive(Debug, serde::Serialize)]
pub struct AtlasResult<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    msm_id: u64,
    prb_id: u32,
    af: u8,
    proto: &'static str,
    dst_addr: &'a str,
    dst_name: &'a str,
    src_addr: &'a str,
    from: &'a str,
    timestamp: u64,
    endtime: u64,
    paris_id: u8,
    msm_name: &'static str,
    result: Vec<HopResult<'a>>,
    tracemesh: Origin,
}

#[derive(Debug, serde::Serialize)]
struct HopResult<'a> {
    hop: u32,
    result: Vec<Reply<'a>>,
}

#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
enum Reply<'a> {
    Answer {
        from: &'a str,
        // serde_json writes a non-finite RTT as null, as `num` does.
        rtt: f64,
        #[serde(skip_serializing_if = "Option::is_none")]
        ttl: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        ittl: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        err: Option<Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        icmpext: Option<IcmpExt>,
    },
    Star {
        x: &'static str,
    },
}

#[derive(Debug, serde::Serialize)]
struct IcmpExt {
    version: u8,
    rfc4884: u8,
    obj: [ExtObj; 1],
}

#[derive(Debug, serde::Serialize)]
struct ExtObj {
    class: u8,
    #[serde(rename = "type")]
    ty: u8,
    mpls: Vec<Mpls>,
}

#[derive(Debug, serde::Serialize)]
struct Mpls {
    label: u32,
    exp: u32,
    s: u32,
    ttl: u32,
}

fn err_of(h: &v1::Hop, v6: bool) -> Option<Value> {
    let (unreach, letters): (u32, &[(u32, &str)]) = if v6 {
        (1, &[(0, "N"), (1, "A"), (3, "H")])
    } else {
        (3, &[(0, "N"), (1, "H"), (2, "P"), (13, "A")])
    };
    if h.icmp_type != Some(unreach) {
        return None;
    }
    let code = h.icmp_code?;
    // Port unreachable is the UDP destination's normal answer: no `err` for it.
    if (!v6 && code == 3) || (v6 && code == 4) {
        return None;
    }
    Some(
        letters
            .iter()
            .find(|(c, _)| *c == code)
            .map_or(json!(code), |(_, l)| json!(l)),
    )
}

/// Atlas probe objects (the probe archive, or the API's `results`, or a bare array) →
/// (probe id, metadata of vantage `atlas:<id>`).
pub fn probes(data: &[u8]) -> Result<Vec<(u64, AgentMeta)>, String> {
    let doc: Value = serde_json::from_slice(data).map_err(|e| format!("probe file: {e}"))?;
    let list = match &doc {
        Value::Array(a) => a.as_slice(),
        Value::Object(o) => o
            .get("probes")
            .and_then(|p| p.get("results"))
            .or_else(|| o.get("objects"))
            .or_else(|| o.get("results"))
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .ok_or("probe file: no `objects`, `results` or `probes.results` array")?,
        _ => return Err("probe file: neither an array nor an object".into()),
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, p) in list.iter().enumerate() {
        let id = uint(p, "id")
            .map_err(|e| format!("probe {i}: {e}"))?
            .ok_or_else(|| format!("probe {i}: no id"))?;
        let str_of = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let coords = p
            .get("geometry")
            .and_then(|g| g.get("coordinates"))
            .and_then(Value::as_array);
        // GeoJSON order: longitude first.
        let loc = coords.and_then(|c| Some((c.get(1)?.as_f64()?, c.first()?.as_f64()?)));
        let loc =
            loc.or_else(|| Some((p.get("latitude")?.as_f64()?, p.get("longitude")?.as_f64()?)));
        let asn = small(p, "asn_v4")
            .ok()
            .flatten()
            .or_else(|| small(p, "asn_v6").ok().flatten());
        let mut tags = vec!["atlas".to_string()];
        let desc = str_of("description");
        if !desc.is_empty() {
            tags.push(format!("description:{desc}"));
        }
        out.push((
            id,
            AgentMeta {
                name: format!("atlas:{id}"),
                country: str_of("country_code"),
                city: String::new(),
                loc,
                asn,
                tags,
            },
        ));
    }
    Ok(out)
}

/// Our vantages as Atlas probe objects (the shape [`probes`] reads), for an export's
/// side file: `description` keeps the vantage's name.
pub fn probe_value(meta: &AgentMeta) -> Value {
    json!({
        "id": super::probe_id_for(&meta.name),
        "description": meta.name,
        "country_code": meta.country,
        "asn_v4": meta.asn,
        "geometry": meta.loc.map(|(lat, lon)| json!({"type": "Point", "coordinates": [lon, lat]})),
    })
}
