use super::*;

fn trace(campaign: &str, round: u32, vantage: &str, dst: &str, start: f64) -> v1::TraceRecord {
    v1::TraceRecord {
        result_id: tracemesh_proto::result_id(campaign, round, dst),
        campaign_id: campaign.into(),
        round,
        vantage: vantage.into(),
        dst: dst.into(),
        src: Some("10.0.0.2".into()),
        proto: v1::ProbeProtocol::Icmp as i32,
        stop_reason: v1::StopReason::Completed as i32,
        start,
        probes_sent: 3,
        hops: vec![
            v1::Hop {
                ttl: 1,
                addr: Some("10.0.0.1".into()),
                rtt_ms: Some(0.4),
                icmp_type: Some(11),
                icmp_code: Some(0),
                reply_ttl: Some(64),
                quoted_ttl: Some(1),
                probes: 1,
                ..Default::default()
            },
            v1::Hop {
                ttl: 2,
                probes: 1,
                ..Default::default()
            },
        ],
        received_at_ns: 0,
    }
}

fn meta(name: &str) -> AgentMeta {
    AgentMeta {
        name: name.into(),
        country: "CA".into(),
        city: "Ottawa".into(),
        loc: Some((45.4, -75.7)),
        asn: Some(812),
        tags: vec!["canary".into()],
    }
}

#[test]
fn ingest_is_idempotent_by_key_and_by_result_id() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path()).unwrap();
    let t = trace("c1", 0, "tor", "1.1.1.1", 100.5);
    assert_eq!(s.ingest(&t).unwrap(), IngestOutcome::Stored);
    assert_eq!(s.ingest(&t).unwrap(), IngestOutcome::Duplicate);
    // Same slot under another result id: still the one trace of that round and pair.
    let mut other_id = t.clone();
    other_id.result_id = "x".into();
    assert_eq!(s.ingest(&other_id).unwrap(), IngestOutcome::Duplicate);
    // Same result id from another vantage is a different result.
    let mut other_vantage = t.clone();
    other_vantage.vantage = "par".into();
    assert_eq!(s.ingest(&other_vantage).unwrap(), IngestOutcome::Stored);
    assert_eq!(s.count_traces("c1").unwrap(), 2);
    let mut bad = t.clone();
    bad.result_id.clear();
    assert!(matches!(s.ingest(&bad), Err(StoreError::Invalid { .. })));
}

#[test]
fn ingest_many_matches_ingest_one_by_one_including_repeats_within_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path()).unwrap();
    let a = trace("c1", 0, "tor", "1.1.1.1", 100.5);
    assert_eq!(s.ingest(&a).unwrap(), IngestOutcome::Stored);
    let b = trace("c1", 0, "tor", "2.2.2.2", 101.0);
    let mut b_again = b.clone();
    b_again.result_id = "other-id".into();
    let mut bad = trace("c1", 0, "tor", "3.3.3.3", 102.0);
    bad.dst.clear();
    let c = trace("c1", 0, "par", "1.1.1.1", 103.0);
    let out = s
        .ingest_many(&[a.clone(), b.clone(), b_again, bad, b, c])
        .unwrap();
    let got: Vec<_> = out.iter().map(|o| o.as_ref().ok().copied()).collect();
    use IngestOutcome::{Duplicate, Stored};
    assert_eq!(
        got,
        [
            Some(Duplicate),
            Some(Stored),
            Some(Duplicate),
            None,
            Some(Duplicate),
            Some(Stored)
        ]
    );
    assert!(matches!(out[3], Err(StoreError::Invalid { .. })));
    assert_eq!(s.count_traces("c1").unwrap(), 3);
    // Every index points at the stored records.
    let q = TraceQuery {
        vantage: Some("tor".into()),
        ..Default::default()
    };
    assert_eq!(s.query_traces(&q).unwrap().len(), 2);
    let q = TraceQuery {
        dst: Some("1.1.1.1".into()),
        ..Default::default()
    };
    assert_eq!(s.query_traces(&q).unwrap().len(), 2);
}

#[test]
fn queries_by_campaign_vantage_dst_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path()).unwrap();
    for (c, r, v, d, t) in [
        ("c1", 0, "tor", "1.1.1.1", 100.0),
        ("c1", 0, "par", "1.1.1.1", 100.1),
        ("c1", 1, "tor", "1.1.1.1", 110.0),
        ("c1", 1, "tor", "8.8.8.8", 110.2),
        ("c10", 0, "tor", "1.1.1.1", 200.0),
    ] {
        s.ingest(&trace(c, r, v, d, t)).unwrap();
    }
    let q = |q: TraceQuery| {
        s.query_traces(&q)
            .unwrap()
            .into_iter()
            .map(|t| (t.campaign_id, t.round, t.vantage, t.dst))
            .collect::<Vec<_>>()
    };
    let c1 = q(TraceQuery {
        campaign_id: Some("c1".into()),
        ..Default::default()
    });
    assert_eq!(c1.len(), 4, "{c1:?}");
    assert!(c1.iter().all(|t| t.0 == "c1"));
    // Ordered by round first.
    assert_eq!(c1[0].1, 0);
    assert_eq!(c1[3].1, 1);
    assert_eq!(
        q(TraceQuery {
            campaign_id: Some("c1".into()),
            vantage: Some("tor".into()),
            dst: Some("8.8.8.8".into()),
            ..Default::default()
        }),
        vec![(
            "c1".to_string(),
            1,
            "tor".to_string(),
            "8.8.8.8".to_string()
        )]
    );
    let tor = q(TraceQuery {
        vantage: Some("tor".into()),
        since_ns: Some(105_000_000_000),
        ..Default::default()
    });
    assert_eq!(tor.len(), 3);
    assert_eq!(tor[2].0, "c10", "time order: {tor:?}");
    let dst = q(TraceQuery {
        dst: Some("1.1.1.1".into()),
        until_ns: Some(110_000_000_000),
        ..Default::default()
    });
    assert_eq!(dst.len(), 3);
    let by_time = q(TraceQuery {
        since_ns: Some(100_100_000_000),
        until_ns: Some(110_000_000_000),
        limit: 1,
        ..Default::default()
    });
    assert_eq!(
        by_time,
        vec![(
            "c1".to_string(),
            0,
            "par".to_string(),
            "1.1.1.1".to_string()
        )]
    );
}

#[test]
fn tokens_are_burnt_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path()).unwrap();
    let tok = TokenRecord {
        meta: meta("tor"),
        created_at_ns: 0,
        expires_at_ns: 1_000,
        used_at_ns: None,
    };
    s.put_token("h1", &tok).unwrap();
    s.put_token("h2", &tok).unwrap();
    assert_eq!(
        s.consume_token("nope", 10).unwrap(),
        Err(TokenRejection::Unknown)
    );
    assert_eq!(
        s.consume_token("h2", 1_000).unwrap(),
        Err(TokenRejection::Expired)
    );
    let used = s.consume_token("h1", 10).unwrap().unwrap();
    assert_eq!(used.used_at_ns, Some(10));
    assert_eq!(used.meta, meta("tor"));
    assert_eq!(
        s.consume_token("h1", 11).unwrap(),
        Err(TokenRejection::AlreadyUsed)
    );
}

#[test]
fn concurrent_consumers_cannot_both_win() {
    let dir = tempfile::tempdir().unwrap();
    let s = std::sync::Arc::new(SledStore::open(dir.path()).unwrap());
    s.put_token(
        "h",
        &TokenRecord {
            meta: meta("tor"),
            created_at_ns: 0,
            expires_at_ns: i64::MAX,
            used_at_ns: None,
        },
    )
    .unwrap();
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            std::thread::spawn(move || s.consume_token("h", i).unwrap().is_ok())
        })
        .collect();
    let wins = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|w| *w)
        .count();
    assert_eq!(wins, 1);
}

#[test]
fn everything_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let campaign_id;
    {
        let s = SledStore::open(dir.path()).unwrap();
        s.put_agent(&AgentRecord {
            meta: meta("tor"),
            enrolled_at_ns: 5,
            cert_sha256: "ab".into(),
            agent_version: "0.1.0".into(),
            hostname: "vm1".into(),
            last_seen_ns: None,
            mesh_addr: None,
        })
        .unwrap();
        campaign_id = s.next_campaign_id().unwrap();
        s.put_campaign(&v1::Campaign {
            id: campaign_id.clone(),
            created_at_ns: 7,
            expanded_targets: vec!["1.1.1.1".into()],
            ..Default::default()
        })
        .unwrap();
        s.ingest(&trace(&campaign_id, 0, "tor", "1.1.1.1", 1.0))
            .unwrap();
        s.flush().unwrap();
    }
    let s = SledStore::open(dir.path()).unwrap();
    assert_eq!(s.list_agents().unwrap().len(), 1);
    assert_eq!(s.get_agent("tor").unwrap().unwrap().meta, meta("tor"));
    let c = s.get_campaign(&campaign_id).unwrap().unwrap();
    assert_eq!(c.expanded_targets, vec!["1.1.1.1".to_string()]);
    assert_eq!(s.list_campaigns().unwrap().len(), 1);
    assert_ne!(
        s.next_campaign_id().unwrap(),
        campaign_id,
        "ids never repeat"
    );
    let back = s
        .query_traces(&TraceQuery {
            campaign_id: Some(campaign_id.clone()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(back, vec![trace(&campaign_id, 0, "tor", "1.1.1.1", 1.0)]);
    // Idempotency survives the restart too.
    assert_eq!(
        s.ingest(&trace(&campaign_id, 0, "tor", "1.1.1.1", 1.0))
            .unwrap(),
        IngestOutcome::Duplicate
    );
}

#[test]
fn second_open_of_a_live_store_says_it_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let _first = SledStore::open(dir.path()).unwrap();
    assert!(matches!(
        SledStore::open(dir.path()),
        Err(StoreError::Locked { .. })
    ));
}

#[test]
fn alias_results_are_stored_once_per_campaign_round_and_vantage() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path()).unwrap();
    let r = |c: &str, round: u32, v: &str, probes: u64| v1::AliasResult {
        result_id: tracemesh_proto::alias_result_id(c, round),
        campaign_id: c.into(),
        round,
        vantage: v.into(),
        probes_sent: probes,
        ..Default::default()
    };
    assert_eq!(
        s.put_alias_result(&r("c1", 0, "a", 5)).unwrap(),
        IngestOutcome::Stored
    );
    assert_eq!(
        s.put_alias_result(&r("c1", 0, "b", 6)).unwrap(),
        IngestOutcome::Stored
    );
    // A re-upload (lost ack) is recognised; the first copy stays.
    assert_eq!(
        s.put_alias_result(&r("c1", 0, "a", 99)).unwrap(),
        IngestOutcome::Duplicate
    );
    // "c1" must not match "c10".
    s.put_alias_result(&r("c10", 1, "a", 7)).unwrap();
    assert!(s.put_alias_result(&r("c1", 0, "", 1)).is_err());
    let mut seen = vec![];
    s.for_each_alias_result(Some("c1"), &mut |r| {
        seen.push((r.vantage, r.probes_sent));
        true
    })
    .unwrap();
    assert_eq!(seen, [("a".to_string(), 5), ("b".to_string(), 6)]);
    drop(s);
    let s = SledStore::open(dir.path()).unwrap();
    let mut n = 0;
    s.for_each_alias_result(None, &mut |_| {
        n += 1;
        true
    })
    .unwrap();
    assert_eq!(n, 3, "kept across a reopen");
}

#[test]
fn mesh_samples_are_stored_once_per_direction_and_round() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path()).unwrap();
    let m = |round: u32, src: &str, dst: &str, owd: i64| v1::MeshSample {
        result_id: tracemesh_proto::mesh_result_id("m1", round, src),
        campaign_id: "m1".into(),
        round,
        src: src.into(),
        dst: dst.into(),
        owd_min_ns: Some(owd),
        ..Default::default()
    };
    assert_eq!(
        s.put_mesh_sample(&m(0, "a", "b", 5)).unwrap(),
        IngestOutcome::Stored
    );
    assert_eq!(
        s.put_mesh_sample(&m(0, "b", "a", 6)).unwrap(),
        IngestOutcome::Stored
    );
    // A re-upload after a crash: the first copy stays.
    assert_eq!(
        s.put_mesh_sample(&m(0, "a", "b", 99)).unwrap(),
        IngestOutcome::Duplicate
    );
    assert_eq!(
        s.put_mesh_sample(&m(1, "a", "b", 7)).unwrap(),
        IngestOutcome::Stored
    );
    assert!(matches!(
        s.put_mesh_sample(&m(1, "", "b", 7)),
        Err(StoreError::Invalid { .. })
    ));
    let mut got = Vec::new();
    s.for_each_mesh_sample(Some("m1"), &mut |x| {
        got.push((x.round, x.src, x.owd_min_ns));
        true
    })
    .unwrap();
    assert_eq!(
        got,
        [
            (0, "a".into(), Some(5)),
            (0, "b".into(), Some(6)),
            (1, "a".into(), Some(7))
        ]
    );
}

#[test]
fn mda_results_are_stored_once_per_vantage_target_and_round_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let r = |c: &str, round: u32, vantage: &str, dst: &str, probes: u32| v1::MdaResult {
        result_id: tracemesh_proto::mda_result_id(c, round, dst),
        campaign_id: c.into(),
        round,
        vantage: vantage.into(),
        dst: dst.into(),
        probes_sent: probes,
        ..Default::default()
    };
    {
        let s = SledStore::open(dir.path()).unwrap();
        for (x, want) in [
            (r("d1", 0, "a", "192.0.2.1", 10), IngestOutcome::Stored),
            (r("d1", 0, "b", "192.0.2.1", 11), IngestOutcome::Stored),
            // A re-upload after a lost ack: the first copy stays.
            (r("d1", 0, "a", "192.0.2.1", 99), IngestOutcome::Duplicate),
            (r("d1", 3, "a", "192.0.2.1", 12), IngestOutcome::Stored),
            (r("d2", 0, "a", "192.0.2.1", 13), IngestOutcome::Stored),
        ] {
            assert_eq!(s.put_mda_result(&x).unwrap(), want);
        }
        assert!(matches!(
            s.put_mda_result(&r("d1", 1, "", "192.0.2.1", 1)),
            Err(StoreError::Invalid { .. })
        ));
        s.flush().unwrap();
    }
    let s = SledStore::open(dir.path()).unwrap();
    let mut got = Vec::new();
    s.for_each_mda_result(Some("d1"), &mut |x| {
        got.push((x.round, x.vantage, x.probes_sent));
        true
    })
    .unwrap();
    assert_eq!(
        got,
        [
            (0, "a".into(), 10),
            (0, "b".into(), 11),
            (3, "a".into(), 12)
        ]
    );
    let mut all = 0;
    s.for_each_mda_result(None, &mut |_| {
        all += 1;
        true
    })
    .unwrap();
    assert_eq!(all, 4);
}
