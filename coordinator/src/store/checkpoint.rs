//! What `serve --adversary` keeps besides traces so a restart does not replay them all:
//! the detector's checkpoint, with the position in the ingest history it covers, and
//! the diversion records it published (closed episodes stay as records, not something
//! to recompute from raw traces that retention may since have deleted).
//!
//! Positions are ingest group numbers (`sled_store/postings.rs`): every trace is stored
//! by one numbered group, the numbers only grow, and a group is written whole before
//! the next number is handed out, so "every group below N" is an exact set of traces.

use serde::{Deserialize, Serialize};

/// A saved detector state (`Detector::checkpoint` bytes) and what it covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Every trace stored by an ingest group below this has been fed to the state.
    pub position: u64,
    /// The adversary and annotation the state was computed with: another one means the
    /// state says nothing (hops would be classified differently), so a full replay.
    pub fingerprint: String,
    pub written_at_ns: i64,
    /// The state, as `Detector::checkpoint` writes it.
    #[serde(skip)]
    pub state: Vec<u8>,
}
