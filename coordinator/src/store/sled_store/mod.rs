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
//!
//! `postings.rs` writes and scans the indexes, `dedup.rs` recognises re-uploads,
//! `migrate.rs` re-indexes stores written with an older index layout.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use prost::Message;
use rustc_hash::FxHashSet;
use tracemesh_proto::v1;

use super::access::{IdentityRecord, RevocationRecord};
use super::keys;
use super::{
    AgentRecord, IngestOutcome, Store, StoreError, TokenRecord, TokenRejection, TraceQuery,
    check_token,
};
use dedup::{Prepared, prepare};

mod access;
mod checkpoint;
mod dedup;
#[cfg(test)]
mod kill_tests;
mod migrate;
mod postings;
mod retention;
#[cfg(test)]
mod test_support;

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
    /// alias_key(campaign, round, vantage) → AliasResult.
    aliases: sled::Tree,
    /// mesh_key(campaign, round, src, dst) → MeshSample.
    mesh: sled::Tree,
    /// mda_key(campaign, round, vantage, dst) → MdaResult.
    mda: sled::Tree,
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
            aliases: db.open_tree("alias_results")?,
            mesh: db.open_tree("mesh_samples")?,
            mda: db.open_tree("mda_results")?,
            next_group: Arc::new(Mutex::new(0)),
            db,
        };
        store.ensure_index()?;
        Ok(store)
    }

    fn decode_trace(key: &[u8], bytes: &[u8]) -> Result<v1::TraceRecord, StoreError> {
        v1::TraceRecord::decode(bytes).map_err(|e| corrupt("trace", key, e))
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

    fn put_alias_result(&self, r: &v1::AliasResult) -> Result<IngestOutcome, StoreError> {
        if r.campaign_id.is_empty() || r.vantage.is_empty() {
            return Err(StoreError::Invalid {
                what: "alias result",
                detail: "campaign or vantage missing".into(),
            });
        }
        put_first(
            &self.aliases,
            keys::alias_key(&r.campaign_id, r.round, &r.vantage),
            r,
        )
    }

    fn for_each_alias_result(
        &self,
        campaign_id: Option<&str>,
        f: &mut dyn FnMut(v1::AliasResult) -> bool,
    ) -> Result<(), StoreError> {
        scan_campaign(&self.aliases, campaign_id, "alias result", f)
    }

    fn put_mesh_sample(&self, m: &v1::MeshSample) -> Result<IngestOutcome, StoreError> {
        if m.campaign_id.is_empty() || m.src.is_empty() || m.dst.is_empty() {
            return Err(StoreError::Invalid {
                what: "mesh sample",
                detail: "campaign, src or dst missing".into(),
            });
        }
        put_first(
            &self.mesh,
            keys::mesh_key(&m.campaign_id, m.round, &m.src, &m.dst),
            m,
        )
    }

    fn for_each_mesh_sample(
        &self,
        campaign_id: Option<&str>,
        f: &mut dyn FnMut(v1::MeshSample) -> bool,
    ) -> Result<(), StoreError> {
        scan_campaign(&self.mesh, campaign_id, "mesh sample", f)
    }

    fn put_mda_result(&self, r: &v1::MdaResult) -> Result<IngestOutcome, StoreError> {
        if r.campaign_id.is_empty() || r.vantage.is_empty() || r.dst.is_empty() {
            return Err(StoreError::Invalid {
                what: "mda result",
                detail: "campaign, vantage or dst missing".into(),
            });
        }
        put_first(
            &self.mda,
            keys::mda_key(&r.campaign_id, r.round, &r.vantage, &r.dst),
            r,
        )
    }

    fn for_each_mda_result(
        &self,
        campaign_id: Option<&str>,
        f: &mut dyn FnMut(v1::MdaResult) -> bool,
    ) -> Result<(), StoreError> {
        scan_campaign(&self.mda, campaign_id, "mda result", f)
    }

    fn put_identity(&self, r: &IdentityRecord) -> Result<(), StoreError> {
        self.put_identity_impl(r)
    }
    fn get_identity(&self, name: &str) -> Result<Option<IdentityRecord>, StoreError> {
        self.get_identity_impl(name)
    }
    fn list_identities(&self) -> Result<Vec<IdentityRecord>, StoreError> {
        self.list_identities_impl()
    }
    fn put_revocation(&self, r: &RevocationRecord) -> Result<(), StoreError> {
        self.put_revocation_impl(r)
    }
    fn list_revocations(&self) -> Result<Vec<RevocationRecord>, StoreError> {
        self.list_revocations_impl()
    }
    fn put_campaign_owner(&self, id: &str, owner: &str) -> Result<(), StoreError> {
        self.put_campaign_owner_impl(id, owner)
    }
    fn campaign_owner(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.campaign_owner_impl(id)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn ingest_position(&self) -> Result<u64, StoreError> {
        Ok(*self.next_group.lock().unwrap_or_else(|p| p.into_inner()))
    }
    fn for_each_trace_in_groups(
        &self,
        from: u64,
        to: u64,
        f: &mut dyn FnMut(v1::TraceRecord) -> bool,
    ) -> Result<u64, StoreError> {
        self.for_each_trace_in_groups_impl(from, to, f)
    }
    fn put_checkpoint(&self, cp: &super::Checkpoint) -> Result<(), StoreError> {
        self.put_checkpoint_impl(cp)
    }
    fn get_checkpoint(&self) -> Result<Option<super::Checkpoint>, StoreError> {
        self.get_checkpoint_impl()
    }
    fn expire_traces(
        &self,
        before_ns: i64,
        below_group: u64,
        chunk: usize,
        archive: &mut dyn super::ChunkArchive,
        between: &mut dyn FnMut(&super::ExpireCounts),
    ) -> Result<super::ExpireCounts, StoreError> {
        self.expire_traces_impl(before_ns, below_group, chunk, archive, between)
    }
    #[allow(clippy::too_many_arguments)]
    fn expire_results(
        &self,
        kind: super::ResultKind,
        before_ns: i64,
        received_before_ns: i64,
        chunk: usize,
        archive: &mut dyn super::ChunkArchive,
        counts: &mut super::ExpireCounts,
        between: &mut dyn FnMut(&super::ExpireCounts),
    ) -> Result<(), StoreError> {
        self.expire_results_impl(
            kind,
            before_ns,
            received_before_ns,
            chunk,
            archive,
            counts,
            between,
        )
    }
    fn retention_horizon(&self) -> Result<Option<i64>, StoreError> {
        self.retention_horizon_impl()
    }
    fn set_retention_horizon(&self, before_ns: i64) -> Result<(), StoreError> {
        self.set_retention_horizon_impl(before_ns)
    }
    fn put_diversion_record(&self, key: &str, json: &[u8]) -> Result<(), StoreError> {
        self.db
            .open_tree(checkpoint::DIVERSIONS_TREE)?
            .insert(key.as_bytes(), json)?;
        Ok(())
    }
    fn for_each_diversion_record(
        &self,
        f: &mut dyn FnMut(&str, &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        for entry in self.db.open_tree(checkpoint::DIVERSIONS_TREE)?.iter() {
            let (k, v) = entry?;
            if !f(&String::from_utf8_lossy(&k), &v) {
                break;
            }
        }
        Ok(())
    }
}

/// Stores `value` under `key` unless something is there already (a re-upload): the first
/// copy stays.
fn put_first(
    tree: &sled::Tree,
    key: Vec<u8>,
    value: &impl Message,
) -> Result<IngestOutcome, StoreError> {
    match tree.compare_and_swap(key, None as Option<&[u8]>, Some(value.encode_to_vec()))? {
        Ok(()) => Ok(IngestOutcome::Stored),
        Err(_) => Ok(IngestOutcome::Duplicate),
    }
}

/// Calls `f` with every record of a tree keyed by campaign first (of `campaign_id` if
/// given), in key order, until it returns false.
fn scan_campaign<M: Message + Default>(
    tree: &sled::Tree,
    campaign_id: Option<&str>,
    what: &'static str,
    f: &mut dyn FnMut(M) -> bool,
) -> Result<(), StoreError> {
    let prefix = campaign_id.map(keys::str_prefix).unwrap_or_default();
    for entry in tree.scan_prefix(prefix) {
        let (k, v) = entry?;
        let m = M::decode(&*v).map_err(|e| corrupt(what, &k, e))?;
        if !f(m) {
            break;
        }
    }
    Ok(())
}
