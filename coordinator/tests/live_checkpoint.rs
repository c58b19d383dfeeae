//! The detector checkpoint of `serve --adversary` through the library path serve uses
//! (`live_checkpoint::load_blocking` / `save_blocking`, `live::replay_all`) on a real
//! sled store reopened between "runs": a restart from the checkpoint reports exactly
//! what a full replay of the store reports.

// Helpers outside #[test] functions unwrap too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use common::annotator;
use tracemesh::annotate::Annotator;
use tracemesh::detect::{Adversary, Detector};
use tracemesh::geo::Gazetteer;
use tracemesh::live::replay_all;
use tracemesh::live_checkpoint::{Loaded, load_blocking, save_blocking};
use tracemesh::store::{AgentMeta, AgentRecord, Checkpoint, SledStore, Store};
use tracemesh_proto::v1;

const T0: f64 = 1_700_000_000.0;
const DST: &str = "211.192.1.10";
const FP: &str = "asns=4134;cc=;annot=test";

const VANTAGES: [(&str, f64, f64); 3] = [
    ("ottawa", 45.42, -75.70),
    ("toronto", 43.65, -79.38),
    ("montreal", 45.50, -73.57),
];

/// Episodes: ottawa before the checkpoint, toronto across it, montreal after it.
fn diverted(v: usize, round: u32) -> bool {
    match v {
        0 => (40..46).contains(&round),
        1 => (190..212).contains(&round),
        _ => (250..261).contains(&round),
    }
}

fn record(v: usize, round: u32) -> v1::TraceRecord {
    let (name, _, _) = VANTAGES[v];
    let jitter = f64::from((round * 7 + v as u32 * 3) % 11) / 10.0;
    let mut hops: Vec<(Option<&str>, f64)> = if diverted(v, round) {
        vec![
            (Some("24.114.255.1"), 0.4),
            (Some("24.114.255.2"), 5.7),
            (Some("202.97.10.1"), 5.8),
            (Some("202.97.10.5"), 66.0),
            (Some("202.97.33.1"), 190.0),
            (Some("211.192.255.1"), 200.0),
            (Some(DST), 200.4),
        ]
    } else {
        vec![
            (Some("24.114.255.1"), 0.4),
            (Some("24.114.255.2"), 5.7),
            (Some("62.115.10.1"), 13.0),
            (Some("211.192.255.1"), 150.0),
            (Some(DST), 150.4),
        ]
    };
    // Now and then a silent hop: clean rounds then fall into many runs, which the
    // detector folds once they are old, so the checkpoint holds folded state.
    if round % 5 == 3 {
        hops[2].0 = None;
    }
    v1::TraceRecord {
        result_id: format!("c1/{round}/{DST}"),
        campaign_id: "c1".into(),
        round,
        vantage: name.into(),
        dst: DST.into(),
        start: T0 + f64::from(round) * 900.0 + v as f64,
        probes_sent: hops.len() as u32,
        hops: hops
            .iter()
            .enumerate()
            .map(|(i, (a, r))| v1::Hop {
                ttl: i as u32 + 1,
                addr: a.map(str::to_owned),
                rtt_ms: a.map(|_| r + jitter),
                icmp_type: Some(11),
                probes: 1,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// One ingest group per round, as the ingest writer would store a round's uploads.
fn ingest_rounds(store: &SledStore, rounds: std::ops::Range<u32>) {
    for round in rounds {
        let batch: Vec<v1::TraceRecord> = (0..VANTAGES.len()).map(|v| record(v, round)).collect();
        for o in store.ingest_many(&batch).unwrap() {
            o.unwrap();
        }
    }
    store.flush().unwrap();
}

fn open_with_agents(dir: &std::path::Path) -> SledStore {
    let store = SledStore::open(dir).unwrap();
    for (name, lat, lon) in VANTAGES {
        store
            .put_agent(&AgentRecord {
                meta: AgentMeta {
                    name: name.into(),
                    country: "CA".into(),
                    loc: Some((lat, lon)),
                    asn: Some(812),
                    ..AgentMeta::default()
                },
                enrolled_at_ns: 0,
                cert_sha256: String::new(),
                agent_version: String::new(),
                hostname: String::new(),
                last_seen_ns: None,
                mesh_addr: None,
            })
            .unwrap();
    }
    store
}

fn adversary() -> Adversary {
    Adversary::from_asns([4134])
}

fn load(store: &SledStore, annot: &Annotator, fp: &str) -> Loaded {
    load_blocking(store, &adversary(), annot, fp, || {
        replay_all(store, adversary(), annot)
    })
    .unwrap()
}

fn report_json(det: &Detector, annot: &Annotator) -> String {
    let r = det.report(annot, &Gazetteer::builtin(), T0 + 1e6);
    serde_json::to_string(&r).unwrap()
}

fn full_replay(store: &SledStore, annot: &Annotator) -> String {
    report_json(&replay_all(store, adversary(), annot).unwrap().0, annot)
}

#[test]
fn a_restart_from_the_checkpoint_reports_what_a_full_replay_reports() {
    let dir = tempfile::tempdir().unwrap();
    let annot = annotator();

    // First run: 200 rounds stored, nothing saved yet, so a full replay; then saved.
    let store = open_with_agents(dir.path());
    ingest_rounds(&store, 0..200);
    let first = load(&store, &annot, FP);
    assert!(!first.from_checkpoint);
    assert_eq!(first.position, 200, "one ingest group per round");
    let (_, saved_at) = save_blocking(&store, first.det, &annot, first.position, FP).unwrap();
    assert_eq!(saved_at, 200);
    // More rounds arrive after the save; the coordinator then stops without saving.
    ingest_rounds(&store, 200..300);
    drop(store);

    // Restart on the reopened store: the checkpoint, plus only what came after it.
    let store = SledStore::open(dir.path()).unwrap();
    let restarted = load(&store, &annot, FP);
    assert!(restarted.from_checkpoint);
    assert_eq!(restarted.replayed, 100 * VANTAGES.len() as u64);
    assert_eq!(restarted.position, 300);
    let from_checkpoint = report_json(&restarted.det, &annot);
    let full = full_replay(&store, &annot);
    assert_eq!(from_checkpoint, full);
    let report: serde_json::Value = serde_json::from_str(&full).unwrap();
    let spans: Vec<(String, u64, u64)> = report["diversions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["vantage"].as_str().unwrap().to_owned(),
                d["first_round"].as_u64().unwrap(),
                d["last_round"].as_u64().unwrap(),
            )
        })
        .collect();
    for want in [
        ("ottawa", 40, 45),
        ("toronto", 190, 211),
        ("montreal", 250, 260),
    ] {
        assert!(
            spans.contains(&(want.0.to_owned(), want.1, want.2)),
            "{want:?} not in {spans:?}"
        );
    }
    // Published records are kept in the store, one per episode, as JSON.
    let r = restarted
        .det
        .report(&annot, &Gazetteer::builtin(), T0 + 1e6);
    let refs: Vec<_> = r.diversions.iter().collect();
    tracemesh::live_checkpoint::store_records(&store, &refs);
    tracemesh::live_checkpoint::store_records(&store, &refs);
    let mut kept = Vec::new();
    store
        .for_each_diversion_record(&mut |k, v| {
            let d: serde_json::Value = serde_json::from_slice(v).unwrap();
            kept.push((k.to_owned(), d["first_round"].as_u64().unwrap()));
            true
        })
        .unwrap();
    assert_eq!(kept.len(), r.diversions.len());
    assert!(
        kept.contains(&("toronto|211.192.1.10|00000000000000000190".into(), 190)),
        "{kept:?}"
    );
    // The checkpoint holds folded history, not every round.
    let size = restarted.det.state_size();
    assert!(size.folded_rounds > 0, "{size:?}");

    // Traces the detector never got (the live broadcast dropped them): the next save
    // reads them back from the store, so the checkpoint covers them.
    ingest_rounds(&store, 300..320);
    let (det, at) = save_blocking(&store, restarted.det, &annot, restarted.position, FP).unwrap();
    assert_eq!(at, 320);
    assert_eq!(report_json(&det, &annot), full_replay(&store, &annot));
    let cp = store.get_checkpoint().unwrap().unwrap();
    assert_eq!((cp.position, cp.fingerprint.as_str()), (320, FP));
    let again = load(&store, &annot, FP);
    assert!(again.from_checkpoint);
    assert_eq!(again.replayed, 0);
    assert_eq!(report_json(&again.det, &annot), full_replay(&store, &annot));
}

#[test]
fn another_annotation_or_a_damaged_checkpoint_means_a_full_replay() {
    let dir = tempfile::tempdir().unwrap();
    let annot = annotator();
    let store = open_with_agents(dir.path());
    ingest_rounds(&store, 0..80);
    let first = load(&store, &annot, FP);
    save_blocking(&store, first.det, &annot, first.position, FP).unwrap();
    let full = full_replay(&store, &annot);

    let other = load(&store, &annot, "asns=4134;cc=;annot=other");
    assert!(!other.from_checkpoint);
    assert_eq!(report_json(&other.det, &annot), full);

    let mut cp = store.get_checkpoint().unwrap().unwrap();
    cp.state.truncate(cp.state.len() / 2);
    store.put_checkpoint(&cp).unwrap();
    let damaged = load(&store, &annot, FP);
    assert!(!damaged.from_checkpoint);
    assert_eq!(report_json(&damaged.det, &annot), full);

    // The state of another adversary is refused even under a matching fingerprint.
    let mut det = Detector::new(Adversary::from_asns([64_500]));
    det.set_vantage(tracemesh::detect::VantageInfo {
        name: "x".into(),
        loc: None,
        country: None,
        asn: None,
    });
    store
        .put_checkpoint(&Checkpoint {
            position: 80,
            fingerprint: FP.into(),
            written_at_ns: 0,
            state: det.checkpoint(),
        })
        .unwrap();
    assert!(!load(&store, &annot, FP).from_checkpoint);
}

/// Ottawa → KT through a load balancer at TTL 2 (10.5.0.1 or 10.6.0.1, unannounced like
/// the hand-off 10.7.0.1), as `detect_logic.rs` has it, stored one ingest group a round.
fn ingest_diamond(store: &SledStore, rounds: std::ops::Range<u32>, branch: &str, div: bool) {
    for round in rounds {
        let mut hops = vec![("24.114.255.1", 0.4), (branch, 2.0), ("10.7.0.1", 5.7)];
        if div {
            hops.extend([
                ("202.97.10.1", 5.8),
                ("202.97.10.5", 66.0),
                ("211.192.255.1", 200.0),
                (DST, 200.4),
            ]);
        } else {
            hops.extend([
                ("62.115.10.1", 13.0),
                ("211.192.255.1", 150.0),
                (DST, 150.4),
            ]);
        }
        let rec = v1::TraceRecord {
            result_id: format!("c1/{round}/{DST}"),
            campaign_id: "c1".into(),
            round,
            vantage: "ottawa".into(),
            dst: DST.into(),
            start: T0 + f64::from(round) * 900.0,
            probes_sent: hops.len() as u32,
            hops: hops
                .iter()
                .enumerate()
                .map(|(i, (a, r))| v1::Hop {
                    ttl: i as u32 + 1,
                    addr: Some((*a).to_owned()),
                    rtt_ms: Some(*r),
                    icmp_type: Some(11),
                    probes: 1,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        for o in store.ingest_many(&[rec]).unwrap() {
            o.unwrap();
        }
    }
    store.flush().unwrap();
}

#[test]
fn a_multipath_trace_stored_after_the_checkpoint_is_taken_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    let annot = annotator();
    let store = open_with_agents(dir.path());
    ingest_diamond(&store, 0..3, "10.5.0.1", false);
    let first = load(&store, &annot, FP);
    save_blocking(&store, first.det, &annot, first.position, FP).unwrap();
    // After the save: round 0's multipath trace (both branches), then the diverted
    // rounds on the branch no Paris round took.
    let iface = |a: &str| v1::MdaInterface {
        addr: a.into(),
        flows: 8,
        ..Default::default()
    };
    let hops = [
        (1, vec!["24.114.255.1"]),
        (2, vec!["10.5.0.1", "10.6.0.1"]),
        (3, vec!["10.7.0.1"]),
        (4, vec!["62.115.10.1"]),
    ];
    store
        .put_mda_result(&v1::MdaResult {
            result_id: tracemesh_proto::mda_result_id("c1", 0, DST),
            campaign_id: "c1".into(),
            vantage: "ottawa".into(),
            dst: DST.into(),
            start: T0 + 1.0,
            hops: hops
                .into_iter()
                .map(|(ttl, addrs)| v1::MdaHop {
                    ttl,
                    interfaces: addrs.into_iter().map(iface).collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .unwrap();
    ingest_diamond(&store, 3..6, "10.6.0.1", true);
    let restarted = load(&store, &annot, FP);
    assert!(restarted.from_checkpoint);
    let r = restarted
        .det
        .report(&annot, &Gazetteer::builtin(), T0 + 1e6);
    assert_eq!(r.diversions.len(), 1, "{:#?}", r.diversions);
    // Without the multipath trace the unseen branch 10.6.0.1 would be named the ingress.
    assert_eq!(r.diversions[0].ingress.addr.to_string(), "202.97.10.1");
}
