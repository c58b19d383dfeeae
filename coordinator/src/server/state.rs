//! Shared coordinator state: store, CA, the registry of live agent sessions, and the
//! broadcast channels that feed subscriptions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{broadcast, mpsc, watch};
use tonic::Status;
use tracemesh_proto::v1;

use crate::ca::Ca;
use crate::campaign;
use crate::store::{AgentMeta, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Invalid(#[from] campaign::CampaignError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("a store task failed: {0}")]
    Panicked(String),
}

pub type Outbound = mpsc::Sender<Result<v1::CoordinatorMessage, Status>>;

/// How long a fan-out waits on one agent's full session queue before giving up on it.
const PUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Queues `msg` on a session; false if the session is gone or stuck. A stuck agent is
/// dropped by HTTP/2 keepalive and gets what it missed in its next Hello exchange, so one
/// slow agent must not hold up everyone else's instructions.
pub async fn send_or_give_up(tx: &Outbound, msg: v1::CoordinatorMessage) -> bool {
    matches!(
        tokio::time::timeout(PUSH_TIMEOUT, tx.send(Ok(msg))).await,
        Ok(Ok(()))
    )
}

/// Unix nanoseconds now.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// What the registry knows of a connected agent beyond its stored record.
#[derive(Debug, Clone)]
pub struct LiveAgent {
    pub session: u64,
    pub tx: Outbound,
    pub connected_at_ns: i64,
    pub last_seen_ns: i64,
    pub agent_version: String,
    pub clock_offset_ns: Option<i64>,
    pub clock_rtt_ns: Option<i64>,
    pub spooled_results: u64,
}

pub struct Coordinator {
    pub store: Arc<dyn Store>,
    pub ca: Arc<Ca>,
    /// host:port that tokens tell agents to dial.
    pub advertise: String,
    registry: Mutex<HashMap<String, LiveAgent>>,
    next_session: AtomicU64,
    /// Bumped whenever new alias results are stored, so readers of the merged alias
    /// sets (live detection) reload them only when they changed.
    alias_generation: AtomicU64,
    traces: broadcast::Sender<v1::TraceRecord>,
    mesh: broadcast::Sender<v1::MeshSample>,
    mda: broadcast::Sender<v1::MdaResult>,
    diversions: broadcast::Sender<v1::Diversion>,
    shutdown: watch::Receiver<bool>,
    /// Serialises read-modify-write of campaign records (push bookkeeping vs cancel).
    pub campaign_lock: tokio::sync::Mutex<()>,
    /// Group commit for uploaded traces.
    pub ingest: super::ingest::IngestQueue,
    /// The live view `serve --http` shows; live detection publishes to it.
    pub live_view: Arc<crate::live_view::LiveView>,
    /// Revoked certificates (`revoke.rs`), checked on every call.
    pub revocations: Arc<super::revoke::Revocations>,
    /// Quotas and limits (`quota.rs`).
    pub limits: super::quota::Limits,
    /// Per-agent upload buckets.
    pub uploads: super::quota::UploadQuotas,
    /// Serialises operators' campaign creation against their caps.
    pub operator_caps: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("advertise", &self.advertise)
            .field("connected", &self.registry().len())
            .finish()
    }
}

impl Coordinator {
    /// Runs a store call on the blocking pool, as an RPC handler needs it: a failed call
    /// is logged and becomes `Internal`.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Status> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| Status::internal(super::client::error_chain(&e)))?
            .map_err(|e| {
                tracing::error!(error = %super::client::error_chain(&e), "store failure");
                Status::internal(super::client::error_chain(&e))
            })
    }

    /// What a store scan (`for_each_*`) gives and `keep` accepts, read on a blocking
    /// thread.
    pub async fn collect<T: Send + 'static>(
        &self,
        scan: impl FnOnce(&dyn Store, &mut dyn FnMut(T) -> bool) -> Result<(), StoreError>
        + Send
        + 'static,
        keep: impl Fn(&T) -> bool + Send + 'static,
    ) -> Result<Vec<T>, Status> {
        self.blocking(move |s| {
            let mut out = Vec::new();
            scan(s, &mut |t| {
                if keep(&t) {
                    out.push(t);
                }
                true
            })?;
            Ok(out)
        })
        .await
    }

    /// Changes each time new alias results have been stored.
    pub fn alias_generation(&self) -> u64 {
        self.alias_generation.load(Ordering::Acquire)
    }

    /// Marks that new alias results were stored.
    pub fn alias_results_stored(&self) {
        self.alias_generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn new(
        store: Arc<dyn Store>,
        ca: Arc<Ca>,
        advertise: String,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Coordinator {
            ingest: super::ingest::IngestQueue::start(store.clone()),
            store,
            ca,
            advertise,
            registry: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            alias_generation: AtomicU64::new(0),
            traces: broadcast::channel(4096).0,
            mesh: broadcast::channel(4096).0,
            mda: broadcast::channel(1024).0,
            diversions: broadcast::channel(1024).0,
            shutdown,
            campaign_lock: tokio::sync::Mutex::new(()),
            live_view: Arc::new(crate::live_view::LiveView::new()),
            revocations: Arc::new(super::revoke::Revocations::default()),
            limits: super::quota::Limits::default(),
            uploads: super::quota::UploadQuotas::default(),
            operator_caps: tokio::sync::Mutex::new(()),
        }
    }

    /// The same coordinator under other limits.
    pub fn with_limits(mut self, limits: super::quota::Limits) -> Self {
        self.limits = limits;
        self
    }

    fn registry(&self) -> MutexGuard<'_, HashMap<String, LiveAgent>> {
        // A panic while holding this lock leaves a map that is still consistent.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves when the server is shutting down.
    pub fn shutdown_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.shutdown.clone();
        async move {
            let _ = rx.wait_for(|v| *v).await;
        }
    }

    /// Registers a session, replacing any previous session of the same agent (its old
    /// stream is left to end on its own; [`Coordinator::disconnect`] ignores it).
    pub fn connect(&self, name: &str, tx: Outbound, now: i64) -> u64 {
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        self.registry().insert(
            name.to_string(),
            LiveAgent {
                session,
                tx,
                connected_at_ns: now,
                last_seen_ns: now,
                agent_version: String::new(),
                clock_offset_ns: None,
                clock_rtt_ns: None,
                spooled_results: 0,
            },
        );
        session
    }

    pub fn disconnect(&self, name: &str, session: u64) -> Option<LiveAgent> {
        let mut reg = self.registry();
        if reg.get(name).is_some_and(|l| l.session == session) {
            reg.remove(name)
        } else {
            None
        }
    }

    /// Applies `f` to the live entry of `name` if `session` is still the current one.
    pub fn update_live(&self, name: &str, session: u64, f: impl FnOnce(&mut LiveAgent)) {
        if let Some(l) = self.registry().get_mut(name)
            && l.session == session
        {
            f(l);
        }
    }

    pub fn live(&self, name: &str) -> Option<LiveAgent> {
        self.registry().get(name).cloned()
    }

    pub fn live_all(&self) -> Vec<(String, LiveAgent)> {
        self.registry()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn subscribe_traces(&self) -> broadcast::Receiver<v1::TraceRecord> {
        self.traces.subscribe()
    }

    pub fn publish_trace(&self, t: v1::TraceRecord) {
        // No subscriber is not an error.
        let _ = self.traces.send(t);
    }

    pub fn subscribe_mesh(&self) -> broadcast::Receiver<v1::MeshSample> {
        self.mesh.subscribe()
    }

    pub fn publish_mesh(&self, m: v1::MeshSample) {
        let _ = self.mesh.send(m);
    }

    pub fn subscribe_mda(&self) -> broadcast::Receiver<v1::MdaResult> {
        self.mda.subscribe()
    }

    pub fn publish_mda(&self, r: v1::MdaResult) {
        let _ = self.mda.send(r);
    }

    pub fn subscribe_diversions(&self) -> broadcast::Receiver<v1::Diversion> {
        self.diversions.subscribe()
    }

    /// For the detector: announce a diversion to every `SubscribeDiversions` stream.
    pub fn publish_diversion(&self, d: v1::Diversion) {
        let _ = self.diversions.send(d);
    }

    /// Builds, stores and pushes a campaign: what `CreateCampaign` does, and what live
    /// detection does when it asks for alias resolution on its own.
    pub async fn create_campaign(
        &self,
        spec: &v1::CampaignSpec,
    ) -> Result<(v1::Campaign, Vec<String>), CreateError> {
        let store = self.store.clone();
        let id = tokio::task::spawn_blocking(move || store.next_campaign_id())
            .await
            .map_err(|e| CreateError::Panicked(e.to_string()))??;
        let now = now_ns();
        let mut c = campaign::build(&id, spec, now)?;
        if spec.mesh.is_some() {
            // Peers are fixed now, from every enrolled agent that has told us where its
            // mesh endpoint listens: every agent gets the same list, whenever it connects.
            let store = self.store.clone();
            let agents = tokio::task::spawn_blocking(move || store.list_agents())
                .await
                .map_err(|e| CreateError::Panicked(e.to_string()))??;
            let with_addr: Vec<(AgentMeta, String)> = agents
                .into_iter()
                .filter_map(|a| Some((a.meta, a.mesh_addr?)))
                .collect();
            c.mesh_peers = campaign::mesh_peers(spec, &with_addr);
            if c.mesh_peers.iter().filter(|p| p.agent || p.peer).count() < 2 {
                return Err(CreateError::Invalid(campaign::CampaignError::Invalid(
                    "a mesh campaign needs at least two selected agents with a mesh endpoint (tracemesh-agent run --mesh-listen)".into(),
                )));
            }
        }
        let (store, stored) = (self.store.clone(), c.clone());
        tokio::task::spawn_blocking(move || {
            store.put_campaign(&stored)?;
            store.flush()
        })
        .await
        .map_err(|e| CreateError::Panicked(e.to_string()))??;
        let sent = self.push_campaign(&c).await?;
        tracing::info!(id = %c.id, targets = c.expanded_targets.len(), alias = c.spec.as_ref().is_some_and(|s| s.alias.is_some()), pushed = sent.len(), "campaign created");
        let store = self.store.clone();
        let c = tokio::task::spawn_blocking(move || store.get_campaign(&id))
            .await
            .map_err(|e| CreateError::Panicked(e.to_string()))??
            .unwrap_or(c);
        Ok((c, sent))
    }

    /// Sends the campaign to every connected agent it selects that still has rounds to
    /// run, and records who got it.
    pub async fn push_campaign(&self, c: &v1::Campaign) -> Result<Vec<String>, StoreError> {
        let t = std::time::Instant::now();
        let sent = self.push_campaign_untimed(c).await;
        crate::metrics::DISPATCH.observe(t.elapsed().as_secs_f64());
        sent
    }

    async fn push_campaign_untimed(&self, c: &v1::Campaign) -> Result<Vec<String>, StoreError> {
        let now = now_ns();
        let mut targets = Vec::new();
        for (name, live) in self.live_all() {
            let Some(rec) = self.store.get_agent(&name)? else {
                continue;
            };
            if campaign::should_push(c, &rec.meta, now) {
                targets.push((name, live.tx));
            }
        }
        // Recorded (and flushed) before anything is sent: an agent never holds a campaign
        // the store does not list it for, or its results would be refused after a crash
        // (`issued.rs`). One that misses the send gets it again when it reconnects.
        let names: Vec<String> = targets.iter().map(|(n, _)| n.clone()).collect();
        self.record_pushed(&c.id, &names).await?;
        let mut sent = Vec::new();
        for (name, tx) in targets {
            let msg = v1::CoordinatorMessage {
                msg: Some(v1::coordinator_message::Msg::Campaign(
                    campaign::instruction(c, &name),
                )),
            };
            if send_or_give_up(&tx, msg).await {
                sent.push(name);
            } else {
                tracing::warn!(agent = %name, campaign = %c.id, "agent not reading its session; it will get the campaign when it reconnects");
            }
        }
        Ok(sent)
    }

    pub async fn record_pushed(&self, id: &str, names: &[String]) -> Result<(), StoreError> {
        if names.is_empty() {
            return Ok(());
        }
        let _guard = self.campaign_lock.lock().await;
        if let Some(mut c) = self.store.get_campaign(id)? {
            let before = c.pushed_to.len();
            // A set, not `contains` on the list: pushing to 20,000 agents was quadratic
            // (~0.6 s of one core here, holding up the very sends it records).
            let mut have: std::collections::HashSet<&str> =
                c.pushed_to.iter().map(String::as_str).collect();
            let new: Vec<String> = names
                .iter()
                .filter(|n| have.insert(n.as_str()))
                .cloned()
                .collect();
            c.pushed_to.extend(new);
            if c.pushed_to.len() != before {
                c.pushed_to.sort();
                self.store.put_campaign(&c)?;
                self.store.flush()?;
            }
        }
        Ok(())
    }

    /// Campaigns an agent should hold right now, given its metadata.
    pub fn campaigns_for(
        &self,
        meta: &AgentMeta,
        now: i64,
    ) -> Result<Vec<v1::Campaign>, StoreError> {
        Ok(self
            .store
            .list_campaigns()?
            .into_iter()
            .filter(|c| campaign::should_push(c, meta, now))
            .collect())
    }
}
