//! Retention sweeps every raw kind, not traces alone: mesh samples, alias results and
//! multipath traces older than the window go to the archive (`KIND-*.pb.gz` in the
//! date partitions) and leave the store; `tracemesh retain --json` counts them; the
//! archive gives them back field for field; what the detector checkpoint does not
//! cover stays.

// Helpers outside #[test] functions unwrap too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use tracemesh::store::{Checkpoint, ResultKind, SledStore, Store};
use tracemesh_proto::v1;

const DAY_NS: i64 = 86_400 * 1_000_000_000;
const ROUNDS: u32 = 40;

/// Round r measured 40 - r days ago (rounds 0..10 older than 30 days).
fn at_ns(round: u32) -> i64 {
    tracemesh::server::now_ns() - i64::from(40 - round) * DAY_NS + 3_600_000_000_000
}

fn mesh(round: u32, src: &str) -> v1::MeshSample {
    v1::MeshSample {
        result_id: format!("m/{round}/mesh/{src}"),
        campaign_id: "m".into(),
        round,
        src: src.into(),
        dst: "b".into(),
        src_addr: "192.0.2.1".into(),
        dst_addr: "192.0.2.2".into(),
        sent: 20,
        received: 19,
        owd_min_ns: Some(1_500_000 + i64::from(round)),
        owd_median_ns: Some(1_700_000),
        clock_error_ns: 40_000,
        at_ns: at_ns(round),
        received_at_ns: at_ns(round) + 1_000_000_000,
    }
}

fn alias(round: u32, vantage: &str) -> v1::AliasResult {
    v1::AliasResult {
        result_id: format!("a/{round}/alias"),
        campaign_id: "a".into(),
        round,
        vantage: vantage.into(),
        start: at_ns(round) as f64 / 1e9,
        probes_sent: 12,
        addrs: vec![v1::AliasAddr {
            addr: "198.51.100.1".into(),
            probes: 6,
            mercator_probed: true,
            mercator_from: Some("198.51.100.2".into()),
            ..Default::default()
        }],
        groups: vec![v1::AliasGroup {
            addrs: vec!["198.51.100.1".into(), "198.51.100.2".into()],
            ..Default::default()
        }],
        received_at_ns: at_ns(round) + 2_000_000_000,
        ..Default::default()
    }
}

fn mda(round: u32, dst: &str) -> v1::MdaResult {
    v1::MdaResult {
        result_id: format!("d/{round}/mda/{dst}"),
        campaign_id: "d".into(),
        round,
        vantage: "v1".into(),
        dst: dst.into(),
        confidence: 95,
        stop_reason: "completed".into(),
        start: at_ns(round) as f64 / 1e9,
        probes_sent: 30,
        flows: 6,
        hops: vec![v1::MdaHop {
            ttl: 1,
            interfaces: vec![v1::MdaInterface {
                addr: "203.0.113.1".into(),
                flows: 6,
                rtt_ms: 1.25,
                icmp_type: Some(11),
                icmp_code: Some(0),
                reply_ttl: 255,
            }],
            stars: 0,
            probes: 6,
        }],
        links: vec![v1::MdaLink {
            ttl: 1,
            from: "203.0.113.1".into(),
            to: dst.into(),
        }],
        received_at_ns: at_ns(round) + 3_000_000_000,
        ..Default::default()
    }
}

/// Per round: 3 mesh samples, 2 alias results, 2 multipath traces.
fn fill(store: &SledStore) {
    for r in 0..ROUNDS {
        for src in ["a", "c", "d"] {
            store.put_mesh_sample(&mesh(r, src)).unwrap();
        }
        for v in ["v1", "v2"] {
            store.put_alias_result(&alias(r, v)).unwrap();
        }
        for d in ["203.0.113.9", "203.0.113.10"] {
            store.put_mda_result(&mda(r, d)).unwrap();
        }
    }
    store.flush().unwrap();
}

fn stored(
    store: &SledStore,
) -> (
    Vec<v1::MeshSample>,
    Vec<v1::AliasResult>,
    Vec<v1::MdaResult>,
) {
    let (mut m, mut a, mut d) = (Vec::new(), Vec::new(), Vec::new());
    store
        .for_each_mesh_sample(None, &mut |x| {
            m.push(x);
            true
        })
        .unwrap();
    store
        .for_each_alias_result(None, &mut |x| {
            a.push(x);
            true
        })
        .unwrap();
    store
        .for_each_mda_result(None, &mut |x| {
            d.push(x);
            true
        })
        .unwrap();
    (m, a, d)
}

fn sorted<T: Clone>(v: &[T], key: impl Fn(&T) -> String) -> Vec<T> {
    let mut v = v.to_vec();
    v.sort_by_key(|x| key(x));
    v
}

#[test]
fn retain_archives_and_deletes_every_raw_kind_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let archive = dir.path().join("archive");
    let db = tracemesh::server::DataDir(data.clone()).db_dir();
    let (m0, a0, d0) = {
        let store = SledStore::open(&db).unwrap();
        fill(&store);
        stored(&store)
    };
    assert_eq!((m0.len(), a0.len(), d0.len()), (120, 80, 80));
    std::thread::sleep(std::time::Duration::from_millis(300));

    // As an operator runs it (the coordinator stopped).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tracemesh"))
        .arg("--data")
        .arg(&data)
        .args(["retain", "--older-than", "30d", "--json", "--archive"])
        .arg(&archive)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Rounds 0..10 are older than 30 days.
    assert_eq!(j["mesh_samples"], 30, "{j}");
    assert_eq!(j["alias_results"], 20, "{j}");
    assert_eq!(j["mda_results"], 20, "{j}");
    assert_eq!(j["archived"], 0, "{j}");

    let store = SledStore::open(&db).unwrap();
    let (m1, a1, d1) = stored(&store);
    assert!(m1.iter().all(|x| x.round >= 10) && m1.len() == 90);
    assert!(a1.iter().all(|x| x.round >= 10) && a1.len() == 60);
    assert!(d1.iter().all(|x| x.round >= 10) && d1.len() == 60);

    // The archive holds exactly what left, field for field.
    let (mut m2, mut a2, mut d2) = (Vec::new(), Vec::new(), Vec::new());
    let n = tracemesh::archive::read_results(&archive, ResultKind::Mesh, &mut |x| m2.push(x));
    assert_eq!(n.unwrap(), 30);
    tracemesh::archive::read_results(&archive, ResultKind::Alias, &mut |x| a2.push(x)).unwrap();
    tracemesh::archive::read_results(&archive, ResultKind::Mda, &mut |x| d2.push(x)).unwrap();
    let old = |r: u32| r < 10;
    let mk = |x: &v1::MeshSample| format!("{}/{}", x.result_id, x.src);
    let ak = |x: &v1::AliasResult| format!("{}/{}", x.round, x.vantage);
    let dk = |x: &v1::MdaResult| x.result_id.clone();
    let m_old: Vec<_> = m0.iter().filter(|x| old(x.round)).cloned().collect();
    let a_old: Vec<_> = a0.iter().filter(|x| old(x.round)).cloned().collect();
    let d_old: Vec<_> = d0.iter().filter(|x| old(x.round)).cloned().collect();
    assert_eq!(sorted(&m2, mk), sorted(&m_old, mk));
    assert_eq!(sorted(&a2, ak), sorted(&a_old, ak));
    assert_eq!(sorted(&d2, dk), sorted(&d_old, dk));
    // In the date partitions beside the traces' Parquet, one file kind each.
    let partitions = std::fs::read_dir(&archive).unwrap().count();
    assert_eq!(partitions, 10);
    assert_eq!(tracemesh::archive::files(&archive).unwrap().len(), 0);

    // Nothing left to do the second time.
    let again = tracemesh::retention::sweep(
        &store,
        &archive,
        tracemesh::server::now_ns() - 30 * DAY_NS,
        false,
        &mut |_| {},
    )
    .unwrap();
    let c = again.counts;
    assert_eq!((c.mesh_samples, c.alias_results, c.mda_results), (0, 0, 0));
}

#[test]
fn results_the_checkpoint_does_not_cover_stay() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(&dir.path().join("db")).unwrap();
    let archive = dir.path().join("archive");
    fill(&store);
    let cut = tracemesh::server::now_ns() - 30 * DAY_NS;
    // Live detection on and no checkpoint yet: nothing goes.
    let r = tracemesh::retention::sweep(&store, &archive, cut, true, &mut |_| {}).unwrap();
    let c = r.counts;
    assert_eq!((c.mesh_samples, c.alias_results, c.mda_results), (0, 0, 0));
    // A checkpoint written when rounds 0..5 were stored: only those go.
    store
        .put_checkpoint(&Checkpoint {
            position: 0,
            fingerprint: "f".into(),
            written_at_ns: at_ns(5),
            state: Vec::new(),
        })
        .unwrap();
    let r = tracemesh::retention::sweep(&store, &archive, cut, true, &mut |_| {}).unwrap();
    let c = r.counts;
    assert_eq!(
        (c.mesh_samples, c.alias_results, c.mda_results),
        (15, 10, 10)
    );
    let (m, a, d) = stored(&store);
    assert!(m.iter().all(|x| x.round >= 5));
    assert!(a.iter().all(|x| x.round >= 5) && d.iter().all(|x| x.round >= 5));
}
