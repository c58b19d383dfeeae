//! The agent's long-running mode: enrol once, then keep one mutually authenticated
//! session with the coordinator, hold campaign schedules, fire rounds at their instant on
//! the corrected clock, spool results until acknowledged.
//!
//! Three parts run side by side: the session (reconnects with backoff and jitter), the
//! round runner (fires rounds whether or not a session is up), and the spool between them.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use thiserror::Error;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tracemesh_proto::token::EnrolToken;
use tracemesh_proto::v1::agent_message::Msg as Up;
use tracemesh_proto::v1::agent_service_client::AgentServiceClient;
use tracemesh_proto::v1::coordinator_message::Msg as Down;
use tracemesh_proto::v1::{self as pb};
use tracemesh_proto::{COORDINATOR_TLS_NAME, clock};

use super::convert::{held_from_instruction, record_from_result};
use super::schedule::Held;
use super::spool::{Record, Spool};
use super::state::{AgentIdentity, Credentials, StateDir, StateError};
use crate::probe::denylist::DenyList;
use crate::probe::driver::{self, Needs};
use crate::probe::engine::RequestError;
use crate::probe::{Engine, EngineConfig, StopReason, TraceParams, TraceRequest, TraceResult};

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
    #[error("agent state lock poisoned by an earlier panic")]
    Poisoned,
}

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub state_dir: PathBuf,
    pub coordinator: Option<String>,
    pub token: Option<String>,
    pub allow: Vec<IpNet>,
    pub rate_pps: u32,
    pub per_dst_pps: u32,
}

fn unix_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Shared between the session, the runner and the spool.
struct Shared {
    state: StateDir,
    held: Mutex<Held>,
    spool: Mutex<Spool>,
    /// coordinator clock − agent clock, ns.
    offset_ns: AtomicI64,
    /// Wakes the runner when campaigns change.
    campaigns_changed: Notify,
    /// Wakes the session when the spool has new results.
    results_ready: Notify,
    cfg: RunConfig,
}

impl Shared {
    fn corrected_now_ns(&self) -> i64 {
        unix_ns() + self.offset_ns.load(Ordering::Relaxed)
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
    for p in problems {
        tracing::error!(error = %p, "spool file set aside");
    }
    let mut held = state.load_campaigns()?;
    held.prune(unix_ns());
    tracing::info!(
        agent = %identity.name,
        %coordinator,
        spooled = waiting.len(),
        campaigns = held.campaigns.len(),
        "agent starting"
    );
    let shared = Arc::new(Shared {
        state,
        held: Mutex::new(held),
        spool: Mutex::new(spool),
        offset_ns: AtomicI64::new(0),
        campaigns_changed: Notify::new(),
        results_ready: Notify::new(),
        cfg,
    });
    tokio::spawn(runner(shared.clone()));
    session_loop(shared, coordinator, creds).await;
    Ok(())
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

async fn session_loop(shared: Arc<Shared>, coordinator: String, creds: Credentials) {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&creds.ca_pem))
        .identity(Identity::from_pem(&creds.cert_chain_pem, &creds.key_pem))
        .domain_name(COORDINATOR_TLS_NAME);
    let mut backoff = Duration::from_millis(250);
    loop {
        let started = Instant::now();
        match session_once(&shared, &coordinator, tls.clone()).await {
            Ok(()) => tracing::warn!("session closed by the coordinator"),
            Err(e) => tracing::warn!(error = %e, "session failed"),
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(250);
        }
        // Full jitter: a coordinator restart must not see every agent return at once.
        let jitter = (unix_ns() as u64 % 1000) as f64 / 1000.0;
        let wait = backoff.mul_f64(0.5 + jitter);
        tracing::info!(wait_ms = wait.as_millis() as u64, "reconnecting");
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

fn up(msg: Up) -> pb::AgentMessage {
    pb::AgentMessage { msg: Some(msg) }
}

async fn session_once(
    shared: &Arc<Shared>,
    coordinator: &str,
    tls: ClientTlsConfig,
) -> Result<(), SessionError> {
    let channel = connect(coordinator, tls).await?;
    let (tx, rx) = mpsc::channel::<pb::AgentMessage>(1024);
    let hello = {
        let held = shared.held.lock().map_err(|_| poisoned())?;
        let spool = shared.spool.lock().map_err(|_| poisoned())?;
        pb::Hello {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            state: Some(pb::AgentState {
                campaign_ids: held.ids(),
                spooled_results: spool.pending() as u64,
            }),
        }
    };
    let _ = tx.send(up(Up::Hello(hello))).await;
    let mut inbound = AgentServiceClient::new(channel)
        .session(ReceiverStream::new(rx))
        .await
        .map_err(|s| SessionError::Connect {
            coordinator: coordinator.into(),
            reason: format!("{}: {}", code_name(s.code()), s.message()),
        })?
        .into_inner();
    // Everything still unacknowledged goes out again; ingest is idempotent.
    let unacked = shared.spool.lock().map_err(|_| poisoned())?.unacked();
    send_records(&tx, &unacked).await;
    let mut samples: Vec<clock::ClockEstimate> = Vec::new();
    let mut heartbeat = tokio::time::interval(Duration::from_secs(10));
    // Quick clock samples first, so the first round already fires on a corrected clock.
    let mut quick_samples = 5u32;
    let mut sampler = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            msg = inbound.message() => {
                let msg = msg.map_err(|s| SessionError::Connect {
                    coordinator: coordinator.into(),
                    reason: format!("{}: {}", code_name(s.code()), s.message()),
                })?;
                let Some(pb::CoordinatorMessage { msg: Some(msg) }) = msg else {
                    if msg.is_none() { return Ok(()); }
                    continue;
                };
                handle_down(shared, msg, &mut samples, &mut heartbeat)?;
            }
            _ = sampler.tick(), if quick_samples > 0 => {
                quick_samples -= 1;
                let _ = tx.send(up(Up::ClockSample(pb::ClockSample { t1_ns: unix_ns() }))).await;
            }
            _ = heartbeat.tick() => {
                let best = clock::best(samples.iter().copied());
                let pending = shared.spool.lock().map_err(|_| poisoned())?.pending() as u64;
                let _ = tx.send(up(Up::ClockSample(pb::ClockSample { t1_ns: unix_ns() }))).await;
                let _ = tx.send(up(Up::Heartbeat(pb::Heartbeat {
                    sent_at_ns: unix_ns(),
                    clock_offset_ns: best.map_or(0, |b| b.offset_ns),
                    clock_rtt_ns: best.map_or(0, |b| b.rtt_ns),
                    spooled_results: pending,
                }))).await;
            }
            _ = shared.results_ready.notified() => {
                let unacked = shared.spool.lock().map_err(|_| poisoned())?.unacked();
                send_records(&tx, &unacked).await;
            }
        }
    }
}

fn poisoned() -> SessionError {
    SessionError::Poisoned
}

fn handle_down(
    shared: &Arc<Shared>,
    msg: Down,
    samples: &mut Vec<clock::ClockEstimate>,
    heartbeat: &mut tokio::time::Interval,
) -> Result<(), SessionError> {
    match msg {
        Down::Welcome(w) => {
            tracing::info!(agent = %w.agent_name, "session established");
            if w.heartbeat_interval_s > 0 {
                *heartbeat =
                    tokio::time::interval(Duration::from_secs(u64::from(w.heartbeat_interval_s)));
            }
        }
        Down::Campaign(c) => match held_from_instruction(&c) {
            Ok(h) => {
                tracing::info!(campaign = %h.id, rounds = h.rounds, targets = h.targets.len(), "campaign received");
                let mut held = shared.held.lock().map_err(|_| poisoned())?;
                held.upsert(h);
                shared.state.save_campaigns(&held)?;
                shared.campaigns_changed.notify_one();
            }
            Err(e) => tracing::error!(campaign = %c.id, error = %e, "campaign refused"),
        },
        Down::CancelCampaign(c) => {
            let mut held = shared.held.lock().map_err(|_| poisoned())?;
            if held.cancel(&c.campaign_id) {
                shared.state.save_campaigns(&held)?;
                tracing::info!(campaign = %c.campaign_id, "campaign cancelled");
            }
            shared.campaigns_changed.notify_one();
        }
        Down::Ack(a) => {
            let mut spool = shared.spool.lock().map_err(|_| poisoned())?;
            spool.ack(a.result_ids.iter().map(String::as_str))?;
        }
        Down::ClockEcho(e) => {
            let est = clock::estimate(e.t1_ns, e.t2_ns, e.t3_ns, unix_ns());
            samples.push(est);
            if samples.len() > 16 {
                samples.remove(0);
            }
            if let Some(best) = clock::best(samples.iter().copied()) {
                shared.offset_ns.store(best.offset_ns, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

async fn send_records(tx: &mpsc::Sender<pb::AgentMessage>, records: &[Record]) {
    use prost::Message as _;
    for chunk in records.chunks(500) {
        let results: Vec<pb::TraceRecord> = chunk
            .iter()
            .filter_map(|r| pb::TraceRecord::decode(r.payload.as_slice()).ok())
            .collect();
        if tx
            .send(up(Up::TraceBatch(pb::TraceBatch { results })))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Fires rounds at their instants, independent of the session's state.
async fn runner(shared: Arc<Shared>) {
    loop {
        let due = {
            let Ok(held) = shared.held.lock() else { return };
            held.next_due(shared.corrected_now_ns())
                .map(|d| (d.campaign.clone(), d.round, d.start_ns))
        };
        let Some((campaign, round, start_ns)) = due else {
            // Nothing scheduled: wait for a campaign (or check again soon).
            let _ =
                tokio::time::timeout(Duration::from_secs(5), shared.campaigns_changed.notified())
                    .await;
            continue;
        };
        // Wake a little early: the round task prepares its sockets and engine, then waits
        // for the instant itself.
        const PREPARE_NS: i64 = 100_000_000;
        let wait_ns = start_ns - shared.corrected_now_ns() - PREPARE_NS;
        if wait_ns > 0 {
            let wait = Duration::from_nanos(wait_ns as u64);
            // A new campaign may start earlier than the one we wait for.
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shared.campaigns_changed.notified() => continue,
            }
        }
        let s = shared.clone();
        let c = campaign.clone();
        tokio::spawn(async move {
            if let Err(e) = run_round(&s, &c, round, start_ns).await {
                tracing::error!(campaign = %c.id, round, error = %e, "round failed");
            }
        });
        // Persist after the round is under way: an fsync must not delay the probes.
        let s = shared.clone();
        let persisted = tokio::task::spawn_blocking(move || {
            let Ok(mut held) = s.held.lock() else { return };
            held.fired(&campaign.id, round);
            if let Err(e) = s.state.save_campaigns(&held) {
                tracing::error!(error = %e, "cannot save campaign state");
            }
        })
        .await;
        if persisted.is_err() {
            return;
        }
    }
}

/// Sleeps until shortly before `start_ns` (corrected clock), then spins the rest: timers
/// wake up to a millisecond late, and vantages should fire within a fraction of one.
async fn wait_for_instant(shared: &Shared, start_ns: i64) {
    const SPIN_NS: i64 = 1_500_000;
    let wait_ns = start_ns - shared.corrected_now_ns() - SPIN_NS;
    if wait_ns > 0 {
        tokio::time::sleep(Duration::from_nanos(wait_ns as u64)).await;
    }
    while shared.corrected_now_ns() < start_ns {
        std::hint::spin_loop();
    }
}

async fn run_round(
    shared: &Arc<Shared>,
    campaign: &super::schedule::HeldCampaign,
    round: u32,
    start_ns: i64,
) -> Result<(), String> {
    let cfg = &shared.cfg;
    let offset_s = shared.offset_ns.load(Ordering::Relaxed) as f64 / 1e9;
    let wall = unix_ns() as f64 / 1e9 + offset_s;
    let nanos = unix_ns() as u64;
    // A fresh cookie per round: concurrent rounds share the host's raw sockets.
    let cookie = (nanos as u16) ^ ((nanos >> 16) as u16) ^ (round as u16).rotate_left(7);
    let mut engine = Engine::new(
        EngineConfig {
            rate_pps: cfg.rate_pps,
            per_dst_pps: cfg.per_dst_pps,
            window: 4096,
            cookie,
            denylist: DenyList::with_allowed(cfg.allow.iter().copied()),
        },
        Instant::now(),
        wall,
    );
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
    for t in &campaign.targets {
        let Ok(dst) = t.parse::<IpAddr>() else {
            tracing::warn!(target = %t, "not an address; skipped");
            continue;
        };
        let src = match driver::source_for(dst) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%dst, error = %e, "no route; skipped");
                continue;
            }
        };
        match engine.add(TraceRequest { dst, src, params }) {
            Ok(()) => needs.add(dst, campaign.proto),
            Err(RequestError::Denied(d)) => {
                tracing::warn!(error = %d, "target refused");
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
    wait_for_instant(shared, start_ns).await;
    let late_ms = (shared.corrected_now_ns() - start_ns) as f64 / 1e6;
    tracing::info!(campaign = %campaign.id, round, late_ms, "round started");
    if let Some(sockets) = sockets {
        sockets
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
    }
    let records: Vec<Record> = results
        .iter()
        .map(|r| {
            use prost::Message as _;
            let rec = record_from_result(&campaign.id, round, r);
            Record {
                id: rec.result_id.clone(),
                payload: rec.encode_to_vec(),
            }
        })
        .collect();
    tracing::info!(campaign = %campaign.id, round, traces = records.len(), "round done");
    shared
        .spool
        .lock()
        .map_err(|_| "spool lock poisoned".to_string())?
        .push(&records)
        .map_err(|e| e.to_string())?;
    shared.results_ready.notify_one();
    Ok(())
}
