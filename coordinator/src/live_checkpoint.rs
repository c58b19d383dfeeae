//! The detector checkpoint of `serve --adversary` (`store/checkpoint.rs` says what a
//! position is): at start, load the saved state and replay only the ingest groups
//! stored after it (or everything, when there is none or it was computed with another
//! adversary or annotation); every few minutes and at shutdown, save it again.
//!
//! Saving first reads the traces of the groups written since the last save back from
//! the store and feeds them again. Most of them reached the detector already through
//! the live broadcast, and feeding a round twice changes nothing; but the broadcast
//! drops traces when the detector falls behind, and a group may be written and not yet
//! published, so only the store says exactly which traces a position covers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::annotate::Annotator;
use crate::detect::{Adversary, Detector, DiversionRecord, Trace};
use crate::store::{Checkpoint, Store, StoreError};

/// How often `serve --adversary` saves the detector unless told otherwise.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(600);

/// Checkpointing in `serve --adversary`.
#[derive(Clone)]
pub struct Config {
    /// Time between saves (one more at shutdown).
    pub every: Duration,
    /// A digest of the annotation tables in use, read again after SIGHUP reloads them.
    pub annotation_digest: Arc<dyn Fn() -> String + Send + Sync>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("every", &self.every)
            .finish()
    }
}

/// A detector and the ingest position it covers.
#[derive(Debug)]
pub struct Loaded {
    pub det: Detector,
    pub position: u64,
    /// Whether it came from a checkpoint (else from a full replay).
    pub from_checkpoint: bool,
    /// Traces read from the store to get there.
    pub replayed: u64,
}

/// What distinguishes one detector's state from another's for the same traces: the
/// adversary, and `annotation` (a digest of the tables the caller loaded).
pub fn fingerprint(adversary: &Adversary, annotation: &str) -> String {
    let asns: Vec<String> = adversary.asns.iter().map(u32::to_string).collect();
    let cc: Vec<&str> = adversary.countries.iter().map(String::as_str).collect();
    format!(
        "asns={};cc={};annot={annotation}",
        asns.join(","),
        cc.join(",")
    )
}

fn failed(e: tokio::task::JoinError) -> StoreError {
    StoreError::Invalid {
        what: "detector checkpoint",
        detail: e.to_string(),
    }
}

/// Feeds the traces of groups `from..to` to `det`; how many.
fn feed_groups(
    store: &dyn Store,
    det: &mut Detector,
    annot: &Annotator,
    from: u64,
    to: u64,
) -> Result<u64, StoreError> {
    let started = Instant::now();
    let mut last_note = started;
    let mut n = 0u64;
    store.for_each_trace_in_groups(from, to, &mut |t| {
        if let Some(t) = Trace::from_record(&t) {
            det.ingest(&t, annot);
        }
        n += 1;
        if n.is_multiple_of(4096) && last_note.elapsed() >= Duration::from_secs(5) {
            last_note = Instant::now();
            tracing::info!(
                traces = n,
                secs = started.elapsed().as_secs_f64(),
                "replaying traces stored after the checkpoint"
            );
        }
        true
    })
}

/// The detector `serve --adversary` starts with: the checkpoint plus what was stored
/// after it, or, if there is no usable checkpoint, `replay_all` (the full replay).
pub fn load_blocking(
    store: &dyn Store,
    adversary: &Adversary,
    annot: &Annotator,
    fingerprint: &str,
    replay_all: impl FnOnce() -> Result<(Detector, u64), StoreError>,
) -> Result<Loaded, StoreError> {
    let started = Instant::now();
    let restored = match store.get_checkpoint() {
        Ok(Some(cp)) if cp.fingerprint == fingerprint => {
            match Detector::from_checkpoint(adversary, &cp.state) {
                Ok(det) => Some((det, cp.position)),
                Err(e) => {
                    tracing::warn!(error = %e, "detector checkpoint unusable; replaying every stored trace");
                    None
                }
            }
        }
        Ok(Some(_)) => {
            tracing::info!(
                "detector checkpoint computed with another adversary or annotation; replaying every stored trace"
            );
            None
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "detector checkpoint unreadable; replaying every stored trace");
            None
        }
    };
    let Some((mut det, from)) = restored else {
        // `replay_all` read the position before it began.
        let (det, position) = replay_all()?;
        return Ok(Loaded {
            det,
            position,
            from_checkpoint: false,
            replayed: 0,
        });
    };
    let to = store.ingest_position()?;
    let replayed = feed_groups(store, &mut det, annot, from, to)?;
    crate::live::feed_mda(store, &mut det, annot)?;
    tracing::info!(
        from,
        to,
        traces = replayed,
        secs = started.elapsed().as_secs_f64(),
        state = ?det.state_size(),
        "detector loaded from its checkpoint"
    );
    Ok(Loaded {
        det,
        position: to,
        from_checkpoint: true,
        replayed,
    })
}

/// Catches `det` up from `from` to the store's current position, saves it there, and
/// hands it back with that position.
pub fn save_blocking(
    store: &dyn Store,
    mut det: Detector,
    annot: &Annotator,
    from: u64,
    fingerprint: &str,
) -> Result<(Detector, u64), StoreError> {
    let started = Instant::now();
    let to = store.ingest_position()?;
    let fed = feed_groups(store, &mut det, annot, from, to)?;
    let state = det.checkpoint();
    let bytes = state.len();
    store.put_checkpoint(&Checkpoint {
        position: to,
        fingerprint: fingerprint.to_owned(),
        written_at_ns: crate::server::now_ns(),
        state,
    })?;
    tracing::info!(
        position = to,
        caught_up = fed,
        bytes,
        secs = started.elapsed().as_secs_f64(),
        "detector checkpoint saved"
    );
    Ok((det, to))
}

/// [`save_blocking`] on a blocking thread (the detector moves there and back).
pub async fn save(
    store: Arc<dyn Store>,
    det: Detector,
    annot: Arc<Annotator>,
    from: u64,
    fingerprint: String,
) -> Result<(Detector, u64), StoreError> {
    tokio::task::spawn_blocking(move || {
        save_blocking(store.as_ref(), det, &annot, from, &fingerprint)
    })
    .await
    .map_err(failed)?
}

/// Key of a diversion record in the store: one per (vantage, target, first round).
pub fn record_key(d: &DiversionRecord) -> String {
    format!("{}|{}|{:020}", d.vantage, d.target, d.first_round)
}

/// Keeps the records just published (new or changed) in the store; a failure is logged,
/// the records went out all the same.
pub fn store_records(store: &dyn Store, records: &[&DiversionRecord]) {
    for d in records {
        let json = match serde_json::to_vec(d) {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(error = %e, "diversion record not serialisable");
                continue;
            }
        };
        if let Err(e) = store.put_diversion_record(&record_key(d), &json) {
            tracing::warn!(error = %e, "diversion record not stored");
        }
    }
}
