//! [`Store`] on sled. Small records (agents, tokens) are JSON; campaigns and traces are
//! their protobuf encoding, which is compact and already versioned by field numbers.

use std::path::Path;

use std::collections::HashSet;

use prost::Message as _;
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
    /// result_key(vantage, result_id) → trace_key.
    by_result: sled::Tree,
    /// timed_key(vantage, start, pk) → ().
    by_vantage: sled::Tree,
    /// timed_key(dst, start, pk) → ().
    by_dst: sled::Tree,
    /// time_key(start, pk) → ().
    by_time: sled::Tree,
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
    let ns = record.start * 1e9;
    if ns.is_finite() { ns as i64 } else { 0 }
}

impl SledStore {
    pub fn open(path: &Path) -> Result<SledStore, StoreError> {
        // A Db dropped a moment ago in this process may still be held by sled's flusher
        // thread, which keeps the file lock until it notices; retry briefly before
        // concluding that someone else has the store.
        let mut attempt = 0;
        let db = loop {
            match sled::Config::new().path(path).open() {
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
        Ok(SledStore {
            agents: db.open_tree("agents")?,
            tokens: db.open_tree("tokens")?,
            campaigns: db.open_tree("campaigns")?,
            traces: db.open_tree("traces")?,
            by_result: db.open_tree("traces_by_result")?,
            by_vantage: db.open_tree("traces_by_vantage")?,
            by_dst: db.open_tree("traces_by_dst")?,
            by_time: db.open_tree("traces_by_time")?,
            db,
        })
    }

    fn decode_trace(key: &[u8], bytes: &[u8]) -> Result<v1::TraceRecord, StoreError> {
        v1::TraceRecord::decode(bytes).map_err(|e| corrupt("trace", key, e))
    }

    /// Walks a time-ordered secondary index, resolving each entry to its record.
    fn scan_index(
        &self,
        index: &sled::Tree,
        component: Option<&str>,
        q: &TraceQuery,
        f: &mut dyn FnMut(v1::TraceRecord) -> bool,
    ) -> Result<(), StoreError> {
        let (lo, hi) = keys::time_bounds(component, q.since_ns, q.until_ns);
        for entry in index.range(lo..=hi) {
            let (k, _) = entry?;
            let pk = keys::pk_after_time(&k, component)
                .ok_or_else(|| corrupt("index", &k, "short key"))?;
            let Some(bytes) = self.traces.get(pk)? else {
                return Err(corrupt("index", &k, "dangling entry"));
            };
            let rec = Self::decode_trace(pk, &bytes)?;
            if matches(&rec, q) && !f(rec) {
                break;
            }
        }
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

/// A trace encoded with all its keys, ready to write.
struct Prepared {
    pk: Vec<u8>,
    rk: Vec<u8>,
    vk: Vec<u8>,
    dk: Vec<u8>,
    tk: Vec<u8>,
    bytes: Vec<u8>,
}

fn prepare(record: &v1::TraceRecord) -> Result<Prepared, StoreError> {
    if record.vantage.is_empty() || record.dst.is_empty() || record.result_id.is_empty() {
        return Err(StoreError::Invalid {
            what: "trace",
            detail: "vantage, dst and result_id must be set".into(),
        });
    }
    let pk = keys::trace_key(
        &record.campaign_id,
        record.round,
        &record.vantage,
        &record.dst,
    );
    let start = start_ns(record);
    Ok(Prepared {
        rk: keys::result_key(&record.vantage, &record.result_id),
        vk: keys::timed_key(&record.vantage, start, &pk),
        dk: keys::timed_key(&record.dst, start, &pk),
        tk: keys::time_key(start, &pk),
        bytes: record.encode_to_vec(),
        pk,
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
        // No transaction: the ingest writer is the only thread that writes traces, so
        // nothing can race between the duplicate checks and the writes, and sled's
        // multi-tree transactions cost several times the writes themselves (a hashed
        // write set per tree). Instead one batch per tree, applied in a fixed order —
        // the record, its three index entries, then its result marker in by_result —
        // with keys that depend only on the record. A marker therefore means the record
        // and its index entries are there; a crash before the markers leaves records
        // without one, which the agent (never acknowledged) uploads again and which are
        // then written again over the same keys (see `remnant`). The caller flushes
        // before acknowledging, as before.
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
        let mut group_pks: HashSet<&[u8]> = HashSet::with_capacity(prepared.len());
        let mut group_rks: HashSet<&[u8]> = HashSet::with_capacity(prepared.len());
        let mut batches: [sled::Batch; 5] = Default::default();
        let [traces, by_vantage, by_dst, by_time, by_result] = &mut batches;
        for ((p, record), outcome) in prepared.iter().zip(records).zip(&mut out) {
            let Some(p) = p else { continue };
            // Repeats within the group, then what is already stored.
            if group_pks.contains(p.pk.as_slice())
                || group_rks.contains(p.rk.as_slice())
                || self.by_result.contains_key(&p.rk)?
            {
                *outcome = Ok(IngestOutcome::Duplicate);
                continue;
            }
            if let Some(old) = self.traces.get(&p.pk)? {
                let old = Self::decode_trace(&p.pk, &old)?;
                if old.result_id != record.result_id {
                    // Another result already holds this (campaign, round, vantage, dst).
                    *outcome = Ok(IngestOutcome::Duplicate);
                    continue;
                }
                // The same result, written before a crash that came before its marker
                // (so before any acknowledgement): write it again, dropping index
                // entries the earlier copy may have had under another start time.
                let o = prepare(&old)?;
                by_vantage.remove(o.vk);
                by_dst.remove(o.dk);
                by_time.remove(o.tk);
            }
            traces.insert(p.pk.as_slice(), p.bytes.as_slice());
            by_vantage.insert(p.vk.as_slice(), &[][..]);
            by_dst.insert(p.dk.as_slice(), &[][..]);
            by_time.insert(p.tk.as_slice(), &[][..]);
            by_result.insert(p.rk.as_slice(), p.pk.as_slice());
            group_pks.insert(&p.pk);
            group_rks.insert(&p.rk);
        }
        let trees = [
            &self.traces,
            &self.by_vantage,
            &self.by_dst,
            &self.by_time,
            &self.by_result,
        ];
        for (tree, batch) in trees.into_iter().zip(batches) {
            tree.apply_batch(batch)?;
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
