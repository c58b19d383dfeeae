//! The detector checkpoint and the diversion records in their own trees, and the
//! traces of a range of ingest groups, found through the time index's postings (whose
//! keys carry the group that wrote them).

use tracemesh_proto::v1;

use super::{SledStore, StoreError, corrupt, keys, start_ns};
use crate::store::Checkpoint;

pub(super) const CHECKPOINT_TREE: &str = "detector_checkpoint";
pub(super) const DIVERSIONS_TREE: &str = "diversion_records";
const META_KEY: &[u8] = b"meta";
const STATE_KEY: &[u8] = b"state";

impl SledStore {
    pub(super) fn for_each_trace_in_groups_impl(
        &self,
        from: u64,
        to: u64,
        f: &mut dyn FnMut(v1::TraceRecord) -> bool,
    ) -> Result<u64, StoreError> {
        let mut n = 0u64;
        if from >= to {
            return Ok(0);
        }
        // Time-index keys: bucket (8 bytes), group (8), chunk (4).
        let at = keys::posting_bucket_len(None);
        for entry in self.by_time.iter() {
            let (k, v) = entry?;
            let group = k
                .get(at..at + 8)
                .and_then(|g| g.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| corrupt("index", &k, "short key"))?;
            if group < from || group >= to {
                continue;
            }
            let postings =
                keys::parse_postings(&v).ok_or_else(|| corrupt("index", &k, "bad postings"))?;
            for (start, pk) in postings {
                // As in `scan_index`: a posting without its record (a crash between
                // them) or for a record stored again since is skipped.
                let Some(bytes) = self.traces.get(pk)? else {
                    continue;
                };
                let rec = Self::decode_trace(pk, &bytes)?;
                if start_ns(&rec) != start {
                    continue;
                }
                n += 1;
                if !f(rec) {
                    return Ok(n);
                }
            }
        }
        Ok(n)
    }

    pub(super) fn put_checkpoint_impl(&self, cp: &Checkpoint) -> Result<(), StoreError> {
        let tree = self.db.open_tree(CHECKPOINT_TREE)?;
        let meta = serde_json::to_vec(cp).map_err(|e| StoreError::Invalid {
            what: "checkpoint",
            detail: e.to_string(),
        })?;
        // One batch: a crash leaves the old state with its meta or the new with its.
        let mut b = sled::Batch::default();
        b.insert(STATE_KEY, cp.state.as_slice());
        b.insert(META_KEY, meta);
        tree.apply_batch(b)?;
        self.db.flush()?;
        Ok(())
    }

    pub(super) fn get_checkpoint_impl(&self) -> Result<Option<Checkpoint>, StoreError> {
        let tree = self.db.open_tree(CHECKPOINT_TREE)?;
        let (Some(meta), Some(state)) = (tree.get(META_KEY)?, tree.get(STATE_KEY)?) else {
            return Ok(None);
        };
        let mut cp: Checkpoint =
            serde_json::from_slice(&meta).map_err(|e| corrupt("checkpoint", META_KEY, e))?;
        cp.state = state.to_vec();
        Ok(Some(cp))
    }
}
