//! The coordinator's Prometheus metrics (`tracemesh serve --metrics ADDR`). Each is
//! updated where its event happens: the ingest writer (`server/ingest.rs`), campaign
//! dispatch (`server/state.rs`), live detection (`live.rs`); sessions and store size are
//! read at scrape time.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracemesh_proto::metrics::{self, Counter, Gauge, Histogram, LATENCY_BUCKETS, Metric};

use crate::server::Coordinator;

pub static TRACES_INGESTED: Counter = Counter::new(
    "tracemesh_traces_ingested_total",
    "Trace records newly stored and flushed (a re-uploaded record is not counted again).",
);
pub static TRACES_DUPLICATE: Counter = Counter::new(
    "tracemesh_traces_duplicate_total",
    "Uploaded trace records already stored (re-uploads after a lost acknowledgement).",
);
pub static BATCHES_INGESTED: Counter = Counter::new(
    "tracemesh_trace_batches_ingested_total",
    "Trace batches stored, flushed and acknowledged.",
);
pub static INGEST_LATENCY: Histogram<12> = Histogram::new(
    "tracemesh_ingest_latency_seconds",
    "From a batch's hand-over to the ingest writer until it is durable and acknowledged.",
    LATENCY_BUCKETS,
);
pub static DISPATCH: Histogram<12> = Histogram::new(
    "tracemesh_dispatch_seconds",
    "Time to push one campaign to every connected agent it selects.",
    LATENCY_BUCKETS,
);
pub static DIVERSIONS_OPEN: Gauge = Gauge::new(
    "tracemesh_diversions_open",
    "Diversion episodes still active in live detection's latest report.",
);
pub static DIVERSIONS_KNOWN: Gauge = Gauge::new(
    "tracemesh_diversions",
    "Diversion episodes (active or ended) in live detection's latest report.",
);
static SESSIONS: Gauge = Gauge::new("tracemesh_sessions", "Agent sessions currently connected.");
static STORE_SIZE: Gauge = Gauge::new(
    "tracemesh_store_size_bytes",
    "Bytes of the store's files on disk.",
);

/// Live detection's latest report: how many episodes, how many still active.
pub fn note_report(diversions: &[crate::detect::DiversionRecord]) {
    DIVERSIONS_KNOWN.set(diversions.len() as f64);
    DIVERSIONS_OPEN.set(diversions.iter().filter(|d| d.active).count() as f64);
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// The exposition as of now.
pub fn render(c: &Coordinator, db_dir: &Path) -> String {
    SESSIONS.set(c.live_all().len() as f64);
    STORE_SIZE.set(dir_size(db_dir) as f64);
    let all: [&dyn Metric; 9] = [
        &SESSIONS,
        &TRACES_INGESTED,
        &TRACES_DUPLICATE,
        &BATCHES_INGESTED,
        &INGEST_LATENCY,
        &STORE_SIZE,
        &DISPATCH,
        &DIVERSIONS_OPEN,
        &DIVERSIONS_KNOWN,
    ];
    metrics::render(&all)
}

/// Serves the metrics of `c` on `listener` (its store under `db_dir`).
pub fn spawn(listener: tokio::net::TcpListener, c: Arc<Coordinator>, db_dir: PathBuf) {
    tokio::spawn(metrics::serve(listener, move || render(&c, &db_dir)));
}
