use super::*;
use etherparse::{NetHeaders, PacketHeaders, TransportHeader};

const SRC4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const DST4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

fn src6() -> Ipv6Addr {
    "2001:db8::1".parse().unwrap()
}
fn dst6() -> Ipv6Addr {
    "2001:db8:1::7".parse().unwrap()
}

fn spec(proto: Proto, v6: bool, ttl: u8, probe_id: u16) -> ProbeSpec {
    let (src, dst) = if v6 {
        (IpAddr::V6(src6()), IpAddr::V6(dst6()))
    } else {
        (IpAddr::V4(SRC4), IpAddr::V4(DST4))
    };
    ProbeSpec {
        proto,
        src,
        dst,
        ttl,
        flow: Flow::from_cookie(0xa1b2, proto),
        probe_id,
    }
}

fn build(s: &ProbeSpec) -> Vec<u8> {
    let mut buf = Vec::new();
    build_probe(s, &mut buf).unwrap();
    buf
}

/// Checks every checksum of a built probe with etherparse, an implementation independent
/// of ours, and returns the parsed headers for further checks.
fn verify_with_etherparse(pkt: &[u8]) -> (NetHeaders, TransportHeader, Vec<u8>) {
    let h = PacketHeaders::from_ip_slice(pkt).expect("etherparse parses our probe");
    let net = h.net.clone().expect("ip header");
    let transport = h.transport.clone().expect("transport header");
    let payload = h.payload.slice().to_vec();
    match (&net, &transport) {
        (NetHeaders::Ipv4(ip, _), t) => {
            assert_eq!(ip.header_checksum, ip.calc_header_checksum(), "IPv4 header");
            match t {
                TransportHeader::Udp(u) => {
                    assert_eq!(u.checksum, u.calc_checksum_ipv4(ip, &payload).unwrap())
                }
                TransportHeader::Tcp(t) => {
                    assert_eq!(t.checksum, t.calc_checksum_ipv4(ip, &payload).unwrap())
                }
                TransportHeader::Icmpv4(i) => {
                    assert_eq!(i.checksum, i.icmp_type.calc_checksum(&payload))
                }
                other => panic!("unexpected transport {other:?}"),
            }
        }
        (NetHeaders::Ipv6(ip, _), t) => match t {
            TransportHeader::Udp(u) => {
                assert_eq!(u.checksum, u.calc_checksum_ipv6(ip, &payload).unwrap())
            }
            TransportHeader::Tcp(t) => {
                assert_eq!(t.checksum, t.calc_checksum_ipv6(ip, &payload).unwrap())
            }
            TransportHeader::Icmpv6(i) => assert_eq!(
                i.checksum,
                i.icmp_type
                    .calc_checksum(ip.source, ip.destination, &payload)
                    .unwrap()
            ),
            other => panic!("unexpected transport {other:?}"),
        },
        other => panic!("unexpected net {other:?}"),
    }
    (net, transport, payload)
}

#[test]
fn every_method_and_family_builds_valid_checksums() {
    for proto in [Proto::Icmp, Proto::Udp, Proto::Tcp] {
        for v6 in [false, true] {
            for (ttl, id) in [(1u8, 1u16), (7, 300), (30, 0xfffe)] {
                let pkt = build(&spec(proto, v6, ttl, id));
                let (net, _, _) = verify_with_etherparse(&pkt);
                match net {
                    NetHeaders::Ipv4(ip, _) => {
                        assert!(!v6);
                        assert_eq!(ip.time_to_live, ttl);
                        assert_eq!(usize::from(ip.total_len), pkt.len());
                    }
                    NetHeaders::Ipv6(ip, _) => {
                        assert!(v6);
                        assert_eq!(ip.hop_limit, ttl);
                        assert_eq!(usize::from(ip.payload_length) + 40, pkt.len());
                    }
                    _ => unreachable!(),
                }
            }
        }
    }
}

#[test]
fn paris_invariants_hold_across_probes_of_a_trace() {
    // The bytes ECMP hashes on must not change between probes of one trace.
    for v6 in [false, true] {
        let l4 = if v6 { 40 } else { 20 };
        let a = build(&spec(Proto::Icmp, v6, 1, 1));
        let b = build(&spec(Proto::Icmp, v6, 9, 77));
        assert_eq!(a[l4..l4 + 4], b[l4..l4 + 4], "ICMP type, code, checksum");
        assert_ne!(a[l4 + 6..l4 + 8], b[l4 + 6..l4 + 8], "sequence differs");

        let a = build(&spec(Proto::Udp, v6, 1, 1));
        let b = build(&spec(Proto::Udp, v6, 9, 77));
        assert_eq!(a[l4..l4 + 6], b[l4..l4 + 6], "UDP ports and length");
        assert_eq!(be16(&b, l4 + 6), 77, "UDP checksum carries the probe id");

        let a = build(&spec(Proto::Tcp, v6, 1, 1));
        let b = build(&spec(Proto::Tcp, v6, 9, 77));
        assert_eq!(a[l4..l4 + 4], b[l4..l4 + 4], "TCP ports");
        assert_eq!(be32(&b, l4 + 4), 0xa1b2_004d);
        if v6 {
            assert_eq!(a[..4], b[..4], "version, class and flow label");
        }
    }
}

#[test]
fn build_rejects_bad_input() {
    let mut s = spec(Proto::Icmp, false, 1, 1);
    s.dst = IpAddr::V6(dst6());
    assert!(matches!(
        build_probe(&s, &mut Vec::new()),
        Err(BuildError::FamilyMismatch { .. })
    ));
    for id in [0, 0xffff] {
        let s = spec(Proto::Udp, false, 1, id);
        assert_eq!(
            build_probe(&s, &mut Vec::new()),
            Err(BuildError::ProbeId(id))
        );
    }
}

/// A Time Exceeded for a UDP probe, written out by hand from the RFCs.
const TE_V4_UDP: [u8; 56] = [
    0x45, 0x00, 0x00, 0x38, 0x12, 0x34, 0x00, 0x00, 0x3e, 0x01, 0x00, 0x00, // outer IPv4
    10, 0, 0, 1, // from 10.0.0.1
    10, 0, 0, 2, // to us
    0x0b, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // ICMP time exceeded, code 0
    0x45, 0x00, 0x00, 0x26, 0xab, 0xcd, 0x00, 0x00, 0x01, 0x11, 0x00, 0x00, // quoted IPv4
    10, 0, 0, 2, // quoted src
    198, 51, 100, 5, // quoted dst
    0x80, 0x01, 0x82, 0x9b, 0x00, 0x12, 0x00, 0x07, // quoted UDP: 32769 -> 33435, csum 7
];

#[test]
fn parses_literal_time_exceeded_v4() {
    let r = parse_v4(&TE_V4_UDP).unwrap();
    assert_eq!(r.from, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
    assert_eq!(r.reply_ttl, 62);
    assert_eq!(
        r.body,
        ReplyBody::IcmpError {
            icmp_type: 11,
            icmp_code: 0,
            quoted: Quoted {
                src: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
                dst: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 5)),
                ttl: 1,
                l4: QuotedL4::Udp {
                    sport: 32769,
                    dport: 33435,
                    checksum: 7
                },
            },
            mpls: vec![],
        }
    );
}

/// Builds an ICMPv4 Time Exceeded quoting an echo probe, padded to 128 bytes, followed by
/// an RFC 4950 MPLS extension with the given label entries.
fn te_v4_with_mpls(set_length: bool, labels: &[u32]) -> Vec<u8> {
    let mut p = vec![
        0x45, 0x00, 0x00, 0x00, 0, 0, 0, 0, 0xf9, 0x01, 0, 0, 10, 0, 0, 9, 10, 0, 0, 2,
    ];
    p.extend_from_slice(&[11, 0, 0, 0, 0, if set_length { 32 } else { 0 }, 0, 0]);
    let mut quote = vec![
        0x45, 0, 0, 0x1c, 0, 1, 0, 0, 1, 1, 0, 0, 10, 0, 0, 2, 203, 0, 113, 9,
    ];
    quote.extend_from_slice(&[8, 0, 0x5e, 0x4d, 0xa1, 0xb2, 0x00, 0x03]);
    quote.resize(128, 0);
    p.extend_from_slice(&quote);
    let mut ext = vec![0x20, 0, 0, 0];
    let obj_len = 4 + 4 * labels.len() as u16;
    ext.extend_from_slice(&obj_len.to_be_bytes());
    ext.extend_from_slice(&[1, 1]);
    for l in labels {
        ext.extend_from_slice(&l.to_be_bytes());
    }
    let c = Sum::new().add_bytes(&ext).checksum();
    ext[2..4].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&ext);
    let total = p.len() as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p
}

#[test]
fn parses_rfc4950_mpls_labels_with_and_without_rfc4884_length() {
    // label 16000, tc 0, bottom of stack, ttl 1; and a two-label stack.
    let one = 16000u32 << 12 | 1 << 8 | 1;
    let outer = 24001u32 << 12 | 5 << 9 | 254;
    for set_length in [true, false] {
        let r = parse_v4(&te_v4_with_mpls(set_length, &[one])).unwrap();
        let ReplyBody::IcmpError { quoted, mpls, .. } = r.body else {
            panic!("not an error reply")
        };
        assert_eq!(quoted.dst, IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)));
        assert_eq!(
            quoted.l4,
            QuotedL4::Icmp {
                icmp_type: 8,
                id: 0xa1b2,
                seq: 3,
                checksum: 0x5e4d
            }
        );
        assert_eq!(
            mpls,
            vec![MplsLabel {
                label: 16000,
                tc: 0,
                s: true,
                ttl: 1
            }]
        );
    }
    let r = parse_v4(&te_v4_with_mpls(true, &[outer, one])).unwrap();
    let ReplyBody::IcmpError { mpls, .. } = r.body else {
        panic!()
    };
    assert_eq!(mpls.len(), 2);
    assert_eq!(
        mpls[0],
        MplsLabel {
            label: 24001,
            tc: 5,
            s: false,
            ttl: 254
        }
    );
}

#[test]
fn a_plain_long_quote_is_not_mistaken_for_an_extension() {
    // Length 0 and no valid extension header at offset 128: everything is quote.
    let mut p = te_v4_with_mpls(false, &[1 << 8 | 1]);
    let ext_at = 20 + 8 + 128;
    p[ext_at] = 0x10; // version 1: not an extension
    let ReplyBody::IcmpError { mpls, .. } = parse_v4(&p).unwrap().body else {
        panic!()
    };
    assert!(mpls.is_empty());
}

#[test]
fn parses_literal_time_exceeded_v6() {
    let mut payload = vec![3, 0, 0xde, 0xad, 0, 0, 0, 0];
    payload.extend_from_slice(&[0x60, 0x0a, 0xbc, 0xde, 0x00, 0x14, 58, 1]);
    payload.extend_from_slice(&src6().octets());
    payload.extend_from_slice(&dst6().octets());
    payload.extend_from_slice(&[128, 0, 0xcc, 0xcc, 0x12, 0x34, 0x00, 0x05]);
    let from: Ipv6Addr = "2001:db8:ff::1".parse().unwrap();
    let r = parse_v6(from, 61, IPPROTO_ICMPV6, &payload).unwrap();
    assert_eq!(r.from, IpAddr::V6(from));
    assert_eq!(r.reply_ttl, 61);
    assert_eq!(
        r.body,
        ReplyBody::IcmpError {
            icmp_type: 3,
            icmp_code: 0,
            quoted: Quoted {
                src: IpAddr::V6(src6()),
                dst: IpAddr::V6(dst6()),
                ttl: 1,
                l4: QuotedL4::Icmp {
                    icmp_type: 128,
                    id: 0x1234,
                    seq: 5,
                    checksum: 0xcccc
                },
            },
            mpls: vec![],
        }
    );
}

#[test]
fn parses_echo_reply_and_tcp_rst() {
    let echo_v6 = [129, 0, 0, 0, 0xa1, 0xb2, 0, 9];
    let r = parse_v6(dst6(), 60, IPPROTO_ICMPV6, &echo_v6).unwrap();
    assert_eq!(
        r.body,
        ReplyBody::EchoReply {
            icmp_type: 129,
            id: 0xa1b2,
            seq: 9
        }
    );
    let mut rst = vec![
        0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 198, 51, 100, 7, 192, 0, 2, 1,
    ];
    rst.extend_from_slice(&[0, 80, 0xa1, 0xb2, 0, 0, 0, 0, 0xa1, 0xb2, 0x00, 0x0a]);
    rst.extend_from_slice(&[0x50, 0x14, 0, 0, 0, 0, 0, 0]);
    let r = parse_v4(&rst).unwrap();
    assert_eq!(r.from, IpAddr::V4(DST4));
    assert_eq!(
        r.body,
        ReplyBody::Tcp {
            sport: 80,
            dport: 0xa1b2,
            seq: 0,
            ack: 0xa1b2_000a,
            flags: TCP_RST | TCP_ACK
        }
    );
}

#[test]
fn malformed_packets_give_errors() {
    assert!(matches!(parse_v4(&[]), Err(ParseError::Truncated { .. })));
    let mut v6 = TE_V4_UDP;
    v6[0] = 0x65;
    assert_eq!(
        parse_v4(&v6),
        Err(ParseError::Version {
            expected: 4,
            found: 6
        })
    );
    let mut short_ihl = TE_V4_UDP;
    short_ihl[0] = 0x44;
    assert_eq!(parse_v4(&short_ihl), Err(ParseError::HeaderLength(16)));
    let mut udp = TE_V4_UDP;
    udp[9] = 17;
    assert_eq!(parse_v4(&udp), Err(ParseError::Protocol(17)));
    let mut redirect = TE_V4_UDP;
    redirect[20] = 5;
    assert_eq!(parse_v4(&redirect), Err(ParseError::IcmpType(5)));
    // Neighbour solicitations arrive on the same ICMPv6 socket and must be set aside.
    assert_eq!(
        parse_v6(dst6(), 255, IPPROTO_ICMPV6, &[135, 0, 0, 0, 0, 0, 0, 0]),
        Err(ParseError::IcmpType(135))
    );
}

#[test]
fn every_truncation_is_an_error_or_a_reply_never_a_panic() {
    let mut cases = vec![TE_V4_UDP.to_vec(), te_v4_with_mpls(true, &[1 << 8 | 1])];
    for proto in [Proto::Icmp, Proto::Udp, Proto::Tcp] {
        cases.push(build(&spec(proto, false, 3, 3)));
    }
    for case in cases {
        for n in 0..=case.len() {
            let _ = parse_v4(&case[..n]);
        }
        // A total-length field that claims more than arrived.
        let mut lying = case.clone();
        lying[2] = 0xff;
        lying[3] = 0xff;
        let _ = parse_v4(&lying);
    }
    // Truncated quotes below the 28 bytes every router must send are errors.
    assert!(matches!(
        parse_v4(&TE_V4_UDP[..40]),
        Err(ParseError::Truncated { .. })
    ));
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn parse_v4_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_v4(&bytes);
        }

        #[test]
        fn parse_v4_never_panics_on_mutated_replies(
            flips in proptest::collection::vec((0usize..200, any::<u8>()), 1..8),
            cut in 0usize..250,
        ) {
            let mut p = te_v4_with_mpls(true, &[16000 << 12 | 1 << 8 | 1]);
            for (at, v) in flips {
                let at = at % p.len();
                p[at] = v;
            }
            p.truncate(cut.min(p.len()));
            let _ = parse_v4(&p);
        }

        #[test]
        fn parse_v6_never_panics(
            nh in prop_oneof![Just(IPPROTO_ICMPV6), Just(IPPROTO_TCP), any::<u8>()],
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let _ = parse_v6(dst6(), 64, nh, &bytes);
        }

        #[test]
        fn parse_v4_with_id_never_panics_and_agrees_with_parse_v4(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            match (parse_v4(&bytes), parse_v4_with_id(&bytes)) {
                (Ok(a), Ok((b, id))) => {
                    prop_assert_eq!(a, b);
                    prop_assert_eq!(id, u16::from_be_bytes([bytes[4], bytes[5]]));
                }
                (Err(a), Err(b)) => prop_assert_eq!(a, b),
                (a, b) => prop_assert!(false, "{:?} vs {:?}", a, b),
            }
        }

        #[test]
        fn built_alias_replies_round_trip(
            udp in any::<bool>(),
            ip_id in any::<u16>(),
            id in 1u16..0xffff,
            from in any::<u32>(),
            cut in 0usize..100,
        ) {
            // A router's answer to an alias probe: the parser gives back its source, its
            // identification, and what identifies our probe.
            use super::super::replies::{ReplyKind, reply_v4};
            let proto = if udp { Proto::Udp } else { Proto::Icmp };
            let s = spec(proto, false, 64, id);
            let probe = build(&s);
            let kind = if udp { ReplyKind::PortUnreachable } else { ReplyKind::Echo };
            let from = Ipv4Addr::from(from);
            let pkt = reply_v4(&probe, from, ip_id, kind).unwrap();
            let (r, got) = parse_v4_with_id(&pkt).unwrap();
            prop_assert_eq!(got, ip_id);
            prop_assert_eq!(r.from, IpAddr::V4(from));
            match r.body {
                ReplyBody::EchoReply { id: cookie, seq, .. } => {
                    prop_assert!(!udp);
                    prop_assert_eq!((cookie, seq), (0xa1b2, id));
                }
                ReplyBody::IcmpError { icmp_type: 3, icmp_code: 3, quoted, .. } => {
                    prop_assert!(udp);
                    prop_assert_eq!(quoted.dst, s.dst);
                    prop_assert_eq!(quoted.l4, QuotedL4::Udp {
                        sport: s.flow.sport, dport: s.flow.dport, checksum: id,
                    });
                }
                other => prop_assert!(false, "{:?}", other),
            }
            // Truncated anywhere, it is an error or a reply, never a panic.
            let _ = parse_v4_with_id(&pkt[..cut.min(pkt.len())]);
        }

        #[test]
        fn built_probes_round_trip_through_a_quote(
            proto in prop_oneof![Just(Proto::Icmp), Just(Proto::Udp), Just(Proto::Tcp)],
            v6 in any::<bool>(),
            ttl in 1u8..=255,
            id in 1u16..0xffff,
        ) {
            // What a router quotes is our probe: parsing it back must give our fields.
            let s = spec(proto, v6, ttl, id);
            let probe = build(&s);
            let q = if v6 { parse_quoted_v6(&probe) } else { parse_quoted_v4(&probe) }.unwrap();
            prop_assert_eq!(q.dst, s.dst);
            prop_assert_eq!(q.ttl, ttl);
            match (proto, q.l4) {
                (Proto::Icmp, QuotedL4::Icmp { seq, id: cookie, .. }) => {
                    prop_assert_eq!(seq, id);
                    prop_assert_eq!(cookie, 0xa1b2);
                }
                (Proto::Udp, QuotedL4::Udp { checksum, sport, .. }) => {
                    prop_assert_eq!(checksum, id);
                    prop_assert_eq!(sport, s.flow.sport);
                }
                (Proto::Tcp, QuotedL4::Tcp { seq, .. }) => prop_assert_eq!(seq, tcp_seq(0xa1b2, id)),
                (p, l4) => prop_assert!(false, "{:?} quoted as {:?}", p, l4),
            }
        }
    }
}
