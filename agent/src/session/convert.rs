//! Between the probe engine's results and the wire's `tracemesh.v1` messages.

use tracemesh_proto::v1 as pb;

use super::schedule::HeldCampaign;
use crate::probe::{Proto, StopReason, TraceResult};

pub fn proto_to_pb(p: Proto) -> pb::ProbeProtocol {
    match p {
        Proto::Icmp => pb::ProbeProtocol::Icmp,
        Proto::Udp => pb::ProbeProtocol::Udp,
        Proto::Tcp => pb::ProbeProtocol::Tcp,
    }
}

fn stop_to_pb(s: StopReason) -> pb::StopReason {
    match s {
        StopReason::Completed => pb::StopReason::Completed,
        StopReason::Unreachable => pb::StopReason::Unreachable,
        StopReason::GapLimit => pb::StopReason::GapLimit,
        StopReason::Loop => pb::StopReason::Loop,
        StopReason::MaxTtl => pb::StopReason::MaxTtl,
        StopReason::Denied => pb::StopReason::Denied,
    }
}

/// Checks an instruction and turns it into a schedule the agent holds.
pub fn held_from_instruction(c: &pb::CampaignInstruction) -> Result<HeldCampaign, String> {
    if c.id.is_empty() {
        return Err("campaign without an id".into());
    }
    let method = c.method.unwrap_or_default();
    let proto = match pb::ProbeProtocol::try_from(method.proto) {
        Ok(pb::ProbeProtocol::Icmp | pb::ProbeProtocol::Unspecified) => Proto::Icmp,
        Ok(pb::ProbeProtocol::Udp) => Proto::Udp,
        Ok(pb::ProbeProtocol::Tcp) => Proto::Tcp,
        Err(_) => return Err(format!("unknown probe protocol {}", method.proto)),
    };
    let clamp_u8 = |v: u32, default: u8, lo: u8, hi: u8| -> u8 {
        if v == 0 {
            default
        } else {
            u8::try_from(v).unwrap_or(hi).clamp(lo, hi)
        }
    };
    Ok(HeldCampaign {
        id: c.id.clone(),
        targets: c.targets.clone(),
        proto,
        attempts: clamp_u8(method.attempts, 2, 1, 10),
        max_ttl: clamp_u8(method.max_ttl, 30, 1, 255),
        wait_ms: if method.wait_ms == 0 {
            1000
        } else {
            method.wait_ms.min(60_000)
        },
        every_s: c.every_s,
        rounds: c.rounds,
        start_at_ns: c.start_at_ns,
        next_round: 0,
    })
}

pub fn record_from_result(campaign_id: &str, round: u32, r: &TraceResult) -> pb::TraceRecord {
    let dst = r.dst.to_string();
    pb::TraceRecord {
        result_id: tracemesh_proto::result_id(campaign_id, round, &dst),
        campaign_id: campaign_id.to_string(),
        round,
        vantage: String::new(),
        dst,
        src: r.src.map(|s| s.to_string()),
        proto: proto_to_pb(r.proto) as i32,
        stop_reason: stop_to_pb(r.stop_reason) as i32,
        start: r.start,
        probes_sent: r.probes_sent,
        hops: r
            .hops
            .iter()
            .map(|h| pb::Hop {
                ttl: u32::from(h.ttl),
                addr: h.addr.map(|a| a.to_string()),
                rtt_ms: h.rtt_ms,
                icmp_type: h.icmp_type.map(u32::from),
                icmp_code: h.icmp_code.map(u32::from),
                reply_ttl: h.reply_ttl.map(u32::from),
                quoted_ttl: h.quoted_ttl.map(u32::from),
                tcp_flags: h.tcp_flags.clone(),
                mpls: h
                    .mpls
                    .iter()
                    .map(|l| pb::MplsLabel {
                        label: l.label,
                        tc: u32::from(l.tc),
                        s: l.s,
                        ttl: u32::from(l.ttl),
                    })
                    .collect(),
                probes: u32::from(h.probes),
            })
            .collect(),
        received_at_ns: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{Hop, MplsLabel};

    #[test]
    fn a_result_keeps_every_field_on_the_wire() {
        let r = TraceResult {
            dst: "192.0.2.9".parse().unwrap(),
            src: Some("192.0.2.1".parse().unwrap()),
            proto: Proto::Tcp,
            stop_reason: StopReason::Completed,
            start: 1_800_000_000.25,
            probes_sent: 3,
            hops: vec![
                Hop {
                    ttl: 1,
                    addr: None,
                    rtt_ms: None,
                    icmp_type: None,
                    icmp_code: None,
                    reply_ttl: None,
                    quoted_ttl: None,
                    tcp_flags: None,
                    mpls: vec![],
                    probes: 2,
                },
                Hop {
                    ttl: 2,
                    addr: Some("192.0.2.9".parse().unwrap()),
                    rtt_ms: Some(1.5),
                    icmp_type: None,
                    icmp_code: None,
                    reply_ttl: Some(62),
                    quoted_ttl: None,
                    tcp_flags: Some("SA".into()),
                    mpls: vec![MplsLabel {
                        label: 16000,
                        tc: 1,
                        s: true,
                        ttl: 1,
                    }],
                    probes: 1,
                },
            ],
        };
        let rec = record_from_result("c9", 4, &r);
        assert_eq!(rec.result_id, "c9/4/192.0.2.9");
        assert_eq!(rec.proto, pb::ProbeProtocol::Tcp as i32);
        assert_eq!(rec.hops[0].addr, None);
        assert_eq!(rec.hops[1].tcp_flags.as_deref(), Some("SA"));
        assert_eq!(rec.hops[1].mpls[0].label, 16000);
        assert_eq!(rec.start, 1_800_000_000.25);
    }

    #[test]
    fn instructions_are_checked_and_defaulted() {
        let mut c = pb::CampaignInstruction {
            id: "c1".into(),
            targets: vec!["192.0.2.1".into()],
            method: Some(pb::ProbeMethod {
                proto: pb::ProbeProtocol::Udp as i32,
                attempts: 0,
                max_ttl: 999,
                wait_ms: 0,
                flow_id: 0,
            }),
            every_s: 10,
            rounds: 3,
            start_at_ns: 7,
        };
        let h = held_from_instruction(&c).unwrap();
        assert_eq!(
            (h.proto, h.attempts, h.max_ttl, h.wait_ms),
            (Proto::Udp, 2, 255, 1000)
        );
        c.method.as_mut().unwrap().proto = 42;
        assert!(
            held_from_instruction(&c)
                .unwrap_err()
                .contains("unknown probe protocol")
        );
        c.id.clear();
        assert!(held_from_instruction(&c).is_err());
    }
}
