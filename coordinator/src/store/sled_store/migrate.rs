//! Index layouts change; a store written with another one (or interrupted while
//! re-indexing) is re-indexed from its primary records when it is opened.

use super::postings::NEXT_GROUP_KEY;
use super::{SledStore, StoreError, corrupt, start_ns_of};

/// Secondary index layout in force; stores without it are re-indexed on open.
const INDEX_FORMAT_KEY: &[u8] = b"traces/index-format";
const INDEX_FORMAT: &[u8] = b"postings-1";
/// The per-trace index trees of the previous layout, dropped once re-indexed.
const OLD_INDEX_TREES: [&str; 3] = ["traces_by_vantage", "traces_by_dst", "traces_by_time"];
/// Traces per write while re-indexing an old store.
const REINDEX_GROUP: usize = 10_000;

impl SledStore {
    /// Loads the group counter, first re-indexing a store written with another index
    /// layout (or interrupted while re-indexing) from its primary records.
    pub(super) fn ensure_index(&self) -> Result<(), StoreError> {
        let mut next = self.next_group.lock().unwrap_or_else(|p| p.into_inner());
        if self.db.get(INDEX_FORMAT_KEY)?.as_deref() != Some(INDEX_FORMAT) {
            if !self.traces.is_empty() {
                tracing::info!("re-indexing stored traces");
            }
            for t in [&self.by_vantage, &self.by_dst, &self.by_time] {
                t.clear()?;
            }
            *next = 0;
            // Group numbers start again: a detector checkpoint's position means nothing.
            self.db.drop_tree(super::checkpoint::CHECKPOINT_TREE)?;
            let mut group = Vec::with_capacity(REINDEX_GROUP);
            let mut n = 0u64;
            for entry in self.traces.iter() {
                let (k, v) = entry?;
                let rec = Self::decode_trace(&k, &v)?;
                group.push((rec.vantage, rec.dst, start_ns_of(rec.start), k.to_vec()));
                if group.len() == REINDEX_GROUP {
                    n += group.len() as u64;
                    self.write_postings(
                        &mut next,
                        group
                            .iter()
                            .map(|(v, d, s, k)| (v.as_str(), d.as_str(), *s, k.as_slice())),
                    )?;
                    group.clear();
                }
            }
            n += group.len() as u64;
            self.write_postings(
                &mut next,
                group
                    .iter()
                    .map(|(v, d, s, k)| (v.as_str(), d.as_str(), *s, k.as_slice())),
            )?;
            for name in OLD_INDEX_TREES {
                self.db.drop_tree(name)?;
            }
            self.db.insert(INDEX_FORMAT_KEY, INDEX_FORMAT)?;
            self.db.flush()?;
            if n > 0 {
                tracing::info!(traces = n, "re-indexed stored traces");
            }
        }
        *next = match self.db.get(NEXT_GROUP_KEY)? {
            Some(v) => u64::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| corrupt("index", NEXT_GROUP_KEY, "group counter"))?,
            ),
            None => 0,
        };
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use prost::Message as _;

    use super::super::test_support::{all_queries, by, pk, trace};
    use super::*;
    use crate::store::{IngestOutcome, Store as _, TraceQuery, keys};

    #[test]
    fn a_store_with_the_previous_per_trace_indexes_is_reindexed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let t = trace("1.1.1.1", None, 100.0);
        {
            // The previous layout: a record, its marker, per-trace index entries, no
            // format key.
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("traces")
                .unwrap()
                .insert(pk(&t), t.encode_to_vec())
                .unwrap();
            db.open_tree("traces_by_result")
                .unwrap()
                .insert(keys::result_key("tor", &t.result_id), pk(&t))
                .unwrap();
            for name in OLD_INDEX_TREES {
                db.open_tree(name).unwrap().insert(b"old", b"").unwrap();
            }
            db.flush().unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        let one = vec![("1.1.1.1".to_string(), 100.0)];
        assert_eq!(
            all_queries(&s),
            [one.clone(), one.clone(), one.clone(), one]
        );
        assert!(
            !s.db
                .tree_names()
                .iter()
                .any(|n| n.as_ref() == b"traces_by_time")
        );
        assert_eq!(s.ingest(&t).unwrap(), IngestOutcome::Duplicate);
        let u = trace("3.3.3.3", None, 100.0);
        assert_eq!(s.ingest(&u).unwrap(), IngestOutcome::Stored);
        drop(s);
        // The group counter survives: nothing written before is overwritten.
        let s = SledStore::open(dir.path()).unwrap();
        let v = trace("4.4.4.4", None, 100.0);
        assert_eq!(s.ingest(&v).unwrap(), IngestOutcome::Stored);
        assert_eq!(by(&s, TraceQuery::default()).len(), 3);
    }
}
