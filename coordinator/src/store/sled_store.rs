//! [`Store`] on sled. Small records (agents, tokens) are JSON; campaigns and traces are
//! their protobuf encoding, which is compact and already versioned by field numbers.
//!
//! Traces: one record per (campaign, round, vantage, dst) in `traces`, plus three
//! time-ordered secondary indexes (by vantage, by destination, by time alone). A sled
//! write costs several microseconds whatever its size, so the indexes do not hold one
//! entry per trace: each ingest group writes, per (vantage or destination, 10 s bucket),
//! one "posting" listing the (start, primary key) of its traces there. A query reads the
//! postings of a bucket, orders them by (start, primary key) and resolves them; a trace
//! thus costs about one sled write instead of five.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use prost::Message as _;
use rustc_hash::{FxBuildHasher, FxHashSet};
use tracemesh_proto::v1;

use super::keys;
use super::{
    AgentRecord, IngestOutcome, Store, StoreError, TokenRecord, TokenRejection, TraceQuery,
    check_token,
};

#[derive(Debug, Clone)]
pub struct SledStore {
    db: sled::Db,
    agents: sled::Tree,
    tokens: sled::Tree,
    campaigns: sled::Tree,
    /// Primary: trace_key → TraceRecord.
    traces: sled::Tree,
    /// result_key(vantage, result_id) → trace_key, for result ids that are not the
    /// canonical `campaign/round/dst` of their slot (stores written before this format
    /// have it for every trace).
    by_result: sled::Tree,
    /// Whether `by_result` may hold anything (if not, nobody needs to look there).
    has_markers: Arc<AtomicBool>,
    /// posting_key(vantage, bucket, group, chunk) → postings.
    by_vantage: sled::Tree,
    /// posting_key(dst, bucket, group, chunk) → postings.
    by_dst: sled::Tree,
    /// posting_key(-, bucket, group, chunk) → postings.
    by_time: sled::Tree,
    /// Serialises ingest (the duplicate checks and the writes) and numbers the groups.
    next_group: Arc<Mutex<u64>>,
}

/// sled's page cache, MiB, unless TRACEMESH_STORE_CACHE_MIB says otherwise. sled's
/// default (1 GiB of accounted page size) let the coordinator's RSS reach ~2 GiB after a
/// few hundred thousand traces; ingest writes mostly new keys and queries scan, so a
/// smaller cache costs little.
const DEFAULT_CACHE_MIB: u64 = 256;

fn cache_bytes() -> u64 {
    std::env::var("TRACEMESH_STORE_CACHE_MIB")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(DEFAULT_CACHE_MIB)
        << 20
}

/// Secondary index layout in force; stores without it are re-indexed on open.
const INDEX_FORMAT_KEY: &[u8] = b"traces/index-format";
const INDEX_FORMAT: &[u8] = b"postings-1";
/// The next posting group number (u64, big-endian), written before a group's postings.
const NEXT_GROUP_KEY: &[u8] = b"traces/next-group";
/// The per-trace index trees of the previous layout, dropped once re-indexed.
const OLD_INDEX_TREES: [&str; 3] = ["traces_by_vantage", "traces_by_dst", "traces_by_time"];
/// Pairs per posting value: keeps values (and so sled's pages) small.
const POSTING_CHUNK: usize = 64;
/// Traces per write while re-indexing an old store.
const REINDEX_GROUP: usize = 10_000;

fn corrupt(what: &'static str, key: &[u8], detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        what,
        key: String::from_utf8_lossy(key).into_owned(),
        detail: detail.to_string(),
    }
}

fn json<T: serde::Serialize>(what: &'static str, v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Invalid {
        what,
        detail: e.to_string(),
    })
}

fn start_ns(record: &v1::TraceRecord) -> i64 {
    start_ns_of(record.start)
}

fn start_ns_of(start: f64) -> i64 {
    let ns = start * 1e9;
    if ns.is_finite() { ns as i64 } else { 0 }
}

impl SledStore {
    pub fn open(path: &Path) -> Result<SledStore, StoreError> {
        // A Db dropped a moment ago in this process may still be held by sled's flusher
        // thread, which keeps the file lock until it notices; retry briefly before
        // concluding that someone else has the store.
        let mut attempt = 0;
        let db = loop {
            match sled::Config::new()
                .path(path)
                .cache_capacity(cache_bytes())
                .open()
            {
                Ok(db) => break db,
                // sled reports the file lock only in its message.
                Err(sled::Error::Io(io)) if io.to_string().contains("could not acquire lock") => {
                    attempt += 1;
                    if attempt >= 40 {
                        return Err(StoreError::Locked {
                            path: path.display().to_string(),
                        });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                Err(e) => return Err(StoreError::Sled(e)),
            }
        };
        let by_result = db.open_tree("traces_by_result")?;
        let store = SledStore {
            agents: db.open_tree("agents")?,
            tokens: db.open_tree("tokens")?,
            campaigns: db.open_tree("campaigns")?,
            traces: db.open_tree("traces")?,
            has_markers: Arc::new(AtomicBool::new(!by_result.is_empty())),
            by_result,
            by_vantage: db.open_tree("traces_vantage_postings")?,
            by_dst: db.open_tree("traces_dst_postings")?,
            by_time: db.open_tree("traces_time_postings")?,
            next_group: Arc::new(Mutex::new(0)),
            db,
        };
        store.ensure_index()?;
        Ok(store)
    }

    /// Loads the group counter, first re-indexing a store written with another index
    /// layout (or interrupted while re-indexing) from its primary records.
    fn ensure_index(&self) -> Result<(), StoreError> {
        let mut next = self.next_group.lock().unwrap_or_else(|p| p.into_inner());
        if self.db.get(INDEX_FORMAT_KEY)?.as_deref() != Some(INDEX_FORMAT) {
            if !self.traces.is_empty() {
                tracing::info!("re-indexing stored traces");
            }
            for t in [&self.by_vantage, &self.by_dst, &self.by_time] {
                t.clear()?;
            }
            *next = 0;
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

    /// Writes the postings of one group of traces (vantage, dst, start, primary key) to
    /// the three indexes under a fresh group number. The counter is stored first, so a
    /// number whose postings survived a crash is never handed out again.
    fn write_postings<'a>(
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
                // Split into values of at most POSTING_CHUNK pairs.
                let mut chunk = 0u32;
                let mut rest = bytes.as_slice();
                while !rest.is_empty() {
                    let mut end = 0;
                    for _ in 0..POSTING_CHUNK {
                        if end >= rest.len() {
                            break;
                        }
                        let len = u16::from_be_bytes([rest[end + 8], rest[end + 9]]) as usize;
                        end += 10 + len;
                    }
                    tree.insert(keys::posting_key(component, b, group, chunk), &rest[..end])?;
                    rest = &rest[end..];
                    chunk += 1;
                }
            }
        }
        Ok(())
    }

    fn decode_trace(key: &[u8], bytes: &[u8]) -> Result<v1::TraceRecord, StoreError> {
        v1::TraceRecord::decode(bytes).map_err(|e| corrupt("trace", key, e))
    }

    /// Whether `record` (valid, keys `p`) is already stored or earlier in its group.
    fn is_duplicate(
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

    /// Walks a posting index in (start, primary key) order, one bucket at a time,
    /// resolving each entry to its record. Entries that do not resolve to a record with
    /// that start are skipped: postings are written before their records, so a crash can
    /// leave postings of records that were never stored (their agent uploads them again)
    /// or, if a slot's record was then stored from another upload, stale ones.
    fn scan_index(
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

fn matches(rec: &v1::TraceRecord, q: &TraceQuery) -> bool {
    let s = start_ns(rec);
    q.campaign_id.as_ref().is_none_or(|c| *c == rec.campaign_id)
        && q.vantage.as_ref().is_none_or(|v| *v == rec.vantage)
        && q.dst.as_ref().is_none_or(|d| *d == rec.dst)
        && q.since_ns.is_none_or(|t| s >= t)
        && q.until_ns.is_none_or(|t| s <= t)
}

/// A valid trace's keys.
struct Prepared {
    pk: Vec<u8>,
    rk: Vec<u8>,
    start: i64,
    canonical: bool,
}

fn prepare(record: &v1::TraceRecord) -> Result<Prepared, StoreError> {
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

impl Store for SledStore {
    fn put_agent(&self, agent: &AgentRecord) -> Result<(), StoreError> {
        self.agents
            .insert(agent.meta.name.as_bytes(), json("agent", agent)?)?;
        Ok(())
    }

    fn get_agent(&self, name: &str) -> Result<Option<AgentRecord>, StoreError> {
        self.agents
            .get(name.as_bytes())?
            .map(|v| serde_json::from_slice(&v).map_err(|e| corrupt("agent", name.as_bytes(), e)))
            .transpose()
    }

    fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.agents
            .iter()
            .map(|e| {
                let (k, v) = e?;
                serde_json::from_slice(&v).map_err(|e| corrupt("agent", &k, e))
            })
            .collect()
    }

    fn put_token(&self, secret_sha256: &str, token: &TokenRecord) -> Result<(), StoreError> {
        self.tokens
            .insert(secret_sha256.as_bytes(), json("token", token)?)?;
        Ok(())
    }

    fn consume_token(
        &self,
        secret_sha256: &str,
        now_ns: i64,
    ) -> Result<Result<TokenRecord, TokenRejection>, StoreError> {
        let key = secret_sha256.as_bytes();
        // Compare-and-swap loop: two agents racing with one token cannot both win.
        loop {
            let Some(old) = self.tokens.get(key)? else {
                return Ok(Err(TokenRejection::Unknown));
            };
            let mut rec: TokenRecord =
                serde_json::from_slice(&old).map_err(|e| corrupt("token", key, e))?;
            if let Err(rejection) = check_token(&rec, now_ns) {
                return Ok(Err(rejection));
            }
            rec.used_at_ns = Some(now_ns);
            let new = json("token", &rec)?;
            if self
                .tokens
                .compare_and_swap(key, Some(old), Some(new))?
                .is_ok()
            {
                return Ok(Ok(rec));
            }
        }
    }

    fn next_campaign_id(&self) -> Result<String, StoreError> {
        // generate_id is monotonic across restarts (it may skip numbers after a crash,
        // never repeat them).
        Ok(format!("c{}", self.db.generate_id()? + 1))
    }

    fn put_campaign(&self, campaign: &v1::Campaign) -> Result<(), StoreError> {
        self.campaigns
            .insert(campaign.id.as_bytes(), campaign.encode_to_vec())?;
        Ok(())
    }

    fn get_campaign(&self, id: &str) -> Result<Option<v1::Campaign>, StoreError> {
        self.campaigns
            .get(id.as_bytes())?
            .map(|v| v1::Campaign::decode(&*v).map_err(|e| corrupt("campaign", id.as_bytes(), e)))
            .transpose()
    }

    fn list_campaigns(&self) -> Result<Vec<v1::Campaign>, StoreError> {
        let mut out: Vec<v1::Campaign> = self
            .campaigns
            .iter()
            .map(|e| {
                let (k, v) = e?;
                v1::Campaign::decode(&*v).map_err(|e| corrupt("campaign", &k, e))
            })
            .collect::<Result<_, _>>()?;
        out.sort_by_key(|c| c.created_at_ns);
        Ok(out)
    }

    fn ingest(&self, record: &v1::TraceRecord) -> Result<IngestOutcome, StoreError> {
        self.ingest_many(std::slice::from_ref(record))?
            .pop()
            .unwrap_or(Err(StoreError::Invalid {
                what: "trace",
                detail: "no outcome".into(),
            }))
    }

    fn ingest_many(
        &self,
        records: &[v1::TraceRecord],
    ) -> Result<Vec<Result<IngestOutcome, StoreError>>, StoreError> {
        // No sled transaction: the duplicate checks and the writes run under
        // `next_group`'s lock, so nothing races between them, and sled's multi-tree
        // transactions cost several times the writes themselves. Instead, writes in a
        // fixed order with keys that depend only on the record: the postings, then the
        // records, then the result markers of non-canonical ids. A stored record thus
        // has its postings, and a marker its record; a crash before the end leaves at
        // most postings without records (skipped by queries) or records without their
        // marker, and either way nothing was acknowledged, so the agent uploads those
        // traces again and they are written again over the same keys. The caller
        // flushes before acknowledging, as before.
        let mut next = self.next_group.lock().unwrap_or_else(|p| p.into_inner());
        let check_markers = self.has_markers.load(Ordering::Acquire);
        // Stored unless found to be a duplicate below.
        let mut out = Vec::with_capacity(records.len());
        let prepared: Vec<Option<Prepared>> = records
            .iter()
            .map(|r| match prepare(r) {
                Ok(p) => {
                    out.push(Ok(IngestOutcome::Stored));
                    Some(p)
                }
                Err(e) => {
                    out.push(Err(e));
                    None
                }
            })
            .collect();
        let mut group_pks: FxHashSet<&[u8]> = FxHashSet::default();
        let mut group_rks: FxHashSet<&[u8]> = FxHashSet::default();
        let mut fresh: Vec<(&Prepared, &v1::TraceRecord)> = Vec::with_capacity(records.len());
        for ((p, record), outcome) in prepared.iter().zip(records).zip(&mut out) {
            let Some(p) = p else { continue };
            if self.is_duplicate(p, record, check_markers, &group_pks, &group_rks)? {
                *outcome = Ok(IngestOutcome::Duplicate);
                continue;
            }
            group_pks.insert(&p.pk);
            group_rks.insert(&p.rk);
            fresh.push((p, record));
        }
        self.write_postings(
            &mut next,
            fresh
                .iter()
                .map(|(p, r)| (r.vantage.as_str(), r.dst.as_str(), p.start, p.pk.as_slice())),
        )?;
        // Plain inserts, not sled batches: one thread's writes reach the log in program
        // order, which is all the order above needs, and a batch takes sled's global
        // write lock, which would stall them behind a concurrent flush. Key order helps
        // sled's page cache.
        fresh.sort_unstable_by(|a, b| a.0.pk.cmp(&b.0.pk));
        for (p, r) in &fresh {
            self.traces.insert(p.pk.as_slice(), r.encode_to_vec())?;
        }
        for (p, _) in &fresh {
            if !p.canonical {
                self.has_markers.store(true, Ordering::Release);
                self.by_result.insert(p.rk.as_slice(), p.pk.as_slice())?;
            }
        }
        Ok(out)
    }

    fn for_each_trace(
        &self,
        q: &TraceQuery,
        f: &mut dyn FnMut(v1::TraceRecord) -> bool,
    ) -> Result<(), StoreError> {
        let mut taken = 0usize;
        let mut visit = |rec: v1::TraceRecord| {
            taken += 1;
            f(rec) && (q.limit == 0 || taken < q.limit)
        };
        if let Some(c) = &q.campaign_id {
            for entry in self.traces.scan_prefix(keys::str_prefix(c)) {
                let (k, v) = entry?;
                let rec = Self::decode_trace(&k, &v)?;
                if matches(&rec, q) && !visit(rec) {
                    break;
                }
            }
            return Ok(());
        }
        if let Some(v) = &q.vantage {
            return self.scan_index(&self.by_vantage, Some(v), q, &mut visit);
        }
        if let Some(d) = &q.dst {
            return self.scan_index(&self.by_dst, Some(d), q, &mut visit);
        }
        self.scan_index(&self.by_time, None, q, &mut visit)
    }

    fn for_each_trace_any_order(
        &self,
        f: &mut dyn FnMut(v1::TraceRecord) -> bool,
    ) -> Result<(), StoreError> {
        // The primary tree in key order: one sequential pass, no index lookups.
        for entry in self.traces.iter() {
            let (k, v) = entry?;
            if !f(Self::decode_trace(&k, &v)?) {
                break;
            }
        }
        Ok(())
    }

    fn count_traces(&self, campaign_id: &str) -> Result<u64, StoreError> {
        let mut n = 0;
        for entry in self.traces.scan_prefix(keys::str_prefix(campaign_id)) {
            entry?;
            n += 1;
        }
        Ok(n)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod crash_tests {
    //! What a crash can leave behind (writes are ordered postings → record → marker, and
    //! sled recovers a prefix of them), and that a re-upload then repairs it.
    use super::*;

    fn trace(dst: &str, result_id: Option<&str>, start: f64) -> v1::TraceRecord {
        v1::TraceRecord {
            result_id: result_id
                .map_or_else(|| tracemesh_proto::result_id("c1", 0, dst), str::to_string),
            campaign_id: "c1".into(),
            round: 0,
            vantage: "tor".into(),
            dst: dst.into(),
            start,
            ..Default::default()
        }
    }

    fn by(s: &SledStore, q: TraceQuery) -> Vec<(String, f64)> {
        s.query_traces(&q)
            .unwrap()
            .into_iter()
            .map(|t| (t.dst, t.start))
            .collect()
    }

    fn all_queries(s: &SledStore) -> [Vec<(String, f64)>; 4] {
        [
            by(
                s,
                TraceQuery {
                    campaign_id: Some("c1".into()),
                    ..Default::default()
                },
            ),
            by(
                s,
                TraceQuery {
                    vantage: Some("tor".into()),
                    ..Default::default()
                },
            ),
            by(
                s,
                TraceQuery {
                    dst: Some("1.1.1.1".into()),
                    ..Default::default()
                },
            ),
            by(s, TraceQuery::default()),
        ]
    }

    fn pk(t: &v1::TraceRecord) -> Vec<u8> {
        keys::trace_key(&t.campaign_id, t.round, &t.vantage, &t.dst)
    }

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod kill_tests {
    //! A real crash: a child process ingests and flushes in a loop until it is killed
    //! with SIGKILL; the store it leaves must open, its indexes must agree with its
    //! records, and uploading everything again must store each trace exactly once.
    use super::*;

    const GROUP: usize = 500;
    const GROUPS: usize = 100;

    fn record(g: usize, i: usize) -> v1::TraceRecord {
        let dst = format!("10.{}.{}.{}", g / 256, g % 256, i % 250);
        let vantage = format!("v{}", i / 250);
        v1::TraceRecord {
            // Every third trace has an agent-chosen id, so markers are exercised too.
            result_id: if i.is_multiple_of(3) {
                format!("spool-{g}-{i}")
            } else {
                tracemesh_proto::result_id("c1", 0, &dst)
            },
            campaign_id: "c1".into(),
            round: 0,
            vantage,
            dst,
            start: 1_000.0 + (g * GROUP + i) as f64 * 0.001,
            probes_sent: 3,
            ..Default::default()
        }
    }

    fn group(g: usize) -> Vec<v1::TraceRecord> {
        (0..GROUP).map(|i| record(g, i)).collect()
    }

    /// The child's side; runs only when the parent test starts it.
    #[test]
    #[ignore = "child process of a_store_killed_mid_ingest_recovers_exactly_once"]
    fn kill_child_writer() {
        let Ok(dir) = std::env::var("TM_KILL_TEST_DIR") else {
            return;
        };
        let s = SledStore::open(Path::new(&dir)).unwrap();
        for g in 0..GROUPS {
            s.ingest_many(&group(g)).unwrap();
            s.flush().unwrap();
            println!("flushed {g}");
        }
    }

    fn pks(s: &SledStore, q: TraceQuery) -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = s
            .query_traces(&q)
            .unwrap()
            .iter()
            .map(|t| keys::trace_key(&t.campaign_id, t.round, &t.vantage, &t.dst))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_store_killed_mid_ingest_recovers_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::sled_store::kill_tests::kill_child_writer",
                "--ignored",
                "--nocapture",
            ])
            .env("TM_KILL_TEST_DIR", dir.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Kill it somewhere in the middle of its writes.
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let mut flushed = 0;
        while std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0 {
            if line.starts_with("flushed") {
                flushed += 1;
                if flushed == 30 {
                    break;
                }
            }
            line.clear();
        }
        std::thread::sleep(std::time::Duration::from_millis(7));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(flushed >= 30, "the child wrote too little");

        let s = SledStore::open(dir.path()).unwrap();
        let stored = pks(
            &s,
            TraceQuery {
                campaign_id: Some("c1".into()),
                ..Default::default()
            },
        );
        // Everything flushed survived, and the indexes hold exactly the records.
        assert!(stored.len() >= 30 * GROUP, "{} stored", stored.len());
        assert_eq!(pks(&s, TraceQuery::default()), stored);
        let mut by_vantage: Vec<Vec<u8>> = (0..2)
            .flat_map(|v| {
                pks(
                    &s,
                    TraceQuery {
                        vantage: Some(format!("v{v}")),
                        ..Default::default()
                    },
                )
            })
            .collect();
        by_vantage.sort();
        assert_eq!(by_vantage, stored);

        // The agents upload everything again (and the rest): each trace once.
        let mut fresh = 0;
        for g in 0..GROUPS {
            for o in s.ingest_many(&group(g)).unwrap() {
                if o.unwrap() == IngestOutcome::Stored {
                    fresh += 1;
                }
            }
        }
        assert_eq!(fresh, GROUPS * GROUP - stored.len());
        let all = pks(
            &s,
            TraceQuery {
                campaign_id: Some("c1".into()),
                ..Default::default()
            },
        );
        assert_eq!(all.len(), GROUPS * GROUP);
        assert_eq!(pks(&s, TraceQuery::default()), all);
        for o in s.ingest_many(&group(7)).unwrap() {
            assert_eq!(o.unwrap(), IngestOutcome::Duplicate);
        }
    }
}
