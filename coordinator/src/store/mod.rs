//! Persistence behind a narrow trait: agents, enrolment tokens, campaigns, traces and
//! alias-resolution results (one per campaign, round and vantage).
//!
//! Traces are keyed so that ingest is idempotent — one record per
//! (campaign, round, vantage, destination), and a re-uploaded `result_id` maps to the
//! record already stored — and so the queries that matter (by campaign, by vantage, by
//! destination, by time) are range scans, not full scans.

use serde::{Deserialize, Serialize};
use tracemesh_proto::v1;

pub mod access;
pub mod checkpoint;
pub mod keys;
mod sled_store;
pub mod token;

pub use access::{IdentityRecord, RevocationRecord};
pub use checkpoint::Checkpoint;
pub use sled_store::SledStore;
pub use token::{TokenRecord, TokenRejection, check_token};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store (sled)")]
    Sled(#[from] sled::Error),
    #[error("store {path} is locked: is another coordinator running on this data directory?")]
    Locked { path: String },
    #[error("store: corrupt {what} record at key {key:?}: {detail}")]
    Corrupt {
        what: &'static str,
        key: String,
        detail: String,
    },
    #[error("store: cannot store {what}: {detail}")]
    Invalid { what: &'static str, detail: String },
}

/// An enrolled agent, as the registry remembers it across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub meta: AgentMeta,
    pub enrolled_at_ns: i64,
    /// SHA-256 (hex) of the certificate issued at enrolment.
    pub cert_sha256: String,
    pub agent_version: String,
    pub hostname: String,
    /// Last time a session of this agent was seen, unix ns.
    #[serde(default)]
    pub last_seen_ns: Option<i64>,
    /// Where its mesh endpoint listens (`IP:PORT`), as its last Hello said.
    #[serde(default)]
    pub mesh_addr: Option<String>,
}

/// Operator-chosen metadata of a vantage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentMeta {
    pub name: String,
    #[serde(default)]
    pub country: String,
    #[serde(default)]
    pub city: String,
    #[serde(default)]
    pub loc: Option<(f64, f64)>,
    #[serde(default)]
    pub asn: Option<u32>,
    #[serde(default)]
    pub tags: Vec<String>,
}

impl AgentMeta {
    pub fn to_proto(&self) -> v1::AgentMetadata {
        v1::AgentMetadata {
            name: self.name.clone(),
            country: self.country.clone(),
            city: self.city.clone(),
            lat: self.loc.map(|l| l.0),
            lon: self.loc.map(|l| l.1),
            asn: self.asn,
            tags: self.tags.clone(),
        }
    }

    pub fn from_proto(m: &v1::AgentMetadata) -> Self {
        AgentMeta {
            name: m.name.clone(),
            country: m.country.clone(),
            city: m.city.clone(),
            loc: m.lat.zip(m.lon),
            asn: m.asn,
            tags: m.tags.clone(),
        }
    }
}

/// What a retention sweep did ([`Store::expire_traces`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ExpireCounts {
    /// Traces handed to the archive.
    pub archived: u64,
    /// Traces deleted (archived first).
    pub deleted: u64,
    /// Index postings removed (time, vantage and destination indexes).
    pub postings_deleted: u64,
    /// Records (traces or other kinds) deleted finishing chunks an interrupted sweep
    /// had archived already (its journal entries): archived then, not again now.
    pub resumed: u64,
    /// Mesh samples, alias results and multipath traces archived, then deleted.
    pub mesh_samples: u64,
    pub alias_results: u64,
    pub mda_results: u64,
}

/// The raw results besides traces that retention archives and deletes too
/// ([`Store::expire_results`]), each in its own tree keyed by campaign first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultKind {
    Mesh,
    Alias,
    Mda,
}

impl ResultKind {
    pub const ALL: [ResultKind; 3] = [ResultKind::Mesh, ResultKind::Alias, ResultKind::Mda];

    /// Its archive files' prefix (`DIR/date=D/KIND-....pb.gz`).
    pub fn name(self) -> &'static str {
        match self {
            ResultKind::Mesh => "mesh",
            ResultKind::Alias => "alias",
            ResultKind::Mda => "mda",
        }
    }

    /// (when it was measured, when the coordinator stored it), Unix ns, of a stored
    /// record of this kind.
    pub fn times(self, bytes: &[u8]) -> Result<(i64, i64), prost::DecodeError> {
        use prost::Message as _;
        let s_to_ns = |s: f64| (s * 1e9) as i64;
        Ok(match self {
            ResultKind::Mesh => {
                let m = v1::MeshSample::decode(bytes)?;
                (m.at_ns, m.received_at_ns)
            }
            ResultKind::Alias => {
                let r = v1::AliasResult::decode(bytes)?;
                (s_to_ns(r.start), r.received_at_ns)
            }
            ResultKind::Mda => {
                let r = v1::MdaResult::decode(bytes)?;
                (s_to_ns(r.start), r.received_at_ns)
            }
        })
    }

    fn counter(self, c: &mut ExpireCounts) -> &mut u64 {
        match self {
            ResultKind::Mesh => &mut c.mesh_samples,
            ResultKind::Alias => &mut c.alias_results,
            ResultKind::Mda => &mut c.mda_results,
        }
    }

    /// Adds `n` archived-and-deleted records of this kind to `c`.
    pub fn count(self, c: &mut ExpireCounts, n: u64) {
        *self.counter(c) += n;
    }
}

/// Where a retention sweep puts each chunk before the store deletes it, in two steps
/// around the store's journal entry for the chunk (`sled_store/retention.rs`): a crash
/// before the entry leaves only staged files, which nothing reads and the next sweep
/// writes again; a crash after it leaves the entry, which the next sweep finishes
/// (publish, delete) instead of archiving the chunk a second time.
pub trait ChunkArchive {
    /// Writes `traces` durably (fsynced) under temporary names no reader looks at;
    /// returns the files `publish` will put in place. `name` is the chunk's, the same
    /// on every sweep that meets that chunk.
    fn stage(&mut self, name: &str, traces: &[v1::TraceRecord]) -> Result<Vec<String>, StoreError>;
    /// Puts staged files in place (renamed, directories fsynced); a file already in
    /// place is done. An error if a file is neither staged nor in place.
    fn publish(&mut self, files: &[String]) -> Result<(), StoreError>;
    /// As `stage`, for records of another kind: (UTC date of the record, its bytes as
    /// stored, a protobuf message), in one file per date.
    fn stage_encoded(
        &mut self,
        name: &str,
        records: &[(String, Vec<u8>)],
    ) -> Result<Vec<String>, StoreError>;
    /// The journal entries an interrupted sweep left are finished: staged files left
    /// now belong to no chunk.
    fn resumed(&mut self) -> Result<(), StoreError>;
}

/// Whether an ingest stored something new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestOutcome {
    Stored,
    Duplicate,
}

/// Filters for [`Store::query_traces`]; at least one of campaign, vantage, dst, or a time
/// bound should be set, otherwise everything is scanned in time order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceQuery {
    pub campaign_id: Option<String>,
    pub vantage: Option<String>,
    pub dst: Option<String>,
    /// Inclusive bounds on the trace's start, unix ns.
    pub since_ns: Option<i64>,
    pub until_ns: Option<i64>,
    /// 0 = unlimited.
    pub limit: usize,
}

pub trait Store: Send + Sync + std::fmt::Debug {
    fn put_agent(&self, agent: &AgentRecord) -> Result<(), StoreError>;
    fn get_agent(&self, name: &str) -> Result<Option<AgentRecord>, StoreError>;
    fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError>;

    /// Stores a token under the SHA-256 of its secret (the secret itself is never stored).
    fn put_token(&self, secret_sha256: &str, token: &TokenRecord) -> Result<(), StoreError>;
    /// Atomically checks and burns a token: at most one caller ever gets `Ok(Ok(_))`.
    fn consume_token(
        &self,
        secret_sha256: &str,
        now_ns: i64,
    ) -> Result<Result<TokenRecord, TokenRejection>, StoreError>;

    /// A fresh, never-reused campaign id.
    fn next_campaign_id(&self) -> Result<String, StoreError>;
    fn put_campaign(&self, campaign: &v1::Campaign) -> Result<(), StoreError>;
    fn get_campaign(&self, id: &str) -> Result<Option<v1::Campaign>, StoreError>;
    fn list_campaigns(&self) -> Result<Vec<v1::Campaign>, StoreError>;

    /// Stores a trace uploaded by `record.vantage` unless that (campaign, round, vantage,
    /// dst) or that agent's `result_id` is already stored.
    fn ingest(&self, record: &v1::TraceRecord) -> Result<IngestOutcome, StoreError>;
    /// [`Store::ingest`] for many records at once, one outcome per record in order (a
    /// record repeated within `records` is stored once). The outer error means nothing
    /// may be assumed stored; stores override this to amortise per-write costs.
    #[allow(clippy::type_complexity)]
    fn ingest_many(
        &self,
        records: &[v1::TraceRecord],
    ) -> Result<Vec<Result<IngestOutcome, StoreError>>, StoreError> {
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            match self.ingest(r) {
                Err(StoreError::Invalid { what, detail }) => {
                    out.push(Err(StoreError::Invalid { what, detail }))
                }
                Err(e) => return Err(e),
                Ok(o) => out.push(Ok(o)),
            }
        }
        Ok(out)
    }
    /// Calls `f` with each matching trace, in key order (by campaign: round, vantage,
    /// dst; otherwise by start time), until it returns false or `q.limit` is reached.
    fn for_each_trace(
        &self,
        q: &TraceQuery,
        f: &mut dyn FnMut(v1::TraceRecord) -> bool,
    ) -> Result<(), StoreError>;
    /// Calls `f` with every stored trace in whatever order is cheapest for the store,
    /// until it returns false: for consumers that take any order (the detector's replay)
    /// and would otherwise pay for a time index they do not need.
    fn for_each_trace_any_order(
        &self,
        f: &mut dyn FnMut(v1::TraceRecord) -> bool,
    ) -> Result<(), StoreError> {
        self.for_each_trace(&TraceQuery::default(), f)
    }
    fn query_traces(&self, q: &TraceQuery) -> Result<Vec<v1::TraceRecord>, StoreError> {
        let mut out = Vec::new();
        self.for_each_trace(q, &mut |t| {
            out.push(t);
            true
        })?;
        Ok(out)
    }
    fn count_traces(&self, campaign_id: &str) -> Result<u64, StoreError>;

    /// Stores an alias result uploaded by `result.vantage` unless that (campaign, round,
    /// vantage) is already stored (then the first copy stays).
    fn put_alias_result(&self, result: &v1::AliasResult) -> Result<IngestOutcome, StoreError>;
    /// Calls `f` with each stored alias result (of `campaign_id` if given), in key order
    /// (campaign, round, vantage), until it returns false.
    fn for_each_alias_result(
        &self,
        campaign_id: Option<&str>,
        f: &mut dyn FnMut(v1::AliasResult) -> bool,
    ) -> Result<(), StoreError>;

    /// Stores a mesh sample reported by `sample.dst` unless that (campaign, round, src,
    /// dst) is already stored (then the first copy stays).
    fn put_mesh_sample(&self, sample: &v1::MeshSample) -> Result<IngestOutcome, StoreError>;
    /// Calls `f` with each stored mesh sample (of `campaign_id` if given), in key order
    /// (campaign, round, src, dst), until it returns false.
    fn for_each_mesh_sample(
        &self,
        campaign_id: Option<&str>,
        f: &mut dyn FnMut(v1::MeshSample) -> bool,
    ) -> Result<(), StoreError>;
    /// Stores a multipath trace uploaded by `result.vantage` unless that (campaign, round,
    /// vantage, dst) is already stored (then the first copy stays).
    fn put_mda_result(&self, result: &v1::MdaResult) -> Result<IngestOutcome, StoreError>;
    /// Calls `f` with each stored multipath trace (of `campaign_id` if given), in key
    /// order (campaign, round, vantage, dst), until it returns false.
    fn for_each_mda_result(
        &self,
        campaign_id: Option<&str>,
        f: &mut dyn FnMut(v1::MdaResult) -> bool,
    ) -> Result<(), StoreError>;
    /// Client identities issued by the coordinator, by name (`store/access.rs`).
    fn put_identity(&self, r: &IdentityRecord) -> Result<(), StoreError>;
    fn get_identity(&self, name: &str) -> Result<Option<IdentityRecord>, StoreError>;
    fn list_identities(&self) -> Result<Vec<IdentityRecord>, StoreError>;
    /// Revoked certificates, by fingerprint; loaded at start, never removed.
    fn put_revocation(&self, r: &RevocationRecord) -> Result<(), StoreError>;
    fn list_revocations(&self) -> Result<Vec<RevocationRecord>, StoreError>;
    /// Who created a campaign (a consumer identity's name; absent for the coordinator's
    /// own alias campaigns and for campaigns stored before owners were recorded).
    fn put_campaign_owner(&self, id: &str, owner: &str) -> Result<(), StoreError>;
    fn campaign_owner(&self, id: &str) -> Result<Option<String>, StoreError>;

    /// Makes everything written so far durable; callers flush before acknowledging.
    fn flush(&self) -> Result<(), StoreError>;

    /// The ingest position (`store/checkpoint.rs`): every ingest group below it is
    /// written whole.
    fn ingest_position(&self) -> Result<u64, StoreError>;
    /// Calls `f` with each trace stored by an ingest group in `from..to`, in no
    /// particular order, until it returns false; the number of traces visited.
    fn for_each_trace_in_groups(
        &self,
        from: u64,
        to: u64,
        f: &mut dyn FnMut(v1::TraceRecord) -> bool,
    ) -> Result<u64, StoreError>;
    /// Replaces the detector checkpoint (and makes it durable).
    fn put_checkpoint(&self, cp: &Checkpoint) -> Result<(), StoreError>;
    fn get_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError>;
    /// Stores a published diversion record (JSON) under `key`, replacing an older
    /// version of the same episode.
    fn put_diversion_record(&self, key: &str, json: &[u8]) -> Result<(), StoreError>;
    /// Retention (`sled_store/retention.rs`): deletes the traces that started before
    /// `before_ns` (rounded down to the index's 10 s buckets) and were stored by an
    /// ingest group below `below_group`, about `chunk` at a time, each chunk archived
    /// first (staged, journalled, published): an error stops the sweep with that chunk
    /// still stored. Journal entries an interrupted sweep left are finished first.
    /// `between` runs after each chunk (the caller's pacing).
    fn expire_traces(
        &self,
        before_ns: i64,
        below_group: u64,
        chunk: usize,
        archive: &mut dyn ChunkArchive,
        between: &mut dyn FnMut(&ExpireCounts),
    ) -> Result<ExpireCounts, StoreError>;
    /// Retention of another kind of result: as `expire_traces`, for the records
    /// measured before `before_ns` and stored before `received_before_ns` (what the
    /// detector checkpoint covers); their counts go into `counts`.
    #[allow(clippy::too_many_arguments)]
    fn expire_results(
        &self,
        kind: ResultKind,
        before_ns: i64,
        received_before_ns: i64,
        chunk: usize,
        archive: &mut dyn ChunkArchive,
        counts: &mut ExpireCounts,
        between: &mut dyn FnMut(&ExpireCounts),
    ) -> Result<(), StoreError>;
    /// The latest cut (Unix ns) a finished retention sweep applied: traces started
    /// before it have left the store (but those the checkpoint did not cover yet).
    fn retention_horizon(&self) -> Result<Option<i64>, StoreError>;
    /// Records a finished sweep's cut (the horizon never moves back).
    fn set_retention_horizon(&self, before_ns: i64) -> Result<(), StoreError>;
    /// Calls `f` with each stored diversion record (key, JSON), in key order.
    fn for_each_diversion_record(
        &self,
        f: &mut dyn FnMut(&str, &[u8]) -> bool,
    ) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests;
