//! `AgentService`: enrolment with a one-time token, and the long-lived session stream.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracemesh_proto::token::EnrolToken;
use tracemesh_proto::v1::{self, agent_message::Msg as Up, coordinator_message::Msg as Down};

use super::auth::authorize;
use super::issued;
use super::state::{Coordinator, now_ns};
use crate::ca::{CaError, Role, cert_fingerprint};
use crate::store::{AgentRecord, IngestOutcome, StoreError, TokenRejection};

/// How often agents should send a heartbeat (told in Welcome).
const HEARTBEAT_INTERVAL_S: u32 = 15;

#[derive(Debug, Clone)]
pub struct AgentSvc {
    c: Arc<Coordinator>,
}

impl AgentSvc {
    pub fn new(c: Arc<Coordinator>) -> Self {
        AgentSvc { c }
    }
}

fn internal(e: StoreError) -> Status {
    tracing::error!(error = %super::client::error_chain(&e), "store failure");
    Status::internal(super::client::error_chain(&e))
}

pub fn secret_hash(secret: &str) -> String {
    cert_fingerprint(secret.as_bytes())
}

use crate::ca::pem_first_der;

fn down(msg: Down) -> Result<v1::CoordinatorMessage, Status> {
    Ok(v1::CoordinatorMessage { msg: Some(msg) })
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<v1::CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl v1::agent_service_server::AgentService for AgentSvc {
    async fn enrol(
        &self,
        req: Request<v1::EnrolRequest>,
    ) -> Result<Response<v1::EnrolResponse>, Status> {
        let req = req.into_inner();
        let token =
            EnrolToken::decode(&req.token).map_err(|e| Status::invalid_argument(e.to_string()))?;
        // Sign before burning the token, so a malformed CSR does not waste it.
        let cert_pem = self
            .c
            .ca
            .sign_agent_csr(&token.name, &req.csr_pem)
            .map_err(|e| match e {
                CaError::BadCsr(_) | CaError::BadName(_) => Status::invalid_argument(e.to_string()),
                other => Status::internal(other.to_string()),
            })?;
        let now = now_ns();
        let store = self.c.store.clone();
        let hash = secret_hash(&token.secret);
        let record = tokio::task::spawn_blocking(move || store.consume_token(&hash, now))
            .await
            .map_err(|e| Status::internal(super::client::error_chain(&e)))?
            .map_err(internal)?;
        let record = match record {
            Ok(r) => r,
            Err(rej) => {
                tracing::warn!(name = %token.name, reason = %rej, "enrolment refused");
                return Err(match rej {
                    TokenRejection::Unknown => Status::unauthenticated(rej.to_string()),
                    TokenRejection::Expired | TokenRejection::AlreadyUsed => {
                        Status::permission_denied(rej.to_string())
                    }
                });
            }
        };
        if record.meta.name != token.name {
            return Err(Status::permission_denied(
                "enrolment token does not match its record",
            ));
        }
        let fingerprint = pem_first_der(&cert_pem)
            .map(|d| cert_fingerprint(&d))
            .unwrap_or_default();
        let agent = AgentRecord {
            meta: record.meta.clone(),
            enrolled_at_ns: now,
            cert_sha256: fingerprint,
            agent_version: req.agent_version,
            hostname: req.hostname,
            last_seen_ns: None,
            mesh_addr: None,
        };
        let store = self.c.store.clone();
        tokio::task::spawn_blocking(move || {
            store.put_agent(&agent)?;
            store.flush()
        })
        .await
        .map_err(|e| Status::internal(super::client::error_chain(&e)))?
        .map_err(internal)?;
        tracing::info!(name = %record.meta.name, "agent enrolled");
        Ok(Response::new(v1::EnrolResponse {
            agent_name: record.meta.name,
            cert_chain_pem: cert_pem,
            ca_pem: self.c.ca.cert_pem().to_string(),
            coordinator: self.c.advertise.clone(),
        }))
    }

    type SessionStream = SessionStream;

    async fn session(
        &self,
        req: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let name = authorize(&req, Role::Agent)?;
        let remote_ip = req.remote_addr().map(|a| a.ip());
        let agent = self
            .c
            .store
            .get_agent(&name)
            .map_err(internal)?
            .ok_or_else(|| {
                Status::permission_denied(format!("agent {name:?} is not enrolled here"))
            })?;
        // Re-enrolling a name issues a new certificate; the old one stops working here,
        // which is how an operator revokes a lost or cloned agent.
        let presented = req
            .peer_certs()
            .and_then(|c| c.first().map(|d| cert_fingerprint(d)))
            .unwrap_or_default();
        if !agent.cert_sha256.is_empty() && presented != agent.cert_sha256 {
            return Err(Status::permission_denied(format!(
                "certificate of agent {name:?} was superseded by a later enrolment"
            )));
        }
        let (tx, rx) = mpsc::channel(256);
        let now = now_ns();
        let session = self.c.connect(&name, tx.clone(), now);
        tracing::info!(%name, session, "agent connected");
        let c = self.c.clone();
        let inbound = req.into_inner();
        let revoked = self.c.revocations.until_revoked(presented.clone());
        tokio::spawn(async move {
            let mut s = Session {
                c: c.clone(),
                name: name.clone(),
                session,
                tx,
                meta: agent.meta,
                remote_ip,
                issued: HashSet::new(),
            };
            let end = tokio::select! {
                r = s.run(inbound) => r,
                _ = c.shutdown_signal() => Ok(()),
                _ = revoked => {
                    tracing::warn!(%name, session, "certificate revoked: session closed");
                    Ok(())
                }
            };
            if let Err(e) = end {
                tracing::info!(%name, session, error = %e, "session ended with error");
                // The agent hears why (quota, batch size, a bad message) rather than a
                // stream that just ends.
                let _ = s.tx.try_send(Err(e));
            }
            if let Some(live) = c.disconnect(&name, session) {
                let store = c.store.clone();
                let name2 = name.clone();
                let persisted = tokio::task::spawn_blocking(move || {
                    if let Some(mut rec) = store.get_agent(&name2)? {
                        rec.last_seen_ns = Some(live.last_seen_ns);
                        rec.agent_version = live.agent_version;
                        store.put_agent(&rec)?;
                    }
                    Ok::<_, StoreError>(())
                })
                .await;
                if let Ok(Err(e)) = persisted {
                    tracing::warn!(%name, error = %e, "could not record last_seen");
                }
            }
            tracing::info!(%name, session, "agent disconnected");
        });
        let out = super::revoke::end_if_revoked(ReceiverStream::new(rx), &self.c, presented);
        Ok(Response::new(out))
    }
}

struct Session {
    c: Arc<Coordinator>,
    name: String,
    session: u64,
    tx: super::state::Outbound,
    meta: crate::store::AgentMeta,
    /// Where the session comes from: the mesh address of an agent that advertises only
    /// a port.
    remote_ip: Option<std::net::IpAddr>,
    /// Campaigns found issued to this agent (`issued.rs`): issuance is never taken back,
    /// so each is looked up once per session.
    issued: HashSet<String>,
}

impl Session {
    /// Splits uploaded results into those of campaigns issued to this agent and the
    /// refused rest (`issued.rs`).
    async fn screen<R: Send + 'static>(
        &mut self,
        items: Vec<R>,
        campaign_of: fn(&R) -> &str,
        id_of: fn(&R) -> String,
    ) -> Result<issued::Screened<R>, Status> {
        let check = issued::to_check(items.iter().map(campaign_of), &self.issued);
        let mut reasons = std::collections::BTreeMap::new();
        if !check.is_empty() {
            let name = self.name.clone();
            let verdicts = self
                .c
                .blocking(move |s| {
                    let mut out = Vec::with_capacity(check.len());
                    for id in check {
                        let why = issued::refusal(&id, s.get_campaign(&id)?.as_ref(), &name);
                        out.push((id, why));
                    }
                    Ok(out)
                })
                .await?;
            for (id, why) in verdicts {
                match why {
                    Some(why) => {
                        reasons.insert(id, why);
                    }
                    None => {
                        self.issued.insert(id);
                    }
                }
            }
        }
        let screened = issued::screen(items, campaign_of, id_of, &reasons);
        for r in &screened.refusals {
            tracing::warn!(agent = %self.name, campaign = %r.campaign_id, results = r.results, reason = %r.reason, "upload refused");
        }
        Ok(screened)
    }

    async fn send(&self, msg: Down) -> Result<(), Status> {
        self.tx
            .send(down(msg))
            .await
            .map_err(|_| Status::cancelled("agent stream closed"))
    }

    /// Holds an upload of `n` results back until the agent's rate allows it; an agent
    /// that would have to wait longer than the limit's pacing is told and let go (it
    /// reconnects with backoff and re-sends from its spool, nothing is lost).
    async fn pace(&mut self, n: usize, what: &str) -> Result<(), Status> {
        let limits = &self.c.limits;
        if n > limits.max_batch {
            return Err(Status::invalid_argument(format!(
                "{what} batch of {n} results exceeds {}",
                limits.max_batch
            )));
        }
        let wait = match self.c.uploads.admit(limits, &self.name, n, now_ns()) {
            Ok(wait) => wait,
            Err(wait) => {
                tracing::warn!(vantage = %self.name, n, wait_s = wait.as_secs_f64(), "upload quota exceeded");
                return Err(Status::resource_exhausted(format!(
                    "upload quota exceeded: {} results/s sustained, {} burst; retry in {:.1} s",
                    limits.agent_traces_per_s,
                    limits.agent_burst,
                    wait.as_secs_f64()
                )));
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    async fn run(&mut self, mut inbound: Streaming<v1::AgentMessage>) -> Result<(), Status> {
        while let Some(m) = inbound.message().await? {
            let now = now_ns();
            self.c
                .update_live(&self.name, self.session, |l| l.last_seen_ns = now);
            match m.msg {
                Some(Up::Hello(h)) => self.hello(h, now).await?,
                Some(Up::Heartbeat(hb)) => {
                    self.c.update_live(&self.name, self.session, |l| {
                        if hb.clock_rtt_ns > 0 || hb.clock_offset_ns != 0 {
                            l.clock_offset_ns = Some(hb.clock_offset_ns);
                            l.clock_rtt_ns = Some(hb.clock_rtt_ns);
                        }
                        l.spooled_results = hb.spooled_results;
                    });
                }
                Some(Up::ClockSample(cs)) => {
                    self.send(Down::ClockEcho(v1::ClockEcho {
                        t1_ns: cs.t1_ns,
                        t2_ns: now,
                        t3_ns: now_ns(),
                    }))
                    .await?
                }
                Some(Up::TraceBatch(b)) => self.ingest(b.results, now).await?,
                Some(Up::AliasBatch(b)) => self.ingest_aliases(b.results, now).await?,
                Some(Up::MeshBatch(b)) => self.ingest_mesh(b.samples, now).await?,
                Some(Up::MdaBatch(b)) => self.ingest_mda(b.results, now).await?,
                None => return Err(Status::invalid_argument("empty agent message")),
            }
        }
        Ok(())
    }

    async fn hello(&mut self, h: v1::Hello, now: i64) -> Result<(), Status> {
        let state = h.state.unwrap_or_default();
        self.c.update_live(&self.name, self.session, |l| {
            l.agent_version = h.agent_version.clone();
            l.spooled_results = state.spooled_results;
        });
        self.send(Down::Welcome(v1::Welcome {
            agent_name: self.name.clone(),
            server_time_ns: now_ns(),
            heartbeat_interval_s: HEARTBEAT_INTERVAL_S,
        }))
        .await?;
        // The agent's metadata may have changed since the session opened (re-enrolment).
        if let Some(mut rec) = self.c.store.get_agent(&self.name).map_err(internal)? {
            let mesh_addr = mesh_addr(&h.mesh_addr, self.remote_ip);
            if rec.mesh_addr != mesh_addr {
                tracing::info!(agent = %self.name, mesh = ?mesh_addr, "mesh endpoint");
                rec.mesh_addr = mesh_addr;
                let (store, rec) = (self.c.store.clone(), rec.clone());
                tokio::task::spawn_blocking(move || {
                    store.put_agent(&rec)?;
                    store.flush()
                })
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(internal)?;
            }
            self.meta = rec.meta;
        }
        let held: HashSet<&str> = state.campaign_ids.iter().map(String::as_str).collect();
        for id in &held {
            let keep = self
                .c
                .store
                .get_campaign(id)
                .map_err(internal)?
                .is_some_and(|c| c.cancelled_at_ns.is_none());
            if !keep {
                self.send(Down::CancelCampaign(v1::CancelCampaign {
                    campaign_id: id.to_string(),
                }))
                .await?;
            }
        }
        let to_push: Vec<v1::Campaign> = self
            .c
            .campaigns_for(&self.meta, now)
            .map_err(internal)?
            .into_iter()
            .filter(|c| !held.contains(c.id.as_str()))
            .collect();
        // Recorded before it is sent: an agent never holds a campaign the store does not
        // list it for, whose results would then be refused (`issued.rs`).
        for c in &to_push {
            self.c
                .record_pushed(&c.id, std::slice::from_ref(&self.name))
                .await
                .map_err(internal)?;
        }
        for c in to_push {
            self.send(Down::Campaign(crate::campaign::instruction(&c, &self.name)))
                .await?;
        }
        Ok(())
    }

    /// Stores alias results (keyed by campaign, round and this vantage, so a re-upload is
    /// recognised) and acknowledges them once flushed.
    async fn ingest_aliases(
        &mut self,
        results: Vec<v1::AliasResult>,
        now: i64,
    ) -> Result<(), Status> {
        self.pace(results.len(), "alias").await?;
        let screened = self
            .screen(
                results,
                |r: &v1::AliasResult| r.campaign_id.as_str(),
                |r| r.result_id.clone(),
            )
            .await?;
        let name = self.name.clone();
        let (mut acked, fresh) = self
            .store_each(
                "alias result",
                screened.accepted,
                |s, r| s.put_alias_result(r),
                move |r: &mut v1::AliasResult| {
                    // The vantage is who the certificate says, never what the agent claims.
                    r.vantage = name.clone();
                    r.received_at_ns = now;
                    r.result_id.clone()
                },
            )
            .await?;
        if !fresh.is_empty() {
            self.c.alias_results_stored();
        }
        tracing::info!(vantage = %self.name, acked = acked.len(), new = fresh.len(), "ingested alias results");
        acked.extend(screened.refused_ids);
        self.send(Down::Ack(v1::Ack {
            result_ids: acked,
            refused: screened.refusals,
        }))
        .await
    }

    /// Stores mesh samples (keyed by campaign, round, sender and this agent, the
    /// receiver that measured them) and acknowledges them once flushed.
    async fn ingest_mesh(&mut self, samples: Vec<v1::MeshSample>, now: i64) -> Result<(), Status> {
        // Charged to the agent's upload quota like traces and alias results.
        self.pace(samples.len(), "mesh").await?;
        let screened = self
            .screen(
                samples,
                |m: &v1::MeshSample| m.campaign_id.as_str(),
                |m| m.result_id.clone(),
            )
            .await?;
        let name = self.name.clone();
        let (mut acked, fresh) = self
            .store_each(
                "mesh sample",
                screened.accepted,
                |s, m| s.put_mesh_sample(m),
                move |m: &mut v1::MeshSample| {
                    // The receiver is who the certificate says, never what the agent claims.
                    m.dst = name.clone();
                    m.received_at_ns = now;
                    m.result_id.clone()
                },
            )
            .await?;
        tracing::debug!(agent = %self.name, acked = acked.len(), new = fresh.len(), "ingested mesh samples");
        acked.extend(screened.refused_ids);
        self.send(Down::Ack(v1::Ack {
            result_ids: acked,
            refused: screened.refusals,
        }))
        .await?;
        for m in fresh {
            self.c.publish_mesh(m);
        }
        Ok(())
    }

    /// Stores multipath traces (keyed by campaign, round, this agent and destination) and
    /// acknowledges them once flushed; new ones go to live detection.
    async fn ingest_mda(&mut self, results: Vec<v1::MdaResult>, now: i64) -> Result<(), Status> {
        self.pace(results.len(), "mda").await?;
        let screened = self
            .screen(
                results,
                |r: &v1::MdaResult| r.campaign_id.as_str(),
                |r| r.result_id.clone(),
            )
            .await?;
        let name = self.name.clone();
        let (mut acked, fresh) = self
            .store_each(
                "mda result",
                screened.accepted,
                |s, r| s.put_mda_result(r),
                move |r: &mut v1::MdaResult| {
                    r.vantage = name.clone();
                    r.received_at_ns = now;
                    r.result_id.clone()
                },
            )
            .await?;
        tracing::info!(vantage = %self.name, acked = acked.len(), new = fresh.len(), "ingested mda results");
        acked.extend(screened.refused_ids);
        self.send(Down::Ack(v1::Ack {
            result_ids: acked,
            refused: screened.refusals,
        }))
        .await?;
        for r in fresh {
            self.c.publish_mda(r);
        }
        Ok(())
    }

    /// Stores small uploaded results one at a time with `put` (they are few: no group
    /// commit), each first stamped by `stamp`, which returns its id; then flushes. Returns the ids to acknowledge (invalid results too, or they would sit in
    /// the agent's spool forever) and the results that were new.
    async fn store_each<R: Clone + Send + 'static>(
        &self,
        what: &'static str,
        items: Vec<R>,
        put: Put<R>,
        stamp: impl Fn(&mut R) -> String + Send + 'static,
    ) -> Result<(Vec<String>, Vec<R>), Status> {
        let agent = self.name.clone();
        self.c
            .blocking(move |store| {
                let mut acked = Vec::with_capacity(items.len());
                let mut fresh = Vec::new();
                for mut r in items {
                    let id = stamp(&mut r);
                    match put(store, &r) {
                        Ok(IngestOutcome::Stored) => fresh.push(r),
                        Ok(IngestOutcome::Duplicate) => {}
                        Err(StoreError::Invalid { detail, .. }) => {
                            tracing::warn!(%agent, result_id = %id, %detail, "dropping invalid {what}");
                        }
                        Err(e) => return Err(e),
                    }
                    acked.push(id);
                }
                store.flush()?;
                Ok((acked, fresh))
            })
            .await
    }

    async fn ingest(&mut self, results: Vec<v1::TraceRecord>, now: i64) -> Result<(), Status> {
        let limits = &self.c.limits;
        if results.len() > limits.max_batch {
            return Err(Status::invalid_argument(format!(
                "trace batch of {} results exceeds {}",
                results.len(),
                limits.max_batch
            )));
        }
        let wait = self
            .c
            .uploads
            .would_wait(limits, &self.name, results.len(), now_ns());
        if wait > limits.max_pacing {
            tracing::warn!(vantage = %self.name, n = results.len(), wait_s = wait.as_secs_f64(), "upload quota exceeded");
            return Err(Status::resource_exhausted(format!(
                "upload quota exceeded: {} results/s sustained, {} burst; retry in {:.1} s",
                limits.agent_traces_per_s,
                limits.agent_burst,
                wait.as_secs_f64()
            )));
        }
        // A big batch goes to the writer in slices of ~50 ms of this agent's quota, each
        // paced on its own: one agent's burst then never fills a whole group commit that
        // everyone else's acks wait behind (a 10x flood in 5,000-trace batches raised the
        // others' p90 ack latency ~5x when admitted whole; see benches/flood.rs).
        let slice = if limits.agent_traces_per_s > 0.0 {
            ((limits.agent_traces_per_s / 20.0) as usize).max(100)
        } else {
            usize::MAX
        };
        let screened = self
            .screen(
                results,
                |r: &v1::TraceRecord| r.campaign_id.as_str(),
                |r| r.result_id.clone(),
            )
            .await?;
        // Refused results cost their sender's quota too: a flood of them is paced (and
        // cut off) like any other, not decoded and refused for free.
        if !screened.refused_ids.is_empty() {
            self.pace(screened.refused_ids.len(), "refused trace")
                .await?;
        }
        let mut results: Vec<v1::TraceRecord> = screened
            .accepted
            .into_iter()
            .map(|mut r| {
                // The vantage is who the certificate says, never what the agent claims.
                r.vantage = self.name.clone();
                r.received_at_ns = now;
                r
            })
            .collect();
        let mut outcomes = Vec::with_capacity(results.len());
        while !results.is_empty() {
            let rest = results.split_off(results.len().min(slice));
            self.pace(results.len(), "trace").await?;
            // Returns only once the records are flushed: acks promise durability. Slices
            // stored before a refusal are simply duplicates when the agent re-sends.
            outcomes.extend(self.c.ingest.submit(results).await?);
            results = rest;
        }
        let mut acked = Vec::with_capacity(outcomes.len());
        let mut fresh = Vec::new();
        for (r, outcome) in outcomes {
            match outcome {
                Ok(IngestOutcome::Stored) => {
                    acked.push(r.result_id.clone());
                    fresh.push(r);
                }
                Ok(IngestOutcome::Duplicate) => acked.push(r.result_id),
                // A record that can never be stored is acknowledged and dropped, or it
                // would sit in the agent's spool and be re-sent forever.
                Err(StoreError::Invalid { detail, .. }) => {
                    tracing::warn!(vantage = %self.name, result_id = %r.result_id, %detail, "dropping invalid trace");
                    acked.push(r.result_id);
                }
                Err(e) => return Err(internal(e)),
            }
        }
        tracing::debug!(vantage = %self.name, acked = acked.len(), new = fresh.len(), "ingested batch");
        acked.extend(screened.refused_ids);
        self.send(Down::Ack(v1::Ack {
            result_ids: acked,
            refused: screened.refusals,
        }))
        .await?;
        for t in fresh {
            self.c.publish_trace(t);
        }
        Ok(())
    }
}

/// The mesh address an agent advertised: `IP:PORT` as given, `:PORT` on the address the
/// session comes from, anything else (or nothing) as no mesh endpoint.
fn mesh_addr(advertised: &str, remote: Option<std::net::IpAddr>) -> Option<String> {
    if advertised.is_empty() {
        return None;
    }
    if let Ok(sa) = advertised.parse::<std::net::SocketAddr>() {
        return Some(sa.to_string());
    }
    let port: u16 = advertised.strip_prefix(':')?.parse().ok()?;
    Some(std::net::SocketAddr::new(remote?, port).to_string())
}

/// How one kind of small result is stored.
type Put<R> = fn(&dyn crate::store::Store, &R) -> Result<IngestOutcome, StoreError>;
