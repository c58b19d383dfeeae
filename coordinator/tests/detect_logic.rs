//! Detector logic on small inline paths (no files needed).

// Helpers outside #[test] functions unwrap too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use tracemesh::annotate::{Annotator, IxpLan, Origin, split_name_country};
use tracemesh::detect::{
    Adversary, Detector, DiversionReport, MdaTrace, Trace, TraceHop, VantageInfo, detect,
};
use tracemesh::geo::{Gazetteer, GeoPoint, great_circle_km};

const T0: f64 = 1_700_000_000.0;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Rogers (CA) → Telia → KT (KR), with China Telecom (CN) as the adversary.
fn annotator() -> Annotator {
    let mut a = Annotator::new();
    for (p, asn, name) in [
        ("24.114.0.0/16", 812, "ROGERS, CA"),
        ("62.115.0.0/16", 1299, "TELIANET, SE"),
        ("211.192.0.0/13", 4766, "KT, KR"),
        ("202.97.0.0/16", 4134, "CHINANET, CN"),
        ("218.30.53.0/24", 4134, "CHINANET, CN"),
        ("198.32.0.0/16", 4134, "CHINANET, CN"),
        ("60.32.0.0/12", 9999, "SOMEWHERE, CN"),
    ] {
        a.insert_prefix(p.parse().unwrap(), Origin::Single(asn));
        a.set_as_info(asn, split_name_country(name));
    }
    // An IXP LAN inside a prefix that an adversary AS also announces.
    a.add_ixp_lan(&IxpLan {
        prefix: "198.32.176.0/24".parse().unwrap(),
        ix_name: "Test-IX".into(),
        country: Some("US".into()),
        city: None,
    });
    a
}

fn vantages() -> Vec<VantageInfo> {
    vec![
        VantageInfo {
            name: "ottawa".into(),
            loc: Some(GeoPoint::new(45.42, -75.70)),
            country: Some("CA".into()),
            asn: Some(812),
        },
        VantageInfo {
            name: "toronto".into(),
            loc: Some(GeoPoint::new(43.65, -79.38)),
            country: Some("CA".into()),
            asn: Some(812),
        },
        VantageInfo {
            name: "beijing".into(),
            loc: Some(GeoPoint::new(39.90, 116.40)),
            country: Some("CN".into()),
            asn: Some(4134),
        },
    ]
}

fn trace(round: u64, vantage: &str, dst: &str, hops: &[(Option<&str>, f64)]) -> Trace {
    Trace {
        round,
        vantage: vantage.into(),
        dst: ip(dst),
        start: T0 + round as f64 * 10.0,
        hops: hops
            .iter()
            .enumerate()
            .map(|(i, (a, r))| TraceHop {
                ttl: i as u8 + 1,
                addr: a.map(ip),
                rtt_ms: a.map(|_| *r),
            })
            .collect(),
    }
}

const DST: &str = "211.192.1.10";

fn normal(round: u64, v: &str) -> Trace {
    trace(
        round,
        v,
        DST,
        &[
            (Some("24.114.255.1"), 0.4),
            (Some("24.114.255.2"), 5.7),
            (Some("62.115.10.1"), 13.0),
            (Some("211.192.255.1"), 150.0),
            (Some(DST), 150.4),
        ],
    )
}

fn diverted(round: u64, v: &str, handoff_silent: bool) -> Trace {
    trace(
        round,
        v,
        DST,
        &[
            (Some("24.114.255.1"), 0.4),
            (
                if handoff_silent {
                    None
                } else {
                    Some("24.114.255.2")
                },
                5.7,
            ),
            (Some("202.97.10.1"), 5.8),
            (Some("202.97.10.5"), 66.0),
            (Some("202.97.33.1"), 190.0),
            (Some("211.192.255.1"), 200.0),
            (Some(DST), 200.4),
        ],
    )
}

fn run(traces: &[Trace]) -> DiversionReport {
    detect(
        traces,
        &vantages(),
        &Adversary::from_asns([4134]),
        &annotator(),
        &Gazetteer::builtin(),
        T0 + 1e6,
    )
}

#[test]
fn diversion_after_clean_history_is_one_episode_with_handoff_and_ingress() {
    let mut ts: Vec<Trace> = (0..3).map(|r| normal(r, "ottawa")).collect();
    ts.extend((3..6).map(|r| diverted(r, "ottawa", false)));
    ts.extend((6..8).map(|r| normal(r, "ottawa")));
    ts.push(diverted(8, "ottawa", false));
    let rep = run(&ts);
    assert_eq!(rep.diversions.len(), 2, "{:#?}", rep.diversions);
    let d = &rep.diversions[0];
    assert_eq!((d.first_round, d.last_round, d.rounds), (3, 5, 3));
    assert_eq!(d.first_seen, T0 + 30.0);
    assert_eq!(d.last_seen, T0 + 50.0);
    assert_eq!(d.adversary_asn, 4134);
    assert_eq!(d.handoff.addr, Some(ip("24.114.255.2")));
    assert_eq!(d.handoff.asn, Some(812));
    assert_eq!(d.handoff.method, "answered");
    assert_eq!(d.ingress.addr, ip("202.97.10.1"));
    assert_eq!(d.evidence.as_path, vec![812, 4134, 4766]);
    assert_eq!(d.evidence.normal_as_path, vec![812, 1299, 4766]);
    assert!((d.evidence.detour_ms.unwrap() - 50.0).abs() < 1e-9);
    // 5.8 ms from Ottawa cannot reach China: a PoP abroad.
    assert_eq!(d.evidence.ingress_abroad, Some(true));
    assert!(!d.active);
    assert!(rep.diversions[1].active);
    assert_eq!(rep.incidents.len(), 2, "separate in time");
    // One vantage alone: said in the record, its JSON and the view.
    assert!(rep.incidents.iter().all(|i| !i.corroborated));
    let json = serde_json::to_value(&rep).unwrap();
    assert_eq!(json["incidents"][0]["corroborated"], false);
    let text = tracemesh::detect::render_text(&rep, &annotator(), ts.len());
    assert!(
        text.contains("not corroborated: seen by one vantage only (ottawa)"),
        "{text}"
    );
}

#[test]
fn first_round_without_history_still_names_the_handoff() {
    let rep = run(&[diverted(0, "ottawa", false)]);
    assert_eq!(rep.diversions.len(), 1);
    let d = &rep.diversions[0];
    assert_eq!(d.handoff.addr, Some(ip("24.114.255.2")));
    assert_eq!(d.handoff.method, "no-history");
}

#[test]
fn silent_handoff_is_named_from_the_normal_path() {
    let mut ts: Vec<Trace> = (0..2).map(|r| normal(r, "ottawa")).collect();
    ts.extend((2..4).map(|r| diverted(r, "ottawa", true)));
    let d = &run(&ts).diversions[0];
    assert_eq!(d.handoff.addr, Some(ip("24.114.255.2")));
    assert_eq!(d.handoff.method, "filled-from-normal-path");
    assert_eq!(d.ingress.addr, ip("202.97.10.1"));
}

#[test]
fn silent_handoff_without_history_uses_a_later_clean_round_or_other_pairs() {
    // Diverted from the first round with the hand-off silent; a clean path learned
    // afterwards still names it.
    let mut ts: Vec<Trace> = (0..2).map(|r| diverted(r, "ottawa", true)).collect();
    ts.push(normal(2, "ottawa"));
    let d = &run(&ts).diversions[0];
    assert_eq!(d.handoff.addr, Some(ip("24.114.255.2")));

    // No clean round for this pair at all, but another destination shares the stretch.
    let mut ts: Vec<Trace> = (0..2).map(|r| diverted(r, "ottawa", true)).collect();
    ts.push(trace(
        0,
        "ottawa",
        "62.115.99.1",
        &[
            (Some("24.114.255.1"), 0.4),
            (Some("24.114.255.2"), 5.7),
            (Some("62.115.99.1"), 9.0),
        ],
    ));
    let d = &run(&ts).diversions[0];
    assert_eq!(d.handoff.addr, Some(ip("24.114.255.2")));
    assert_eq!(d.handoff.method, "other-pair");
}

#[test]
fn legitimate_adversary_ends_and_benign_reroutes_are_not_diversions() {
    // Destination inside the adversary.
    let to_cn = trace(
        0,
        "ottawa",
        "218.30.53.10",
        &[
            (Some("24.114.255.1"), 0.4),
            (Some("202.97.10.1"), 5.8),
            (Some("218.30.53.10"), 190.0),
        ],
    );
    // Vantage inside the adversary.
    let from_cn = trace(
        0,
        "beijing",
        DST,
        &[(Some("202.97.33.1"), 0.4), (Some("211.192.255.1"), 40.0)],
    );
    // A benign change of transit.
    let reroute = trace(
        1,
        "ottawa",
        DST,
        &[
            (Some("24.114.255.1"), 0.4),
            (Some("24.114.255.2"), 5.7),
            (Some("62.115.10.9"), 60.0),
            (Some(DST), 170.0),
        ],
    );
    // A hop on an IXP LAN whose covering prefix an adversary AS announces.
    let via_ixp = trace(
        2,
        "ottawa",
        DST,
        &[
            (Some("24.114.255.1"), 0.4),
            (Some("198.32.176.5"), 9.0),
            (Some(DST), 160.0),
        ],
    );
    // A destination in another AS of the adversary's country (AS9999 is CN-registered
    // but not an adversary here): reaching it through China Telecom is the normal route.
    let to_cn_customer = trace(
        0,
        "ottawa",
        "60.33.1.1",
        &[
            (Some("24.114.255.1"), 0.4),
            (Some("202.97.10.1"), 5.8),
            (Some("60.33.1.1"), 190.0),
        ],
    );
    let rep = run(&[
        normal(0, "ottawa"),
        to_cn,
        from_cn,
        reroute,
        via_ixp,
        to_cn_customer,
    ]);
    assert!(rep.diversions.is_empty(), "{:#?}", rep.diversions);
}

#[test]
fn adversary_by_country_and_position_from_two_vantages() {
    // AS9999 is only identified as adversarial by its registration country.
    let a = annotator();
    let mut det = Detector::new(Adversary::default().with_countries(["cn"]));
    for v in vantages() {
        det.set_vantage(v);
    }
    let hops = |h: f64| {
        vec![
            (Some("24.114.255.2"), h),
            (Some("60.32.0.1"), h + 0.2),
            (Some(DST), 200.0),
        ]
    };
    det.ingest(&trace(0, "toronto", DST, &hops(0.3)), &a);
    det.ingest(&trace(0, "ottawa", DST, &hops(5.6)), &a);
    let rep = det.report(&a, &Gazetteer::builtin(), T0 + 100.0);
    assert_eq!(rep.diversions.len(), 2);
    let d = &rep.diversions[0];
    assert_eq!(d.adversary_asn, 9999);
    let loc = d.ingress.loc.unwrap();
    let toronto = GeoPoint::new(43.68, -79.63);
    assert!(great_circle_km(loc, toronto) < 80.0, "{loc:?}");
    assert!(d.ingress.radius_km.unwrap() <= 60.0);
    assert_eq!(d.ingress.city.as_deref(), Some("Toronto"));
    assert_eq!(rep.incidents.len(), 1);
    assert_eq!(rep.incidents[0].vantages.len(), 2);
    assert!(rep.incidents[0].corroborated, "two vantages saw it");
}

#[test]
fn silent_ingress_is_inferred_from_another_vantage() {
    let a = annotator();
    let mut det = Detector::new(Adversary::from_asns([4134]));
    for v in vantages() {
        det.set_vantage(v);
    }
    // Toronto sees the Toronto PoP answer; Ottawa's path has it silent.
    det.ingest(&diverted(0, "toronto", false), &a);
    let mut t = diverted(0, "ottawa", false);
    t.hops[2].addr = None;
    det.ingest(&t, &a);
    let rep = det.report(&a, &Gazetteer::builtin(), T0 + 100.0);
    let d = rep
        .diversions
        .iter()
        .find(|d| d.vantage == "ottawa")
        .unwrap();
    assert_eq!(d.ingress.addr, ip("202.97.10.1"));
    assert!(d.ingress.inferred);
    assert_eq!(d.handoff.addr, Some(ip("24.114.255.2")));
}

#[test]
fn arrival_order_does_not_matter_and_now_hides_the_future() {
    let mut ts: Vec<Trace> = (0..3).map(|r| normal(r, "ottawa")).collect();
    ts.extend((3..6).map(|r| diverted(r, "ottawa", false)));
    let forward = serde_json::to_value(run(&ts)).unwrap();
    ts.reverse();
    let backward = serde_json::to_value(run(&ts)).unwrap();
    assert_eq!(forward, backward);

    let a = annotator();
    let mut det = Detector::new(Adversary::from_asns([4134]));
    for t in &ts {
        det.ingest(t, &a);
    }
    assert!(
        det.report(&a, &Gazetteer::builtin(), T0 + 25.0)
            .diversions
            .is_empty()
    );
    assert_eq!(
        det.report(&a, &Gazetteer::builtin(), T0 + 35.0).diversions[0].rounds,
        1
    );
}

#[test]
fn report_serialises_to_the_format_contract() {
    let v =
        serde_json::to_value(run(&[normal(0, "ottawa"), diverted(1, "ottawa", false)])).unwrap();
    let d = &v["diversions"][0];
    for key in [
        "vantage",
        "target",
        "adversary_asn",
        "handoff",
        "ingress",
        "first_seen",
        "last_seen",
        "rounds",
    ] {
        assert!(!d[key].is_null(), "missing {key}: {d}");
    }
    assert_eq!(d["target"], DST);
    assert_eq!(d["handoff"]["addr"], "24.114.255.2");
    assert_eq!(d["handoff"]["asn"], 812);
    assert_eq!(d["ingress"]["asn"], 4134);
    assert!(d["ingress"]["loc"].as_array().is_some_and(|l| l.len() == 2));
    assert!(d["ingress"]["radius_km"].is_number());
    assert!(d["ingress"]["city"].is_string());
}

#[test]
fn hops_hidden_by_mpls_do_not_misplace_the_handoff() {
    // In the diverted rounds an MPLS tunnel hides the first Rogers core router, so
    // every TTL after it shifts by one; alignment by address still finds the hand-off.
    let mut ts: Vec<Trace> = (0..2).map(|r| normal(r, "ottawa")).collect();
    ts.push(trace(
        2,
        "ottawa",
        DST,
        &[
            (Some("24.114.255.2"), 5.7),
            (Some("202.97.10.1"), 5.8),
            (Some("202.97.33.1"), 190.0),
            (Some(DST), 200.4),
        ],
    ));
    let d = &run(&ts).diversions[0];
    assert_eq!(d.handoff.addr, Some(ip("24.114.255.2")));
    assert_eq!(d.handoff.method, "answered");
}

#[test]
fn adversary_port_on_an_exchange_lan_is_the_ingress() {
    let mut ts: Vec<Trace> = (0..2).map(|r| normal(r, "ottawa")).collect();
    ts.push(trace(
        2,
        "ottawa",
        DST,
        &[
            (Some("24.114.255.1"), 0.4),
            (Some("24.114.255.2"), 5.7),
            (Some("198.32.176.9"), 5.8),
            (Some("202.97.10.5"), 66.0),
            (Some(DST), 200.4),
        ],
    ));
    let d = &run(&ts).diversions[0];
    assert_eq!(d.ingress.addr, ip("198.32.176.9"));
    assert_eq!(d.ingress.ixp.as_deref(), Some("Test-IX"));
    assert_eq!(d.adversary_asn, 4134);
    assert_eq!(d.handoff.addr, Some(ip("24.114.255.2")));
}

#[test]
fn many_pairs_and_rounds_stay_fast_and_exact() {
    // 200 destinations x 2 vantages x 50 rounds = 20,000 traces of 6 hops; a quarter of
    // the destinations are diverted in rounds 20..30.
    let a = annotator();
    let mut det = Detector::new(Adversary::from_asns([4134]));
    for v in vantages() {
        det.set_vantage(v);
    }
    let t = std::time::Instant::now();
    for round in 0..50u64 {
        for v in ["ottawa", "toronto"] {
            for d in 0..200u32 {
                let dst = format!("211.192.{}.{}", d / 250 + 1, d % 250 + 1);
                let divert = d % 4 == 0 && (20..30).contains(&round);
                let mut tr = if divert {
                    diverted(round, v, false)
                } else {
                    normal(round, v)
                };
                tr.dst = ip(&dst);
                if let Some(last) = tr.hops.last_mut() {
                    last.addr = Some(tr.dst);
                }
                det.ingest(&tr, &a);
            }
        }
    }
    let ingest = t.elapsed();
    let rep = det.report(&a, &Gazetteer::builtin(), T0 + 1e6);
    println!("ingest {ingest:?}, report {:?}", t.elapsed() - ingest);
    assert_eq!(rep.diversions.len(), 100);
    assert!(
        rep.diversions
            .iter()
            .all(|d| d.rounds == 10 && d.first_round == 20)
    );
    assert_eq!(rep.incidents.len(), 1);
    assert_eq!(rep.incidents[0].records, 100);
}

#[test]
fn human_view_draws_both_paths_with_handoff_ingress_and_evidence() {
    let mut ts: Vec<Trace> = (0..3).map(|r| normal(r, "ottawa")).collect();
    ts.extend((3..6).map(|r| diverted(r, "ottawa", false)));
    ts.extend((0..3).map(|r| normal(r, "toronto")));
    ts.extend((3..6).map(|r| diverted(r, "toronto", false)));
    let rep = run(&ts);
    let d = &rep.diversions[0];
    // The evidence carries both paths, aligned by TTL, the destination left out.
    let normal_addrs: Vec<String> = d
        .evidence
        .normal_path
        .iter()
        .map(|h| h.addr.unwrap().to_string())
        .collect();
    assert_eq!(
        normal_addrs,
        [
            "24.114.255.1",
            "24.114.255.2",
            "62.115.10.1",
            "211.192.255.1"
        ]
    );
    assert_eq!(d.evidence.normal_path[2].asn, Some(1299));
    assert_eq!(d.evidence.normal_path[1].rtt_ms, Some(5.7));
    assert_eq!(d.evidence.diverted_path.len(), 6);
    assert!(d.evidence.diverted_path[2].adversary);
    assert!(!d.evidence.diverted_path[1].adversary);

    let text = tracemesh::detect::render_text(&rep, &annotator(), ts.len());
    assert_eq!(rep.incidents.len(), 1, "{text}");
    assert!(rep.incidents[0].corroborated);
    assert!(!text.contains("not corroborated"), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    let find = |needle: &str| {
        lines
            .iter()
            .copied()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in\n{text}"))
    };
    assert!(find("Incident 1:").contains("AS4134 CHINANET (CN)"));
    assert!(find("Incident 1:").contains("202.97.10.1"));
    assert!(find("2 vantage(s)").contains("ottawa") && find("2 vantage(s)").contains("toronto"));
    // The hand-off row: same router on both sides, marked.
    let row2 = find("hand-off: leaves the normal path");
    assert!(row2.trim_start().starts_with("2 "), "{row2}");
    assert_eq!(row2.matches("24.114.255.2").count(), 2, "{row2}");
    // The ingress row: Telia on the normal side, China Telecom flagged on the other.
    let row3 = find("ingress: first hop");
    assert!(
        row3.contains("62.115.10.1") && row3.contains("!202.97.10.1"),
        "{row3}"
    );
    assert!(find("dst ").contains("150.40 ms") && find("dst ").contains("200.40 ms"));
    assert!(find("AS path:").contains("AS812 AS4134 AS4766 (normal: AS812 AS1299 AS4766)"));
    assert!(find("detour:").contains("+50.0 ms"));
    assert!(find("light speed:").contains("a point of presence abroad"));
    // One drawing per vantage in the incident.
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.trim_start().starts_with("TTL"))
            .count(),
        2,
        "{text}"
    );
    assert!(lines.iter().all(|l| !l.ends_with(' ')), "{text}");

    let quiet = tracemesh::detect::render_text(&run(&[normal(0, "ottawa")]), &annotator(), 1);
    assert_eq!(quiet, "no diversions in 1 traces\n");
}

/// The diverted path of `diverted`, but China Telecom's Toronto router answers from its
/// end of the Rogers-numbered peering link (24.114.254.2), as most routers answer from
/// the interface a probe came in on.
fn diverted_neighbour_numbered(round: u64, v: &str) -> Trace {
    trace(
        round,
        v,
        DST,
        &[
            (Some("24.114.255.1"), 0.4),
            (Some("24.114.255.2"), 5.7),
            (Some("24.114.254.2"), 5.8),
            (Some("202.97.10.5"), 66.0),
            (Some("202.97.33.1"), 190.0),
            (Some("211.192.255.1"), 200.0),
            (Some(DST), 200.4),
        ],
    )
}

#[test]
fn an_ingress_answering_from_a_neighbour_numbered_port_is_still_the_ingress() {
    let mut ts: Vec<Trace> = (0..3).map(|r| normal(r, "ottawa")).collect();
    ts.extend((3..6).map(|r| diverted_neighbour_numbered(r, "ottawa")));
    ts.extend((6..8).map(|r| normal(r, "ottawa")));
    let rep = run(&ts);
    assert_eq!(rep.diversions.len(), 1, "{:#?}", rep.diversions);
    let d = &rep.diversions[0];
    assert_eq!(d.ingress.addr, ip("24.114.254.2"), "not one hop too deep");
    assert_eq!(d.ingress.owner_rule, "neighbour-numbered-port");
    assert_eq!(d.ingress.router, vec![ip("24.114.254.2")]);
    assert_eq!(d.handoff.addr, Some(ip("24.114.255.2")));
    assert_eq!(d.adversary_asn, 4134);
    // A clean path that shows the port followed by a non-adversary hop makes it the
    // neighbour's own router again: the first adversary-space hop is the ingress.
    let mut ts2 = ts.clone();
    ts2.push(trace(
        0,
        "ottawa",
        "211.192.2.2",
        &[
            (Some("24.114.255.1"), 0.4),
            (Some("24.114.255.2"), 5.7),
            (Some("24.114.254.2"), 5.8),
            (Some("62.115.10.1"), 13.0),
            (Some("211.192.2.2"), 150.0),
        ],
    ));
    let rep = run(&ts2);
    assert_eq!(rep.diversions[0].ingress.addr, ip("202.97.10.5"));
    assert_eq!(rep.diversions[0].ingress.owner_rule, "origin");
}

#[test]
fn an_adversary_numbered_port_on_a_neighbours_router_is_no_diversion() {
    // Every round, Telia's router answers from a China Telecom-numbered port (a re-used
    // cross-connect): an adversary-space address with Rogers before it and KT after it.
    let quiet = |r: u64| {
        trace(
            r,
            "toronto",
            DST,
            &[
                (Some("24.114.255.1"), 0.4),
                (Some("202.97.56.130"), 5.9),
                (Some("62.115.10.1"), 13.0),
                (Some("211.192.255.1"), 150.0),
                (Some(DST), 150.4),
            ],
        )
    };
    let ts: Vec<Trace> = (0..10).map(quiet).collect();
    let rep = run(&ts);
    assert!(rep.diversions.is_empty(), "{:#?}", rep.diversions);
    // The same address in a real diversion of another pair does not hide it.
    let mut ts2 = ts;
    ts2.extend((0..3).map(|r| normal(r, "ottawa")));
    ts2.extend((3..6).map(|r| diverted(r, "ottawa", false)));
    let rep = run(&ts2);
    assert_eq!(rep.diversions.len(), 1);
    assert_eq!(rep.diversions[0].vantage, "ottawa");
}

#[test]
fn a_round_with_its_adversary_hops_silent_stays_in_the_episode() {
    let mut ts: Vec<Trace> = (0..3).map(|r| normal(r, "ottawa")).collect();
    ts.extend((3..8).map(|r| diverted(r, "ottawa", false)));
    // Round 5: every China Telecom router rate-limited its answer away.
    ts[5] = trace(
        5,
        "ottawa",
        DST,
        &[
            (Some("24.114.255.1"), 0.4),
            (Some("24.114.255.2"), 5.7),
            (None, 0.0),
            (None, 0.0),
            (None, 0.0),
            (Some("211.192.255.1"), 200.0),
            (Some(DST), 200.4),
        ],
    );
    ts.extend((8..10).map(|r| normal(r, "ottawa")));
    let rep = run(&ts);
    assert_eq!(rep.diversions.len(), 1, "{:#?}", rep.diversions);
    assert_eq!(rep.diversions[0].rounds, 5);
}

/// Clean rounds 0-2, diverted rounds 3-5, round 6 straddling the diversion's end
/// (`last`), then rounds 7-11 on the route `after` draws: the one record's rounds.
fn episode_around(last: &[(Option<&str>, f64)], after: &[(Option<&str>, f64)]) -> (u64, u64, u32) {
    let mut ts: Vec<Trace> = (0..3).map(|r| normal(r, "ottawa")).collect();
    ts.extend((3..6).map(|r| diverted(r, "ottawa", false)));
    ts.push(trace(6, "ottawa", DST, last));
    ts.extend((7..12).map(|r| trace(r, "ottawa", DST, after)));
    let rep = run(&ts);
    assert_eq!(rep.diversions.len(), 1, "{:#?}", rep.diversions);
    let d = &rep.diversions[0];
    (d.first_round, d.last_round, d.rounds)
}

#[test]
fn a_shorter_route_after_the_diversion_does_not_pass_for_its_silent_adversary_hops() {
    // Seen in the lab soak: the last diverted round had its third hop silent; once the
    // diversion ended the pair took a shorter route whose second hop rate-limits, whose
    // third is a router the diverted round had silent there, and whose destination
    // answered at TTL 4, where the diverted round showed China Telecom. The
    // destination's TTL is no silence: the episode ends with the diversion.
    let rounds = episode_around(
        &[
            (Some("24.114.255.1"), 0.4),
            (Some("24.114.255.2"), 5.7),
            (None, 0.0),
            (Some("202.97.10.5"), 66.0),
            (Some(DST), 200.4),
        ],
        &[
            (Some("24.114.255.1"), 0.4),
            (None, 0.0),
            (Some("62.115.20.1"), 13.0),
            (Some(DST), 150.4),
        ],
    );
    assert_eq!(rounds, (3, 6, 4));
}

#[test]
fn the_normal_route_back_with_a_rate_limiting_hop_ends_the_episode() {
    // Also from the soak: the last diverted round straddled the diversion's end (China
    // Telecom at TTL 2, TTL 3 silent, the normal route from TTL 4). Afterwards the normal
    // route's second router rate-limits: silent at TTL 2, where the diverted round had
    // its only adversary hop. Its TTL 3 answers as the normal route did before the
    // episode, where the diverted round was silent: the pair is back on it.
    let rounds = episode_around(
        &[
            (Some("24.114.255.1"), 0.4),
            (Some("202.97.10.1"), 5.8),
            (None, 0.0),
            (Some("211.192.255.1"), 150.0),
            (Some(DST), 150.4),
        ],
        &[
            (Some("24.114.255.1"), 0.4),
            (None, 0.0),
            (Some("62.115.10.1"), 13.0),
            (Some("211.192.255.1"), 150.0),
            (Some(DST), 150.4),
        ],
    );
    assert_eq!(rounds, (3, 6, 4));
}

#[test]
fn alias_groups_decide_whose_router_a_border_address_is() {
    let adversary = Adversary::from_asns([4134]);
    let (annot, gaz) = (annotator(), Gazetteer::builtin());
    let run_with = |ts: &[Trace], groups: Vec<Vec<IpAddr>>| {
        let mut d = Detector::new(adversary.clone());
        for v in vantages() {
            d.set_vantage(v);
        }
        d.set_aliases(groups);
        for t in ts {
            d.ingest(t, &annot);
        }
        d.report(&annot, &gaz, T0 + 1e6)
    };
    // The ingress answers from a Rogers-numbered port; alias resolution found that port
    // on the router whose loopback is 202.97.10.1: China Telecom's, by its addresses.
    let mut ts: Vec<Trace> = (0..3).map(|r| normal(r, "ottawa")).collect();
    ts.extend((3..6).map(|r| diverted_neighbour_numbered(r, "ottawa")));
    let rep = run_with(
        &ts,
        vec![vec![
            ip("24.114.254.2"),
            ip("202.97.10.1"),
            ip("202.97.10.9"),
        ]],
    );
    let d = &rep.diversions[0];
    assert_eq!(d.ingress.addr, ip("24.114.254.2"));
    assert_eq!(d.ingress.owner_rule, "alias-group");
    assert_eq!(d.ingress.router.len(), 3);
    // A port and a loopback, one in each space: a tie, unless Mercator showed which is
    // the router's own source address.
    let pair = vec![vec![ip("24.114.254.2"), ip("202.97.10.1")]];
    let mut d2 = Detector::new(adversary.clone());
    for v in vantages() {
        d2.set_vantage(v);
    }
    d2.set_aliases(pair);
    d2.set_router_sources([ip("202.97.10.1")]);
    for t in &ts {
        d2.ingest(t, &annot);
    }
    let rep = d2.report(&annot, &gaz, T0 + 1e6);
    assert_eq!(rep.diversions[0].ingress.owner_rule, "alias-group");
    assert_eq!(rep.diversions[0].ingress.addr, ip("24.114.254.2"));
    // A China Telecom-numbered port in a short episode (not stable, so the neighbour
    // rule alone would count it) whose router's other addresses are Telia's: not the
    // adversary's router, no diversion.
    let port = |r: u64| {
        trace(
            r,
            "toronto",
            DST,
            &[
                (Some("24.114.255.1"), 0.4),
                (Some("202.97.56.130"), 5.9),
                (Some("62.115.10.1"), 13.0),
                (Some(DST), 150.4),
            ],
        )
    };
    let mut ts2: Vec<Trace> = (0..3).map(|r| normal(r, "toronto")).collect();
    ts2.extend((3..5).map(port));
    assert_eq!(
        run_with(&ts2, vec![]).diversions.len(),
        1,
        "without aliases: reported"
    );
    let rep = run_with(
        &ts2,
        vec![vec![
            ip("202.97.56.130"),
            ip("62.115.10.5"),
            ip("62.115.10.6"),
        ]],
    );
    assert!(rep.diversions.is_empty(), "{:#?}", rep.diversions);
}

#[test]
fn a_diversion_that_shows_no_adversary_address_is_found_through_alias_groups() {
    // China Telecom's routers answer only from ports their neighbours numbered (or stay
    // silent): no hop is in adversary space, but alias resolution put 24.114.254.2 on a
    // router with China Telecom addresses.
    let hidden = |r: u64, dst: &str| {
        trace(
            r,
            "ottawa",
            dst,
            &[
                (Some("24.114.255.1"), 0.4),
                (Some("24.114.255.2"), 5.7),
                (Some("24.114.254.2"), 5.8),
                (None, 0.0),
                (Some("62.115.10.9"), 190.0),
                (Some("211.192.255.1"), 200.0),
                (Some(dst), 200.4),
            ],
        )
    };
    let mut ts: Vec<Trace> = (0..3).map(|r| normal(r, "ottawa")).collect();
    ts.extend((3..6).map(|r| hidden(r, DST)));
    ts.extend((6..8).map(|r| normal(r, "ottawa")));
    // The same routers on the way to a China Telecom destination: not a diversion.
    ts.extend((0..8).map(|r| hidden(r, "218.30.53.10")));
    let (annot, gaz) = (annotator(), Gazetteer::builtin());
    let report = |groups: Vec<Vec<IpAddr>>| {
        let mut d = Detector::new(Adversary::from_asns([4134]));
        for v in vantages() {
            d.set_vantage(v);
        }
        d.set_aliases(groups);
        d.set_router_sources([ip("202.97.10.1")]);
        for t in &ts {
            d.ingest(t, &annot);
        }
        d.report(&annot, &gaz, T0 + 1e6)
    };
    assert!(
        report(vec![]).diversions.is_empty(),
        "invisible without aliases"
    );
    let rep = report(vec![vec![ip("24.114.254.2"), ip("202.97.10.1")]]);
    assert_eq!(rep.diversions.len(), 1, "{:#?}", rep.diversions);
    let d = &rep.diversions[0];
    assert_eq!((d.target, d.rounds), (ip(DST), 3));
    assert_eq!(d.ingress.addr, ip("24.114.254.2"));
    assert_eq!(d.ingress.owner_rule, "alias-group");
    assert_eq!(d.adversary_asn, 4134);
    assert_eq!(d.handoff.addr, Some(ip("24.114.255.2")));
}

#[test]
fn a_silent_first_hop_hand_off_is_named_from_the_vantages_other_paths() {
    // The vantage's own router rate-limits its answers: silent on every diverted round
    // of this pair; another destination's clean path shows it at TTL 1.
    let div = |r: u64| {
        trace(
            r,
            "ottawa",
            DST,
            &[
                (None, 0.0),
                (Some("202.97.10.1"), 5.8),
                (Some("202.97.33.1"), 190.0),
                (Some(DST), 200.4),
            ],
        )
    };
    let mut ts: Vec<Trace> = (0..4).map(div).collect();
    ts.push(trace(
        0,
        "ottawa",
        "211.192.2.2",
        &[
            (Some("24.114.255.1"), 0.4),
            (Some("62.115.10.1"), 13.0),
            (Some("211.192.2.2"), 150.0),
        ],
    ));
    let rep = run(&ts);
    let d = &rep.diversions[0];
    assert_eq!(d.handoff.addr, Some(ip("24.114.255.1")));
    assert_eq!(d.handoff.method, "other-pair");
}

/// Ottawa → KT through a carrier whose core is numbered from unannounced space: a
/// load balancer at TTL 2 (10.5.0.1 or 10.6.0.1), the hand-off 10.7.0.1 at TTL 3.
fn via_diamond(round: u64, branch: &str, diverted: bool) -> Trace {
    let mut hops = vec![
        (Some("24.114.255.1"), 0.4),
        (Some(branch), 2.0),
        (Some("10.7.0.1"), 5.7),
    ];
    if diverted {
        hops.extend([
            (Some("202.97.10.1"), 5.8),
            (Some("202.97.10.5"), 66.0),
            (Some("211.192.255.1"), 200.0),
            (Some(DST), 200.4),
        ]);
    } else {
        hops.extend([
            (Some("62.115.10.1"), 13.0),
            (Some("211.192.255.1"), 150.0),
            (Some(DST), 150.4),
        ]);
    }
    trace(round, "ottawa", DST, &hops)
}

fn mda(round: u64, hops: &[(u8, &[&str])]) -> MdaTrace {
    MdaTrace {
        round,
        vantage: "ottawa".into(),
        dst: ip(DST),
        start: T0 + round as f64 * 10.0,
        hops: hops
            .iter()
            .map(|(t, a)| (*t, a.iter().map(|s| ip(s)).collect()))
            .collect(),
    }
}

fn run_with_mda(traces: &[Trace], mdas: &[MdaTrace]) -> DiversionReport {
    let annot = annotator();
    let mut d = Detector::new(Adversary::from_asns([4134]));
    for v in vantages() {
        d.set_vantage(v);
    }
    for m in mdas {
        d.ingest_mda(m, &annot);
    }
    for t in traces {
        d.ingest(t, &annot);
    }
    d.report(&annot, &Gazetteer::builtin(), T0 + 1e6)
}

#[test]
fn every_branch_of_a_multipath_trace_is_a_normal_path() {
    // Clean rounds all took branch 10.5.0.1; the diverted ones take 10.6.0.1.
    let mut ts: Vec<Trace> = (0..3).map(|r| via_diamond(r, "10.5.0.1", false)).collect();
    ts.extend((3..6).map(|r| via_diamond(r, "10.6.0.1", true)));
    // Without multipath knowledge, the unseen branch looks like where the path left its
    // normal route, and it is unannounced like an adversary's exchange port: it is
    // wrongly named the ingress.
    let without = run_with_mda(&ts, &[]);
    assert_eq!(without.diversions.len(), 1, "{:#?}", without.diversions);
    assert_eq!(without.diversions[0].ingress.addr, ip("10.6.0.1"));
    // Round 0's multipath trace found both branches: 10.6.0.1 is normal, the ingress is
    // China Telecom's first router and the hand-off the carrier's 10.7.0.1.
    let diamond = mda(
        0,
        &[
            (1, &["24.114.255.1"]),
            (2, &["10.5.0.1", "10.6.0.1"]),
            (3, &["10.7.0.1"]),
            (4, &["62.115.10.1"]),
            (5, &["211.192.255.1"]),
            (6, &[DST]),
        ],
    );
    let with = run_with_mda(&ts, std::slice::from_ref(&diamond));
    assert_eq!(with.diversions.len(), 1, "{:#?}", with.diversions);
    let d = &with.diversions[0];
    assert_eq!((d.first_round, d.last_round), (3, 5));
    assert_eq!(d.ingress.addr, ip("202.97.10.1"));
    assert_eq!(d.handoff.addr, Some(ip("10.7.0.1")));
    // Paris rounds that change branch without a diversion are no report at all.
    let flapping: Vec<Trace> = (0..8)
        .map(|r| via_diamond(r, ["10.5.0.1", "10.6.0.1"][r as usize % 2], false))
        .collect();
    assert!(run_with_mda(&flapping, &[diamond]).diversions.is_empty());
}

#[test]
fn a_multipath_trace_taken_during_a_diversion_teaches_nothing_past_the_border() {
    let mut ts: Vec<Trace> = (0..3).map(|r| via_diamond(r, "10.5.0.1", false)).collect();
    ts.extend((3..6).map(|r| via_diamond(r, "10.6.0.1", true)));
    // Round 3's multipath trace follows the diversion into China Telecom: the hops from
    // its first adversary TTL on are not learned as normal.
    let during = mda(
        3,
        &[
            (1, &["24.114.255.1"]),
            (2, &["10.5.0.1", "10.6.0.1"]),
            (3, &["10.7.0.1"]),
            (4, &["202.97.10.1"]),
            (5, &["202.97.10.5"]),
            (6, &["211.192.255.1"]),
        ],
    );
    let rep = run_with_mda(&ts, &[during]);
    assert_eq!(rep.diversions.len(), 1, "{:#?}", rep.diversions);
    let d = &rep.diversions[0];
    assert_eq!(d.ingress.addr, ip("202.97.10.1"));
    assert_eq!(d.handoff.addr, Some(ip("10.7.0.1")));
    assert_eq!(d.handoff.method, "answered");
}

#[test]
fn a_silent_adversary_round_on_another_branch_stays_in_the_episode() {
    // Round 4 took the other branch and China Telecom's routers stayed silent: without
    // multipath knowledge it differs from the diverted rounds at TTL 2 and splits the
    // episode; with it, it is the same route.
    let mut ts: Vec<Trace> = (0..3).map(|r| via_diamond(r, "10.5.0.1", false)).collect();
    ts.push(via_diamond(3, "10.6.0.1", true));
    ts.push(trace(
        4,
        "ottawa",
        DST,
        &[
            (Some("24.114.255.1"), 0.4),
            (Some("10.5.0.1"), 2.0),
            (Some("10.7.0.1"), 5.7),
            (None, 0.0),
            (None, 0.0),
            (Some("211.192.255.1"), 200.0),
            (Some(DST), 200.4),
        ],
    ));
    ts.push(via_diamond(5, "10.6.0.1", true));
    let diamond = mda(0, &[(1, &["24.114.255.1"]), (2, &["10.5.0.1", "10.6.0.1"])]);
    let without = run_with_mda(&ts, &[]);
    assert_eq!(without.diversions.len(), 2, "{:#?}", without.diversions);
    let with = run_with_mda(&ts, &[diamond]);
    assert_eq!(with.diversions.len(), 1, "{:#?}", with.diversions);
    assert_eq!(with.diversions[0].rounds, 3);
}

#[test]
fn multipath_branches_survive_a_checkpoint() {
    // A detector saved after the multipath trace and restored before the diverted rounds
    // still knows both branches: the ingress is China Telecom's router, not 10.6.0.1.
    let annot = annotator();
    let adversary = Adversary::from_asns([4134]);
    let mut d = Detector::new(adversary.clone());
    for v in vantages() {
        d.set_vantage(v);
    }
    let diamond = mda(
        0,
        &[
            (1, &["24.114.255.1"]),
            (2, &["10.5.0.1", "10.6.0.1"]),
            (3, &["10.7.0.1"]),
        ],
    );
    d.ingest_mda(&diamond, &annot);
    for r in 0..3 {
        d.ingest(&via_diamond(r, "10.5.0.1", false), &annot);
    }
    let mut restored = Detector::from_checkpoint(&adversary, &d.checkpoint()).unwrap();
    for r in 3..6 {
        restored.ingest(&via_diamond(r, "10.6.0.1", true), &annot);
    }
    let rep = restored.report(&annot, &Gazetteer::builtin(), T0 + 1e6);
    assert_eq!(rep.diversions.len(), 1, "{:#?}", rep.diversions);
    assert_eq!(rep.diversions[0].ingress.addr, ip("202.97.10.1"));
    assert_eq!(rep.diversions[0].handoff.addr, Some(ip("10.7.0.1")));
}
