use std::net::IpAddr;

use etherparse::{NetHeaders, PacketHeaders, TransportHeader};
use tracemesh_agent::probe::Proto;
use tracemesh_agent::probe::packet::{
    Flow, ProbeSpec, QuotedL4, ReplyBody, build_probe, parse_v4, parse_v6,
};

use super::*;
use crate::scenario::tests::SMALL;

fn world() -> World {
    World::parse(SMALL).unwrap()
}

fn probe(proto: Proto, v6: bool, ttl: u8) -> Vec<u8> {
    let (src, dst): (IpAddr, IpAddr) = if v6 {
        (
            "2001:db8:100:1::100".parse().unwrap(),
            "2001:db8:180::1".parse().unwrap(),
        )
    } else {
        (
            "198.51.100.100".parse().unwrap(),
            "198.51.100.129".parse().unwrap(),
        )
    };
    let mut buf = Vec::new();
    build_probe(
        &ProbeSpec {
            proto,
            src,
            dst,
            ttl,
            flow: Flow::from_cookie(0x1234, proto),
            probe_id: 7,
        },
        &mut buf,
    )
    .unwrap();
    buf
}

/// Parses an emitted reply with the agent's own parser, after checking every checksum
/// with etherparse.
fn parse(p: &[u8]) -> tracemesh_agent::probe::packet::Reply {
    let h = PacketHeaders::from_ip_slice(p).expect("etherparse parses the reply");
    let payload = h.payload.slice().to_vec();
    match (h.net.unwrap(), h.transport.unwrap()) {
        (NetHeaders::Ipv4(ip, _), t) => {
            assert_eq!(ip.header_checksum, ip.calc_header_checksum());
            match t {
                // etherparse's calc_checksum skips what follows the quote of an ICMP
                // error, so verify the RFC 1071 way: the whole message folds to 0xffff.
                TransportHeader::Icmpv4(_) => {
                    assert_eq!(Sum::new().add_bytes(&p[20..]).fold(), 0xffff)
                }
                TransportHeader::Tcp(t) => {
                    assert_eq!(t.checksum, t.calc_checksum_ipv4(&ip, &payload).unwrap())
                }
                other => panic!("{other:?}"),
            }
            parse_v4(p).unwrap()
        }
        (NetHeaders::Ipv6(ip, _), t) => {
            match t {
                TransportHeader::Icmpv6(_) => {
                    let sum = pseudo_v6(
                        ip.source.into(),
                        ip.destination.into(),
                        58,
                        (p.len() - 40) as u32,
                    );
                    assert_eq!(sum.add_bytes(&p[40..]).fold(), 0xffff)
                }
                TransportHeader::Tcp(t) => {
                    assert_eq!(t.checksum, t.calc_checksum_ipv6(&ip, &payload).unwrap())
                }
                other => panic!("{other:?}"),
            }
            parse_v6(ip.source.into(), ip.hop_limit, ip.next_header.0, &p[40..]).unwrap()
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn routers_answer_time_exceeded_with_quote_mpls_and_path_delay() {
    let w = world();
    let r = Responder::new(&w);
    let v = w.vantage("v").unwrap();
    for v6 in [false, true] {
        let e = r.handle(v, &probe(Proto::Icmp, v6, 1), 0.0).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].vantage, v);
        assert!((e[0].delay_ms - 0.4).abs() < 1e-9);
        let reply = parse(&e[0].packet);
        let want: IpAddr = if v6 {
            "2001:db8:100::1"
        } else {
            "198.51.100.1"
        }
        .parse()
        .unwrap();
        assert_eq!(reply.from, want);
        let ReplyBody::IcmpError {
            quoted,
            mpls,
            icmp_type,
            ..
        } = reply.body
        else {
            panic!()
        };
        assert_eq!(icmp_type, if v6 { 3 } else { 11 });
        assert_eq!(quoted.ttl, 1);
        assert!(matches!(
            quoted.l4,
            QuotedL4::Icmp {
                seq: 7,
                id: 0x1234,
                ..
            }
        ));
        assert!(mpls.is_empty());

        // Router b carries MPLS labels: an RFC 4884 extension the agent decodes.
        let e = r.handle(v, &probe(Proto::Udp, v6, 2), 0.0).unwrap();
        assert!((e[0].delay_ms - 2.4).abs() < 1e-9);
        let ReplyBody::IcmpError { quoted, mpls, .. } = parse(&e[0].packet).body else {
            panic!()
        };
        assert!(matches!(quoted.l4, QuotedL4::Udp { checksum: 7, .. }));
        let labels: Vec<(u32, bool)> = mpls.iter().map(|l| (l.label, l.s)).collect();
        assert_eq!(labels, [(24001, false), (16, true)]);
    }
}

#[test]
fn silent_routers_drop_and_destinations_answer_per_protocol() {
    let w = world();
    let r = Responder::new(&w);
    let v = w.vantage("v").unwrap();
    assert_eq!(
        r.handle(v, &probe(Proto::Icmp, false, 3), 0.0),
        Err(Dropped::Silent)
    );
    let e = r.handle(v, &probe(Proto::Icmp, false, 4), 0.0).unwrap();
    assert!((e[0].delay_ms - 4.8).abs() < 1e-9);
    let reply = parse(&e[0].packet);
    assert_eq!(reply.from.to_string(), "198.51.100.129");
    assert!(matches!(
        reply.body,
        ReplyBody::EchoReply {
            id: 0x1234,
            seq: 7,
            ..
        }
    ));

    let e = r.handle(v, &probe(Proto::Udp, false, 9), 0.0).unwrap();
    assert!(matches!(
        parse(&e[0].packet).body,
        ReplyBody::IcmpError {
            icmp_type: 3,
            icmp_code: 3,
            ..
        }
    ));
    let e = r.handle(v, &probe(Proto::Udp, true, 9), 0.0).unwrap();
    assert!(matches!(
        parse(&e[0].packet).body,
        ReplyBody::IcmpError {
            icmp_type: 1,
            icmp_code: 4,
            ..
        }
    ));
    for v6 in [false, true] {
        let e = r.handle(v, &probe(Proto::Tcp, v6, 9), 0.0).unwrap();
        let ReplyBody::Tcp { flags, ack, .. } = parse(&e[0].packet).body else {
            panic!()
        };
        assert_eq!(flags, 0x12, "port 80 is open: SYN-ACK");
        assert_eq!(ack, (0x1234u32 << 16 | 7) + 1);
    }
}

#[test]
fn a_diversion_changes_the_path_at_its_time() {
    let w = world();
    let r = Responder::new(&w);
    let v = w.vantage("v").unwrap();
    let at = |t: f64| parse(&r.handle(v, &probe(Proto::Icmp, false, 2), t).unwrap()[0].packet).from;
    assert_eq!(at(11.9).to_string(), "198.51.100.2");
    assert_eq!(at(12.0).to_string(), "203.0.113.1");
    assert_eq!(at(22.0).to_string(), "198.51.100.2");
}

#[test]
fn packets_for_another_vantage_are_forwarded_with_the_path_delay() {
    let w = world();
    let r = Responder::new(&w);
    let (v, other) = (w.vantage("v").unwrap(), w.vantage("w").unwrap());
    let mut buf = Vec::new();
    build_probe(
        &ProbeSpec {
            proto: Proto::Udp,
            src: "198.51.100.100".parse().unwrap(),
            dst: "198.51.100.101".parse().unwrap(),
            ttl: 64,
            flow: Flow::from_cookie(1, Proto::Udp),
            probe_id: 1,
        },
        &mut buf,
    )
    .unwrap();
    let e = r.handle(v, &buf, 0.0).unwrap();
    assert_eq!(e[0].vantage, other);
    // a-b-c: 0.2 access + 2 ms of links + 0.2 access at the far end.
    assert!((e[0].delay_ms - 2.4).abs() < 1e-9, "{}", e[0].delay_ms);
    assert_eq!(e[0].packet[8], 61, "TTL decremented by the three routers");
    let h = PacketHeaders::from_ip_slice(&e[0].packet).unwrap();
    let NetHeaders::Ipv4(ip, _) = h.net.unwrap() else {
        panic!()
    };
    assert_eq!(ip.header_checksum, ip.calc_header_checksum());
}

#[test]
fn junk_is_dropped_not_answered() {
    let w = world();
    let r = Responder::new(&w);
    assert_eq!(r.handle(0, &[], 0.0), Err(Dropped::Malformed));
    assert_eq!(r.handle(0, &[0x45, 0, 0], 0.0), Err(Dropped::Malformed));
    let mut p = probe(Proto::Icmp, false, 9);
    p[16..20].copy_from_slice(&[8, 8, 8, 8]);
    assert_eq!(r.handle(0, &p, 0.0), Err(Dropped::NoRoute));
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), t in 0.0f64..40.0) {
            let w = world();
            let r = Responder::new(&w);
            let _ = r.handle(0, &bytes, t);
        }

        #[test]
        fn never_panics_on_mutated_probes(
            flips in proptest::collection::vec((0usize..60, any::<u8>()), 1..6),
            proto in prop_oneof![Just(Proto::Icmp), Just(Proto::Udp), Just(Proto::Tcp)],
            v6 in any::<bool>(),
        ) {
            let w = world();
            let r = Responder::new(&w);
            let mut p = probe(proto, v6, 2);
            for (at, b) in flips {
                let at = at % p.len();
                p[at] = b;
            }
            let _ = r.handle(0, &p, 1.0);
        }
    }
}
