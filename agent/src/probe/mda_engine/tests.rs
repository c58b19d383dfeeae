use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use super::*;
use crate::probe::denylist::DenyList;
use crate::probe::mda::MdaStop;
use crate::probe::packet::{Quoted, TCP_ACK, TCP_RST, parse_quoted_v4, parse_quoted_v6};

/// One router, then two load-balanced ones picked by what the probe's bytes hash to
/// (the UDP/TCP source port, the ICMP checksum), then the destination.
fn answer(probe: &[u8], dst: IpAddr, proto: Proto) -> Option<Reply> {
    let quoted = if dst.is_ipv4() {
        parse_quoted_v4(probe)
    } else {
        parse_quoted_v6(probe)
    }
    .ok()?;
    let v6 = dst.is_ipv6();
    let key = match quoted.l4 {
        QuotedL4::Udp { sport, .. } | QuotedL4::Tcp { sport, .. } => sport,
        QuotedL4::Icmp { checksum, .. } => checksum,
        QuotedL4::Other { .. } => return None,
    };
    let router = |n: u8| -> IpAddr {
        if v6 {
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(n)))
        } else {
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
        }
    };
    let from = match quoted.ttl {
        1 => Some(router(1)),
        2 => Some(router(2 + (key.wrapping_mul(40503) >> 15) as u8 % 2)),
        _ => None,
    };
    if let Some(from) = from {
        return Some(Reply {
            from,
            reply_ttl: 63,
            body: ReplyBody::IcmpError {
                icmp_type: if v6 { 3 } else { 11 },
                icmp_code: 0,
                quoted: Quoted { ttl: 1, ..quoted },
                mpls: vec![],
            },
        });
    }
    let body = match (proto, quoted.l4.clone()) {
        (Proto::Icmp, QuotedL4::Icmp { id, seq, .. }) => ReplyBody::EchoReply {
            icmp_type: if v6 { 129 } else { 0 },
            id,
            seq,
        },
        (Proto::Udp, _) => ReplyBody::IcmpError {
            icmp_type: if v6 { 1 } else { 3 },
            icmp_code: if v6 { 4 } else { 3 },
            quoted,
            mpls: vec![],
        },
        (Proto::Tcp, QuotedL4::Tcp { sport, dport, seq }) => ReplyBody::Tcp {
            sport: dport,
            dport: sport,
            seq: 0,
            ack: seq.wrapping_add(1),
            flags: TCP_RST | TCP_ACK,
        },
        _ => return None,
    };
    Some(Reply {
        from: dst,
        reply_ttl: 60,
        body,
    })
}

fn run(engine: &mut MdaEngine, t0: Instant, lose_first: bool) -> Vec<MdaResult> {
    let mut buf = Vec::new();
    let mut now = t0;
    let mut results = Vec::new();
    let mut n = 0u32;
    for _ in 0..100_000 {
        engine.handle_timeout(now);
        while let Some(dst) = engine.poll_transmit(now, &mut buf) {
            n += 1;
            let proto = match buf[if dst.is_ipv4() { 9 } else { 6 }] {
                1 | 58 => Proto::Icmp,
                17 => Proto::Udp,
                _ => Proto::Tcp,
            };
            if lose_first && n == 1 {
                continue;
            }
            if let Some(r) = answer(&buf, dst, proto) {
                assert!(engine.handle_reply(&r, now + Duration::from_millis(2)));
            }
        }
        while let Some(r) = engine.poll_result() {
            results.push(r);
        }
        if engine.is_idle() {
            return results;
        }
        now = engine
            .poll_timeout(now)
            .unwrap_or(now + Duration::from_millis(1))
            .max(now + Duration::from_micros(100));
    }
    panic!("the engine never went idle");
}

fn cfg(rate: u32) -> EngineConfig {
    EngineConfig {
        rate_pps: rate,
        per_dst_pps: rate,
        window: 16,
        cookie: 0x4242,
        denylist: DenyList::with_allowed(["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()]),
    }
}

#[test]
fn every_method_and_family_finds_both_branches() {
    for proto in [Proto::Udp, Proto::Tcp, Proto::Icmp] {
        for (src, dst) in [
            ("192.0.2.1", "198.51.100.7"),
            ("2001:db8::1", "2001:db8:1::7"),
        ] {
            let t0 = Instant::now();
            let mut e = MdaEngine::new(cfg(100_000), t0, 0.0);
            let params = MdaParams {
                proto,
                wait: Duration::from_millis(50),
                ..MdaParams::default()
            };
            e.add(MdaRequest {
                dst: dst.parse().unwrap(),
                src: src.parse().unwrap(),
                params,
            })
            .unwrap();
            let r = run(&mut e, t0, true);
            assert_eq!(r.len(), 1);
            let r = &r[0];
            assert_eq!(r.stop_reason, MdaStop::Completed, "{proto:?} {dst}");
            let widths: Vec<usize> = r.hops.iter().map(|h| h.interfaces.len()).collect();
            assert_eq!(widths, [1, 2, 1], "{proto:?} {dst}");
            assert_eq!(r.links.len(), 4, "{proto:?} {dst}: {:?}", r.links);
            assert_eq!(e.stats().replies_unmatched, 0);
        }
    }
}

#[test]
fn rtts_count_from_each_probes_send_when_the_driver_reports_it() {
    // Every probe leaves 1.5 ms after it was built (a wait for the queue) and is
    // answered 2 ms after it was built: 0.5 ms from its send.
    let t0 = Instant::now();
    let mut e = MdaEngine::new(cfg(100_000), t0, 0.0);
    e.add(MdaRequest {
        dst: "198.51.100.7".parse().unwrap(),
        src: "192.0.2.1".parse().unwrap(),
        params: MdaParams {
            proto: Proto::Udp,
            wait: Duration::from_millis(50),
            ..MdaParams::default()
        },
    })
    .unwrap();
    let (mut buf, mut now) = (Vec::new(), t0);
    for _ in 0..100_000 {
        e.handle_timeout(now);
        while let Some(dst) = e.poll_transmit(now, &mut buf) {
            e.on_sent(now + Duration::from_micros(1500));
            if let Some(r) = answer(&buf, dst, Proto::Udp) {
                assert!(e.handle_reply(&r, now + Duration::from_millis(2)));
            }
        }
        if e.is_idle() {
            break;
        }
        now = e
            .poll_timeout(now)
            .unwrap_or(now + Duration::from_millis(1))
            .max(now + Duration::from_micros(100));
    }
    let r = e.poll_result().unwrap();
    assert_eq!(r.stop_reason, MdaStop::Completed);
    for h in &r.hops {
        for i in &h.interfaces {
            assert!(
                (i.rtt_ms - 0.5).abs() < 1e-9,
                "hop {} {}: {} ms",
                h.ttl,
                i.addr,
                i.rtt_ms
            );
        }
    }
}

#[test]
fn many_destinations_share_the_rate_cap_and_the_deny_list_holds() {
    let t0 = Instant::now();
    let mut c = cfg(100);
    c.denylist = DenyList::with_allowed(["10.1.0.0/16".parse().unwrap()]);
    let mut e = MdaEngine::new(c, t0, 0.0);
    let src: IpAddr = "10.9.0.1".parse().unwrap();
    assert!(matches!(
        e.add(MdaRequest {
            dst: "127.0.0.1".parse().unwrap(),
            src,
            params: MdaParams::default()
        }),
        Err(RequestError::Denied(_))
    ));
    for i in 1..=3u8 {
        e.add(MdaRequest {
            dst: IpAddr::V4(Ipv4Addr::new(10, 1, 0, i)),
            src,
            params: MdaParams::default(),
        })
        .unwrap();
    }
    let mut buf = Vec::new();
    let mut sent = 0;
    while e.poll_transmit(t0, &mut buf).is_some() {
        sent += 1;
    }
    assert_eq!(sent, 1, "100 pps allows a burst of one at one instant");
    let next = e.poll_timeout(t0).unwrap();
    assert!(next > t0 && next <= t0 + Duration::from_millis(10));
}

#[test]
fn a_reply_quoting_another_flow_than_its_probe_id_is_refused() {
    let t0 = Instant::now();
    let mut e = MdaEngine::new(cfg(100_000), t0, 0.0);
    let dst: IpAddr = "198.51.100.7".parse().unwrap();
    e.add(MdaRequest {
        dst,
        src: "192.0.2.1".parse().unwrap(),
        params: MdaParams::default(),
    })
    .unwrap();
    let mut buf = Vec::new();
    e.poll_transmit(t0, &mut buf).unwrap();
    let mut r = answer(&buf, dst, Proto::Udp).unwrap();
    if let ReplyBody::IcmpError { quoted, .. } = &mut r.body
        && let QuotedL4::Udp { sport, .. } = &mut quoted.l4
    {
        *sport = sport.wrapping_add(1);
    }
    assert!(!e.handle_reply(&r, t0));
}

mod props {
    use super::*;
    use crate::probe::packet::{MDA_MAX_FLOWS, mda_sport, parse_v4};
    use proptest::prelude::*;

    fn proto_of(i: u8) -> Proto {
        [Proto::Udp, Proto::Tcp, Proto::Icmp][usize::from(i % 3)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Every flow id survives the trip into probe bytes and back out of the quote,
        /// in both families, and distinct flows differ in what routers hash.
        #[test]
        fn flow_ids_round_trip_through_the_quoted_probe(
            cookie in any::<u16>(),
            id in 0..MDA_MAX_FLOWS,
            probe_id in 1u16..0xfffe,
            ttl in 1u8..=255,
            p in 0u8..3,
            v6 in any::<bool>(),
        ) {
            let proto = proto_of(p);
            let (src, dst): (IpAddr, IpAddr) = if v6 {
                ("2001:db8::1".parse().unwrap(), "2001:db8:1::7".parse().unwrap())
            } else {
                ("192.0.2.1".parse().unwrap(), "198.51.100.7".parse().unwrap())
            };
            let mut buf = Vec::new();
            let spec = ProbeSpec { proto, src, dst, ttl, flow: Flow::mda(cookie, proto, id), probe_id };
            build_probe(&spec, &mut buf).unwrap();
            let q = if v6 { parse_quoted_v6(&buf) } else { parse_quoted_v4(&buf) }.unwrap();
            let back = match q.l4 {
                QuotedL4::Udp { sport, checksum, .. } => {
                    prop_assert_eq!(checksum, probe_id);
                    mda_flow_of_sport(cookie, sport)
                }
                QuotedL4::Tcp { sport, seq, .. } => {
                    prop_assert_eq!(seq as u16, probe_id);
                    mda_flow_of_sport(cookie, sport)
                }
                QuotedL4::Icmp { checksum, seq, id: icmp_id, .. } => {
                    prop_assert_eq!(seq, probe_id);
                    prop_assert_eq!(icmp_id, cookie);
                    mda_flow_of_icmp_sum(checksum)
                }
                QuotedL4::Other { .. } => None,
            };
            prop_assert_eq!(back, Some(id));
            prop_assert_eq!(mda_sport(cookie, id) & 0x8000, 0x8000);
        }

        /// Whatever arrives on the raw socket, matching never panics and never credits a
        /// reply to a trace it does not quote.
        #[test]
        fn arbitrary_replies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let t0 = Instant::now();
            let mut e = MdaEngine::new(cfg(100_000), t0, 0.0);
            e.add(MdaRequest {
                dst: "198.51.100.7".parse().unwrap(),
                src: "192.0.2.1".parse().unwrap(),
                params: MdaParams::default(),
            }).unwrap();
            let mut buf = Vec::new();
            while e.poll_transmit(t0, &mut buf).is_some() {}
            if let Ok(reply) = parse_v4(&bytes) {
                e.handle_reply(&reply, t0);
            }
            e.handle_timeout(t0 + Duration::from_secs(5));
        }
    }
}
