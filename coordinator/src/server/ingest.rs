//! Group commit for uploaded traces. Every session hands its batch to one writer thread,
//! which stores whatever batches have queued up meanwhile in one transaction and makes
//! them durable with one flush, then answers each session. Under load one fsync covers
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
            .spawn(move || writer(store.as_ref(), &rx));
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
        self.tx
            .send(Job { records, reply })
            .map_err(|_| Status::unavailable("ingest writer stopped"))?;
        rx.await
            .map_err(|_| Status::internal("ingest writer dropped the batch"))?
    }
}

fn writer(store: &dyn Store, rx: &mpsc::Receiver<Job>) {
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
        let stored = store
            .ingest_many(&all)
            .and_then(|o| store.flush().map(|()| o));
        match stored {
            Ok(outcomes) => {
                let mut it = all.into_iter().zip(outcomes);
                for (reply, len) in replies.into_iter().zip(lens) {
                    let _ = reply.send(Ok(it.by_ref().take(len).collect()));
                }
            }
            Err(e) => {
                let msg = super::client::error_chain(&e);
                tracing::error!(error = %msg, batches = replies.len(), "store failure");
                for reply in replies {
                    let _ = reply.send(Err(Status::internal(msg.clone())));
                }
            }
        }
    }
}
