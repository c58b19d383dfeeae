use super::*;

fn addr(a: &str, samples: usize, unusable: Option<&str>) -> v1::AliasAddr {
    v1::AliasAddr {
        addr: a.into(),
        probes: samples as u32,
        samples: (0..samples)
            .map(|i| v1::IpIdSample {
                tx_us: i as u64 * 100_000,
                rx_us: i as u64 * 100_000 + 500,
                ip_id: 100 + i as u32,
                probe_ip_id: 1,
            })
            .collect(),
        mercator_probed: true,
        mercator_from: None,
        unusable: unusable.map(String::from),
    }
}

fn ipid(addrs: &[&str], velocity: f64) -> v1::AliasGroup {
    v1::AliasGroup {
        addrs: addrs.iter().map(|s| s.to_string()).collect(),
        method: v1::AliasMethod::Ipid as i32,
        evidence: Some(v1::AliasEvidence {
            samples: addrs.iter().map(|a| (a.to_string(), 8)).collect(),
            velocity_per_s: addrs.iter().map(|a| (a.to_string(), velocity)).collect(),
            pairs_passed: 1,
            ..Default::default()
        }),
    }
}

fn mercator(probed: &str, from: &str) -> v1::AliasGroup {
    let mut addrs = vec![probed.to_string(), from.to_string()];
    addrs.sort();
    v1::AliasGroup {
        addrs,
        method: v1::AliasMethod::Mercator as i32,
        evidence: Some(v1::AliasEvidence {
            answers: [(probed.to_string(), from.to_string())].into(),
            ..Default::default()
        }),
    }
}

fn run(
    vantage: &str,
    round: u32,
    start: f64,
    addrs: Vec<v1::AliasAddr>,
    groups: Vec<v1::AliasGroup>,
) -> v1::AliasResult {
    v1::AliasResult {
        result_id: tracemesh_proto::alias_result_id("c1", round),
        campaign_id: "c1".into(),
        round,
        vantage: vantage.into(),
        method: v1::AliasMethod::Both as i32,
        start,
        probes_sent: 10,
        addrs,
        groups,
        received_at_ns: 0,
    }
}

fn addr_sets(sets: &[v1::AliasSet]) -> Vec<Vec<&str>> {
    sets.iter()
        .map(|s| s.addrs.iter().map(String::as_str).collect())
        .collect()
}

#[test]
fn groups_from_vantages_and_rounds_are_unioned_with_their_evidence() {
    let a = run(
        "tor",
        0,
        100.0,
        vec![addr("10.0.0.2", 8, None), addr("10.9.0.2", 8, None)],
        vec![
            ipid(&["10.0.0.2", "10.9.0.2"], 50.0),
            mercator("10.9.0.2", "10.0.0.2"),
        ],
    );
    // Another vantage, later: Mercator ties a third interface to the same router.
    let b = run(
        "fra",
        1,
        160.0,
        vec![addr("10.9.0.2", 1, None), addr("10.3.0.1", 1, None)],
        vec![mercator("10.3.0.1", "10.9.0.2")],
    );
    let sets = merge(&[a, b]);
    assert_eq!(addr_sets(&sets), [["10.0.0.2", "10.3.0.1", "10.9.0.2"]]);
    let s = &sets[0];
    assert_eq!((s.first_seen, s.last_seen), (100.0, 160.0));
    let ev: Vec<(&str, &str, u32, Option<f64>)> = s
        .evidence
        .iter()
        .map(|e| (e.method.as_str(), e.vantage.as_str(), e.samples, e.velocity))
        .collect();
    assert_eq!(
        ev,
        [
            ("ipid", "tor", 16, Some(50.0)),
            ("mercator", "tor", 1, None),
            ("mercator", "fra", 1, None)
        ]
    );
}

#[test]
fn an_address_with_an_unusable_counter_stays_alone() {
    // One vantage grouped x and y by IP-ID; another saw x's counter step backwards.
    let a = run(
        "tor",
        0,
        100.0,
        vec![addr("10.1.0.1", 8, None), addr("10.1.0.2", 8, None)],
        vec![ipid(&["10.1.0.1", "10.1.0.2"], 10.0)],
    );
    let b = run(
        "fra",
        0,
        101.0,
        vec![addr("10.1.0.1", 8, Some("not_monotonic"))],
        vec![],
    );
    assert!(merge(&[a.clone(), b]).is_empty());
    // Too few replies elsewhere is no evidence against it.
    let c = run(
        "fra",
        0,
        101.0,
        vec![addr("10.1.0.1", 1, Some("too_few_replies"))],
        vec![],
    );
    assert_eq!(addr_sets(&merge(&[a, c])), [["10.1.0.1", "10.1.0.2"]]);
}

#[test]
fn ipid_evidence_that_disagrees_is_not_unioned() {
    // tor groups x with y; fra sampled both well and kept them apart.
    let a = run(
        "tor",
        0,
        100.0,
        vec![addr("10.2.0.1", 8, None), addr("10.2.0.2", 8, None)],
        vec![ipid(&["10.2.0.1", "10.2.0.2"], 10.0)],
    );
    let b = run(
        "fra",
        0,
        100.0,
        vec![addr("10.2.0.1", 8, None), addr("10.2.0.2", 8, None)],
        vec![],
    );
    assert!(merge(&[a.clone(), b]).is_empty());
    // A run that agrees supports it; the same run uploaded twice changes nothing.
    let c = run(
        "fra",
        1,
        130.0,
        vec![addr("10.2.0.1", 8, None), addr("10.2.0.2", 8, None)],
        vec![ipid(&["10.2.0.1", "10.2.0.2"], 12.0)],
    );
    let sets = merge(&[a, c]);
    assert_eq!(addr_sets(&sets), [["10.2.0.1", "10.2.0.2"]]);
    assert_eq!(sets[0].evidence.len(), 2);
    assert!(merge(&[]).is_empty());
}

#[test]
fn echo_rtts_keep_each_vantages_best_round_trip_per_address() {
    let mut slow = addr("10.0.0.2", 2, None);
    slow.samples[1].rx_us = slow.samples[1].tx_us + 2_000;
    let a = run(
        "tor",
        0,
        100.0,
        vec![slow, addr("10.9.0.2", 3, None)],
        vec![],
    );
    let mut b = run("sea", 1, 200.0, vec![addr("10.0.0.2", 1, None)], vec![]);
    b.addrs[0].samples[0].rx_us += 1_500;
    // A reply stamped before its probe (clock trouble) is ignored, not negative.
    let mut c = run("tor", 2, 300.0, vec![addr("10.9.0.2", 1, None)], vec![]);
    c.addrs[0].samples[0].rx_us = 0;
    c.addrs[0].samples[0].tx_us = 10;
    let got = echo_rtts(&[a, b, c]);
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    assert_eq!(
        got,
        vec![
            ("sea".to_string(), ip("10.0.0.2"), 2.0),
            ("tor".to_string(), ip("10.0.0.2"), 0.5),
            ("tor".to_string(), ip("10.9.0.2"), 0.5),
        ]
    );
}
