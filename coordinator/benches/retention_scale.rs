//! Retention while ingest runs (issue 17), by hand, not in CI: a store of
//! `TM_BENCH_TRACES` old traces (default 5,000,000, started 60 days ago), then the
//! coordinator's ingest path (`IngestQueue`: group commit, flush, ack) fed at
//! `TM_BENCH_RATE` traces/s (default 25,000; rounded down to whole records per tick:
//! 24,800) by 8 paced submitters, first alone for
//! `TM_BENCH_BASELINE_S` seconds (default 20), then beside a 30-day retention sweep
//! (`retention::sweep_paced`, what `serve --retain` runs, at `retention::Pace::
//! BESIDE_INGEST` unless `TM_BENCH_DUTY` (share of the time working, 1 = unpaced) or
//! `TM_BENCH_CHUNK` (traces per chunk) say otherwise) that archives every old trace as
//! Parquet and deletes it. Prints the ingest rate without and during the sweep, the
//! store's size on disk before, after the sweep and after `retention::compact`, and the
//! counts: archived == deleted == read back from the archive, and every fresh trace
//! still stored. Scratch in `TM_BENCH_DIR` (default: a temporary directory);
//! `TM_BENCH_COMPACT=0` skips the compaction (it needs room for a second copy).
//!
//! Run: `cargo bench -p tracemesh --bench retention_scale`.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracemesh::retention;
use tracemesh::server::ingest::IngestQueue;
use tracemesh::store::{SledStore, Store};
use tracemesh_proto::v1;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const VANTAGES: u64 = 200;
const DESTS: u64 = 500;
const SUBMITTERS: u64 = 8;
/// Submitter ticks per second.
const TICKS: u64 = 50;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn now_s() -> f64 {
    tracemesh::server::now_ns() as f64 / 1e9
}

/// A 12-hop trace of (campaign, round, vantage, destination).
fn trace(campaign: &str, round: u64, v: u64, d: u64, start: f64) -> v1::TraceRecord {
    let dst = format!("10.{}.{}.{}", d / 65_536 % 256, d / 256 % 256, d % 256);
    v1::TraceRecord {
        result_id: format!("{campaign}/{round}/{dst}"),
        campaign_id: campaign.into(),
        round: round as u32,
        vantage: format!("v{v}"),
        dst: dst.clone(),
        start,
        probes_sent: 14,
        hops: (1..=12u32)
            .map(|ttl| v1::Hop {
                ttl,
                addr: (ttl % 5 != 3).then(|| {
                    if ttl == 12 {
                        dst.clone()
                    } else {
                        format!("172.{}.{}.{ttl}", v % 200, (d + u64::from(ttl)) % 16)
                    }
                }),
                rtt_ms: Some(f64::from(ttl) * 3.1 + (v % 7) as f64),
                icmp_type: Some(11),
                icmp_code: Some(0),
                probes: 1,
                ..Default::default()
            })
            .collect(),
        received_at_ns: (start * 1e9) as i64,
        ..Default::default()
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / 1_048_576.0
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("retention_scale: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let n_old = env_u64("TM_BENCH_TRACES", 5_000_000);
    let rate = env_u64("TM_BENCH_RATE", 25_000);
    let baseline = Duration::from_secs(env_u64("TM_BENCH_BASELINE_S", 20));
    let tmp = match std::env::var_os("TM_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let db = tmp.path().join("db");
    let archive = tmp.path().join("archive");
    let store = SledStore::open(&db)?;

    // The old history: 60 days ago, a round every 10 minutes, one group per vantage.
    let t0 = now_s() - 60.0 * 86_400.0;
    let per_round = VANTAGES * DESTS;
    let rounds = n_old.div_ceil(per_round);
    let setup = Instant::now();
    let mut old = 0u64;
    'fill: for r in 0..rounds {
        for v in 0..VANTAGES {
            let n = DESTS.min(n_old - old);
            if n == 0 {
                break 'fill;
            }
            let batch: Vec<v1::TraceRecord> = (0..n)
                .map(|d| trace("old", r, v, d, t0 + r as f64 * 600.0 + v as f64))
                .collect();
            for o in store.ingest_many(&batch)? {
                o?;
            }
            old += n;
        }
        eprint!("\rstoring the old history: {old}/{n_old}");
    }
    store.flush()?;
    eprintln!();
    println!(
        "old history:   {old} traces stored in {:.1} s (setup)",
        setup.elapsed().as_secs_f64()
    );
    let bytes_before = retention::dir_bytes(&db);
    println!(
        "store on disk: {:.1} MiB before the sweep",
        mib(bytes_before)
    );

    let store: Arc<dyn Store> = Arc::new(store);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let queue = IngestQueue::start(store.clone());
    let stored = Arc::new(AtomicU64::new(0));
    let offered = Arc::new(AtomicU64::new(0));
    let max_wait_us = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let per_tick = (rate / SUBMITTERS / TICKS).max(1);
    let mut tasks = Vec::new();
    for s in 0..SUBMITTERS {
        let (queue, stored, offered, stop, max_wait_us) = (
            queue.clone(),
            stored.clone(),
            offered.clone(),
            stop.clone(),
            max_wait_us.clone(),
        );
        tasks.push(rt.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / TICKS));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let batch: Vec<v1::TraceRecord> = (0..per_tick)
                    .map(|i| {
                        let j = k * per_tick + i;
                        trace("new", j / DESTS, s * 25 + j % 25, j % DESTS, now_s())
                    })
                    .collect();
                k += 1;
                offered.fetch_add(batch.len() as u64, Ordering::Relaxed);
                let t = Instant::now();
                match queue.submit(batch).await {
                    Ok(out) => {
                        let n = out.iter().filter(|(_, o)| o.is_ok()).count() as u64;
                        stored.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => eprintln!("ingest failed: {e}"),
                }
                max_wait_us.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
        }));
    }

    // Ingest alone.
    let a0 = stored.load(Ordering::Relaxed);
    let ta = Instant::now();
    std::thread::sleep(baseline);
    let alone = (stored.load(Ordering::Relaxed) - a0) as f64 / ta.elapsed().as_secs_f64();
    let alone_wait = max_wait_us.swap(0, Ordering::Relaxed);
    println!(
        "ingest alone:  {alone:.0} traces/s over {:.0} s (offered {}/s; slowest batch {:.1} ms)",
        baseline.as_secs_f64(),
        per_tick * SUBMITTERS * TICKS,
        alone_wait as f64 / 1e3
    );

    // Ingest beside the sweep: everything older than 30 days goes.
    let b0 = stored.load(Ordering::Relaxed);
    let tb = Instant::now();
    let cut = tracemesh::server::now_ns() - 30 * 86_400 * 1_000_000_000;
    let sweep_store = store.clone();
    let sweep_dir = archive.clone();
    let pace = retention::Pace {
        chunk: env_u64(
            "TM_BENCH_CHUNK",
            retention::Pace::BESIDE_INGEST.chunk as u64,
        ) as usize,
        duty: std::env::var("TM_BENCH_DUTY")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(retention::Pace::BESIDE_INGEST.duty),
    };
    println!(
        "sweep pace:    {} traces a chunk, duty {}",
        pace.chunk, pace.duty
    );
    let sweeper = std::thread::spawn(move || {
        let mut last = Instant::now();
        retention::sweep_paced(
            sweep_store.as_ref(),
            &sweep_dir,
            cut,
            false,
            pace,
            &mut |c| {
                if last.elapsed() >= Duration::from_secs(5) {
                    last = Instant::now();
                    eprintln!("sweep: {} archived", c.archived);
                }
            },
        )
    });
    // With TM_BENCH_DURING_S, ingest runs beside the first that many seconds of the
    // sweep only (fresh traces fill the disk: ~1.7 GB per million).
    let window = Duration::from_secs(env_u64("TM_BENCH_DURING_S", u64::MAX / 4));
    while !sweeper.is_finished() && tb.elapsed() < window {
        std::thread::sleep(Duration::from_millis(100));
    }
    let during_s = tb.elapsed().as_secs_f64();
    let during = (stored.load(Ordering::Relaxed) - b0) as f64 / during_s;
    let during_wait = max_wait_us.swap(0, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let windowed = !sweeper.is_finished();
    let report = sweeper.join().map_err(|_| "sweep thread panicked")??;
    rt.block_on(async {
        for t in tasks {
            let _ = t.await;
        }
    });
    drop(queue);
    store.flush()?;
    let fresh = stored.load(Ordering::Relaxed);
    println!(
        "ingest during: {during:.0} traces/s over {} {during_s:.1} s of the sweep (slowest batch {:.1} ms)",
        if windowed { "the first" } else { "all" },
        during_wait as f64 / 1e3
    );
    println!(
        "sweep:         {} archived, {} deleted, {} postings removed, {} Parquet files, {:.1} s ({:.1} s of it paused; {:.0} traces/s)",
        report.counts.archived,
        report.counts.deleted,
        report.counts.postings_deleted,
        report.archive_files,
        report.secs,
        report.paused_secs,
        report.counts.deleted as f64 / report.secs.max(1e-9)
    );
    let bytes_swept = retention::dir_bytes(&db);
    let archive_bytes = retention::dir_bytes(&archive);

    // Counts: nothing un-archived lost, nothing fresh lost.
    let t = Instant::now();
    let read_back = tracemesh::archive::read(&archive, &mut |_| {})?;
    println!(
        "archive:       {read_back} traces read back in {:.1} s, {:.1} MiB on disk",
        t.elapsed().as_secs_f64(),
        mib(archive_bytes)
    );
    let (mut left_old, mut left_new) = (0u64, 0u64);
    store.for_each_trace_any_order(&mut |t| {
        if t.campaign_id == "old" {
            left_old += 1;
        } else {
            left_new += 1;
        }
        true
    })?;
    println!(
        "store:         {left_old} old traces left, {left_new} fresh ({fresh} acknowledged, {} offered)",
        offered.load(Ordering::Relaxed)
    );
    drop(store);
    if env_u64("TM_BENCH_COMPACT", 1) == 0 {
        // Compaction copies the whole store: skipped where the disk has no room for it.
        println!(
            "store on disk: {:.1} MiB before, {:.1} MiB after the sweep (sled keeps freed pages for reuse); compaction skipped (TM_BENCH_COMPACT=0)",
            mib(bytes_before),
            mib(bytes_swept),
        );
    } else {
        std::thread::sleep(Duration::from_millis(500));
        let t = Instant::now();
        let (_, bytes_compacted) = retention::compact(&db)?;
        println!(
            "store on disk: {:.1} MiB before, {:.1} MiB after the sweep (sled keeps freed pages for reuse), {:.1} MiB after compaction ({:.1} s)",
            mib(bytes_before),
            mib(bytes_swept),
            mib(bytes_compacted),
            t.elapsed().as_secs_f64()
        );
    }
    let ok = report.counts.archived == old
        && report.counts.deleted == old
        && read_back == old
        && left_old == 0
        && left_new == fresh;
    if !ok {
        eprintln!(
            "counts disagree: old {old}, archived {}, deleted {}, read back {read_back}, old left {left_old}, fresh {left_new} of {fresh}",
            report.counts.archived, report.counts.deleted
        );
    }
    Ok(ok)
}
