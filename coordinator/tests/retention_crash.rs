//! A retention sweep killed with SIGKILL (a real child process) at each point of a
//! chunk's way out — staged, journalled, published; and once after publishing a chunk
//! of mesh samples — and then a sweep again: every trace and sample that was due is in
//! the archive exactly once and in the store no more.

// Helpers outside #[test] functions unwrap too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::Path;

use tracemesh::archive::Archive;
use tracemesh::store::{ChunkArchive, ResultKind, SledStore, Store, StoreError, TraceQuery};
use tracemesh_proto::v1;

const GROUPS: u32 = 20;
const PER_GROUP: u32 = 100;
/// Traces per chunk: a dozen chunks over the due traces.
const CHUNK: usize = 150;
const DAY_NS: i64 = 86_400 * 1_000_000_000;

fn cut_ns() -> i64 {
    tracemesh::server::now_ns() - 30 * DAY_NS
}

/// Rounds 0..15 forty days old (due), the rest recent (kept).
fn group(g: u32) -> Vec<v1::TraceRecord> {
    let now = tracemesh::server::now_ns() as f64 / 1e9;
    let t0 = if g < 15 {
        now - 40.0 * 86_400.0
    } else {
        now - 3600.0
    };
    (0..PER_GROUP)
        .map(|i| {
            let dst = format!("10.0.{g}.{i}");
            v1::TraceRecord {
                result_id: tracemesh_proto::result_id("c1", g, &dst),
                campaign_id: "c1".into(),
                round: g,
                vantage: format!("v{}", i % 4),
                start: t0 + f64::from(g) * 60.0 + f64::from(i) * 0.01,
                dst,
                probes_sent: 1,
                hops: vec![v1::Hop {
                    ttl: 1,
                    addr: Some("192.0.2.1".into()),
                    rtt_ms: Some(1.5),
                    probes: 1,
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
        .collect()
}

/// A mesh sample of round `g`, measured when that round's traces started.
fn mesh(g: u32) -> v1::MeshSample {
    let start = group(g)[0].start;
    v1::MeshSample {
        result_id: format!("c1/{g}/mesh/a"),
        campaign_id: "c1".into(),
        round: g,
        src: "a".into(),
        dst: "b".into(),
        sent: 10,
        received: 10,
        at_ns: (start * 1e9) as i64,
        received_at_ns: (start * 1e9) as i64,
        ..Default::default()
    }
}

/// Archives through the real `Archive`, and stops dead (waiting for its SIGKILL) at
/// `at` of the third chunk.
struct Stopping {
    inner: Archive,
    at: String,
    chunks: u32,
    /// The chunk being published is another kind's (mesh samples here).
    encoded: bool,
}

impl Stopping {
    fn stop_if(&self, point: &str) {
        if self.at == point && self.chunks == 2 {
            println!("stopped {point}");
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
    }
}

impl ChunkArchive for Stopping {
    fn stage(&mut self, name: &str, traces: &[v1::TraceRecord]) -> Result<Vec<String>, StoreError> {
        let files = ChunkArchive::stage(&mut self.inner, name, traces)?;
        self.stop_if("staged");
        Ok(files)
    }
    fn publish(&mut self, files: &[String]) -> Result<(), StoreError> {
        self.stop_if("journalled");
        ChunkArchive::publish(&mut self.inner, files)?;
        if self.encoded && self.at == "results" {
            println!("stopped results");
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
        self.stop_if("published");
        self.chunks += 1;
        Ok(())
    }
    fn stage_encoded(
        &mut self,
        name: &str,
        records: &[(String, Vec<u8>)],
    ) -> Result<Vec<String>, StoreError> {
        self.encoded = true;
        ChunkArchive::stage_encoded(&mut self.inner, name, records)
    }
    fn resumed(&mut self) -> Result<(), StoreError> {
        ChunkArchive::resumed(&mut self.inner)
    }
}

/// The child's side; runs only when the parent test starts it.
#[test]
#[ignore = "child process of a_sweep_killed_at_any_point_archives_each_trace_once"]
fn crash_child_sweeper() {
    let (Ok(dir), Ok(at)) = (
        std::env::var("TM_RETAIN_CRASH_DIR"),
        std::env::var("TM_RETAIN_CRASH_AT"),
    ) else {
        return;
    };
    let dir = Path::new(&dir);
    let store = SledStore::open(&dir.join("db")).unwrap();
    let mut a = Stopping {
        inner: Archive::new(&dir.join("archive")).unwrap(),
        at,
        chunks: 0,
        encoded: false,
    };
    tracemesh::retention::sweep_into(&store, &mut a, CHUNK, cut_ns(), false, &mut |_| {}).unwrap();
    println!("finished");
}

/// Archived traces by (vantage, result id): how many copies of each.
fn archived(dir: &Path) -> BTreeMap<(String, String), u32> {
    let mut n = BTreeMap::new();
    tracemesh::archive::read(dir, &mut |t| {
        *n.entry((t.vantage, t.result_id)).or_insert(0) += 1;
    })
    .unwrap();
    n
}

fn staged_left(dir: &Path) -> usize {
    let mut n = 0;
    for d in std::fs::read_dir(dir).unwrap().flatten() {
        if d.path().is_dir() {
            n += std::fs::read_dir(d.path())
                .unwrap()
                .flatten()
                .filter(|f| f.file_name().to_string_lossy().ends_with(".tmp"))
                .count();
        }
    }
    n
}

#[test]
fn a_sweep_killed_at_any_point_archives_each_trace_once() {
    for at in ["staged", "journalled", "published", "results"] {
        let dir = tempfile::tempdir().unwrap();
        let (db, archive) = (dir.path().join("db"), dir.path().join("archive"));
        let all: Vec<v1::TraceRecord> = (0..GROUPS).flat_map(group).collect();
        let cut = cut_ns();
        let due: Vec<&v1::TraceRecord> =
            all.iter().filter(|t| t.start * 1e9 < cut as f64).collect();
        {
            let store = SledStore::open(&db).unwrap();
            for g in 0..GROUPS {
                for o in store.ingest_many(&group(g)).unwrap() {
                    o.unwrap();
                }
                store.put_mesh_sample(&mesh(g)).unwrap();
            }
            store.flush().unwrap();
        }
        // sled lets go of its file lock a moment after the handle drops.
        std::thread::sleep(std::time::Duration::from_millis(300));

        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child_sweeper", "--ignored", "--nocapture"])
            .env("TM_RETAIN_CRASH_DIR", dir.path())
            .env("TM_RETAIN_CRASH_AT", at)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let mut stopped = false;
        while out.read_line(&mut line).unwrap() > 0 {
            if line.starts_with("stopped") {
                stopped = true;
                break;
            }
            line.clear();
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(stopped, "{at}: the child never reached its stop");
        std::thread::sleep(std::time::Duration::from_millis(300));

        let store = SledStore::open(&db).unwrap();
        let before = archived(&archive);
        assert!(!before.is_empty(), "{at}");
        assert!(before.values().all(|&n| n == 1), "{at}");
        let r = tracemesh::retention::sweep(&store, &archive, cut, false, &mut |_| {}).unwrap();
        let c = r.counts;
        // A journalled chunk is finished, not archived again; a merely staged one is
        // archived again (its staged files were never published).
        if at == "staged" {
            assert_eq!(c.resumed, 0, "{at}: {c:?}");
        } else if at == "results" {
            // The traces were all done; the samples' chunk is finished, not rewritten.
            assert_eq!(
                (c.resumed, c.archived, c.mesh_samples),
                (15, 0, 0),
                "{at}: {c:?}"
            );
        } else {
            assert!(c.resumed > 0, "{at}: {c:?}");
        }
        assert_eq!(c.archived, c.deleted, "{at}: {c:?}");
        // Killed after publishing, the chunk was in the archive already; journalled
        // only, its files came in by this sweep finishing it.
        let finished_now = if at == "journalled" { c.resumed } else { 0 };
        let mut samples = BTreeMap::new();
        tracemesh::archive::read_results(&archive, ResultKind::Mesh, &mut |m: v1::MeshSample| {
            *samples.entry(m.round).or_insert(0) += 1;
        })
        .unwrap();
        assert_eq!(samples, (0..15).map(|g| (g, 1)).collect(), "{at}");
        let mut left = 0;
        store
            .for_each_mesh_sample(None, &mut |m| {
                assert!(m.round >= 15, "{at}");
                left += 1;
                true
            })
            .unwrap();
        assert_eq!(left, 5, "{at}");
        assert_eq!(
            before.len() as u64 + c.archived + finished_now,
            due.len() as u64,
            "{at}: {c:?}"
        );

        let after = archived(&archive);
        assert_eq!(after.len(), due.len(), "{at}");
        assert!(
            after.values().all(|&n| n == 1),
            "{at}: a trace archived twice"
        );
        for t in &due {
            assert!(
                after.contains_key(&(t.vantage.clone(), t.result_id.clone())),
                "{at}"
            );
        }
        assert_eq!(staged_left(&archive), 0, "{at}: staged files left");
        let left = store.query_traces(&TraceQuery::default()).unwrap();
        assert_eq!(left.len(), all.len() - due.len(), "{at}");
        assert!(left.iter().all(|t| t.start * 1e9 >= cut as f64), "{at}");
    }
}
