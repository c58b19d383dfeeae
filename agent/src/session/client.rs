//! The agent's long-running mode: enrol once, then drive the session core (`core.rs`)
//! with real sockets, timers and files. Every decision — when to dial, what to send, when
//! a round fires on the corrected clock, what the spool keeps — is the core's; this file
//! performs its effects: the gRPC session, one timer, spool and campaign fsyncs (on the
//! blocking pool, one at a time), and a task per round that owns its raw sockets.

use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Streaming;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tracemesh_proto::COORDINATOR_TLS_NAME;
use tracemesh_proto::token::EnrolToken;
use tracemesh_proto::v1::agent_service_client::AgentServiceClient;
use tracemesh_proto::v1::{self as pb};

use super::convert::{alias_result_from_report, mda_record_from_result};
use super::core::{Effect, Input, Now, SessionCore};
use super::schedule::{HeldAlias, HeldCampaign, HeldMda, HeldMesh};
use super::spool::Spool;
use super::state::{AgentIdentity, Credentials, StateDir, StateError};
use crate::mesh::{MeshClock, MeshCredentials, MeshNode, Peer, TrainSpec};
use crate::probe::alias::{AliasConfig, AliasProber, AliasReport};
use crate::probe::denylist::DenyList;
use crate::probe::driver::{self, Needs};
use crate::probe::engine::RequestError;
use crate::probe::mda::MdaParams;
use crate::probe::mda_engine::{MdaEngine, MdaRequest};
use crate::probe::{
    Engine, EngineConfig, Proto, StopReason, TraceParams, TraceRequest, TraceResult,
};

#[derive(Debug, Error)]
pub enum SessionError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Spool(#[from] super::spool::SpoolError),
    #[error("the enrolment token is not valid: {0}")]
    Token(String),
    #[error(
        "this agent has not enrolled yet: give --token (and --coordinator) once, as `tracemesh token create` printed it"
    )]
    NotEnrolled,
    #[error("enrolment refused by {coordinator}: {status}")]
    EnrolRefused { coordinator: String, status: String },
    #[error("cannot reach the coordinator at {coordinator}: {reason}")]
    Connect { coordinator: String, reason: String },
    #[error("making a key pair or CSR: {0}")]
    Key(String),
    #[error("mesh endpoint: {0}")]
    Mesh(String),
    #[error("a spool or state write panicked: {0}")]
    Panicked(String),
}

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub state_dir: PathBuf,
    pub coordinator: Option<String>,
    pub token: Option<String>,
    pub allow: Vec<IpNet>,
    pub rate_pps: u32,
    pub per_dst_pps: u32,
    /// Where the mesh endpoint listens (UDP); `None`: no mesh.
    pub mesh_listen: Option<std::net::SocketAddr>,
    /// The address peers dial (`IP` or `IP:PORT`); `None`: the listen address when it is
    /// a specific one, else the address the coordinator sees this agent come from.
    pub mesh_advertise: Option<String>,
    /// Test-only: this agent's clock reads this far off (ns), as a badly set clock would;
    /// the session's offset to the coordinator must correct it everywhere.
    pub clock_skew_ns: i64,
}

/// The test-only clock error (`RunConfig::clock_skew_ns`), applied to every reading.
static CLOCK_SKEW_NS: AtomicI64 = AtomicI64::new(0);

fn unix_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
        + CLOCK_SKEW_NS.load(Ordering::Relaxed)
}

/// The mesh endpoint's runtime: one thread of its own, for the life of the process (a
/// runtime must not be dropped inside another one, so it is never dropped).
fn mesh_runtime() -> std::io::Result<&'static tokio::runtime::Runtime> {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    if let Some(rt) = RT.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("tracemesh-mesh")
        .enable_all()
        .build()?;
    Ok(RT.get_or_init(|| rt))
}

/// The mesh's reading of the agent's clock: corrected by the session's offset.
struct SessionClock {
    offset_ns: Arc<AtomicI64>,
    bound_ns: Arc<AtomicI64>,
}

impl MeshClock for SessionClock {
    fn now_ns(&self) -> i64 {
        corrected_now_ns(&self.offset_ns)
    }
    fn error_ns(&self) -> i64 {
        self.bound_ns.load(Ordering::Relaxed)
    }
}

/// The Hello's mesh address: what peers should dial.
fn mesh_advert(listen: std::net::SocketAddr, advertise: Option<&str>) -> String {
    match advertise {
        Some(a) => match a.parse::<std::net::SocketAddr>() {
            Ok(sa) => sa.to_string(),
            Err(_) => match a.parse::<IpAddr>() {
                Ok(ip) => std::net::SocketAddr::new(ip, listen.port()).to_string(),
                Err(_) => a.to_string(),
            },
        },
        None if listen.ip().is_unspecified() => format!(":{}", listen.port()),
        None => listen.to_string(),
    }
}

fn now() -> Now {
    Now {
        mono: Instant::now(),
        unix_ns: unix_ns(),
    }
}

/// Runs the agent until the process is stopped. Returns only on errors no retry can fix.
pub async fn run(cfg: RunConfig) -> Result<(), SessionError> {
    let state = StateDir::open(&cfg.state_dir)?;
    let (identity, creds) = match state.load_identity()? {
        Some(x) => x,
        None => {
            let token = cfg.token.as_deref().ok_or(SessionError::NotEnrolled)?;
            enrol(&state, token, cfg.coordinator.as_deref()).await?
        }
    };
    let coordinator = cfg
        .coordinator
        .clone()
        .unwrap_or_else(|| identity.coordinator.clone());
    let (spool, waiting, problems) = Spool::open(&state.spool_dir())?;
    crate::metrics::SPOOL_DEPTH.set(spool.pending() as f64);
    crate::metrics::RATE_LIMIT.set(f64::from(cfg.rate_pps));
    for p in problems {
        tracing::error!(error = %p, "spool file set aside");
    }
    CLOCK_SKEW_NS.store(cfg.clock_skew_ns, Ordering::Relaxed);
    let held = state.load_campaigns()?;
    let start = now();
    let mut core = SessionCore::new(held, spool.unacked(), start);
    let offset_ns = Arc::new(AtomicI64::new(0));
    let bound_ns = Arc::new(AtomicI64::new(0));
    let mesh = match cfg.mesh_listen {
        Some(listen) => {
            let mcreds = MeshCredentials {
                cert_chain_pem: creds.cert_chain_pem.clone(),
                key_pem: creds.key_pem.clone(),
                ca_pem: creds.ca_pem.clone(),
            };
            let clock = Arc::new(SessionClock {
                offset_ns: offset_ns.clone(),
                bound_ns: bound_ns.clone(),
            });
            // The endpoint and its tasks live on their own thread: a round's probing
            // keeps the session's workers busy at the very instant the trains fly, and a
            // datagram read late is a one-way delay measured long.
            let rt = mesh_runtime().map_err(|e| SessionError::Mesh(e.to_string()))?;
            let _enter = rt.enter();
            let node = MeshNode::bind(&identity.name, listen, &mcreds, clock)
                .map_err(|e| SessionError::Mesh(e.to_string()))?;
            let bound = node.local_addr().unwrap_or(listen);
            let advert = mesh_advert(bound, cfg.mesh_advertise.as_deref());
            tracing::info!(listen = %bound, advertise = %advert, "mesh endpoint up");
            core.set_mesh_addr(advert);
            Some(node)
        }
        None => None,
    };
    tracing::info!(
        agent = %identity.name,
        %coordinator,
        spooled = waiting.len(),
        campaigns = core.held().campaigns.len(),
        "agent starting"
    );
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&creds.ca_pem))
        .identity(Identity::from_pem(&creds.cert_chain_pem, &creds.key_pem))
        .domain_name(COORDINATOR_TLS_NAME);
    let (rounds_tx, rounds_rx) = mpsc::unbounded_channel();
    Driver {
        core,
        spool: Some(spool),
        state,
        cfg: Arc::new(cfg),
        coordinator,
        tls,
        offset_ns,
        bound_ns,
        mesh,
        rounds_tx,
        rounds_rx,
        link: LinkIo::default(),
        timer: tokio::time::Instant::from_std(start.mono),
    }
    .run(start)
    .await
}

async fn enrol(
    state: &StateDir,
    token: &str,
    coordinator: Option<&str>,
) -> Result<(AgentIdentity, Credentials), SessionError> {
    let token = EnrolToken::decode(token).map_err(|e| SessionError::Token(e.to_string()))?;
    let coordinator = coordinator.unwrap_or(&token.coordinator).to_string();
    // The key is made here and never leaves the agent: only a CSR goes out.
    let key = rcgen::KeyPair::generate().map_err(|e| SessionError::Key(e.to_string()))?;
    let params = rcgen::CertificateParams::new(vec![token.name.clone()])
        .map_err(|e| SessionError::Key(e.to_string()))?;
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| SessionError::Key(e.to_string()))?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&token.ca_pem))
        .domain_name(COORDINATOR_TLS_NAME);
    let channel = connect(&coordinator, tls).await?;
    let resp = AgentServiceClient::new(channel)
        .enrol(pb::EnrolRequest {
            token: token.encode(),
            csr_pem: csr,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            hostname: hostname(),
        })
        .await
        .map_err(|s| SessionError::EnrolRefused {
            coordinator: coordinator.clone(),
            status: format!("{}: {}", code_name(s.code()), s.message()),
        })?
        .into_inner();
    let identity = AgentIdentity {
        name: resp.agent_name,
        coordinator: if resp.coordinator.is_empty() {
            coordinator
        } else {
            resp.coordinator
        },
    };
    let creds = Credentials {
        key_pem: key.serialize_pem(),
        cert_chain_pem: resp.cert_chain_pem,
        ca_pem: if resp.ca_pem.is_empty() {
            token.ca_pem
        } else {
            resp.ca_pem
        },
    };
    state.save_identity(&identity, &creds)?;
    tracing::info!(agent = %identity.name, "enrolled");
    Ok((identity, creds))
}

fn code_name(c: tonic::Code) -> String {
    format!("{c:?}")
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

async fn connect(coordinator: &str, tls: ClientTlsConfig) -> Result<Channel, SessionError> {
    let err = |reason: String| SessionError::Connect {
        coordinator: coordinator.to_string(),
        reason,
    };
    Endpoint::from_shared(format!("https://{coordinator}"))
        .map_err(|e| err(e.to_string()))?
        .tls_config(tls)
        .map_err(|e| err(e.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| err(format!("{e}: {}", source_chain(&e))))
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The sockets of one attempt at a session, as far as it got.
#[derive(Default)]
struct LinkIo {
    dialling: Option<BoxFuture<Result<Channel, SessionError>>>,
    channel: Option<Channel>,
    opening: Option<BoxFuture<Result<Streaming<pb::CoordinatorMessage>, SessionError>>>,
    /// Unbounded so that a slow coordinator never stalls the driver (and with it the
    /// rounds); what waits here is also in the spool, and goes when the session dies.
    tx: Option<mpsc::UnboundedSender<pb::AgentMessage>>,
    inbound: Option<Streaming<pb::CoordinatorMessage>>,
}

/// What a round produced: traces, or an alias campaign's one result.
enum RoundResults {
    Traces(Vec<TraceResult>),
    Alias(Box<pb::AliasResult>),
    Mesh(Vec<pb::MeshSample>),
    Mda(Vec<pb::MdaResult>),
}

struct RoundOutcome {
    campaign_id: String,
    round: u32,
    results: Result<RoundResults, String>,
}

/// What woke the driver.
enum Event {
    Timer,
    Round(RoundOutcome),
    Dialled(Result<Channel, SessionError>),
    Opened(Result<Streaming<pb::CoordinatorMessage>, SessionError>),
    Inbound(Result<Option<pb::CoordinatorMessage>, tonic::Status>),
}

/// Where effects came from: a failed write asked for by the coordinator's message ends
/// the session (the coordinator learns nothing was kept); one the runner asked for is
/// only logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Coordinator,
    Agent,
}

struct Driver {
    core: SessionCore,
    /// Taken while a write runs on the blocking pool.
    spool: Option<Spool>,
    state: StateDir,
    cfg: Arc<RunConfig>,
    coordinator: String,
    tls: ClientTlsConfig,
    /// The core's clock offset, for round tasks waiting for their instant.
    offset_ns: Arc<AtomicI64>,
    /// That offset's error bound, for mesh samples.
    bound_ns: Arc<AtomicI64>,
    /// The mesh endpoint, when this agent runs one.
    mesh: Option<Arc<MeshNode>>,
    rounds_tx: mpsc::UnboundedSender<RoundOutcome>,
    rounds_rx: mpsc::UnboundedReceiver<RoundOutcome>,
    link: LinkIo,
    timer: tokio::time::Instant,
}

impl Driver {
    async fn run(mut self, start: Now) -> Result<(), SessionError> {
        let mut effects = self.core.handle(start, Input::Timer);
        let mut origin = Origin::Agent;
        loop {
            crate::metrics::session_state(self.core.link_state());
            if let Some(e) = self.perform(effects, origin).await? {
                self.link = LinkIo::default();
                effects = self
                    .core
                    .handle(now(), Input::Disconnected(Some(e.to_string())));
                origin = Origin::Agent;
                continue;
            }
            let event = tokio::select! {
                () = tokio::time::sleep_until(self.timer) => Event::Timer,
                Some(r) = self.rounds_rx.recv() => Event::Round(r),
                r = poll_slot(&mut self.link.dialling) => Event::Dialled(r),
                r = poll_slot(&mut self.link.opening) => Event::Opened(r),
                m = next_message(&mut self.link.inbound) => Event::Inbound(m),
            };
            origin = Origin::Agent;
            let input = match event {
                Event::Timer => Input::Timer,
                Event::Round(RoundOutcome {
                    campaign_id,
                    round,
                    results,
                }) => match results {
                    Ok(RoundResults::Traces(results)) => Input::RoundDone {
                        campaign_id,
                        round,
                        results,
                    },
                    Ok(RoundResults::Alias(result)) => Input::AliasDone {
                        campaign_id,
                        round,
                        result: *result,
                    },
                    Ok(RoundResults::Mesh(samples)) => Input::MeshDone {
                        campaign_id,
                        round,
                        samples,
                    },
                    Ok(RoundResults::Mda(results)) => Input::MdaDone {
                        campaign_id,
                        round,
                        results,
                    },
                    Err(e) => {
                        tracing::error!(campaign = %campaign_id, round, error = %e, "round failed");
                        effects = Vec::new();
                        continue;
                    }
                },
                Event::Dialled(Ok(channel)) => {
                    self.link.channel = Some(channel);
                    Input::Dialled
                }
                Event::Opened(Ok(inbound)) => {
                    self.link.inbound = Some(inbound);
                    Input::Opened
                }
                Event::Dialled(Err(e)) | Event::Opened(Err(e)) => {
                    self.link = LinkIo::default();
                    Input::Disconnected(Some(e.to_string()))
                }
                Event::Inbound(Ok(Some(pb::CoordinatorMessage { msg: Some(msg) }))) => {
                    origin = Origin::Coordinator;
                    Input::Message(msg)
                }
                Event::Inbound(Ok(Some(pb::CoordinatorMessage { msg: None }))) => {
                    effects = Vec::new();
                    continue;
                }
                Event::Inbound(Ok(None)) => {
                    self.link = LinkIo::default();
                    Input::Disconnected(None)
                }
                Event::Inbound(Err(s)) => {
                    self.link = LinkIo::default();
                    Input::Disconnected(Some(self.status_error(&s).to_string()))
                }
            };
            effects = self.core.handle(now(), input);
            crate::metrics::session_state(self.core.link_state());
        }
    }

    fn status_error(&self, s: &tonic::Status) -> SessionError {
        SessionError::Connect {
            coordinator: self.coordinator.clone(),
            reason: format!("{}: {}", code_name(s.code()), s.message()),
        }
    }

    /// Performs effects in order (and those of the spool writes they complete). Returns
    /// the first write failure that must end the session; `Err` only if a write panicked.
    async fn perform(
        &mut self,
        effects: Vec<Effect>,
        origin: Origin,
    ) -> Result<Option<SessionError>, SessionError> {
        let mut queue = std::collections::VecDeque::from(effects);
        let mut session_error = None;
        while let Some(effect) = queue.pop_front() {
            match effect {
                Effect::Connect => {
                    let (coordinator, tls) = (self.coordinator.clone(), self.tls.clone());
                    self.link.dialling =
                        Some(Box::pin(async move { connect(&coordinator, tls).await }));
                }
                Effect::OpenSession { hello } => {
                    let Some(channel) = self.link.channel.take() else {
                        session_error.get_or_insert(SessionError::Connect {
                            coordinator: self.coordinator.clone(),
                            reason: "no channel to open the session on".into(),
                        });
                        continue;
                    };
                    let (tx, rx) = mpsc::unbounded_channel();
                    // Queued before the stream opens: the coordinator answers only once it
                    // has read the Hello.
                    let _ = tx.send(hello);
                    self.link.tx = Some(tx);
                    let coordinator = self.coordinator.clone();
                    self.link.opening = Some(Box::pin(async move {
                        AgentServiceClient::new(channel)
                            .session(UnboundedReceiverStream::new(rx))
                            .await
                            .map(tonic::Response::into_inner)
                            .map_err(|s| SessionError::Connect {
                                coordinator,
                                reason: format!("{}: {}", code_name(s.code()), s.message()),
                            })
                    }));
                }
                Effect::Send(msg) => {
                    if let Some(tx) = &self.link.tx {
                        // A closed stream shows up on the inbound side.
                        let _ = tx.send(msg);
                    }
                }
                Effect::SaveCampaigns(held) => {
                    let state = self.state.clone();
                    if let Err(e) = blocking(move || state.save_campaigns(&held)).await? {
                        match origin {
                            Origin::Coordinator => {
                                session_error.get_or_insert(e.into());
                            }
                            Origin::Agent => {
                                tracing::error!(error = %e, "cannot save campaign state");
                            }
                        }
                    }
                }
                Effect::Spool {
                    campaign_id,
                    round,
                    records,
                } => {
                    let mut spool = self.take_spool()?;
                    let (spool, records, r) = blocking(move || {
                        let r = spool.push(&records);
                        (spool, records, r)
                    })
                    .await?;
                    crate::metrics::SPOOL_DEPTH.set(spool.pending() as f64);
                    self.spool = Some(spool);
                    match r {
                        Ok(()) => queue.extend(self.core.handle(now(), Input::Spooled(records))),
                        Err(e) => {
                            tracing::error!(campaign = %campaign_id, round, error = %e, "round failed");
                        }
                    }
                }
                Effect::SpoolAck(ids) => {
                    let mut spool = self.take_spool()?;
                    let (spool, r) = blocking(move || {
                        let r = spool.ack(ids.iter().map(String::as_str));
                        (spool, r)
                    })
                    .await?;
                    crate::metrics::SPOOL_DEPTH.set(spool.pending() as f64);
                    self.spool = Some(spool);
                    if let Err(e) = r {
                        session_error.get_or_insert(e.into());
                    }
                }
                Effect::StartRound {
                    campaign,
                    round,
                    start_ns,
                } => {
                    if let (Some(mesh), Some(node)) = (campaign.mesh.clone(), self.mesh.clone()) {
                        let (done, id) = (self.rounds_tx.clone(), campaign.id.clone());
                        tokio::spawn(async move {
                            let samples = run_mesh_round(&node, &id, &mesh, round, start_ns).await;
                            let _ = done.send(RoundOutcome {
                                campaign_id: id,
                                round,
                                results: Ok(RoundResults::Mesh(samples)),
                            });
                        });
                    } else if campaign.mesh.is_some() {
                        tracing::warn!(campaign = %campaign.id, "a mesh campaign, but this agent runs no mesh endpoint (--mesh-listen): traces only");
                    }
                    let (cfg, offset_ns, done) = (
                        self.cfg.clone(),
                        self.offset_ns.clone(),
                        self.rounds_tx.clone(),
                    );
                    tokio::spawn(async move {
                        let results = match campaign.alias {
                            Some(alias) => {
                                run_alias_round(&cfg, &offset_ns, &campaign, alias, round, start_ns)
                                    .await
                                    .map(|r| RoundResults::Alias(Box::new(r)))
                            }
                            None => run_round(&cfg, &offset_ns, &campaign, round, start_ns)
                                .await
                                .map(RoundResults::Traces),
                        };
                        let _ = done.send(RoundOutcome {
                            campaign_id: campaign.id.clone(),
                            round,
                            results,
                        });
                        // An MDA round's multipath traces follow its Paris traces, which
                        // keep the round's instant; they are spooled and sent apart.
                        if let Some(mda) = campaign.mda_round(round) {
                            let results = run_mda_round(&cfg, &offset_ns, &campaign, mda, round)
                                .await
                                .map(RoundResults::Mda);
                            let _ = done.send(RoundOutcome {
                                campaign_id: campaign.id,
                                round,
                                results,
                            });
                        }
                    });
                }
                Effect::ClockOffset(ns) => {
                    self.offset_ns.store(ns, Ordering::Relaxed);
                    crate::metrics::CLOCK_OFFSET.set(ns as f64 / 1e9);
                }
                Effect::ClockBound(ns) => self.bound_ns.store(ns, Ordering::Relaxed),
                Effect::ArmTimer(at) => self.timer = tokio::time::Instant::from_std(at),
            }
        }
        Ok(session_error)
    }

    fn take_spool(&mut self) -> Result<Spool, SessionError> {
        self.spool
            .take()
            .ok_or_else(|| SessionError::Panicked("the spool was lost by an earlier write".into()))
    }
}

/// Runs a file write on the blocking pool: an fsync must not hold up a runtime thread
/// that a round's probes may need.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, SessionError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SessionError::Panicked(e.to_string()))
}

/// Polls the future in `slot`, emptying it once done; pending forever when empty.
async fn poll_slot<T>(slot: &mut Option<BoxFuture<T>>) -> T {
    match slot {
        Some(f) => {
            let r = f.as_mut().await;
            *slot = None;
            r
        }
        None => std::future::pending().await,
    }
}

async fn next_message(
    inbound: &mut Option<Streaming<pb::CoordinatorMessage>>,
) -> Result<Option<pb::CoordinatorMessage>, tonic::Status> {
    match inbound {
        Some(s) => s.message().await,
        None => std::future::pending().await,
    }
}

fn corrected_now_ns(offset_ns: &AtomicI64) -> i64 {
    unix_ns() + offset_ns.load(Ordering::Relaxed)
}

/// Sleeps until shortly before `start_ns` (corrected clock), then spins the rest: timers
/// wake up to a millisecond late, and vantages should fire within a fraction of one.
async fn wait_for_instant(offset_ns: &AtomicI64, start_ns: i64) {
    const SPIN_NS: i64 = 1_500_000;
    let wait_ns = start_ns - corrected_now_ns(offset_ns) - SPIN_NS;
    if wait_ns > 0 {
        tokio::time::sleep(Duration::from_nanos(wait_ns as u64)).await;
    }
    while corrected_now_ns(offset_ns) < start_ns {
        std::hint::spin_loop();
    }
}

async fn run_round(
    cfg: &RunConfig,
    offset_ns: &AtomicI64,
    campaign: &HeldCampaign,
    round: u32,
    start_ns: i64,
) -> Result<Vec<TraceResult>, String> {
    let offset_s = offset_ns.load(Ordering::Relaxed) as f64 / 1e9;
    let wall = unix_ns() as f64 / 1e9 + offset_s;
    let nanos = unix_ns() as u64;
    // A fresh cookie per round: concurrent rounds share the host's raw sockets.
    let cookie = (nanos as u16) ^ ((nanos >> 16) as u16) ^ (round as u16).rotate_left(7);
    let mut engine = Engine::new(round_engine_config(cfg, cookie), Instant::now(), wall);
    let params = TraceParams {
        proto: campaign.proto,
        first_ttl: 1,
        max_ttl: campaign.max_ttl,
        attempts: campaign.attempts,
        wait: Duration::from_millis(u64::from(campaign.wait_ms)),
        gap_limit: 5,
    };
    let mut needs = Needs::default();
    let mut results: Vec<TraceResult> = Vec::new();
    for (dst, src) in routed_campaign_targets(&campaign.targets) {
        match engine.add(TraceRequest { dst, src, params }) {
            Ok(()) => needs.add(dst, campaign.proto),
            Err(RequestError::Denied(d)) => {
                tracing::warn!(error = %d, "target refused");
                crate::metrics::DROPS.inc("denied");
                results.push(TraceResult {
                    dst,
                    src: Some(src),
                    proto: campaign.proto,
                    stop_reason: StopReason::Denied,
                    start: wall,
                    hops: vec![],
                    probes_sent: 0,
                });
            }
            Err(e) => tracing::warn!(%dst, error = %e, "target refused"),
        }
    }
    let sockets = if needs.v4 || needs.v6 {
        Some(driver::Sockets::open(&needs).map_err(|e| e.to_string())?)
    } else {
        None
    };
    wait_for_instant(offset_ns, start_ns).await;
    let late_ms = (corrected_now_ns(offset_ns) - start_ns) as f64 / 1e6;
    crate::metrics::ROUND_LATE.observe(late_ms.max(0.0) / 1e3);
    tracing::info!(campaign = %campaign.id, round, late_ms, "round started");
    if let Some(sockets) = sockets {
        let stats = sockets
            .run(
                &mut engine,
                |r| {
                    results.push(r);
                    Ok(())
                },
                |_, _| {},
            )
            .await
            .map_err(|e| e.to_string())?;
        crate::metrics::DROPS.add("unmatched_reply", stats.replies_unmatched);
        crate::metrics::TRACES_DONE.add(stats.traces_done);
    }
    Ok(results)
}

/// The engine settings of a round, trace or multipath: the agent's caps and deny-list,
/// and the round's own cookie.
fn round_engine_config(cfg: &RunConfig, cookie: u16) -> EngineConfig {
    EngineConfig {
        rate_pps: cfg.rate_pps,
        per_dst_pps: cfg.per_dst_pps,
        window: 4096,
        cookie,
        denylist: DenyList::with_allowed(cfg.allow.iter().copied()),
    }
}

/// A campaign's targets with the source address each is reached from; a target that is
/// not an address or has no route is logged and skipped.
fn routed_campaign_targets(targets: &[String]) -> Vec<(IpAddr, IpAddr)> {
    let mut out = Vec::with_capacity(targets.len());
    for t in targets {
        let Ok(dst) = t.parse::<IpAddr>() else {
            tracing::warn!(target = %t, "not an address; skipped");
            continue;
        };
        match driver::source_for(dst) {
            Ok(src) => out.push((dst, src)),
            Err(e) => tracing::warn!(%dst, error = %e, "no route; skipped"),
        }
    }
    out
}

/// The multipath half of an MDA round: MDA-Lite to every target under the agent's rate
/// caps and deny-list (the same as the round's traces), one result per target.
async fn run_mda_round(
    cfg: &RunConfig,
    offset_ns: &AtomicI64,
    campaign: &HeldCampaign,
    mda: HeldMda,
    round: u32,
) -> Result<Vec<pb::MdaResult>, String> {
    let offset_s = offset_ns.load(Ordering::Relaxed) as f64 / 1e9;
    let wall = unix_ns() as f64 / 1e9 + offset_s;
    let nanos = unix_ns() as u64;
    // Its own cookie: the next round's traces may share the raw sockets meanwhile.
    let cookie = (nanos as u16) ^ ((nanos >> 16) as u16) ^ (round as u16).rotate_left(11) ^ 0x3c3c;
    let mut engine = MdaEngine::new(round_engine_config(cfg, cookie), Instant::now(), wall);
    let params = MdaParams {
        proto: campaign.proto,
        confidence: mda.confidence,
        first_ttl: 1,
        max_ttl: campaign.max_ttl,
        attempts: campaign.attempts,
        wait: Duration::from_millis(u64::from(campaign.wait_ms)),
        gap_limit: 5,
        budget: mda.budget,
    };
    let mut needs = Needs::default();
    let mut results = Vec::new();
    for (dst, src) in routed_campaign_targets(&campaign.targets) {
        match engine.add(MdaRequest { dst, src, params }) {
            Ok(()) => needs.add(dst, campaign.proto),
            Err(RequestError::Denied(d)) => {
                tracing::warn!(error = %d, "target refused");
                crate::metrics::DROPS.inc("denied");
            }
            Err(e) => tracing::warn!(%dst, error = %e, "target refused"),
        }
    }
    tracing::info!(campaign = %campaign.id, round, confidence = mda.confidence, "mda round started");
    if needs.v4 || needs.v6 {
        driver::Sockets::open(&needs)
            .map_err(|e| e.to_string())?
            .drive(&mut engine, |e, _| {
                while let Some(r) = e.poll_result() {
                    results.push(mda_record_from_result(&campaign.id, round, &r));
                }
                Ok(())
            })
            .await
            .map_err(|e| e.to_string())?;
        while let Some(r) = engine.poll_result() {
            results.push(mda_record_from_result(&campaign.id, round, &r));
        }
        let stats = engine.stats();
        crate::metrics::DROPS.add("unmatched_reply", stats.replies_unmatched);
    }
    Ok(results)
}

/// One mesh round: trains to and from every peer at the round's instant, as samples of
/// the directions toward this agent (the peers report the other ones).
async fn run_mesh_round(
    node: &Arc<MeshNode>,
    campaign: &str,
    mesh: &HeldMesh,
    round: u32,
    start_ns: i64,
) -> Vec<pb::MeshSample> {
    let peers: Vec<Peer> = mesh
        .peers
        .iter()
        .map(|p| Peer {
            name: p.name.clone(),
            addr: p.addr,
        })
        .collect();
    let spec = TrainSpec {
        count: mesh.train,
        spacing: Duration::from_millis(u64::from(mesh.spacing_ms)),
        ..TrainSpec::default()
    };
    let own_addr = mesh
        .peers
        .iter()
        .find(|p| p.name == node.name())
        .map(|p| p.addr.ip().to_string())
        .unwrap_or_default();
    let (n, id) = (node.clone(), campaign.to_string());
    let round_on_mesh_thread = async move { n.round(&id, round, &peers, start_ns, spec).await };
    let samples = match mesh_runtime() {
        Ok(rt) => rt.spawn(round_on_mesh_thread).await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "mesh round task failed");
            Vec::new()
        }),
        Err(e) => {
            tracing::error!(error = %e, "no mesh runtime");
            Vec::new()
        }
    };
    samples
        .into_iter()
        .map(|s| {
            let src_addr = mesh
                .peers
                .iter()
                .find(|p| p.name == s.src)
                .map(|p| p.addr.ip().to_string())
                .unwrap_or_default();
            pb::MeshSample {
                result_id: tracemesh_proto::mesh_result_id(campaign, round, &s.src),
                campaign_id: campaign.to_string(),
                round,
                src: s.src.clone(),
                dst: node.name().to_string(),
                src_addr,
                dst_addr: own_addr.clone(),
                sent: s.sent,
                received: s.received,
                owd_min_ns: s.owd_min_ns,
                owd_median_ns: s.owd_median_ns,
                clock_error_ns: s.clock_error_ns,
                at_ns: start_ns,
                received_at_ns: 0,
            }
        })
        .collect()
}

/// Least spacing between two alias probes to one address: the prober's default, or
/// longer if the per-destination cap asks for it.
fn alias_spacing(per_dst_pps: u32) -> Duration {
    let floor = AliasConfig::default().spacing;
    if per_dst_pps == 0 {
        return floor;
    }
    floor.max(Duration::from_secs(1) / per_dst_pps)
}

/// One round of an alias campaign: the targets (deny-list and routes checked) through
/// the alias prober under the agent's rate caps, from the round's instant on.
async fn run_alias_round(
    cfg: &RunConfig,
    offset_ns: &AtomicI64,
    campaign: &HeldCampaign,
    alias: HeldAlias,
    round: u32,
    start_ns: i64,
) -> Result<pb::AliasResult, String> {
    let denylist = DenyList::with_allowed(cfg.allow.iter().copied());
    let mut targets = Vec::new();
    let mut needs = Needs::default();
    for t in &campaign.targets {
        let Ok(dst) = t.parse::<IpAddr>() else {
            tracing::warn!(target = %t, "not an address; skipped");
            continue;
        };
        if let Err(d) = denylist.check(dst) {
            tracing::warn!(error = %d, "alias target refused");
            continue;
        }
        match driver::source_for(dst) {
            Ok(src) => {
                targets.push((dst, src));
                needs.add(dst, Proto::Icmp);
            }
            Err(e) => tracing::warn!(%dst, error = %e, "no route; skipped"),
        }
    }
    let sockets = if targets.is_empty() {
        None
    } else {
        Some(driver::Sockets::open(&needs).map_err(|e| e.to_string())?)
    };
    wait_for_instant(offset_ns, start_ns).await;
    let start = corrected_now_ns(offset_ns) as f64 / 1e9;
    tracing::info!(campaign = %campaign.id, round, addrs = targets.len(), method = alias.method.as_str(), "alias round started");
    let report = match sockets {
        Some(sockets) => {
            let nanos = unix_ns() as u64;
            let alias_cfg = AliasConfig {
                method: alias.method,
                rate_pps: cfg.rate_pps.max(1),
                rounds: alias.rounds,
                spacing: alias_spacing(cfg.per_dst_pps),
                cookie: (nanos as u16) ^ ((nanos >> 16) as u16) ^ 0x5a5a,
                denylist,
                ..AliasConfig::default()
            };
            let mut prober =
                AliasProber::new(alias_cfg, &targets, Instant::now()).map_err(|e| e.to_string())?;
            sockets
                .run_alias(&mut prober)
                .await
                .map_err(|e| e.to_string())?;
            prober.report()
        }
        // Nothing probeable: an empty result still tells the coordinator the round ran.
        None => AliasReport {
            groups: vec![],
            probes_sent: 0,
            probes_per_addr: Default::default(),
            unusable: vec![],
            samples: Default::default(),
            mercator: Default::default(),
        },
    };
    Ok(alias_result_from_report(
        &campaign.id,
        round,
        alias.method,
        start,
        &report,
    ))
}
