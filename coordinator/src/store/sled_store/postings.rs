//! The secondary indexes: postings written per ingest group, scanned per bucket in
//! (start, primary key) order.

use std::collections::HashMap;

use rustc_hash::FxBuildHasher;
use tracemesh_proto::v1;

use super::{SledStore, StoreError, TraceQuery, corrupt, keys, matches, start_ns};

/// The next posting group number (u64, big-endian), written before a group's postings.
pub(super) const NEXT_GROUP_KEY: &[u8] = b"traces/next-group";
/// Pairs per posting value: keeps values (and so sled's pages) small.
const POSTING_CHUNK: usize = 64;

impl SledStore {
    /// Writes the postings of one group of traces (vantage, dst, start, primary key) to
    /// the three indexes under a fresh group number. The counter is stored first, so a
    /// number whose postings survived a crash is never handed out again.
    pub(super) fn write_postings<'a>(
        &self,
        next: &mut u64,
        traces: impl Iterator<Item = (&'a str, &'a str, i64, &'a [u8])>,
    ) -> Result<(), StoreError> {
        type Lists<'a> = HashMap<(Option<&'a str>, i64), Vec<u8>, FxBuildHasher>;
        let mut lists: [Lists<'a>; 3] = Default::default();
        let mut any = false;
        for (vantage, dst, start, pk) in traces {
            any = true;
            let b = keys::bucket(start);
            for (list, component) in lists.iter_mut().zip([Some(vantage), Some(dst), None]) {
                keys::push_posting(list.entry((component, b)).or_default(), start, pk);
            }
        }
        if !any {
            return Ok(());
        }
        let group = *next;
        *next += 1;
        self.db.insert(NEXT_GROUP_KEY, &next.to_be_bytes())?;
        for (list, tree) in lists
            .into_iter()
            .zip([&self.by_vantage, &self.by_dst, &self.by_time])
        {
            for ((component, b), bytes) in list {
                // Chunks are numbered within the group, so their keys stay distinct.
                for (chunk, value) in (0u32..).zip(keys::chunk_postings(&bytes, POSTING_CHUNK)) {
                    tree.insert(keys::posting_key(component, b, group, chunk), value)?;
                }
            }
        }
        Ok(())
    }

    /// Walks a posting index in (start, primary key) order, one bucket at a time,
    /// resolving each entry to its record. Entries that do not resolve to a record with
    /// that start are skipped: postings are written before their records, so a crash can
    /// leave postings of records that were never stored (their agent uploads them again)
    /// or, if a slot's record was then stored from another upload, stale ones.
    pub(super) fn scan_index(
        &self,
        index: &sled::Tree,
        component: Option<&str>,
        q: &TraceQuery,
        f: &mut dyn FnMut(v1::TraceRecord) -> bool,
    ) -> Result<(), StoreError> {
        let (lo, hi) = keys::posting_bounds(component, q.since_ns, q.until_ns);
        let bucket_len = keys::posting_bucket_len(component);
        let since = q.since_ns.unwrap_or(i64::MIN);
        let until = q.until_ns.unwrap_or(i64::MAX);
        let mut bucket: Vec<u8> = Vec::new();
        // (start, posting value, where the primary key is in it) for the current bucket.
        type Pending = Vec<(i64, sled::IVec, std::ops::Range<usize>)>;
        let mut pending: Pending = Vec::new();
        // Emits `pending` in order; false once `f` wants no more.
        let mut emit = |pending: &mut Pending| -> Result<bool, StoreError> {
            pending
                .sort_unstable_by(|a, b| (a.0, &a.1[a.2.clone()]).cmp(&(b.0, &b.1[b.2.clone()])));
            let mut last: Option<(i64, &[u8])> = None;
            for (start, v, r) in pending.iter() {
                let pk = &v[r.clone()];
                if last == Some((*start, pk)) {
                    continue;
                }
                last = Some((*start, pk));
                let Some(bytes) = self.traces.get(pk)? else {
                    continue;
                };
                let rec = Self::decode_trace(pk, &bytes)?;
                if start_ns(&rec) != *start {
                    continue;
                }
                if matches(&rec, q) && !f(rec) {
                    return Ok(false);
                }
            }
            pending.clear();
            Ok(true)
        };
        for entry in index.range(lo..=hi) {
            let (k, v) = entry?;
            let Some(b) = k.get(..bucket_len) else {
                return Err(corrupt("index", &k, "short key"));
            };
            if b != bucket.as_slice() {
                if !emit(&mut pending)? {
                    return Ok(());
                }
                bucket.clear();
                bucket.extend_from_slice(b);
            }
            let postings =
                keys::parse_postings(&v).ok_or_else(|| corrupt("index", &k, "bad postings"))?;
            let base = v.as_ptr() as usize;
            for (start, pk) in postings {
                if start < since || start > until {
                    continue;
                }
                let off = pk.as_ptr() as usize - base;
                pending.push((start, v.clone(), off..off + pk.len()));
            }
        }
        emit(&mut pending)?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! Postings are written before their records, and sled recovers a prefix of the
    //! writes after a crash: queries must skip postings whose record is missing or
    //! newer, and a re-upload must repair the slot.
    use super::super::test_support::{all_queries, by, pk, trace};
    use super::*;
    use crate::store::{IngestOutcome, Store as _};

    #[test]
    fn postings_without_their_record_are_skipped_and_a_reupload_stores_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let t = trace("1.1.1.1", None, 100.0);
        assert_eq!(s.ingest(&t).unwrap(), IngestOutcome::Stored);
        // A crash after the postings, before the record.
        s.traces.remove(pk(&t)).unwrap();
        assert_eq!(all_queries(&s), [vec![], vec![], vec![], vec![]]);
        assert_eq!(s.ingest(&t).unwrap(), IngestOutcome::Stored);
        assert_eq!(s.ingest(&t).unwrap(), IngestOutcome::Duplicate);
        let one = vec![("1.1.1.1".to_string(), 100.0)];
        assert_eq!(
            all_queries(&s),
            [one.clone(), one.clone(), one.clone(), one]
        );
    }

    #[test]
    fn stale_postings_of_a_slot_stored_later_with_another_start_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let t = trace("1.1.1.1", None, 100.0);
        s.ingest(&t).unwrap();
        s.traces.remove(pk(&t)).unwrap();
        let later = trace("1.1.1.1", None, 250.0);
        assert_eq!(s.ingest(&later).unwrap(), IngestOutcome::Stored);
        let one = vec![("1.1.1.1".to_string(), 250.0)];
        assert_eq!(
            all_queries(&s),
            [one.clone(), one.clone(), one.clone(), one]
        );
    }

    #[test]
    fn many_traces_in_one_bucket_come_back_in_start_order_within_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        // Several groups, each spanning chunks, interleaved in time.
        for g in 0..3 {
            let group: Vec<_> = (0..150)
                .map(|i| {
                    trace(
                        &format!("10.0.{g}.{i}"),
                        None,
                        1_000.0 + f64::from(i * 3 + g) * 0.01,
                    )
                })
                .collect();
            s.ingest_many(&group).unwrap();
        }
        let got = by(
            &s,
            TraceQuery {
                vantage: Some("tor".into()),
                since_ns: Some(1_000_500_000_000),
                until_ns: Some(1_003_000_000_000),
                ..Default::default()
            },
        );
        assert_eq!(got.len(), 251);
        assert!(got.windows(2).all(|w| w[0].1 <= w[1].1));
        let limited = by(
            &s,
            TraceQuery {
                limit: 7,
                ..Default::default()
            },
        );
        assert_eq!(limited.len(), 7);
        assert_eq!(limited[0].1, 1_000.0);
    }
}
