//! Codec properties: what we write reads back to the same hops, and no input bytes,
//! however damaged, make a decoder panic.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use tracemesh_proto::v1;

use super::*;

fn addr() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|b| std::net::Ipv4Addr::from(b).to_string()),
        any::<[u8; 16]>().prop_map(|b| std::net::Ipv6Addr::from(b).to_string()),
    ]
}

fn hop(ttl: u32) -> impl Strategy<Value = v1::Hop> {
    (
        proptest::option::of(addr()),
        0u32..10_000_000,
        proptest::option::of(1u32..256),
        proptest::option::of(0u32..256),
        proptest::collection::vec((0u32..(1 << 20), 0u32..8, any::<bool>(), 0u32..256), 0..3),
        1u32..4,
    )
        .prop_map(move |(addr, rtt_us, reply_ttl, quoted, mpls, probes)| {
            let answered = addr.is_some();
            v1::Hop {
                ttl,
                // Any double, as lab RTTs are (differences of clock readings).
                rtt_ms: answered
                    .then_some(f64::from(rtt_us) / 1000.0 + f64::from(rtt_us % 7) * 1e-9 / 3.0),
                icmp_type: answered.then_some(11),
                icmp_code: answered.then_some(0),
                reply_ttl: reply_ttl.filter(|_| answered),
                quoted_ttl: quoted.filter(|_| answered),
                tcp_flags: None,
                mpls: if answered {
                    mpls.into_iter()
                        .map(|(label, tc, s, ttl)| v1::MplsLabel { label, tc, s, ttl })
                        .collect()
                } else {
                    Vec::new()
                },
                probes,
                addr,
            }
        })
}

fn trace() -> impl Strategy<Value = v1::TraceRecord> {
    (
        addr(),
        proptest::option::of(addr()),
        1u32..30,
        1_000_000_000u32..2_000_000_000,
        0u32..1_000_000,
        0u32..1000,
        "[a-z][a-z0-9-]{0,8}",
        1u32..4,
    )
        .prop_flat_map(|(dst, src, n, sec, usec, round, vantage, proto)| {
            let hops: Vec<_> = (1..=n).map(hop).collect();
            hops.prop_map(move |hops| v1::TraceRecord {
                result_id: String::new(),
                campaign_id: "c7".into(),
                round,
                vantage: vantage.clone(),
                dst: dst.clone(),
                src: src.clone(),
                proto: proto as i32,
                stop_reason: v1::StopReason::GapLimit as i32,
                start: f64::from(sec) + f64::from(usec) / 1e6,
                probes_sent: hops.iter().map(|h| h.probes).sum(),
                hops,
                received_at_ns: 0,
            })
        })
}

/// What survives every format: each answered TTL's address, RTT (µs) and reply TTL.
fn answers(t: &v1::TraceRecord) -> Vec<(u32, String, i64, Option<u32>)> {
    t.hops
        .iter()
        .filter_map(|h| {
            Some((
                h.ttl,
                h.addr.clone()?,
                (h.rtt_ms? * 1000.0).round() as i64,
                h.reply_ttl,
            ))
        })
        .collect()
}

fn only_trace(items: Vec<Item>) -> v1::TraceRecord {
    let traces: Vec<_> = items
        .into_iter()
        .filter_map(|i| match i {
            Item::Trace(t) => Some(*t),
            Item::Malformed { at, why } => panic!("{at}: {why}"),
            Item::Skipped { .. } => None,
        })
        .collect();
    assert_eq!(traces.len(), 1);
    traces.into_iter().next().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn atlas_round_trip(t in trace()) {
        let line = serde_json::to_vec(&atlas::to_value(&t, 7, 42)).unwrap();
        let back = only_trace(atlas::decode(&line));
        prop_assert_eq!(answers(&back), answers(&t));
        // Bit for bit, not just to the microsecond.
        let rtts = |t: &v1::TraceRecord| t.hops.iter().map(|h| h.rtt_ms.map(f64::to_bits)).collect::<Vec<_>>();
        prop_assert_eq!(rtts(&back), rtts(&t));
        prop_assert_eq!(&back.vantage, "atlas:42");
        prop_assert_eq!((&back.campaign_id, back.round), (&t.campaign_id, t.round));
        prop_assert_eq!(back.start.to_bits(), t.start.to_bits());
        for (a, b) in back.hops.iter().zip(&t.hops) {
            prop_assert_eq!(a.ttl, b.ttl);
            prop_assert_eq!(a.probes, b.probes);
            prop_assert_eq!(a.quoted_ttl, b.quoted_ttl);
            prop_assert_eq!(&a.mpls, &b.mpls);
        }
    }

    #[test]
    fn scamper_json_round_trip(t in trace()) {
        let mut doc = serde_json::to_vec(&scamper_json::cycle_start(&t.vantage, 1)).unwrap();
        doc.push(b'\n');
        doc.extend(serde_json::to_vec(&scamper_json::to_value(&t)).unwrap());
        let back = only_trace(scamper_json::decode(&doc));
        prop_assert_eq!(answers(&back), answers(&t));
        prop_assert_eq!(back.vantage, format!("scamper:{}", t.vantage));
        prop_assert_eq!(&back.dst, &t.dst);
        prop_assert_eq!(back.proto, t.proto);
        prop_assert_eq!(back.stop_reason, t.stop_reason);
        let ttls: Vec<u32> = back.hops.iter().map(|h| h.ttl).collect();
        let want: Vec<u32> = t.hops.iter().map(|h| h.ttl).collect();
        prop_assert_eq!(ttls, want);
        for (a, b) in back.hops.iter().zip(&t.hops) {
            prop_assert_eq!((a.icmp_type, a.icmp_code, a.quoted_ttl), (b.icmp_type, b.icmp_code, b.quoted_ttl));
            prop_assert_eq!(&a.mpls, &b.mpls);
        }
    }

    #[test]
    fn warts_round_trip(ts in proptest::collection::vec(trace(), 1..4)) {
        let mut w = warts::Writer::new(Vec::new()).unwrap();
        for t in &ts {
            w.write(t).unwrap();
        }
        let bytes = w.finish().unwrap();
        let back: Vec<v1::TraceRecord> = warts::decode(&bytes)
            .into_iter()
            .filter_map(|i| match i {
                Item::Trace(t) => Some(*t),
                Item::Malformed { at, why } => panic!("{at}: {why}"),
                Item::Skipped { .. } => None,
            })
            .collect();
        prop_assert_eq!(back.len(), ts.len());
        for (b, t) in back.iter().zip(&ts) {
            prop_assert_eq!(answers(b), answers(t));
            prop_assert_eq!(&b.vantage, &format!("scamper:{}", t.vantage));
            prop_assert_eq!(&b.dst, &t.dst);
            prop_assert_eq!(&b.src, &t.src);
            prop_assert_eq!((b.start * 1e6).round(), (t.start * 1e6).round());
            prop_assert_eq!(b.hops.len(), t.hops.len());
        }
    }

    #[test]
    fn damaged_warts_never_panics(t in trace(), cuts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8), trunc in any::<prop::sample::Index>()) {
        let mut w = warts::Writer::new(Vec::new()).unwrap();
        w.write(&t).unwrap();
        let mut bytes = w.finish().unwrap();
        for (i, b) in cuts {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        bytes.truncate(trunc.index(bytes.len() + 1));
        let _ = warts::decode(&bytes);
    }

    #[test]
    fn damaged_json_never_panics(t in trace(), cuts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8)) {
        for mut bytes in [
            serde_json::to_vec(&atlas::to_value(&t, 1, 2)).unwrap(),
            serde_json::to_vec(&scamper_json::to_value(&t)).unwrap(),
        ] {
            for (i, b) in &cuts {
                let i = i.index(bytes.len());
                bytes[i] = *b;
            }
            let _ = atlas::decode(&bytes);
            let _ = scamper_json::decode(&bytes);
            let _ = atlas::probes(&bytes);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = atlas::decode(&bytes);
        let _ = scamper_json::decode(&bytes);
        let _ = warts::decode(&bytes);
        let mut magic = vec![0x12, 0x05, 0x00, 0x06];
        magic.extend(&bytes);
        let _ = warts::decode(&magic);
    }
}

#[test]
fn atlas_positions_name_the_bad_record() {
    let doc = br#"[{"type":"traceroute","msm_id":1,"prb_id":2,"timestamp":3,"dst_addr":"192.0.2.1","result":[]},
 {"type":"traceroute","msm_id":1,"prb_id":"x","timestamp":3,"dst_addr":"192.0.2.1","result":[]}]"#;
    let items = atlas::decode(doc);
    assert!(matches!(items[0], Item::Trace(_)));
    match &items[1] {
        Item::Malformed { at, why } => {
            let second = doc.iter().rposition(|&b| b == b'{').unwrap();
            assert_eq!(*at, Position::Byte(second as u64));
            assert!(why.contains("prb_id"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    let lines = b"{\"type\":\"traceroute\"}\nnot json\n";
    let items = atlas::decode(lines);
    assert!(matches!(
        items[0],
        Item::Malformed {
            at: Position::Line(1),
            ..
        }
    ));
    assert!(matches!(
        items[1],
        Item::Malformed {
            at: Position::Line(2),
            ..
        }
    ));
}

#[test]
fn measurement_dump_results_are_framed_with_offsets() {
    let doc = br#"{"meta_data": {"x": [1, 2]}, "results": [
      {"type":"traceroute","msm_id":1,"prb_id":2,"timestamp":3,"dst_addr":"192.0.2.1","result":[{"hop":1,"result":[{"from":"192.0.2.9","rtt":1.5,"ttl":64}]}]},
      {"type":"traceroute","msm_id":1,"prb_id":3,"timestamp":3,"result":[{"error":"name resolution failed"}]}
    ], "probes": {"results": [{"id": 2, "country_code": "NL", "asn_v4": 3333, "geometry": {"type": "Point", "coordinates": [4.9, 52.4]}}]}}"#;
    let items = atlas::decode(doc);
    assert_eq!(items.len(), 2);
    let Item::Trace(t) = &items[0] else {
        panic!("{:?}", items[0])
    };
    assert_eq!(t.vantage, "atlas:2");
    assert_eq!(t.hops[0].addr.as_deref(), Some("192.0.2.9"));
    assert_eq!(t.hops[0].icmp_type, Some(11));
    assert!(matches!(&items[1], Item::Skipped { why, .. } if why.contains("name resolution")));
    let p = atlas::probes(doc).unwrap();
    assert_eq!(p[0].1.loc, Some((52.4, 4.9)));
    assert_eq!(p[0].1.asn, Some(3333));
    assert_eq!(source_of("atlas:2"), "atlas");
    assert_eq!(source_of("scamper:x"), "scamper");
    assert_eq!(source_of("tokyo"), "agent");
}

#[test]
fn partition_dates_are_utc_calendar_days() {
    assert_eq!(parquet::date_of(0.0), "1970-01-01");
    assert_eq!(parquet::date_of(951_782_400.0), "2000-02-29");
    assert_eq!(parquet::date_of(1_381_825_021.0), "2013-10-15");
    assert_eq!(parquet::date_of(1_796_145_083.9), "2026-12-01");
    assert_eq!(parquet::date_of(-1.0), "1969-12-31");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// A batch holds every trace and hop, and each hop's address where it was.
    #[test]
    fn parquet_batch_keeps_rows_and_hops(ts in proptest::collection::vec(trace(), 0..6)) {
        use arrow_array::Array as _;
        let b = parquet::batch(&ts, &|_| Some(64500)).unwrap();
        prop_assert_eq!(b.num_rows(), ts.len());
        let hops = b.column_by_name("hops").unwrap();
        let hops = hops.as_any().downcast_ref::<arrow_array::ListArray>().unwrap();
        let n: usize = ts.iter().map(|t| t.hops.len()).sum();
        prop_assert_eq!(hops.values().len(), n);
    }
}

#[test]
fn read_items_streams_lines_and_frames_documents() {
    let mut items = Vec::new();
    let lines = b"{\"type\":\"traceroute\"}\n\nnot json\n";
    read_items::<FormatError>("atlas", &lines[..], &mut |i| {
        items.push(i);
        Ok(())
    })
    .unwrap();
    assert!(
        matches!(&items[..], [Item::Malformed { at: Position::Line(1), why }, Item::Malformed { at: Position::Line(3), .. }] if why.contains("prb_id")),
        "{items:?}"
    );
    // A measurement dump on one line, and one over several lines.
    let result = r#"{"type":"traceroute","msm_id":1,"prb_id":2,"timestamp":3,"dst_addr":"192.0.2.1","result":[{"hop":1,"result":[{"from":"192.0.2.1","rtt":1.0}]}]}"#;
    for doc in [
        format!("{{\"results\": [{result}]}}"),
        format!("{{\n \"results\": [\n  {result}\n ]\n}}\n"),
        format!("[\n{result}\n]"),
    ] {
        items.clear();
        read_items::<FormatError>("atlas", doc.as_bytes(), &mut |i| {
            items.push(i);
            Ok(())
        })
        .unwrap();
        assert!(matches!(&items[..], [Item::Trace(_)]), "{doc}: {items:?}");
    }
    let e = read_items::<FormatError>("csv", &b""[..], &mut |_| Ok(())).unwrap_err();
    assert!(e.to_string().contains("unknown format"));
}
