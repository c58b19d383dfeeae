//! Flood benchmark: does one agent uploading at 10x its quota slow everyone else's
//! ingest? This process runs the real coordinator (mutual TLS on loopback, sled in a
//! temporary directory) and real agent sessions (enrolled with real tokens and CSRs).
//! Honest agents upload on a fixed schedule well under their quota and time each batch
//! from send to acknowledgement (acks come only after the records are flushed). Three
//! phases, each on a fresh coordinator:
//!
//! 1. `alone`: the honest agents only;
//! 2. `one at quota`: plus one more agent uploading exactly its quota (what any
//!    compliant agent may cost the others);
//! 3. `flood, quota on`: instead, one agent sending 10x its quota, as fast as the
//!    connection takes it (no waiting for acks);
//! 4. `flood, quota off`: the same flood with the upload quota disabled, for contrast.
//!
//! It prints, per phase, the honest agents' acknowledged traces per second and ack
//! latency (p50, p90, p99), what the extra agent got stored, and the ratios of phases 3
//! and 4 to phases 1 and 2. It exits non-zero on a wrong count (an honest batch not acknowledged in
//! full), not on speed.
//!
//! `cargo bench -p tracemesh --bench flood`; knobs: TM_FLOOD_SECS (10 per phase),
//! TM_FLOOD_HONEST (4 agents), TM_FLOOD_RATE (500 traces/s per honest agent),
//! TM_FLOOD_QUOTA (5000 traces/s per agent: a 10x flood of 50,000/s is more than this
//! coordinator stores on 2 cores, so the quota-off phase shows what the quota prevents).

use std::sync::Arc;
use std::time::{Duration, Instant};

/// The allocator the coordinator binary uses (see `coordinator/src/main.rs`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context as _, bail};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tracemesh::server::{self, Coordinator, Limits, ServeConfig};
use tracemesh_proto::token::EnrolToken;
use tracemesh_proto::v1::agent_service_client::AgentServiceClient;
use tracemesh_proto::v1::{self, agent_message::Msg as Up, coordinator_message::Msg as Down};

/// Honest batches are sent every this often.
const TICK: Duration = Duration::from_millis(100);

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("{name}={v:?}: {e}")),
        Err(_) => Ok(default),
    }
}

/// A finished trace of ten hops (about the size real ones have).
fn record(campaign: &str, j: u64) -> v1::TraceRecord {
    let dst = format!("10.{}.{}.{}", (j >> 16) & 255, (j >> 8) & 255, j & 255);
    let hops = (1..=10u32)
        .map(|ttl| v1::Hop {
            ttl,
            addr: Some(if ttl == 10 {
                dst.clone()
            } else {
                format!("172.{}.{}.{}", 16 + ttl, (j >> 8) & 255, j & 255)
            }),
            rtt_ms: Some(0.4 + 2.7 * f64::from(ttl)),
            icmp_type: Some(if ttl == 10 { 0 } else { 11 }),
            icmp_code: Some(0),
            reply_ttl: Some(64 - ttl),
            probes: 1,
            ..Default::default()
        })
        .collect();
    v1::TraceRecord {
        result_id: tracemesh_proto::result_id(campaign, (j >> 24) as u32, &dst),
        campaign_id: campaign.to_string(),
        round: (j >> 24) as u32,
        dst,
        proto: v1::ProbeProtocol::Icmp as i32,
        stop_reason: v1::StopReason::Completed as i32,
        start: 1_795_400_000.0 + j as f64 * 0.001,
        probes_sent: 10,
        hops,
        ..Default::default()
    }
}

fn batch(campaign: &str, from: u64, n: u64) -> Vec<v1::TraceRecord> {
    (from..from + n).map(|j| record(campaign, j)).collect()
}

fn up(m: Up) -> v1::AgentMessage {
    v1::AgentMessage { msg: Some(m) }
}

struct Agent {
    tx: mpsc::Sender<v1::AgentMessage>,
    rx: tonic::Streaming<v1::CoordinatorMessage>,
}

/// What an agent keeps after enrolment: (coordinator, CA, certificate, key).
type Identity = (String, String, String, String);

async fn enrol_and_open(
    admin: &mut tracemesh_proto::v1::consumer_service_client::ConsumerServiceClient<Channel>,
    name: &str,
) -> anyhow::Result<(Agent, Identity)> {
    let id = enrol(admin, name).await?;
    Ok((open(&id).await?, id))
}

async fn enrol(
    admin: &mut tracemesh_proto::v1::consumer_service_client::ConsumerServiceClient<Channel>,
    name: &str,
) -> anyhow::Result<Identity> {
    let token = admin
        .create_token(v1::CreateTokenRequest {
            metadata: Some(v1::AgentMetadata {
                name: name.into(),
                ..Default::default()
            }),
            ttl_s: 600,
        })
        .await?
        .into_inner()
        .token;
    let t = EnrolToken::decode(&token)?;
    let anon = server::client::connect(&t.coordinator, &t.ca_pem, None).await?;
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())?
        .serialize_request(&key)?
        .pem()?;
    let resp = AgentServiceClient::new(anon)
        .enrol(v1::EnrolRequest {
            token,
            csr_pem: csr,
            agent_version: "flood-bench/0".into(),
            hostname: "bench".into(),
        })
        .await?
        .into_inner();
    Ok((
        resp.coordinator,
        resp.ca_pem,
        resp.cert_chain_pem,
        key.serialize_pem(),
    ))
}

/// A new connection and session with an enrolled identity.
async fn open(id: &Identity) -> anyhow::Result<Agent> {
    let ch = server::client::connect(&id.0, &id.1, Some((&id.2, &id.3))).await?;
    // Deep enough that a flooder is limited by the connection, not by this queue.
    let (tx, out) = mpsc::channel(64);
    tx.send(up(Up::Hello(v1::Hello {
        agent_version: "flood-bench/0".into(),
        state: Some(v1::AgentState::default()),
        mesh_addr: String::new(),
    })))
    .await?;
    let mut rx = AgentServiceClient::new(ch)
        .max_encoding_message_size(64 << 20)
        .session(ReceiverStream::new(out))
        .await?
        .into_inner();
    match rx.message().await?.and_then(|m| m.msg) {
        Some(Down::Welcome(_)) => Ok(Agent { tx, rx }),
        other => bail!("expected Welcome, got {other:?}"),
    }
}

async fn next_ack(rx: &mut tonic::Streaming<v1::CoordinatorMessage>) -> anyhow::Result<usize> {
    loop {
        match rx.message().await?.context("session closed")?.msg {
            // Refused uploads would be acknowledged without being stored: not ingest.
            Some(Down::Ack(a)) if !a.refused.is_empty() => {
                bail!("uploads refused: {:?}", a.refused)
            }
            Some(Down::Ack(a)) => return Ok(a.result_ids.len()),
            _ => continue,
        }
    }
}

/// One honest agent: a batch every tick, each timed from send to ack.
async fn honest(
    mut a: Agent,
    id: u64,
    campaign: String,
    per_tick: u64,
    until: Instant,
) -> anyhow::Result<Vec<f64>> {
    let mut lat_ms = Vec::new();
    let mut next = Instant::now();
    let mut j = 0u64;
    while Instant::now() < until {
        tokio::time::sleep_until(next.into()).await;
        next += TICK;
        let t = Instant::now();
        a.tx.send(up(Up::TraceBatch(v1::TraceBatch {
            results: batch(&campaign, j, per_tick),
        })))
        .await
        .context("honest send")?;
        let n = next_ack(&mut a.rx).await?;
        if n as u64 != per_tick {
            bail!("honest agent {id}: {n} of {per_tick} acknowledged");
        }
        lat_ms.push(t.elapsed().as_secs_f64() * 1e3);
        j += per_tick;
    }
    Ok(lat_ms)
}

/// The flooder: batches of a tenth of a second at 10x the quota, sent without waiting
/// for acks; reconnects (a new session) whenever the coordinator ends one. Returns
/// (traces acknowledged, sessions ended by the coordinator).
async fn flooder(
    id: Identity,
    campaign: String,
    per_tick: u64,
    until: Instant,
) -> anyhow::Result<(u64, u64)> {
    let mut a = open(&id).await?;
    let (mut acked, mut ended, mut j) = (0u64, 0u64, 0u64);
    loop {
        let send = async {
            let mut next = Instant::now();
            loop {
                tokio::time::sleep_until(next.into()).await;
                next += TICK;
                let results = batch(&campaign, j, per_tick);
                j += per_tick;
                if a.tx
                    .send(up(Up::TraceBatch(v1::TraceBatch { results })))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        };
        let recv = async {
            loop {
                match next_ack(&mut a.rx).await {
                    Ok(n) => acked += n as u64,
                    Err(_) => return,
                }
            }
        };
        tokio::select! {
            _ = send => {}
            _ = recv => { ended += 1; }
            _ = tokio::time::sleep_until(until.into()) => return Ok((acked, ended)),
        }
        if Instant::now() >= until {
            return Ok((acked, ended));
        }
        // A hostile agent comes straight back, on a new connection.
        a = open(&id).await?;
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[derive(Debug, Clone, Copy)]
struct Figures {
    honest_per_s: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    flood_stored: u64,
    flood_ended: u64,
}

async fn phase(
    label: &str,
    quota: Option<f64>,
    // The extra agent's upload rate in multiples of the quota (None: no extra agent).
    flood: Option<f64>,
    quota_rate: f64,
    honest_n: u64,
    rate: u64,
    secs: u64,
) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (coord_tx, coord_rx) = tokio::sync::oneshot::channel::<Arc<Coordinator>>();
    let limits = Limits {
        agent_traces_per_s: quota.unwrap_or(0.0),
        agent_burst: quota.unwrap_or(0.0),
        ..Limits::default()
    };
    let srv = tokio::spawn(server::serve_with_limits(
        ServeConfig {
            data: dir.path().to_path_buf(),
            listen: "127.0.0.1:0".parse()?,
            advertise: None,
        },
        limits,
        async {
            let _ = stop_rx.await;
        },
        move |c| {
            let _ = coord_tx.send(c);
        },
    ));
    let coord = coord_rx.await.context("server did not start")?;
    let addr = std::fs::read_to_string(dir.path().join("coordinator.addr"))?;
    let bundle = std::fs::read_to_string(dir.path().join("admin.pem"))?;
    let mut admin = server::client::connect_admin(addr.trim(), &bundle).await?;
    // Agents may upload only for campaigns issued to them: one for every agent, issued
    // as each session opens.
    let campaign = admin
        .create_campaign(v1::CreateCampaignRequest {
            spec: Some(v1::CampaignSpec {
                targets: vec!["192.0.2.1".into()],
                agents: vec!["all".into()],
                method: Some(v1::ProbeMethod {
                    proto: v1::ProbeProtocol::Icmp as i32,
                    attempts: 1,
                    max_ttl: 8,
                    ..Default::default()
                }),
                every_s: 3600,
                rounds: 10,
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .id;
    let mut agents = Vec::new();
    for i in 0..honest_n {
        agents.push(enrol_and_open(&mut admin, &format!("honest-{i}")).await?.0);
    }
    let per_tick = (rate as f64 * TICK.as_secs_f64()).round() as u64;
    let flood_per_tick = (flood.unwrap_or(0.0) * quota_rate * TICK.as_secs_f64()).round() as u64;
    let flood_id = match flood {
        Some(_) => Some(enrol(&mut admin, "flooder").await?),
        None => None,
    };
    // A second to warm up (the flooder spends its burst), then the measured span.
    let start = Instant::now() + Duration::from_secs(1);
    let until = start + Duration::from_secs(secs);
    let flood_task =
        flood_id.map(|id| tokio::spawn(flooder(id, campaign.clone(), flood_per_tick, until)));
    tokio::time::sleep_until(start.into()).await;
    let mut tasks = Vec::new();
    for (i, a) in agents.into_iter().enumerate() {
        tasks.push(tokio::spawn(honest(
            a,
            i as u64,
            campaign.clone(),
            per_tick,
            until,
        )));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (flood_stored, flood_ended) = match flood_task {
        Some(t) => t.await??,
        None => (0, 0),
    };
    lat.sort_by(f64::total_cmp);
    let f = Figures {
        honest_per_s: lat.len() as f64 * per_tick as f64 / elapsed,
        p50: pct(&lat, 0.5),
        p90: pct(&lat, 0.9),
        p99: pct(&lat, 0.99),
        flood_stored,
        flood_ended,
    };
    println!(
        "flood: {label:<17} honest {:>6.0} traces/s acked, ack latency p50 {:>6.1} ms p90 {:>6.1} ms p99 {:>6.1} ms; flooder stored {} ({:.0}/s), sessions ended {}",
        f.honest_per_s,
        f.p50,
        f.p90,
        f.p99,
        f.flood_stored,
        f.flood_stored as f64 / elapsed,
        f.flood_ended
    );
    drop(coord);
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(30), srv)
        .await
        .context("server did not stop")???;
    Ok(f)
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; nothing else is taken.
    let secs: u64 = env_num("TM_FLOOD_SECS", 10)?;
    let honest_n: u64 = env_num("TM_FLOOD_HONEST", 4)?;
    let rate: u64 = env_num("TM_FLOOD_RATE", 500)?;
    let quota: f64 = env_num("TM_FLOOD_QUOTA", 5000.0)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        println!(
            "flood: {honest_n} honest agents at {rate} traces/s each, one flooder at {} traces/s (10x a quota of {quota}/s), {secs} s per phase, {} cores",
            10.0 * quota,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        let q = Some(quota);
        let alone = phase("alone", q, None, quota, honest_n, rate, secs).await?;
        let one = phase("one at quota", q, Some(1.0), quota, honest_n, rate, secs).await?;
        let on = phase("flood, quota on", q, Some(10.0), quota, honest_n, rate, secs).await?;
        let off = phase("flood, quota off", None, Some(10.0), quota, honest_n, rate, secs).await?;
        for (label, f) in [("quota on", on), ("quota off", off)] {
            for (base_label, base) in [("alone", alone), ("one at quota", one)] {
                println!(
                    "flood: 10x flood, {label:<9} vs {base_label:<12}: honest throughput x{:.3}, ack latency p50 x{:.2}, p90 x{:.2}, p99 x{:.2}",
                    f.honest_per_s / base.honest_per_s,
                    f.p50 / base.p50,
                    f.p90 / base.p90,
                    f.p99 / base.p99
                );
            }
        }
        Ok(())
    })
}
