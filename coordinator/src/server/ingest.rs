//! Group commit for uploaded traces. Every session hands its batch to one writer thread,
//! which stores whatever batches have queued up meanwhile in one `ingest_many` and hands
//! them to a flush thread, which makes them durable with one flush (covering every group
//! written meanwhile), then answers each session. Under load one fsync covers
//! many batches instead of one each, and the store sees a single writer instead of
//! hundreds of blocking threads contending for it; an answer still comes only after the
//! flush, so an Ack keeps meaning "durably stored".

use std::sync::Arc;
use std::sync::mpsc;

use tokio::sync::oneshot;
use tonic::Status;
use tracemesh_proto::v1;

use crate::store::{IngestOutcome, Store, StoreError};

/// Records per group: bounds one transaction's memory and the latency of the first batch.
const MAX_GROUP_RECORDS: usize = 20_000;

/// Each record back with its outcome, in order.
pub type Outcomes = Vec<(v1::TraceRecord, Result<IngestOutcome, StoreError>)>;

struct Job {
    records: Vec<v1::TraceRecord>,
    reply: oneshot::Sender<Result<Outcomes, Status>>,
}

#[derive(Debug, Clone)]
pub struct IngestQueue {
    tx: mpsc::Sender<Job>,
}

impl IngestQueue {
    /// Starts the writer thread; it ends when the last queue handle is dropped.
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("trace-ingest".into())
            .spawn(move || writer(store, &rx));
        if let Err(e) = spawned {
            // Without the thread every submit fails with an internal error rather than
            // acknowledging anything.
            tracing::error!(error = %e, "cannot start the ingest thread");
        }
        IngestQueue { tx }
    }

    /// Stores `records` (vantage and receive time already set) and returns once they are
    /// durable.
    pub async fn submit(&self, records: Vec<v1::TraceRecord>) -> Result<Outcomes, Status> {
        let (reply, rx) = oneshot::channel();
        let t = std::time::Instant::now();
        self.tx
            .send(Job { records, reply })
            .map_err(|_| Status::unavailable("ingest writer stopped"))?;
        let out = rx
            .await
            .map_err(|_| Status::internal("ingest writer dropped the batch"))?;
        if let Ok(outcomes) = &out {
            use crate::metrics as m;
            m::INGEST_LATENCY.observe(t.elapsed().as_secs_f64());
            m::BATCHES_INGESTED.inc();
            for (_, o) in outcomes {
                match o {
                    Ok(IngestOutcome::Stored) => m::TRACES_INGESTED.inc(),
                    Ok(IngestOutcome::Duplicate) => m::TRACES_DUPLICATE.inc(),
                    Err(_) => {}
                }
            }
        }
        out
    }
}

/// A written group waiting for the flush that makes it durable.
struct Written {
    outcomes: Result<Outcomes, Status>,
    lens: Vec<usize>,
    replies: Vec<oneshot::Sender<Result<Outcomes, Status>>>,
}

/// Writes groups; a second thread flushes and answers them, so the next group is written
/// while the last one is being made durable. A flush covers every write made before it
/// started, so a group handed over after its writes is durable once the next flush
/// after the hand-over returns.
fn writer(store: Arc<dyn Store>, rx: &mpsc::Receiver<Job>) {
    let (done_tx, done_rx) = mpsc::channel::<Written>();
    let flush_store = store.clone();
    let flusher = std::thread::Builder::new()
        .name("trace-flush".into())
        .spawn(move || flusher(flush_store.as_ref(), &done_rx));
    if let Err(e) = &flusher {
        tracing::error!(error = %e, "cannot start the ingest flush thread");
    }
    while let Ok(first) = rx.recv() {
        let mut n = first.records.len();
        let mut jobs = vec![first];
        while n < MAX_GROUP_RECORDS {
            match rx.try_recv() {
                Ok(j) => {
                    n += j.records.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        let mut lens = Vec::with_capacity(jobs.len());
        let mut all = Vec::with_capacity(n);
        let mut replies = Vec::with_capacity(jobs.len());
        for j in jobs {
            lens.push(j.records.len());
            all.extend(j.records);
            replies.push(j.reply);
        }
        let outcomes = match store.ingest_many(&all) {
            Ok(o) => Ok(all.into_iter().zip(o).collect()),
            Err(e) => {
                let msg = super::client::error_chain(&e);
                tracing::error!(error = %msg, batches = replies.len(), "store failure");
                Err(Status::internal(msg))
            }
        };
        let w = Written {
            outcomes,
            lens,
            replies,
        };
        if flusher.is_err() {
            // No flush thread: flush and answer here.
            answer(vec![w], store.flush());
        } else if let Err(mpsc::SendError(w)) = done_tx.send(w) {
            answer(vec![w], store.flush());
        }
    }
}

fn flusher(store: &dyn Store, rx: &mpsc::Receiver<Written>) {
    while let Ok(first) = rx.recv() {
        let mut ready = vec![first];
        ready.extend(rx.try_iter());
        answer(ready, store.flush());
    }
}

/// Answers written groups after the flush that covers them.
fn answer(groups: Vec<Written>, flushed: Result<(), StoreError>) {
    let flush_error = flushed.err().map(|e| {
        let msg = super::client::error_chain(&e);
        tracing::error!(error = %msg, "store flush failure");
        Status::internal(msg)
    });
    for w in groups {
        let outcomes = match &flush_error {
            Some(e) => Err(e.clone()),
            None => w.outcomes,
        };
        match outcomes {
            Ok(outcomes) => {
                let mut it = outcomes.into_iter();
                for (reply, len) in w.replies.into_iter().zip(w.lens) {
                    let _ = reply.send(Ok(it.by_ref().take(len).collect()));
                }
            }
            Err(e) => {
                for reply in w.replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
