//! scamper's JSON (`sc_warts2json`, `scamper -O json`, M-Lab's traceroute-caller) ↔
//! `TraceRecord`. Only `trace` objects are traces; `cycle-start` names the monitor
//! (its `hostname`) for the traces after it; `tracelb` (MDA) and other objects are
//! skipped. scamper lists one entry per reply, several per TTL with attempts: the first
//! reply at a TTL is the hop's answer; TTLs without a reply up to `hop_count` are silent
//! hops, probed `attempts` times.

use serde_json::{Value, json};
use tracemesh_proto::v1;

use super::{Item, Origin, Position};

/// The monitor a scamper file came from, carried from `cycle-start` to its traces.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    monitor: Option<String>,
}

impl Decoder {
    /// One line of input (`lineno` 1-based).
    pub fn line(&mut self, lineno: u64, line: &[u8]) -> Option<Item> {
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            return None;
        }
        let at = Position::Line(lineno);
        let v: Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => {
                return Some(Item::Malformed {
                    at,
                    why: e.to_string(),
                });
            }
        };
        Some(self.value(at, &v))
    }

    pub fn value(&mut self, at: Position, v: &Value) -> Item {
        match v.get("type").and_then(Value::as_str) {
            Some("trace") => match record(v, self.monitor.as_deref()) {
                Ok(t) => Item::Trace(Box::new(t)),
                Err(why) => Item::Malformed { at, why },
            },
            Some("cycle-start") => {
                self.monitor = v
                    .get("hostname")
                    .and_then(Value::as_str)
                    .filter(|h| !h.is_empty())
                    .map(str::to_string);
                Item::Skipped {
                    at,
                    why: "cycle-start".into(),
                }
            }
            Some(t) => Item::Skipped {
                at,
                why: format!("{t} object"),
            },
            None if v.is_object() => Item::Skipped {
                at,
                why: "object without a type".into(),
            },
            None => Item::Malformed {
                at,
                why: "not a JSON object".into(),
            },
        }
    }
}

/// Every line of a scamper JSON document.
pub fn decode(data: &[u8]) -> Vec<Item> {
    let mut d = Decoder::default();
    data.split(|&b| b == b'\n')
        .enumerate()
        .filter_map(|(i, l)| d.line(i as u64 + 1, l))
        .collect()
}

fn uint(v: &Value, key: &str) -> Result<Option<u32>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| format!("{key} is not a 32-bit unsigned integer: {x}")),
    }
}

fn ip(v: &Value, key: &str) -> Result<Option<String>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => s
            .parse::<std::net::IpAddr>()
            .map(|a| Some(a.to_string()))
            .map_err(|_| format!("{key} is not an IP address: {s:?}")),
        Some(x) => Err(format!("{key} is not a string: {x}")),
    }
}

fn stop_of(s: &str) -> v1::StopReason {
    match s {
        "COMPLETED" => v1::StopReason::Completed,
        "UNREACH" | "ICMP" => v1::StopReason::Unreachable,
        "GAPLIMIT" => v1::StopReason::GapLimit,
        "LOOP" => v1::StopReason::Loop,
        "HOPLIMIT" => v1::StopReason::MaxTtl,
        _ => v1::StopReason::Unspecified,
    }
}

fn proto_of(method: &str) -> v1::ProbeProtocol {
    if method.starts_with("icmp") {
        v1::ProbeProtocol::Icmp
    } else if method.starts_with("udp") {
        v1::ProbeProtocol::Udp
    } else if method.starts_with("tcp") {
        v1::ProbeProtocol::Tcp
    } else {
        v1::ProbeProtocol::Unspecified
    }
}

/// One `trace` object; `monitor` is the hostname of the cycle it belongs to.
pub fn record(v: &Value, monitor: Option<&str>) -> Result<v1::TraceRecord, String> {
    let dst = ip(v, "dst")?.ok_or("no dst")?;
    let src = ip(v, "src")?;
    let start = v.get("start").ok_or("no start")?;
    let sec = uint(start, "sec")?.ok_or("no start.sec")?;
    let usec = uint(start, "usec")?.unwrap_or(0);
    if usec >= 1_000_000 {
        return Err(format!("start.usec out of range: {usec}"));
    }
    let attempts = uint(v, "attempts")?.unwrap_or(1);
    let firsthop = uint(v, "firsthop")?.unwrap_or(1).max(1);
    let hop_count = uint(v, "hop_count")?.unwrap_or(0);
    let mut hops: Vec<v1::Hop> = Vec::new();
    let replies = match v.get("hops") {
        None => &[][..],
        Some(Value::Array(a)) => a.as_slice(),
        Some(_) => return Err("hops is not an array".into()),
    };
    for (i, r) in replies.iter().enumerate() {
        let e = |m: String| format!("hops[{i}]: {m}");
        let ttl = uint(r, "probe_ttl")
            .map_err(e)?
            .ok_or_else(|| e("no probe_ttl".into()))?;
        if ttl == 0 || ttl > 255 {
            return Err(e(format!("probe_ttl out of range: {ttl}")));
        }
        if hops.iter().any(|h| h.ttl == ttl) {
            continue;
        }
        let rtt = r
            .get("rtt")
            .map(|x| {
                x.as_f64()
                    .ok_or_else(|| e(format!("rtt is not a number: {x}")))
            })
            .transpose()?;
        let mut labels = Vec::new();
        for ext in r
            .get("icmpext")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for l in ext
                .get("mpls_labels")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let f = |k: &str| uint(l, k).map(|x| x.unwrap_or(0)).map_err(e);
                labels.push(v1::MplsLabel {
                    label: f("mpls_label")?,
                    tc: f("mpls_exp")?,
                    s: f("mpls_s")? != 0,
                    ttl: f("mpls_ttl")?,
                });
            }
        }
        hops.push(v1::Hop {
            ttl,
            addr: ip(r, "addr").map_err(e)?,
            rtt_ms: rtt,
            icmp_type: uint(r, "icmp_type").map_err(e)?,
            icmp_code: uint(r, "icmp_code").map_err(e)?,
            reply_ttl: uint(r, "reply_ttl").map_err(e)?,
            quoted_ttl: uint(r, "icmp_q_ttl").map_err(e)?,
            tcp_flags: uint(r, "tcp_flags").map_err(e)?.map(tcp_flags),
            mpls: labels,
            probes: attempts,
        });
    }
    let last = hops.iter().map(|h| h.ttl).max().unwrap_or(0).max(hop_count);
    for ttl in firsthop..=last.min(255) {
        if !hops.iter().any(|h| h.ttl == ttl) {
            hops.push(v1::Hop {
                ttl,
                probes: attempts,
                ..Default::default()
            });
        }
    }
    hops.sort_by_key(|h| h.ttl);
    let vantage = match (monitor, &src) {
        (Some(m), _) => format!("scamper:{m}"),
        (None, Some(s)) => format!("scamper:{s}"),
        (None, None) => "scamper:unknown".into(),
    };
    let start_s = f64::from(sec) + f64::from(usec) / 1e6;
    let origin = Origin::from_value(v);
    let (campaign_id, round, start_s) = match origin {
        Some(o) => (o.campaign, o.round, o.start),
        None => ("scamper".to_string(), sec, start_s),
    };
    let probes_sent = uint(v, "probe_count")?.unwrap_or(hops.iter().map(|h| h.probes).sum());
    Ok(v1::TraceRecord {
        result_id: format!("scamper/{vantage}/{dst}/{sec}.{usec:06}"),
        campaign_id,
        round,
        vantage,
        dst,
        src,
        proto: proto_of(v.get("method").and_then(Value::as_str).unwrap_or("")) as i32,
        stop_reason: stop_of(v.get("stop_reason").and_then(Value::as_str).unwrap_or("")) as i32,
        start: start_s,
        probes_sent,
        hops,
        received_at_ns: 0,
    })
}

fn tcp_flags(bits: u32) -> String {
    let mut s = String::new();
    if bits & 0x02 != 0 {
        s.push('S');
    }
    if bits & 0x04 != 0 {
        s.push('R');
    }
    if bits & 0x10 != 0 {
        s.push('A');
    }
    s
}

fn tcp_bits(flags: &str) -> u32 {
    flags.chars().fold(0, |b, c| {
        b | match c {
            'S' => 0x02,
            'R' => 0x04,
            'A' => 0x10,
            _ => 0,
        }
    })
}

/// scamper's method name for our protocol (we always keep the flow identifier fixed).
pub fn method_of(proto: i32) -> &'static str {
    match v1::ProbeProtocol::try_from(proto) {
        Ok(v1::ProbeProtocol::Udp) => "udp-paris",
        Ok(v1::ProbeProtocol::Tcp) => "tcp",
        _ => "icmp-echo-paris",
    }
}

pub fn stop_name(stop: i32) -> &'static str {
    match v1::StopReason::try_from(stop) {
        Ok(v1::StopReason::Completed) => "COMPLETED",
        Ok(v1::StopReason::Unreachable) => "UNREACH",
        Ok(v1::StopReason::GapLimit) => "GAPLIMIT",
        Ok(v1::StopReason::Loop) => "LOOP",
        Ok(v1::StopReason::MaxTtl) => "HOPLIMIT",
        _ => "NONE",
    }
}

/// A cycle-start line naming the monitor, as scamper writes before its traces.
pub fn cycle_start(monitor: &str, start_time: u64) -> Value {
    json!({"type": "cycle-start", "list_name": "tracemesh", "id": 0,
           "hostname": monitor, "start_time": start_time})
}

/// A trace as scamper's JSON `trace` object, plus our `"tracemesh"` origin.
pub fn to_value(t: &v1::TraceRecord) -> Value {
    serde_json::to_value(trace(t)).unwrap_or(Value::Null)
}

/// [`to_value`] as a typed value, serialised without building a JSON tree (what the
/// export writes).
pub fn trace(t: &v1::TraceRecord) -> ScamperTrace<'_> {
    let sec = t.start.floor().max(0.0);
    let usec = ((t.start - sec) * 1e6).round().min(999_999.0) as u64;
    let hops = t
        .hops
        .iter()
        .filter_map(|h| {
            Some(ScamperHop {
                addr: h.addr.as_deref()?,
                probe_ttl: h.ttl,
                probe_id: 1,
                rtt: h.rtt_ms,
                reply_ttl: h.reply_ttl,
                icmp_type: h.icmp_type,
                icmp_code: h.icmp_code,
                icmp_q_ttl: h.quoted_ttl,
                tcp_flags: h.tcp_flags.as_deref().map(tcp_bits),
                icmpext: (!h.mpls.is_empty()).then(|| {
                    [IcmpExt {
                        ie_cn: 1,
                        ie_ct: 1,
                        ie_dl: 4 * h.mpls.len(),
                        mpls_labels: h
                            .mpls
                            .iter()
                            .map(|m| Mpls {
                                mpls_ttl: m.ttl,
                                mpls_s: u32::from(m.s),
                                mpls_exp: m.tc,
                                mpls_label: m.label,
                            })
                            .collect(),
                    }]
                }),
            })
        })
        .collect();
    ScamperTrace {
        ty: "trace",
        version: "0.1",
        userid: 0,
        method: method_of(t.proto),
        src: t.src.as_deref(),
        dst: &t.dst,
        stop_reason: stop_name(t.stop_reason),
        stop_data: 0,
        start: Start {
            sec: sec as u64,
            usec,
        },
        hop_count: t.hops.iter().map(|h| h.ttl).max().unwrap_or(0),
        attempts: t.hops.iter().map(|h| h.probes).max().unwrap_or(1).max(1),
        firsthop: t.hops.iter().map(|h| h.ttl).min().unwrap_or(1).max(1),
        probe_count: t.probes_sent,
        hops,
        tracemesh: Origin::of(t),
    }
}

/// A scamper `trace` object as our export writes it (fields as scamper names them).
#[derive(Debug, serde::Serialize)]
pub struct ScamperTrace<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    version: &'static str,
    userid: u32,
    method: &'static str,
    src: Option<&'a str>,
    dst: &'a str,
    stop_reason: &'static str,
    stop_data: u32,
    start: Start,
    hop_count: u32,
    attempts: u32,
    firsthop: u32,
    probe_count: u32,
    hops: Vec<ScamperHop<'a>>,
    tracemesh: Origin,
}

#[derive(Debug, serde::Serialize)]
struct Start {
    sec: u64,
    usec: u64,
}

#[derive(Debug, serde::Serialize)]
struct ScamperHop<'a> {
    addr: &'a str,
    probe_ttl: u32,
    probe_id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    rtt: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_ttl: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    icmp_type: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    icmp_code: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    icmp_q_ttl: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tcp_flags: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    icmpext: Option<[IcmpExt; 1]>,
}

#[derive(Debug, serde::Serialize)]
struct IcmpExt {
    ie_cn: u8,
    ie_ct: u8,
    ie_dl: usize,
    mpls_labels: Vec<Mpls>,
}

#[derive(Debug, serde::Serialize)]
struct Mpls {
    mpls_ttl: u32,
    mpls_s: u32,
    mpls_exp: u32,
    mpls_label: u32,
}
