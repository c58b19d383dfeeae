//! Retention: traces older than a window leave the store, each chunk only after the
//! caller has archived it. Which traces go is decided per posting of the time index
//! (its key: bucket, ingest group, chunk): a whole 10 s bucket before the cut, from a
//! group below the caller's limit (what the detector checkpoint covers). The vantage
//! and destination indexes lose their postings by the same rule, so every index keeps
//! naming exactly the traces still stored.
//!
//! No lock is held against ingest: the sweep reads and removes keys ingest never
//! writes again (old buckets of finished groups), one chunk at a time.

use rustc_hash::FxHashSet;
use tracemesh_proto::v1;

use super::{SledStore, StoreError, corrupt, keys, start_ns};
use crate::store::ExpireCounts;

/// The bucket and group of a posting key whose component part is `skip` bytes long.
fn bucket_and_group(k: &[u8], skip: usize) -> Option<(i64, u64)> {
    let b = u64::from_be_bytes(k.get(skip..skip + 8)?.try_into().ok()?) ^ (1 << 63);
    let g = u64::from_be_bytes(k.get(skip + 8..skip + 16)?.try_into().ok()?);
    Some((b as i64, g))
}

/// Length of a component-first posting key's component (u16 length + bytes).
fn component_len(k: &[u8]) -> Option<usize> {
    let n = u16::from_be_bytes(k.get(..2)?.try_into().ok()?) as usize;
    Some(2 + n)
}

impl SledStore {
    pub(super) fn expire_traces_impl(
        &self,
        before_ns: i64,
        below_group: u64,
        chunk: usize,
        archive: &mut dyn FnMut(&[v1::TraceRecord]) -> Result<(), StoreError>,
    ) -> Result<ExpireCounts, StoreError> {
        let cut = keys::bucket(before_ns);
        let chunk = chunk.max(1);
        let mut counts = ExpireCounts::default();
        let (lo, _) = keys::posting_bounds(None, None, None);
        let hi = keys::posting_key(None, cut, 0, 0);
        // (posting key, its traces) waiting for the next archive call.
        let mut postings: Vec<sled::IVec> = Vec::new();
        let mut records: Vec<(Vec<u8>, v1::TraceRecord)> = Vec::new();
        let mut seen: FxHashSet<Vec<u8>> = FxHashSet::default();
        for entry in self.by_time.range(lo..hi) {
            let (k, v) = entry?;
            let (_, group) =
                bucket_and_group(&k, 0).ok_or_else(|| corrupt("index", &k, "short key"))?;
            if group >= below_group {
                continue;
            }
            let pairs =
                keys::parse_postings(&v).ok_or_else(|| corrupt("index", &k, "bad postings"))?;
            for (start, pk) in pairs {
                if seen.contains(pk) {
                    continue;
                }
                let Some(bytes) = self.traces.get(pk)? else {
                    continue;
                };
                let rec = Self::decode_trace(pk, &bytes)?;
                if start_ns(&rec) != start {
                    continue;
                }
                seen.insert(pk.to_vec());
                records.push((pk.to_vec(), rec));
            }
            postings.push(k);
            if records.len() >= chunk {
                self.expire_chunk(&mut postings, &mut records, archive, &mut counts)?;
                seen.clear();
            }
        }
        self.expire_chunk(&mut postings, &mut records, archive, &mut counts)?;
        for tree in [&self.by_vantage, &self.by_dst] {
            counts.postings_deleted += prune_component_index(tree, cut, below_group)?;
        }
        Ok(counts)
    }

    /// Archives `records`, then deletes them and the time postings that named them.
    fn expire_chunk(
        &self,
        postings: &mut Vec<sled::IVec>,
        records: &mut Vec<(Vec<u8>, v1::TraceRecord)>,
        archive: &mut dyn FnMut(&[v1::TraceRecord]) -> Result<(), StoreError>,
        counts: &mut ExpireCounts,
    ) -> Result<(), StoreError> {
        if !records.is_empty() {
            let recs: Vec<v1::TraceRecord> = records.iter().map(|(_, r)| r.clone()).collect();
            archive(&recs)?;
            counts.archived += recs.len() as u64;
        }
        for (pk, rec) in records.drain(..) {
            if self.traces.remove(&pk)?.is_some() {
                counts.deleted += 1;
            }
            // Markers exist only for non-canonical result ids; removing none is free.
            self.by_result
                .remove(keys::result_key(&rec.vantage, &rec.result_id))?;
        }
        for k in postings.drain(..) {
            self.by_time.remove(k)?;
            counts.postings_deleted += 1;
        }
        Ok(())
    }
}

/// Removes a vantage or destination index's postings of buckets before `cut` from
/// groups below `below_group`; how many.
fn prune_component_index(tree: &sled::Tree, cut: i64, below_group: u64) -> Result<u64, StoreError> {
    let mut n = 0;
    let mut doomed = Vec::new();
    for entry in tree.iter().keys() {
        let k = entry?;
        let skip = component_len(&k).ok_or_else(|| corrupt("index", &k, "short key"))?;
        let (bucket, group) =
            bucket_and_group(&k, skip).ok_or_else(|| corrupt("index", &k, "short key"))?;
        if bucket < cut && group < below_group {
            doomed.push(k);
        }
        if doomed.len() >= 4096 {
            for k in doomed.drain(..) {
                tree.remove(k)?;
                n += 1;
            }
        }
    }
    for k in doomed {
        tree.remove(k)?;
        n += 1;
    }
    Ok(n)
}
