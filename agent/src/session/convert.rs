//! Between the probe engine's results and the wire's `tracemesh.v1` messages.

use tracemesh_proto::v1 as pb;

use super::schedule::{HeldAlias, HeldCampaign};
use super::schedule::{HeldMda, HeldMesh, HeldPeer};
use crate::probe::alias::{AliasReport, Evidence, Method, UnusableReason};
use crate::probe::mda::{MdaResult, MdaStop};
use crate::probe::{Proto, StopReason, TraceResult};

/// IP-ID rounds when the instruction leaves it to the agent (as `tracemesh-agent alias`).
const DEFAULT_ALIAS_ROUNDS: u32 = 8;

pub fn alias_method_to_pb(m: Method) -> pb::AliasMethod {
    match m {
        Method::Mercator => pb::AliasMethod::Mercator,
        Method::IpId => pb::AliasMethod::Ipid,
        Method::Both => pb::AliasMethod::Both,
    }
}

fn unusable_name(r: UnusableReason) -> &'static str {
    match r {
        UnusableReason::Ipv6 => "ipv6",
        UnusableReason::TooFewReplies => "too_few_replies",
        UnusableReason::Zero => "zero",
        UnusableReason::Constant => "constant",
        UnusableReason::EchoesProbe => "echoes_probe",
        UnusableReason::NotMonotonic => "not_monotonic",
    }
}

fn alias_from_instruction(a: &pb::AliasSpec) -> Result<HeldAlias, String> {
    let method = match pb::AliasMethod::try_from(a.method) {
        Ok(pb::AliasMethod::Both | pb::AliasMethod::Unspecified) => Method::Both,
        Ok(pb::AliasMethod::Mercator) => Method::Mercator,
        Ok(pb::AliasMethod::Ipid) => Method::IpId,
        Err(_) => return Err(format!("unknown alias method {}", a.method)),
    };
    let rounds = if a.rounds == 0 {
        DEFAULT_ALIAS_ROUNDS
    } else {
        a.rounds.min(1000)
    };
    Ok(HeldAlias { method, rounds })
}

/// One run of alias resolution as the agent uploads it: every probed address with its
/// samples and Mercator answer, and the groups the agent inferred with their evidence.
pub fn alias_result_from_report(
    campaign_id: &str,
    round: u32,
    method: Method,
    start: f64,
    r: &AliasReport,
) -> pb::AliasResult {
    let unusable: std::collections::BTreeMap<_, _> =
        r.unusable.iter().map(|u| (u.addr, u.reason)).collect();
    let addrs = r
        .probes_per_addr
        .iter()
        .map(|(addr, &probes)| pb::AliasAddr {
            addr: addr.to_string(),
            probes,
            samples: r
                .samples
                .get(addr)
                .map(|v| {
                    v.iter()
                        .map(|s| pb::IpIdSample {
                            tx_us: u64::try_from(s.tx.as_micros()).unwrap_or(u64::MAX),
                            rx_us: u64::try_from(s.rx.as_micros()).unwrap_or(u64::MAX),
                            ip_id: u32::from(s.ip_id),
                            probe_ip_id: u32::from(s.probe_ip_id),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            mercator_probed: r.mercator.contains_key(addr),
            mercator_from: r
                .mercator
                .get(addr)
                .copied()
                .flatten()
                .map(|a| a.to_string()),
            unusable: unusable.get(addr).map(|&u| unusable_name(u).to_string()),
        })
        .collect();
    let groups = r
        .groups
        .iter()
        .map(|g| {
            let evidence = match &g.evidence {
                Evidence::Mercator { answers } => pb::AliasEvidence {
                    answers: answers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                },
                Evidence::IpId {
                    samples,
                    velocity_per_s,
                    pairs_passed,
                } => pb::AliasEvidence {
                    samples: samples
                        .iter()
                        .map(|(k, &v)| (k.to_string(), u32::try_from(v).unwrap_or(u32::MAX)))
                        .collect(),
                    velocity_per_s: velocity_per_s
                        .iter()
                        .map(|(k, &v)| (k.to_string(), v))
                        .collect(),
                    pairs_passed: u32::try_from(*pairs_passed).unwrap_or(u32::MAX),
                    ..Default::default()
                },
            };
            pb::AliasGroup {
                addrs: g.addrs.iter().map(ToString::to_string).collect(),
                method: alias_method_to_pb(g.method) as i32,
                evidence: Some(evidence),
            }
        })
        .collect();
    pb::AliasResult {
        result_id: tracemesh_proto::alias_result_id(campaign_id, round),
        campaign_id: campaign_id.to_string(),
        round,
        vantage: String::new(),
        method: alias_method_to_pb(method) as i32,
        start,
        probes_sent: r.probes_sent,
        addrs,
        groups,
        received_at_ns: 0,
    }
}

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
    let alias = c.alias.as_ref().map(alias_from_instruction).transpose()?;
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
        // An alias campaign traces nothing, so it has no multipath rounds either.
        mda: if alias.is_some() {
            None
        } else {
            mda_from_instruction(c)?
        },
        alias,
        mesh: mesh_from_instruction(c)?,
    })
}

/// MDA budget per destination when the campaign leaves it to the agent (as `trace --mda`).
const DEFAULT_MDA_BUDGET: u32 = 5000;

fn mda_from_instruction(c: &pb::CampaignInstruction) -> Result<Option<HeldMda>, String> {
    let Some(m) = c.mda.as_ref() else {
        return Ok(None);
    };
    let confidence = match m.confidence {
        0 | 95 => 95,
        99 => 99,
        n => return Err(format!("MDA confidence {n}: expected 95 or 99")),
    };
    Ok(Some(HeldMda {
        every: m.every.max(1),
        confidence,
        budget: if m.budget == 0 {
            DEFAULT_MDA_BUDGET
        } else {
            // The engine numbers probes with 16 bits.
            m.budget.min(65_534)
        },
    }))
}

fn mda_stop_name(s: MdaStop) -> &'static str {
    match s {
        MdaStop::Completed => "completed",
        MdaStop::Unreachable => "unreachable",
        MdaStop::GapLimit => "gap_limit",
        MdaStop::MaxTtl => "max_ttl",
        MdaStop::Budget => "budget",
        MdaStop::Denied => "denied",
    }
}

/// A multipath trace as the agent uploads it (the fields of `trace --mda`'s JSON line).
pub fn mda_record_from_result(campaign_id: &str, round: u32, r: &MdaResult) -> pb::MdaResult {
    let dst = r.dst.to_string();
    pb::MdaResult {
        result_id: tracemesh_proto::mda_result_id(campaign_id, round, &dst),
        campaign_id: campaign_id.to_string(),
        round,
        vantage: String::new(),
        dst,
        src: r.src.map(|s| s.to_string()).unwrap_or_default(),
        proto: proto_to_pb(r.proto) as i32,
        confidence: u32::from(r.confidence),
        stop_reason: mda_stop_name(r.stop_reason).to_string(),
        start: r.start,
        probes_sent: r.probes_sent,
        flows: r.flows,
        meshed: r.meshed,
        hops: r
            .hops
            .iter()
            .map(|h| pb::MdaHop {
                ttl: u32::from(h.ttl),
                interfaces: h
                    .interfaces
                    .iter()
                    .map(|i| pb::MdaInterface {
                        addr: i.addr.to_string(),
                        flows: i.flows,
                        rtt_ms: i.rtt_ms,
                        icmp_type: i.icmp_type.map(u32::from),
                        icmp_code: i.icmp_code.map(u32::from),
                        reply_ttl: u32::from(i.reply_ttl),
                    })
                    .collect(),
                stars: h.stars,
                probes: h.probes,
            })
            .collect(),
        links: r
            .links
            .iter()
            .map(|l| pb::MdaLink {
                ttl: u32::from(l.ttl),
                from: l.from.to_string(),
                to: l.to.to_string(),
            })
            .collect(),
        received_at_ns: 0,
    }
}

fn mesh_from_instruction(c: &pb::CampaignInstruction) -> Result<Option<HeldMesh>, String> {
    let Some(spec) = c.mesh.as_ref() else {
        return Ok(None);
    };
    let mut peers = Vec::with_capacity(c.mesh_peers.len());
    for p in &c.mesh_peers {
        let ip: std::net::IpAddr = p
            .addr
            .parse()
            .map_err(|_| format!("mesh peer {} has no IP address ({:?})", p.name, p.addr))?;
        let port = u16::try_from(p.port)
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("mesh peer {} has no port", p.name))?;
        peers.push(HeldPeer {
            name: p.name.clone(),
            addr: std::net::SocketAddr::new(ip, port),
        });
    }
    let d = crate::mesh::TrainSpec::default();
    Ok(Some(HeldMesh {
        peers,
        train: if spec.train == 0 {
            d.count
        } else {
            u16::try_from(spec.train).unwrap_or(u16::MAX).clamp(2, 1000)
        },
        spacing_ms: if spec.spacing_ms == 0 {
            d.spacing.as_millis() as u32
        } else {
            spec.spacing_ms.min(1000)
        },
    }))
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
    fn an_alias_report_keeps_samples_answers_and_groups() {
        use crate::probe::alias::{AliasGroup, IpIdSample, Unusable};
        use std::collections::BTreeMap;
        use std::net::IpAddr;
        use std::time::Duration;
        let a: IpAddr = "10.0.0.2".parse().unwrap();
        let b: IpAddr = "10.9.0.2".parse().unwrap();
        let c: IpAddr = "10.5.0.1".parse().unwrap();
        let sample = |ms: u64, id: u16| IpIdSample {
            tx: Duration::from_millis(ms),
            rx: Duration::from_millis(ms + 2),
            ip_id: id,
            probe_ip_id: 7,
        };
        let report = AliasReport {
            groups: vec![AliasGroup {
                addrs: vec![a, b],
                method: Method::Mercator,
                evidence: Evidence::Mercator {
                    answers: BTreeMap::from([(b, a)]),
                },
            }],
            probes_sent: 9,
            probes_per_addr: BTreeMap::from([(a, 4), (b, 4), (c, 1)]),
            unusable: vec![Unusable {
                addr: c,
                reason: UnusableReason::Zero,
            }],
            samples: BTreeMap::from([(a, vec![sample(0, 100), sample(100, 104)])]),
            mercator: BTreeMap::from([(a, Some(a)), (b, Some(a)), (c, None)]),
        };
        let r = alias_result_from_report("c7", 0, Method::Both, 1.5e9, &report);
        assert_eq!(r.result_id, "c7/0/alias");
        assert_eq!(r.method, pb::AliasMethod::Both as i32);
        assert_eq!(r.probes_sent, 9);
        let by: BTreeMap<_, _> = r.addrs.iter().map(|x| (x.addr.as_str(), x)).collect();
        assert_eq!(by["10.9.0.2"].mercator_from.as_deref(), Some("10.0.0.2"));
        assert_eq!(by["10.5.0.1"].mercator_from, None);
        assert!(by["10.5.0.1"].mercator_probed);
        assert_eq!(by["10.5.0.1"].unusable.as_deref(), Some("zero"));
        assert_eq!(by["10.0.0.2"].samples[1].tx_us, 100_000);
        assert_eq!(by["10.0.0.2"].samples[1].ip_id, 104);
        assert_eq!(r.groups[0].addrs, ["10.0.0.2", "10.9.0.2"]);
        let ev = r.groups[0].evidence.as_ref().unwrap();
        assert_eq!(ev.answers["10.9.0.2"], "10.0.0.2");
    }

    #[test]
    fn mda_instructions_are_checked_and_defaulted() {
        let mut c = pb::CampaignInstruction {
            id: "c1".into(),
            targets: vec!["192.0.2.1".into()],
            rounds: 4,
            mda: Some(pb::MdaSpec {
                every: 0,
                confidence: 0,
                budget: 0,
            }),
            ..Default::default()
        };
        let h = held_from_instruction(&c).unwrap();
        assert_eq!(
            h.mda,
            Some(HeldMda {
                every: 1,
                confidence: 95,
                budget: DEFAULT_MDA_BUDGET
            })
        );
        c.mda = Some(pb::MdaSpec {
            every: 3,
            confidence: 99,
            budget: 1_000_000,
        });
        let h = held_from_instruction(&c).unwrap();
        assert_eq!((h.mda.unwrap().every, h.mda.unwrap().budget), (3, 65_534));
        c.mda.as_mut().unwrap().confidence = 90;
        assert!(held_from_instruction(&c).unwrap_err().contains("95 or 99"));
        c.mda.as_mut().unwrap().confidence = 95;
        c.alias = Some(pb::AliasSpec::default());
        assert_eq!(held_from_instruction(&c).unwrap().mda, None);
    }

    #[test]
    fn an_mda_result_keeps_its_diamond_on_the_wire() {
        use crate::probe::mda::{MdaHop, MdaInterface, MdaLink};
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let iface = |a: &str| MdaInterface {
            addr: ip(a),
            flows: 3,
            rtt_ms: 1.25,
            icmp_type: Some(11),
            icmp_code: Some(0),
            reply_ttl: 63,
        };
        let r = MdaResult {
            kind: "mda".into(),
            dst: ip("192.0.2.9"),
            src: Some(ip("192.0.2.1")),
            proto: Proto::Icmp,
            confidence: 99,
            stop_reason: MdaStop::Completed,
            start: 1_800_000_000.5,
            probes_sent: 40,
            flows: 16,
            meshed: false,
            hops: vec![
                MdaHop {
                    ttl: 1,
                    interfaces: vec![iface("10.0.0.1")],
                    stars: 0,
                    probes: 8,
                },
                MdaHop {
                    ttl: 2,
                    interfaces: vec![iface("10.0.1.1"), iface("10.0.2.1")],
                    stars: 1,
                    probes: 16,
                },
            ],
            links: vec![
                MdaLink {
                    ttl: 1,
                    from: ip("10.0.0.1"),
                    to: ip("10.0.1.1"),
                },
                MdaLink {
                    ttl: 1,
                    from: ip("10.0.0.1"),
                    to: ip("10.0.2.1"),
                },
            ],
        };
        let rec = mda_record_from_result("c9", 3, &r);
        assert_eq!(rec.result_id, "c9/3/mda/192.0.2.9");
        assert_eq!(rec.proto, pb::ProbeProtocol::Icmp as i32);
        assert_eq!(
            (rec.confidence, rec.stop_reason.as_str()),
            (99, "completed")
        );
        assert_eq!(rec.hops[1].interfaces[1].addr, "10.0.2.1");
        assert_eq!(rec.hops[1].interfaces[1].icmp_type, Some(11));
        assert_eq!((rec.hops[1].stars, rec.hops[1].probes), (1, 16));
        assert_eq!(rec.links[1].to, "10.0.2.1");
        assert_eq!((rec.probes_sent, rec.flows), (40, 16));
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
            alias: None,
            mesh_peers: vec![],
            mesh: None,
            mda: None,
        };
        let h = held_from_instruction(&c).unwrap();
        assert_eq!(
            (h.proto, h.attempts, h.max_ttl, h.wait_ms),
            (Proto::Udp, 2, 255, 1000)
        );
        assert_eq!(h.alias, None);
        c.alias = Some(pb::AliasSpec {
            method: pb::AliasMethod::Ipid as i32,
            rounds: 0,
        });
        let h = held_from_instruction(&c).unwrap();
        assert_eq!(
            h.alias,
            Some(HeldAlias {
                method: Method::IpId,
                rounds: 8
            })
        );
        c.alias = Some(pb::AliasSpec {
            method: 9,
            rounds: 0,
        });
        assert!(held_from_instruction(&c).is_err());
        c.alias = None;
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
