//! JSON shapes of CLI output. Traces use the agent's field names (`tracemesh-agent trace`),
//! so downstream tools read coordinator output and agent output alike.

use std::io::Write as _;

use serde_json::{Value, json};
use tracemesh_proto::v1;

fn secs(ns: i64) -> f64 {
    ns as f64 / 1e9
}

pub fn hop(h: &v1::Hop) -> Value {
    let mut o = json!({
        "ttl": h.ttl,
        "addr": h.addr,
        "rtt_ms": h.rtt_ms,
        "icmp_type": h.icmp_type,
        "icmp_code": h.icmp_code,
        "reply_ttl": h.reply_ttl,
        "mpls": h.mpls.iter().map(|m| json!({"label": m.label, "tc": m.tc, "s": m.s, "ttl": m.ttl})).collect::<Vec<_>>(),
        "probes": h.probes,
    });
    if let Some(q) = h.quoted_ttl {
        o["quoted_ttl"] = json!(q);
    }
    if let Some(f) = &h.tcp_flags {
        o["tcp_flags"] = json!(f);
    }
    o
}

pub fn trace(t: &v1::TraceRecord) -> Value {
    let proto = v1::ProbeProtocol::try_from(t.proto).unwrap_or(v1::ProbeProtocol::Unspecified);
    let stop = v1::StopReason::try_from(t.stop_reason).unwrap_or(v1::StopReason::Unspecified);
    json!({
        "campaign": t.campaign_id,
        "round": t.round,
        "vantage": t.vantage,
        "source": tracemesh::formats::source_of(&t.vantage),
        "dst": t.dst,
        "src": t.src,
        "proto": proto.name(),
        "stop_reason": stop.name(),
        "start": t.start,
        "probes_sent": t.probes_sent,
        "result_id": t.result_id,
        "received_at": secs(t.received_at_ns),
        "hops": t.hops.iter().map(hop).collect::<Vec<_>>(),
    })
}

pub fn campaign(c: &v1::Campaign) -> Value {
    let spec = c.spec.clone().unwrap_or_default();
    let method = spec.method.unwrap_or_default();
    let state = v1::CampaignState::try_from(c.state).unwrap_or(v1::CampaignState::Unspecified);
    let state = match state {
        v1::CampaignState::Scheduled => "scheduled",
        v1::CampaignState::Running => "running",
        v1::CampaignState::Finished => "finished",
        v1::CampaignState::Cancelled => "cancelled",
        v1::CampaignState::Unspecified => "unknown",
    };
    json!({
        "id": c.id,
        "state": state,
        "targets": spec.targets,
        "target_count": c.expanded_targets.len(),
        "agents": spec.agents,
        "proto": v1::ProbeProtocol::try_from(method.proto).unwrap_or(v1::ProbeProtocol::Unspecified).name(),
        "attempts": method.attempts,
        "max_ttl": method.max_ttl,
        "every_s": spec.every_s,
        "rounds": spec.rounds,
        "start_at": secs(c.start_at_ns),
        "created_at": secs(c.created_at_ns),
        "cancelled_at": c.cancelled_at_ns.map(secs),
        "pushed_to": c.pushed_to,
        "traces_stored": c.traces_stored,
        // An alias campaign: its method and IP-ID rounds (0 = the agents' default).
        "alias": spec.alias.map(|a| json!({
            "method": v1::AliasMethod::try_from(a.method).unwrap_or(v1::AliasMethod::Both).name(),
            "rounds": a.rounds,
        })),
        // Multipath rounds (`--mda`): every Nth round, confidence, budget (0 = default).
        "mda": spec.mda.map(|m| json!({
            "every": m.every.max(1),
            "confidence": if m.confidence == 0 { 95 } else { m.confidence },
            "budget": m.budget,
        })),
    })
}

pub fn agent(a: &v1::AgentInfo) -> Value {
    let m = a.metadata.clone().unwrap_or_default();
    json!({
        "name": m.name,
        "country": m.country,
        "city": m.city,
        "loc": m.lat.zip(m.lon).map(|(a, b)| [a, b]),
        "asn": m.asn,
        "tags": m.tags,
        "connected": a.connected,
        "enrolled_at": secs(a.enrolled_at_ns),
        "last_seen": a.last_seen_ns.map(secs),
        "clock_offset_ms": a.clock_offset_ns.map(|n| n as f64 / 1e6),
        "clock_rtt_ms": a.clock_rtt_ns.map(|n| n as f64 / 1e6),
        "version": a.agent_version,
        "spooled_results": a.spooled_results,
        "mesh_addr": (!a.mesh_addr.is_empty()).then_some(&a.mesh_addr),
    })
}

/// One JSON document on one line of stdout.
pub fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_json_matches_agent_shape() {
        let h = v1::Hop {
            ttl: 2,
            addr: None,
            probes: 3,
            ..Default::default()
        };
        let v = hop(&h);
        assert_eq!(v["addr"], Value::Null);
        assert_eq!(v["rtt_ms"], Value::Null);
        assert!(v.get("quoted_ttl").is_none());
        assert_eq!(v["mpls"], json!([]));
        let h = v1::Hop {
            ttl: 3,
            addr: Some("192.0.2.1".into()),
            rtt_ms: Some(1.5),
            icmp_type: Some(11),
            icmp_code: Some(0),
            reply_ttl: Some(253),
            quoted_ttl: Some(1),
            tcp_flags: Some("SA".into()),
            mpls: vec![v1::MplsLabel {
                label: 24001,
                tc: 0,
                s: true,
                ttl: 1,
            }],
            probes: 1,
        };
        assert_eq!(
            hop(&h),
            json!({"ttl": 3, "addr": "192.0.2.1", "rtt_ms": 1.5, "icmp_type": 11, "icmp_code": 0,
                   "reply_ttl": 253, "quoted_ttl": 1, "tcp_flags": "SA",
                   "mpls": [{"label": 24001, "tc": 0, "s": true, "ttl": 1}], "probes": 1})
        );
    }
}
