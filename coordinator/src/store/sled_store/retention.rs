//! Retention: traces older than a window leave the store, each chunk only after the
//! caller has archived it. Which traces go is decided per posting of the time index
//! (its key: bucket, ingest group, chunk): a whole 10 s bucket before the cut, from a
//! group below the caller's limit (what the detector checkpoint covers). The vantage
//! and destination indexes lose their postings by the same rule, so every index keeps
//! naming exactly the traces still stored.
//!
//! No lock is held against ingest: the sweep reads and removes keys ingest never
//! writes again (old buckets of finished groups), one chunk at a time.
//!
//! Exactly once: each chunk's archive is staged, then a journal entry (its postings'
//! key range and files) is made durable, then the archive is published and the chunk
//! deleted, then the entry removed. A sweep after a crash finishes every entry left
//! (publish, delete) before it archives anything.

use rustc_hash::FxHashSet;
use tracemesh_proto::v1;

use super::{SledStore, StoreError, corrupt, keys, start_ns};
use serde::{Deserialize, Serialize};

use std::hash::BuildHasher as _;

use crate::store::{ChunkArchive, ExpireCounts, ResultKind};

/// The bucket and group of a posting key whose component part is `skip` bytes long.
fn bucket_and_group(k: &[u8], skip: usize) -> Option<(i64, u64)> {
    let b = u64::from_be_bytes(k.get(skip..skip + 8)?.try_into().ok()?) ^ (1 << 63);
    let g = u64::from_be_bytes(k.get(skip + 8..skip + 16)?.try_into().ok()?);
    Some((b as i64, g))
}

/// A time-index entry's postings: (start ns, primary key) each.
type Postings<'v> = Vec<(i64, &'v [u8])>;

/// A time-index entry's postings, or `None` when its ingest group is `below_group` or
/// later (not yet covered by the checkpoint, so not the sweep's to touch).
fn postings_below<'v>(
    k: &[u8],
    v: &'v [u8],
    below_group: u64,
) -> Result<Option<Postings<'v>>, StoreError> {
    let (_, group) = bucket_and_group(k, 0).ok_or_else(|| corrupt("index", k, "short key"))?;
    if group >= below_group {
        return Ok(None);
    }
    keys::parse_postings(v)
        .map(Some)
        .ok_or_else(|| corrupt("index", k, "bad postings"))
}

/// Length of a component-first posting key's component (u16 length + bytes).
fn component_len(k: &[u8]) -> Option<usize> {
    let n = u16::from_be_bytes(k.get(..2)?.try_into().ok()?) as usize;
    Some(2 + n)
}

/// In the default tree: the latest cut of a finished sweep (i64, big-endian).
const HORIZON_KEY: &[u8] = b"retention_horizon";

/// The tree of chunks archived but maybe not yet deleted: chunk name → [`Journal`].
pub(super) const JOURNAL_TREE: &str = "retention_journal";

/// One chunk between its archive and its deletion: for traces, the time-index
/// postings it covers (`lo..=hi`, groups below `below_group`: the same postings on
/// every reading, as those groups are finished); for another kind, its tree and keys;
/// and its archive files.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Journal {
    #[serde(default)]
    lo: Vec<u8>,
    #[serde(default)]
    hi: Vec<u8>,
    #[serde(default)]
    below_group: u64,
    /// Another kind's tree (`ResultKind::name`); absent for traces.
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    keys: Vec<Vec<u8>>,
    files: Vec<String>,
}

fn journal_bytes(j: &Journal) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(j).map_err(|e| StoreError::Invalid {
        what: "retention journal",
        detail: e.to_string(),
    })
}

/// A chunk's name, from its first posting (bucket, group, chunk): the same on every
/// sweep that meets the chunk, so its files never pile up under different names.
fn chunk_name(first: &[u8]) -> Option<String> {
    let (bucket, group) = bucket_and_group(first, 0)?;
    let c = u32::from_be_bytes(first.get(16..20)?.try_into().ok()?);
    Some(format!("part-{bucket}-{group}-{c}"))
}

impl SledStore {
    pub(super) fn expire_traces_impl(
        &self,
        before_ns: i64,
        below_group: u64,
        chunk: usize,
        archive: &mut dyn ChunkArchive,
        between: &mut dyn FnMut(&ExpireCounts),
    ) -> Result<ExpireCounts, StoreError> {
        let cut = keys::bucket(before_ns);
        let chunk = chunk.max(1);
        let mut counts = ExpireCounts::default();
        let journal = self.db.open_tree(JOURNAL_TREE)?;
        // What an interrupted sweep archived and did not finish deleting: finished
        // here, never archived again.
        for entry in journal.iter() {
            let (name, v) = entry?;
            let j: Journal =
                serde_json::from_slice(&v).map_err(|e| corrupt("retention journal", &name, e))?;
            archive.publish(&j.files)?;
            match j.kind.as_deref() {
                None => {
                    let (traces, postings) = self.delete_postings(&j.lo, &j.hi, j.below_group)?;
                    counts.resumed += traces;
                    counts.postings_deleted += postings;
                }
                Some(kind) => {
                    let tree = self.result_tree(kind).ok_or_else(|| {
                        corrupt("retention journal", &name, format!("unknown kind {kind}"))
                    })?;
                    for k in &j.keys {
                        if tree.remove(k)?.is_some() {
                            counts.resumed += 1;
                        }
                    }
                }
            }
            self.db.flush()?;
            journal.remove(&name)?;
        }
        archive.resumed()?;
        let (lo, _) = keys::posting_bounds(None, None, None);
        let hi = keys::posting_key(None, cut, 0, 0);
        // The postings and their traces waiting for the next chunk.
        let mut postings: Vec<sled::IVec> = Vec::new();
        let mut records: Vec<(Vec<u8>, v1::TraceRecord)> = Vec::new();
        let mut seen: FxHashSet<Vec<u8>> = FxHashSet::default();
        let mut next = lo;
        // Re-opened after each chunk: no iterator lives across the pause `between` takes.
        'scan: loop {
            for entry in self.by_time.range(next.clone()..hi.clone()) {
                let (k, v) = entry?;
                let Some(pairs) = postings_below(&k, &v, below_group)? else {
                    continue;
                };
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
                    let last = postings.last().map(|k| k.to_vec()).unwrap_or_default();
                    self.expire_chunk(
                        &journal,
                        below_group,
                        &mut postings,
                        &mut records,
                        archive,
                        &mut counts,
                    )?;
                    seen.clear();
                    between(&counts);
                    next = last;
                    next.push(0);
                    continue 'scan;
                }
            }
            break;
        }
        self.expire_chunk(
            &journal,
            below_group,
            &mut postings,
            &mut records,
            archive,
            &mut counts,
        )?;
        between(&counts);
        for tree in [&self.by_vantage, &self.by_dst] {
            prune_component_index(tree, cut, below_group, chunk, &mut counts, between)?;
        }
        Ok(counts)
    }

    /// Archives `records` (staged, journalled, published), then deletes them and the
    /// time postings that named them, then the journal entry.
    fn expire_chunk(
        &self,
        journal: &sled::Tree,
        below_group: u64,
        postings: &mut Vec<sled::IVec>,
        records: &mut Vec<(Vec<u8>, v1::TraceRecord)>,
        archive: &mut dyn ChunkArchive,
        counts: &mut ExpireCounts,
    ) -> Result<(), StoreError> {
        let (Some(first), Some(last)) = (postings.first(), postings.last()) else {
            return Ok(());
        };
        let name = chunk_name(first).ok_or_else(|| corrupt("index", first, "short key"))?;
        let mut entry = None;
        if !records.is_empty() {
            let recs: Vec<v1::TraceRecord> = records.iter().map(|(_, r)| r.clone()).collect();
            let files = archive.stage(&name, &recs)?;
            let j = Journal {
                lo: first.to_vec(),
                hi: last.to_vec(),
                below_group,
                files,
                ..Journal::default()
            };
            journal.insert(name.as_bytes(), journal_bytes(&j)?)?;
            self.db.flush()?;
            archive.publish(&j.files)?;
            counts.archived += recs.len() as u64;
            entry = Some(name);
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
        if let Some(name) = entry {
            // The deletions durable before the entry goes: never an entry-less chunk
            // still in the store after its archive was published.
            self.db.flush()?;
            journal.remove(name.as_bytes())?;
        }
        Ok(())
    }

    pub(super) fn retention_horizon_impl(&self) -> Result<Option<i64>, StoreError> {
        Ok(match self.db.get(HORIZON_KEY)? {
            Some(v) => Some(i64::from_be_bytes(v.as_ref().try_into().map_err(|_| {
                corrupt("retention horizon", HORIZON_KEY, "not 8 bytes")
            })?)),
            None => None,
        })
    }

    pub(super) fn set_retention_horizon_impl(&self, before_ns: i64) -> Result<(), StoreError> {
        let at = self
            .retention_horizon_impl()?
            .map_or(before_ns, |h| h.max(before_ns));
        self.db.insert(HORIZON_KEY, &at.to_be_bytes())?;
        Ok(())
    }

    fn result_tree(&self, kind: &str) -> Option<&sled::Tree> {
        match kind {
            "mesh" => Some(&self.mesh),
            "alias" => Some(&self.aliases),
            "mda" => Some(&self.mda),
            _ => None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn expire_results_impl(
        &self,
        kind: ResultKind,
        before_ns: i64,
        received_before_ns: i64,
        chunk: usize,
        archive: &mut dyn ChunkArchive,
        counts: &mut ExpireCounts,
        between: &mut dyn FnMut(&ExpireCounts),
    ) -> Result<(), StoreError> {
        let Some(tree) = self.result_tree(kind.name()) else {
            return Ok(());
        };
        let journal = self.db.open_tree(JOURNAL_TREE)?;
        let chunk = chunk.max(1);
        let mut next: Vec<u8> = Vec::new();
        loop {
            // The chunk's keys and (date, bytes); the iterator is dropped before the
            // chunk is archived and the pause taken.
            let mut keys: Vec<Vec<u8>> = Vec::new();
            let mut records: Vec<(String, Vec<u8>)> = Vec::new();
            let mut end = true;
            for entry in tree.range(next.clone()..) {
                let (k, v) = entry?;
                let (at, received) = kind.times(&v).map_err(|e| corrupt(kind.name(), &k, e))?;
                if at < before_ns && received < received_before_ns {
                    let date = tracemesh_proto::time::date_of(at as f64 / 1e9);
                    keys.push(k.to_vec());
                    records.push((date, v.to_vec()));
                    if keys.len() >= chunk {
                        end = false;
                        break;
                    }
                }
            }
            let Some(first) = keys.first() else {
                return Ok(());
            };
            let name = format!(
                "{}-{:016x}",
                kind.name(),
                rustc_hash::FxBuildHasher.hash_one(first.as_slice())
            );
            let files = archive.stage_encoded(&name, &records)?;
            next = keys.last().cloned().unwrap_or_default();
            next.push(0);
            let j = Journal {
                kind: Some(kind.name().to_owned()),
                keys,
                files,
                ..Journal::default()
            };
            journal.insert(name.as_bytes(), journal_bytes(&j)?)?;
            self.db.flush()?;
            archive.publish(&j.files)?;
            let mut n = 0;
            for k in &j.keys {
                if tree.remove(k)?.is_some() {
                    n += 1;
                }
            }
            kind.count(counts, n);
            self.db.flush()?;
            journal.remove(name.as_bytes())?;
            between(counts);
            if end {
                return Ok(());
            }
        }
    }

    /// Deletes the traces the time postings `lo..=hi` of groups below `below_group`
    /// still name, and those postings: (traces, postings) deleted.
    fn delete_postings(
        &self,
        lo: &[u8],
        hi: &[u8],
        below_group: u64,
    ) -> Result<(u64, u64), StoreError> {
        let (mut traces, mut postings) = (0, 0);
        for entry in self.by_time.range(lo..=hi) {
            let (k, v) = entry?;
            let Some(pairs) = postings_below(&k, &v, below_group)? else {
                continue;
            };
            for (start, pk) in pairs {
                let Some(bytes) = self.traces.get(pk)? else {
                    continue;
                };
                let rec = Self::decode_trace(pk, &bytes)?;
                if start_ns(&rec) != start {
                    continue;
                }
                self.traces.remove(pk)?;
                self.by_result
                    .remove(keys::result_key(&rec.vantage, &rec.result_id))?;
                traces += 1;
            }
            self.by_time.remove(&k)?;
            postings += 1;
        }
        Ok((traces, postings))
    }
}

/// Removes a vantage or destination index's postings of buckets before `cut` from
/// groups below `below_group` (into `counts`). Keys are component first, then bucket:
/// each component's old postings are a range at its start, and the scan seeks past the
/// component's newer ones instead of reading them (they are most of the index). A page
/// at a time, with `between` after each, so it yields to ingest like the chunks do.
fn prune_component_index(
    tree: &sled::Tree,
    cut: i64,
    below_group: u64,
    chunk: usize,
    counts: &mut ExpireCounts,
    between: &mut dyn FnMut(&ExpireCounts),
) -> Result<(), StoreError> {
    let page = chunk.max(1) * 4;
    let mut next: Vec<u8> = Vec::new();
    loop {
        let mut doomed = Vec::new();
        let mut seen = 0;
        let mut resume = None;
        for entry in tree.range(next.clone()..).keys() {
            let k = entry?;
            let skip = component_len(&k).ok_or_else(|| corrupt("index", &k, "short key"))?;
            let (bucket, group) =
                bucket_and_group(&k, skip).ok_or_else(|| corrupt("index", &k, "short key"))?;
            if bucket >= cut {
                // The rest of this component is newer: on to the next component (past
                // every key of this one: bucket, group and chunk are 20 bytes).
                let mut after = k[..skip].to_vec();
                after.extend_from_slice(&[0xff; 21]);
                resume = Some(after);
                break;
            }
            if group < below_group {
                doomed.push(k.clone());
            }
            seen += 1;
            if seen >= page {
                let mut after = k.to_vec();
                after.push(0);
                resume = Some(after);
                break;
            }
        }
        let worked = !doomed.is_empty();
        for k in doomed {
            tree.remove(k)?;
            counts.postings_deleted += 1;
        }
        let Some(after) = resume else {
            return Ok(());
        };
        if worked {
            between(counts);
        }
        next = after;
    }
}
