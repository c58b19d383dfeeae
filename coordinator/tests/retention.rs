//! Retention on a real sled store: traces older than the window go to Parquet archives
//! and leave the store; nothing newer, nothing un-archived, nothing the detector
//! checkpoint does not cover; detection over archive + store reports what it reported
//! before the sweep; compaction gives the space back.

// Helpers outside #[test] functions unwrap too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use common::annotator;
use tracemesh::annotate::Annotator;
use tracemesh::detect::{Adversary, Detector, Trace};
use tracemesh::geo::Gazetteer;
use tracemesh::store::{Checkpoint, SledStore, Store, TraceQuery};
use tracemesh_proto::v1;

const DAY: f64 = 86_400.0;
const DST: [&str; 2] = ["211.192.1.10", "211.192.7.20"];
const VANTAGES: [&str; 3] = ["ottawa", "toronto", "montreal"];
/// Rounds every 6 hours over 40 days.
const ROUNDS: u32 = 160;

fn now() -> f64 {
    tracemesh::server::now_ns() as f64 / 1e9
}

/// Episodes: one 35 days ago (archived by a 30-day sweep), one across the cut, one
/// recent.
fn diverted(v: usize, round: u32) -> bool {
    match v {
        0 => (20..26).contains(&round),
        1 => (36..48).contains(&round),
        _ => (140..150).contains(&round),
    }
}

fn record(t0: f64, v: usize, d: usize, round: u32) -> v1::TraceRecord {
    let dst = DST[d];
    let hops: Vec<(Option<&str>, f64)> = if diverted(v, round) {
        vec![
            (Some("24.114.255.1"), 0.4),
            (Some("24.114.255.2"), 5.7),
            (Some("202.97.10.1"), 5.8),
            (Some("202.97.33.1"), 190.0),
            (Some(dst), 200.4),
        ]
    } else {
        vec![
            (Some("24.114.255.1"), 0.4),
            (
                if round % 4 == 1 {
                    None
                } else {
                    Some("24.114.255.2")
                },
                5.7,
            ),
            (Some("62.115.10.1"), 13.0),
            (Some(dst), 150.4),
        ]
    };
    v1::TraceRecord {
        result_id: format!("c1/{round}/{dst}"),
        campaign_id: "c1".into(),
        round,
        vantage: VANTAGES[v].into(),
        dst: dst.into(),
        start: t0 + f64::from(round) * DAY / 4.0 + v as f64,
        probes_sent: hops.len() as u32,
        hops: hops
            .iter()
            .enumerate()
            .map(|(i, (a, r))| v1::Hop {
                ttl: i as u32 + 1,
                addr: a.map(str::to_owned),
                rtt_ms: a.map(|_| *r + f64::from(round % 3) / 10.0),
                icmp_type: Some(11),
                icmp_code: Some(0),
                probes: 2,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn fill(store: &SledStore, t0: f64) -> u64 {
    let mut n = 0;
    for round in 0..ROUNDS {
        let batch: Vec<v1::TraceRecord> = (0..VANTAGES.len())
            .flat_map(|v| (0..DST.len()).map(move |d| (v, d)))
            .map(|(v, d)| record(t0, v, d, round))
            .collect();
        for o in store.ingest_many(&batch).unwrap() {
            o.unwrap();
        }
        n += batch.len() as u64;
    }
    store.flush().unwrap();
    n
}

fn all(store: &SledStore) -> Vec<v1::TraceRecord> {
    store.query_traces(&TraceQuery::default()).unwrap()
}

fn report(traces: impl IntoIterator<Item = v1::TraceRecord>, annot: &Annotator) -> String {
    let mut det = Detector::new(Adversary::from_asns([4134]));
    for t in traces {
        det.ingest(&Trace::from_record(&t).unwrap(), annot);
    }
    let r = det.report(annot, &Gazetteer::builtin(), now());
    serde_json::to_string(&r).unwrap()
}

#[test]
fn a_sweep_archives_then_deletes_and_detection_over_both_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let archive = dir.path().join("archive");
    let annot = annotator();
    // Half a round off the cut: the sweep rounds it down to the index's 10 s buckets.
    let t0 = now() - 40.0 * DAY + DAY / 8.0;
    let store = SledStore::open(&db).unwrap();
    let stored = fill(&store, t0);
    let before_sweep = all(&store);
    assert_eq!(before_sweep.len() as u64, stored);
    let expected = report(before_sweep.clone(), &annot);
    assert!(expected.contains("\"first_round\":20"), "{expected}");

    let cut_ns = tracemesh::server::now_ns() - 30 * 86_400 * 1_000_000_000;
    let swept = tracemesh::retention::sweep(&store, &archive, cut_ns, false, &mut |_| {}).unwrap();
    let c = swept.counts;
    assert_eq!(c.archived, c.deleted);
    let due = before_sweep
        .iter()
        .filter(|t| t.start * 1e9 < cut_ns as f64)
        .count() as u64;
    assert_eq!(c.deleted, due);
    assert!(due > 200 && due < stored, "{due} of {stored}");
    let left = all(&store);
    assert_eq!(left.len() as u64, stored - due);
    assert!(left.iter().all(|t| t.start * 1e9 >= cut_ns as f64));
    // Every index forgot them too: per vantage and per destination queries agree.
    for v in VANTAGES {
        let q = TraceQuery {
            vantage: Some(v.into()),
            ..TraceQuery::default()
        };
        let n = store.query_traces(&q).unwrap().len();
        assert_eq!(n, left.iter().filter(|t| t.vantage == v).count());
    }

    // The archive holds exactly what left, field for field.
    let mut archived = Vec::new();
    let n = tracemesh::archive::read(&archive, &mut |t| archived.push(t)).unwrap();
    assert_eq!(n, c.archived);
    let key = |t: &v1::TraceRecord| (t.vantage.clone(), t.dst.clone(), t.round);
    let mut gone: Vec<v1::TraceRecord> = before_sweep
        .iter()
        .filter(|t| t.start * 1e9 < cut_ns as f64)
        .cloned()
        .collect();
    gone.sort_by_key(key);
    archived.sort_by_key(key);
    assert_eq!(archived, gone);
    let partitions: Vec<String> = tracemesh::archive::files(&archive)
        .unwrap()
        .iter()
        .map(|p| {
            p.parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert!(
        partitions.iter().all(|p| p.starts_with("date=")),
        "{partitions:?}"
    );
    assert!(partitions.len() >= 10, "{partitions:?}");

    // Detection over archive + live store: the same report as before the sweep.
    assert_eq!(report(archived.into_iter().chain(left), &annot), expected);

    // A second sweep has nothing left to do.
    let again = tracemesh::retention::sweep(&store, &archive, cut_ns, false, &mut |_| {}).unwrap();
    assert_eq!((again.counts.archived, again.counts.deleted), (0, 0));

    // Compaction: the store in fresh files, the same traces, no more bytes than before.
    drop(store);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (bytes_before, bytes_after) = tracemesh::retention::compact(&db).unwrap();
    assert!(
        bytes_after <= bytes_before,
        "{bytes_after} > {bytes_before}"
    );
    let store = SledStore::open(&db).unwrap();
    assert_eq!(all(&store).len() as u64, stored - due);
}

#[test]
fn a_sweep_keeps_what_the_checkpoint_does_not_cover() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(&dir.path().join("db")).unwrap();
    let archive = dir.path().join("archive");
    let stored = fill(&store, now() - 40.0 * DAY);
    let cut_ns = tracemesh::server::now_ns() - 30 * 86_400 * 1_000_000_000;
    // Live detection on and no checkpoint saved yet: nothing may go.
    let r = tracemesh::retention::sweep(&store, &archive, cut_ns, true, &mut |_| {}).unwrap();
    assert_eq!((r.counts.archived, r.counts.deleted), (0, 0));
    assert_eq!(all(&store).len() as u64, stored);
    // A checkpoint covering the first 10 rounds (one ingest group each): only those.
    store
        .put_checkpoint(&Checkpoint {
            position: 10,
            fingerprint: "f".into(),
            written_at_ns: 0,
            state: Vec::new(),
        })
        .unwrap();
    let r = tracemesh::retention::sweep(&store, &archive, cut_ns, true, &mut |_| {}).unwrap();
    assert_eq!(r.below_group, 10);
    assert_eq!(r.counts.deleted, 10 * (VANTAGES.len() * DST.len()) as u64);
    assert!(all(&store).iter().all(|t| t.round >= 10));
}

#[test]
fn an_archive_that_cannot_be_written_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(&dir.path().join("db")).unwrap();
    let stored = fill(&store, now() - 40.0 * DAY);
    // A file where the archive directory should be.
    let archive = dir.path().join("not-a-dir");
    std::fs::write(&archive, b"x").unwrap();
    let cut_ns = tracemesh::server::now_ns() - 30 * 86_400 * 1_000_000_000;
    let e = tracemesh::retention::sweep(&store, &archive, cut_ns, false, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("not-a-dir"), "{e}");
    assert_eq!(all(&store).len() as u64, stored);
}
