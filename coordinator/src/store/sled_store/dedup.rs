//! Recognising a re-upload, so ingest stores each trace once. A trace's slot is its
//! primary key; an agent-chosen result id that is not the slot's canonical
//! `campaign/round/dst` also gets a marker (vantage, result id) → primary key.

use rustc_hash::FxHashSet;
use tracemesh_proto::v1;

use super::{SledStore, StoreError, keys, start_ns};

/// A valid trace's keys.
pub(super) struct Prepared {
    pub pk: Vec<u8>,
    pub rk: Vec<u8>,
    pub start: i64,
    /// `result_id` is the canonical `campaign/round/dst` of its slot (no marker needed).
    pub canonical: bool,
}

pub(super) fn prepare(record: &v1::TraceRecord) -> Result<Prepared, StoreError> {
    if record.vantage.is_empty() || record.dst.is_empty() || record.result_id.is_empty() {
        return Err(StoreError::Invalid {
            what: "trace",
            detail: "vantage, dst and result_id must be set".into(),
        });
    }
    Ok(Prepared {
        pk: keys::trace_key(
            &record.campaign_id,
            record.round,
            &record.vantage,
            &record.dst,
        ),
        rk: keys::result_key(&record.vantage, &record.result_id),
        start: start_ns(record),
        canonical: keys::is_canonical_result_id(
            &record.result_id,
            &record.campaign_id,
            record.round,
            &record.dst,
        ),
    })
}

impl SledStore {
    /// Whether `record` (valid, keys `p`) is already stored or earlier in its group.
    pub(super) fn is_duplicate(
        &self,
        p: &Prepared,
        record: &v1::TraceRecord,
        check_markers: bool,
        group_pks: &FxHashSet<&[u8]>,
        group_rks: &FxHashSet<&[u8]>,
    ) -> Result<bool, StoreError> {
        if group_pks.contains(p.pk.as_slice()) || group_rks.contains(p.rk.as_slice()) {
            return Ok(true);
        }
        // Result ids that are not canonical for their slot have a marker.
        if check_markers && self.by_result.contains_key(&p.rk)? {
            return Ok(true);
        }
        if !p.canonical {
            // ...and canonical ids have none, so an id that is some other slot's
            // canonical id is looked up in that slot.
            if let Some((c, round, d)) = keys::parse_canonical_result_id(&record.result_id) {
                let other = keys::trace_key(c, round, &record.vantage, d);
                if other != p.pk
                    && let Some(bytes) = self.traces.get(&other)?
                    && Self::decode_trace(&other, &bytes)?.result_id == record.result_id
                {
                    return Ok(true);
                }
            }
        }
        let Some(old) = self.traces.get(&p.pk)? else {
            return Ok(false);
        };
        // The slot is taken. For a canonical id (no marker) the record itself says the
        // trace is stored; so does another result id. A non-canonical id's own record
        // without its marker is a write that a crash interrupted before any
        // acknowledgement: store it again.
        Ok(p.canonical || Self::decode_trace(&p.pk, &old)?.result_id != record.result_id)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! Records are written before their markers, and sled recovers a prefix of the
    //! writes after a crash: a record without its marker is written again.
    use super::super::test_support::trace;
    use crate::store::keys;
    use crate::store::{IngestOutcome, SledStore, Store as _};

    #[test]
    fn a_non_canonical_record_without_its_marker_is_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let t = trace("1.1.1.1", Some("spool-7"), 100.0);
        assert_eq!(s.ingest(&t).unwrap(), IngestOutcome::Stored);
        // A crash after the record, before its marker.
        let rk = keys::result_key("tor", "spool-7");
        assert!(s.by_result.remove(&rk).unwrap().is_some());
        assert_eq!(s.ingest(&t).unwrap(), IngestOutcome::Stored);
        assert!(s.by_result.get(&rk).unwrap().is_some());
        assert_eq!(s.ingest(&t).unwrap(), IngestOutcome::Duplicate);
        // The same id for another slot is the same result.
        let moved = trace("2.2.2.2", Some("spool-7"), 100.0);
        assert_eq!(s.ingest(&moved).unwrap(), IngestOutcome::Duplicate);
        assert_eq!(s.count_traces("c1").unwrap(), 1);
    }

    #[test]
    fn canonical_ids_need_no_marker_yet_stay_unique() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let t = trace("1.1.1.1", None, 100.0);
        assert_eq!(s.ingest(&t).unwrap(), IngestOutcome::Stored);
        assert!(s.by_result.is_empty());
        // Another slot re-using that canonical id (a buggy agent) is a duplicate.
        let reuse = trace("2.2.2.2", Some(&t.result_id), 101.0);
        assert_eq!(s.ingest(&reuse).unwrap(), IngestOutcome::Duplicate);
        assert_eq!(
            s.ingest_many(&[reuse.clone(), reuse]).unwrap().len(),
            2,
            "one outcome per record"
        );
        assert_eq!(s.count_traces("c1").unwrap(), 1);
    }
}
