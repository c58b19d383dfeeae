//! Control-plane benchmark: this process runs the real coordinator (mutual TLS, sled in a
//! temporary directory, loopback only); child processes of the same executable run many
//! simulated agents (AGENTS_PER_CHILD each) that enrol with real tokens and CSRs and hold
//! real Session streams. It prints one line per figure: the store alone (no network),
//! sessions held by the one coordinator (with its RSS), time to dispatch a campaign to
//! every session, and traces per second acknowledged (acks are sent only after the
//! records are flushed), then checks re-sent traces and queries. Any wrong count is an
//! error (non-zero exit).
//!
//! `cargo bench -p tracemesh --bench control_plane`; knobs: TM_BENCH_SESSIONS (2000; at
//! most the hard RLIMIT_NOFILE minus ~100, as the coordinator needs one descriptor per
//! session), TM_BENCH_TRACES (200000), TM_BENCH_BATCH (100 traces per TraceBatch),
//! TM_BENCH_STORE_TRACES (100000 for the store-only phase, 0 skips it),
//! TM_BENCH_STORE_GROUP (20000, the writer's largest group), TM_BENCH_ONLY=store.

// The only unsafe code: setrlimit (tens of thousands of TLS connections) and
// clock_gettime (CPU time, and one monotonic clock across the processes).
#![allow(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

/// The allocator the coordinator binary uses (see `coordinator/src/main.rs`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context as _, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tracemesh::server::{self, Coordinator, ServeConfig};
use tracemesh_proto::token::EnrolToken;
use tracemesh_proto::v1::agent_service_client::AgentServiceClient;
use tracemesh_proto::v1::{self, agent_message::Msg as Up, coordinator_message::Msg as Down};

/// How many enrolments, token requests or TLS handshakes run at once; enough to keep two
/// cores busy without queueing thousands of handshakes behind the server's timeout.
const SETUP_CONCURRENCY: usize = 64;
/// Upper bound for every phase, so a regression shows up as an error, not a hang.
const PHASE_TIMEOUT: Duration = Duration::from_secs(300);

fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().with_context(|| format!("{name}={v:?}")),
        Err(_) => Ok(default),
    }
}

/// Raises the soft (and, if we may, the hard) open-file limit to at least `want`;
/// returns the soft limit in force afterwards.
fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct we pass by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur >= want {
            return lim.rlim_cur;
        }
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: lim.rlim_max.max(want),
        };
        // Raising the hard limit needs CAP_SYS_RESOURCE; fall back to the hard limit.
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return want;
        }
        let capped = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &capped) == 0 {
            return lim.rlim_max;
        }
        lim.rlim_cur
    }
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// CPU time (user + system) of this process, or of the calling thread, so far.
fn cpu_time(thread: bool) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let clock = if thread {
        libc::CLOCK_THREAD_CPUTIME_ID
    } else {
        libc::CLOCK_PROCESS_CPUTIME_ID
    };
    // SAFETY: clock_gettime only writes the struct we pass by pointer.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU seconds (user + system) used so far by this process's threads, grouped by
/// thread name (sled's many "sled-io-N" threads count as one group).
fn cpu_by_thread() -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let tick = 100.0; // USER_HZ on Linux
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ... — comm may contain spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let group = comm
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .to_string();
        let f: Vec<&str> = stat[close + 2..].split(' ').collect();
        let (Some(u), Some(s)) = (f.get(11), f.get(12)) else {
            continue;
        };
        let secs = (u.parse::<f64>().unwrap_or(0.0) + s.parse::<f64>().unwrap_or(0.0)) / tick;
        *out.entry(group).or_insert(0.0) += secs;
    }
    out
}

/// "name 1.2 s, other 0.3 s" for the CPU used between two [`cpu_by_thread`] readings.
fn cpu_delta(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
) -> String {
    let mut v: Vec<(String, f64)> = after
        .iter()
        .map(|(k, a)| (k.clone(), a - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d >= 0.05)
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v.iter()
        .map(|(k, d)| format!("{k} {d:.1} s"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// CLOCK_MONOTONIC in ns: one clock for every process of the benchmark.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the struct we pass by pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct AgentId {
    name: String,
    cert_pem: String,
    key_pem: String,
}

/// What the driver tells every agent task to upload.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Upload {
    campaign_id: String,
    per_agent: Vec<usize>,
    batch: usize,
}

/// A realistic finished trace: ~10 hops, a silent one, MPLS on the core hops.
fn record(campaign: &str, agent: usize, j: usize) -> v1::TraceRecord {
    let dst = format!("10.{}.{}.{}", (j >> 16) & 255, (j >> 8) & 255, j & 255);
    let hops = (1..=10u32)
        .map(|ttl| {
            if ttl == 6 {
                return v1::Hop {
                    ttl,
                    probes: 3,
                    ..Default::default()
                };
            }
            let last = ttl == 10;
            v1::Hop {
                ttl,
                addr: Some(if last {
                    dst.clone()
                } else {
                    format!("172.{}.{}.{}", 16 + ttl, agent & 255, j & 255)
                }),
                rtt_ms: Some(0.4 + 2.7 * f64::from(ttl)),
                icmp_type: Some(if last { 0 } else { 11 }),
                icmp_code: Some(0),
                reply_ttl: Some(64 - ttl),
                quoted_ttl: (!last).then_some(1),
                mpls: if (3..=5).contains(&ttl) {
                    vec![v1::MplsLabel {
                        label: 24_000 + ttl,
                        tc: 0,
                        s: true,
                        ttl: 1,
                    }]
                } else {
                    Vec::new()
                },
                probes: 1,
                ..Default::default()
            }
        })
        .collect();
    v1::TraceRecord {
        result_id: tracemesh_proto::result_id(campaign, 0, &dst),
        campaign_id: campaign.to_string(),
        round: 0,
        vantage: String::new(),
        dst,
        src: Some(format!("192.168.{}.{}", (agent >> 8) & 255, agent & 255)),
        proto: v1::ProbeProtocol::Icmp as i32,
        stop_reason: v1::StopReason::Completed as i32,
        start: 1_795_400_000.0 + j as f64 * 0.01,
        probes_sent: 12,
        hops,
        received_at_ns: 0,
    }
}

fn up(m: Up) -> v1::AgentMessage {
    v1::AgentMessage { msg: Some(m) }
}

/// One simulated agent's session: reports when its campaign instruction arrives, then
/// uploads its share when told and reports how many results were acknowledged. Holds
/// the stream open until the driver drops `stop`.
async fn agent_task(
    tx: mpsc::Sender<v1::AgentMessage>,
    mut rx: tonic::Streaming<v1::CoordinatorMessage>,
    dispatched: mpsc::UnboundedSender<u64>,
    go: tokio::sync::oneshot::Receiver<Vec<v1::TraceBatch>>,
    acked: mpsc::UnboundedSender<anyhow::Result<usize>>,
) {
    let next = async |rx: &mut tonic::Streaming<v1::CoordinatorMessage>| -> anyhow::Result<Down> {
        loop {
            match rx.message().await?.context("session closed")?.msg {
                Some(Down::ClockEcho(_)) | None => continue,
                Some(m) => return Ok(m),
            }
        }
    };
    match next(&mut rx).await {
        Ok(Down::Campaign(_)) => {
            let _ = dispatched.send(mono_ns());
        }
        Ok(other) => {
            let _ = acked.send(Err(anyhow::anyhow!("expected a campaign, got {other:?}")));
            return;
        }
        Err(e) => {
            let _ = acked.send(Err(e));
            return;
        }
    }
    let Ok(batches) = go.await else {
        return;
    };
    let upload = async {
        let mut n = 0;
        for batch in batches {
            tx.send(up(Up::TraceBatch(batch)))
                .await
                .context("session send")?;
            match next(&mut rx).await? {
                Down::Ack(a) => n += a.result_ids.len(),
                other => bail!("expected an ack, got {other:?}"),
            }
        }
        Ok(n)
    };
    let _ = acked.send(upload.await);
    // Keep the session open (the driver aborts this task at the end).
    std::future::pending::<()>().await;
}

/// Store only, no network: `records` synthetic traces through `ingest_many` + `flush` in
/// groups of `group` (what the ingest writer does), then the same records again (every
/// one must come back a duplicate). Separates the store's cost from TLS and gRPC.
fn store_phase(records: usize, group: usize) -> anyhow::Result<()> {
    use tracemesh::store::{IngestOutcome, SledStore, Store as _};
    let dir = tempfile::tempdir()?;
    let store = SledStore::open(dir.path())?;
    let rss0 = rss_mib();
    // In the order the writer sees them: batches of 100 traces of one vantage each,
    // the vantages taking turns.
    let (vantages, batch) = (2_000, 100);
    let all: Vec<v1::TraceRecord> = (0..records)
        .map(|i| {
            let (b, k) = (i / batch, i % batch);
            let v = b % vantages;
            let mut r = record("c1", v, (b / vantages) * batch + k);
            r.vantage = format!("bench-{v:05}");
            r.received_at_ns = 1;
            r
        })
        .collect();
    let pass = |expect: IngestOutcome| -> anyhow::Result<(Duration, Duration, Duration, Duration)> {
        let (mut write, mut flush) = (Duration::ZERO, Duration::ZERO);
        let (cpu0, pcpu0) = (cpu_time(true), cpu_time(false));
        for chunk in all.chunks(group) {
            let t = Instant::now();
            let out = store.ingest_many(chunk)?;
            write += t.elapsed();
            let t = Instant::now();
            store.flush()?;
            flush += t.elapsed();
            for o in out {
                let o = o?;
                if o != expect {
                    bail!("store phase: expected {expect:?}, got {o:?}");
                }
            }
        }
        Ok((write, flush, cpu_time(true) - cpu0, cpu_time(false) - pcpu0))
    };
    let (w, f, cpu, pcpu) = pass(IngestOutcome::Stored)?;
    let stored = store.count_traces("c1")?;
    if stored != records as u64 {
        bail!("store phase: {records} ingested, {stored} stored");
    }
    let rss1 = rss_mib();
    let (dw, df, dcpu, _) = pass(IngestOutcome::Duplicate)?;
    println!(
        "store only: {records} traces in groups of {group}: {:.0} traces/s (ingest_many {} ms + flush {} ms; \
         CPU {} ms in the writer = {:.1} µs/trace, {} ms in the process); process RSS {:.0} MiB \
         (after the session phase freed its memory, so not a delta: {:.0} MiB before this phase)",
        records as f64 / (w + f).as_secs_f64(),
        w.as_millis(),
        f.as_millis(),
        cpu.as_millis(),
        cpu.as_secs_f64() * 1e6 / records as f64,
        pcpu.as_millis(),
        rss1,
        rss0,
    );
    println!(
        "store only: the same again, all duplicates: {:.0} traces/s (writer CPU {:.1} µs/trace)",
        records as f64 / (dw + df).as_secs_f64(),
        dcpu.as_secs_f64() * 1e6 / records as f64,
    );
    Ok(())
}

/// Simulated agents per child process: the hard RLIMIT_NOFILE may be low (20,000 here,
/// and raising it needs CAP_SYS_RESOURCE), and every session costs the coordinator one
/// descriptor and its agent another, so the agents live in child processes of their own.
const AGENTS_PER_CHILD: usize = 5_000;
/// Descriptors the coordinator process needs besides one per session (listener, sled,
/// admin channel, stdio, epoll, child pipes).
const SERVER_FDS: u64 = 100;

/// Driver → agents child, one JSON line each.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum ToChild {
    /// Enrol these tokens and open one session each.
    Start {
        addr: String,
        first: usize,
        tokens: Vec<String>,
    },
    /// Prepare the uploads (per_agent indexed from `first`): the records are built before
    /// the clock starts, as real agents produce them over time on their own machines.
    Prepare(Upload),
    /// Upload what was prepared, every session at once.
    Go,
}

/// Agents child → driver, one JSON line each.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum FromChild {
    Ready {
        keys_ms: u64,
        enrol_ms: u64,
        connect_ms: u64,
        rss_mib: f64,
    },
    /// Every session of this child has its campaign; the first and the last arrived at
    /// these CLOCK_MONOTONIC instants.
    Dispatched {
        first_ns: u64,
        last_ns: u64,
    },
    /// The uploads are built.
    Prepared,
    Acked {
        n: usize,
        rss_mib: f64,
    },
    Failed(String),
}

fn main() -> anyhow::Result<()> {
    if std::env::var("TM_BENCH_ROLE").is_ok_and(|r| r == "agents") {
        return tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(agents_child());
    }
    let store_traces = env_usize("TM_BENCH_STORE_TRACES", 100_000)?;
    let store_group = env_usize("TM_BENCH_STORE_GROUP", 20_000)?.max(1);
    if std::env::var("TM_BENCH_ONLY").is_ok_and(|v| v == "store") {
        return store_phase(store_traces, store_group);
    }
    let sessions = env_usize("TM_BENCH_SESSIONS", 2_000)?;
    let traces = env_usize("TM_BENCH_TRACES", 200_000)?;
    let batch = env_usize("TM_BENCH_BATCH", 100)?.max(1);
    if sessions == 0 {
        bail!("TM_BENCH_SESSIONS must be at least 1");
    }
    // The coordinator's end of every session lives in this process.
    let want = sessions as u64 + SERVER_FDS;
    let nofile = raise_nofile(want);
    if nofile < want {
        bail!(
            "RLIMIT_NOFILE is {nofile} (hard limit; raising it needs CAP_SYS_RESOURCE): one coordinator \
             process can hold about {} sessions here, not {sessions}",
            nofile.saturating_sub(SERVER_FDS)
        );
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(sessions, traces, batch))?;
    // The store alone last, so its memory does not blur the per-session figures.
    if store_traces > 0 {
        store_phase(store_traces, store_group)?;
    }
    Ok(())
}

/// One agents child as the driver sees it.
struct Child {
    proc: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    first: usize,
    count: usize,
}

impl Child {
    async fn send(&mut self, m: &ToChild) -> anyhow::Result<()> {
        use tokio::io::AsyncWriteExt as _;
        let mut line = serde_json::to_vec(m)?;
        line.push(b'\n');
        let stdin = self.stdin.as_mut().context("child stdin closed")?;
        stdin.write_all(&line).await?;
        stdin.flush().await?;
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<FromChild> {
        let line = tokio::time::timeout(PHASE_TIMEOUT, self.lines.next_line())
            .await
            .context("agents child timed out")??
            .context("agents child exited")?;
        match serde_json::from_str(&line)? {
            FromChild::Failed(e) => bail!("agents child {}: {e}", self.first),
            m => Ok(m),
        }
    }
}

async fn run(sessions: usize, traces: usize, batch: usize) -> anyhow::Result<()> {
    let children = sessions.div_ceil(AGENTS_PER_CHILD);
    println!(
        "control_plane: {sessions} sessions ({children} agent processes), {traces} traces in batches of {batch}, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let dir = tempfile::tempdir()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (coord_tx, coord_rx) = tokio::sync::oneshot::channel::<Arc<Coordinator>>();
    let cfg = ServeConfig {
        data: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse()?,
        advertise: None,
    };
    let srv = tokio::spawn(server::serve_with(
        cfg,
        async {
            let _ = stop_rx.await;
        },
        move |c| {
            let _ = coord_tx.send(c);
        },
    ));
    let coord = coord_rx.await.context("server did not start")?;
    let addr = std::fs::read_to_string(dir.path().join("coordinator.addr"))?
        .trim()
        .to_string();
    let bundle = std::fs::read_to_string(dir.path().join("admin.pem"))?;
    let admin = server::client::connect_admin(&addr, &bundle).await?;
    let rss0 = rss_mib();

    // Enrolment tokens, made by the operator (here).
    let t = Instant::now();
    let tokens: Vec<String> = tokio::time::timeout(
        PHASE_TIMEOUT,
        futures::stream::iter(0..sessions)
            .map(|i| {
                let mut admin = admin.clone();
                async move {
                    let r = admin
                        .create_token(v1::CreateTokenRequest {
                            metadata: Some(v1::AgentMetadata {
                                name: format!("bench-{i:05}"),
                                country: "DE".into(),
                                tags: vec!["bench".into()],
                                ..Default::default()
                            }),
                            ttl_s: 3_600,
                        })
                        .await?;
                    Ok::<_, tonic::Status>(r.into_inner().token)
                }
            })
            .buffered(SETUP_CONCURRENCY)
            .try_collect(),
    )
    .await??;
    let t_tokens = t.elapsed();

    // The agents: child processes of this executable, each enrolling its share (key
    // pair, CSR, Enrol) and then opening one mutual-TLS session per agent.
    let t = Instant::now();
    let exe = std::env::current_exe()?;
    let mut kids = Vec::with_capacity(children);
    let mut tokens = tokens.into_iter();
    for c in 0..children {
        let first = c * AGENTS_PER_CHILD;
        let count = AGENTS_PER_CHILD.min(sessions - first);
        let mut proc = tokio::process::Command::new(&exe)
            .env("TM_BENCH_ROLE", "agents")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("spawning an agents child")?;
        let stdin = proc.stdin.take();
        let stdout = proc.stdout.take().context("child stdout")?;
        let mut kid = Child {
            proc,
            stdin,
            lines: tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout)),
            first,
            count,
        };
        kid.send(&ToChild::Start {
            addr: addr.clone(),
            first,
            tokens: tokens.by_ref().take(count).collect(),
        })
        .await?;
        kids.push(kid);
    }
    let mut setup = Vec::new();
    let mut rss_agents = 0.0;
    for kid in &mut kids {
        match kid.recv().await? {
            FromChild::Ready {
                keys_ms,
                enrol_ms,
                connect_ms,
                rss_mib,
            } => {
                setup.push((keys_ms, enrol_ms, connect_ms));
                rss_agents += rss_mib;
            }
            other => bail!("expected Ready, got {other:?}"),
        }
    }
    let t_sessions = t.elapsed();
    let max = |f: fn(&(u64, u64, u64)) -> u64| setup.iter().map(f).max().unwrap_or(0);
    println!(
        "setup: {sessions} tokens in {} ms; per agent process (in parallel, slowest): key pairs+CSRs {} ms, enrolments {} ms, TLS sessions opened {} ms",
        t_tokens.as_millis(),
        max(|s| s.0),
        max(|s| s.1),
        max(|s| s.2),
    );
    let held = coord.live_all().len();
    let rss1 = rss_mib();
    if held != sessions {
        bail!("coordinator holds {held} sessions, expected {sessions}");
    }
    println!(
        "sessions held: {held} by one coordinator (all connected {} ms after the agents started, {:.0}/s); \
         coordinator RSS {rss1:.0} MiB ({:.1} KiB/session), agent processes {rss_agents:.0} MiB  [goal: 20000 sessions]",
        t_sessions.as_millis(),
        held as f64 / t_sessions.as_secs_f64(),
        (rss1 - rss0) * 1024.0 / held as f64
    );

    // Dispatch: one campaign for "all", timed until every session has its instruction.
    let mut admin2 = admin.clone();
    let t0 = mono_ns();
    let campaign = admin2
        .create_campaign(v1::CreateCampaignRequest {
            spec: Some(v1::CampaignSpec {
                targets: vec!["192.0.2.0/28".into()],
                agents: vec!["all".into()],
                method: Some(v1::ProbeMethod {
                    proto: v1::ProbeProtocol::Icmp as i32,
                    attempts: 2,
                    max_ttl: 30,
                    wait_ms: 1_000,
                    flow_id: 0,
                }),
                every_s: 60,
                rounds: 10,
                start_at_ns: 0,
                alias: None,
                mesh: None,
                mda: None,
            }),
        })
        .await?
        .into_inner();
    let rpc_ms = (mono_ns() - t0) as f64 / 1e6;
    let (mut first, mut last) = (u64::MAX, t0);
    for kid in &mut kids {
        match kid.recv().await? {
            FromChild::Dispatched { first_ns, last_ns } => {
                first = first.min(first_ns);
                last = last.max(last_ns);
            }
            other => bail!("expected Dispatched, got {other:?}"),
        }
    }
    println!(
        "dispatch: campaign {} to {sessions} sessions in {:.0} ms (first session had it after {:.0} ms, \
         CreateCampaign returned after {rpc_ms:.0} ms)  [goal: <= 1000 ms to 20000]",
        campaign.id,
        (last - t0) as f64 / 1e6,
        first.saturating_sub(t0) as f64 / 1e6,
    );

    // Ingest: every session uploads its share at once, one batch in flight each, as an
    // agent does (it waits for the ack before deleting from its spool).
    let per_agent: Vec<usize> = (0..sessions)
        .map(|i| traces / sessions + usize::from(i < traces % sessions))
        .collect();
    for kid in &mut kids {
        let share = per_agent[kid.first..kid.first + kid.count].to_vec();
        kid.send(&ToChild::Prepare(Upload {
            campaign_id: campaign.id.clone(),
            per_agent: share,
            batch,
        }))
        .await?;
    }
    for kid in &mut kids {
        match kid.recv().await? {
            FromChild::Prepared => {}
            other => bail!("expected Prepared, got {other:?}"),
        }
    }
    let (cpu0, threads0) = (cpu_time(false), cpu_by_thread());
    let t = Instant::now();
    for kid in &mut kids {
        kid.send(&ToChild::Go).await?;
    }
    let mut total = 0;
    let mut rss_agents = 0.0;
    for kid in &mut kids {
        match kid.recv().await? {
            FromChild::Acked { n, rss_mib } => {
                total += n;
                rss_agents += rss_mib;
            }
            other => bail!("expected Acked, got {other:?}"),
        }
    }
    let ingest = t.elapsed();
    let (cpu, threads) = (cpu_time(false) - cpu0, cpu_by_thread());
    let stored = coord.store.count_traces(&campaign.id)?;
    if total != traces || stored != traces as u64 {
        bail!("{traces} traces sent, {total} acknowledged, {stored} stored");
    }
    let rate = total as f64 / ingest.as_secs_f64();
    println!(
        "ingest: {total} traces acked durably in {} ms = {rate:.0} traces/s over {sessions} sessions; \
         coordinator RSS {:.0} MiB, agent processes {rss_agents:.0} MiB  [goal: >= 50000 traces/s]",
        ingest.as_millis(),
        rss_mib()
    );
    println!(
        "ingest CPU in the coordinator: {:.1} s = {:.1} µs/trace ({})",
        cpu.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / total as f64,
        cpu_delta(&threads0, &threads)
    );
    println!(
        "ingest vs. before: {rate:.0} traces/s now; the previous store (one sled transaction over five \
         trees per group) did 10700 traces/s in this benchmark (x{:.1}) and 7047 in its previous version",
        rate / 10_700.0
    );

    check_store(&coord, &campaign.id, &per_agent).await?;

    for mut kid in kids {
        kid.stdin = None;
        let _ = tokio::time::timeout(Duration::from_secs(30), kid.proc.wait()).await;
    }
    drop(admin2);
    drop(admin);
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(30), srv).await???;
    Ok(())
}

/// After the upload: a re-sent batch is acknowledged without being stored again, and the
/// queries by vantage, destination and time find what was stored.
async fn check_store(
    coord: &Coordinator,
    campaign: &str,
    per_agent: &[usize],
) -> anyhow::Result<()> {
    use tracemesh::store::{IngestOutcome, TraceQuery};
    let before = coord.store.count_traces(campaign)?;
    let resent: Vec<v1::TraceRecord> = (0..per_agent[0].min(100))
        .map(|j| {
            let mut r = record(campaign, 0, j);
            r.vantage = "bench-00000".into();
            r
        })
        .collect();
    let n = resent.len();
    let outcomes = coord
        .ingest
        .submit(resent)
        .await
        .map_err(|e| anyhow::anyhow!("re-send: {e}"))?;
    let dups = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Ok(IngestOutcome::Duplicate)))
        .count();
    let after = coord.store.count_traces(campaign)?;
    if dups != n || after != before {
        bail!("re-sent {n} traces: {dups} duplicates, stored count {before} -> {after}");
    }
    let count = |q: TraceQuery| -> anyhow::Result<usize> {
        let mut k = 0;
        coord.store.for_each_trace(&q, &mut |_| {
            k += 1;
            true
        })?;
        Ok(k)
    };
    let t = Instant::now();
    let by_vantage = count(TraceQuery {
        vantage: Some("bench-00000".into()),
        ..Default::default()
    })?;
    let dst = record(campaign, 0, 0).dst;
    let by_dst = count(TraceQuery {
        dst: Some(dst.clone()),
        ..Default::default()
    })?;
    let first = record(campaign, 0, 0).start;
    let by_time = count(TraceQuery {
        since_ns: Some((first * 1e9) as i64),
        until_ns: Some((first * 1e9) as i64),
        ..Default::default()
    })?;
    // Trace j of every agent starts at the same instant and goes to the same address.
    let with_first = per_agent.iter().filter(|&&k| k > 0).count();
    if by_vantage != per_agent[0] || by_dst != with_first || by_time != with_first {
        bail!(
            "queries: vantage {by_vantage} (expected {}), dst {by_dst} and time {by_time} (expected {with_first})",
            per_agent[0]
        );
    }
    println!(
        "checks: {n} re-sent traces acked as duplicates, none stored twice; queries by vantage/dst/time agree ({} ms)",
        t.elapsed().as_millis()
    );
    Ok(())
}

/// A child process of simulated agents: reads [`ToChild`] lines on stdin, answers with
/// [`FromChild`] lines on stdout, and exits when stdin closes.
async fn agents_child() -> anyhow::Result<()> {
    // tokio's stdin needs a feature this workspace does not enable; a thread will do.
    let (line_tx, mut stdin) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let say = |m: &FromChild| -> anyhow::Result<()> {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(&mut out, m)?;
        out.write_all(b"\n")?;
        out.flush()?;
        Ok(())
    };
    let Some(line) = stdin.recv().await else {
        return Ok(());
    };
    let ToChild::Start {
        addr,
        first,
        tokens,
    } = serde_json::from_str(&line)?
    else {
        bail!("expected Start");
    };
    let n = tokens.len();
    let want = n as u64 + SERVER_FDS;
    if raise_nofile(want) < want {
        say(&FromChild::Failed(format!("RLIMIT_NOFILE below {want}")))?;
        bail!("RLIMIT_NOFILE");
    }
    let result = agents_run(&addr, first, tokens, &mut stdin, &say).await;
    if let Err(e) = &result {
        say(&FromChild::Failed(format!("{e:#}")))?;
    }
    result
}

async fn agents_run(
    addr: &str,
    first: usize,
    tokens: Vec<String>,
    stdin: &mut mpsc::UnboundedReceiver<String>,
    say: &dyn Fn(&FromChild) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let n = tokens.len();
    let ca_pem = EnrolToken::decode(tokens.first().context("no tokens")?)
        .map_err(|e| anyhow::anyhow!("token: {e}"))?
        .ca_pem;

    // Key pairs and CSRs are CPU work the agents would do on their own machines; spread
    // it over the cores.
    let t = Instant::now();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = n.div_ceil(workers);
    let mut handles = Vec::new();
    for w in 0..workers {
        let k = chunk.min(n.saturating_sub(w * chunk));
        handles.push(tokio::task::spawn_blocking(move || {
            (0..k)
                .map(|_| {
                    let key = rcgen::KeyPair::generate()?;
                    let csr = rcgen::CertificateParams::new(Vec::<String>::new())?
                        .serialize_request(&key)?
                        .pem()?;
                    Ok::<_, rcgen::Error>((csr, key.serialize_pem()))
                })
                .collect::<Result<Vec<_>, _>>()
        }));
    }
    let mut csrs = Vec::with_capacity(n);
    for h in handles {
        csrs.extend(h.await??);
    }
    let keys_ms = t.elapsed().as_millis() as u64;

    // An agent without a certificate yet enrols over an anonymous TLS channel; one
    // multiplexed channel carries every enrolment.
    let t = Instant::now();
    let anon = AgentServiceClient::new(server::client::connect(addr, &ca_pem, None).await?);
    let ids: Vec<AgentId> = tokio::time::timeout(
        PHASE_TIMEOUT,
        futures::stream::iter(tokens.into_iter().zip(csrs))
            .map(|(token, (csr_pem, key_pem))| {
                let mut anon = anon.clone();
                async move {
                    let r = anon
                        .enrol(v1::EnrolRequest {
                            token,
                            csr_pem,
                            agent_version: "bench-agent/0".into(),
                            hostname: "bench".into(),
                        })
                        .await?
                        .into_inner();
                    Ok::<_, tonic::Status>(AgentId {
                        name: r.agent_name,
                        cert_pem: r.cert_chain_pem,
                        key_pem,
                    })
                }
            })
            .buffered(SETUP_CONCURRENCY)
            .try_collect(),
    )
    .await??;
    drop(anon);
    let enrol_ms = t.elapsed().as_millis() as u64;

    // Sessions: one TLS connection per agent, each with its own certificate.
    let (dispatched_tx, mut dispatched_rx) = mpsc::unbounded_channel();
    let (acked_tx, mut acked_rx) = mpsc::unbounded_channel();
    let t = Instant::now();
    let opened: Vec<(usize, mpsc::Sender<v1::AgentMessage>, tonic::Streaming<_>)> =
        tokio::time::timeout(
            PHASE_TIMEOUT,
            futures::stream::iter(ids.iter().enumerate())
                .map(|(i, id)| {
                    let ca_pem = &ca_pem;
                    async move {
                        let ch: Channel = server::client::connect(
                            addr,
                            ca_pem,
                            Some((&id.cert_pem, &id.key_pem)),
                        )
                        .await?;
                        let (tx, out) = mpsc::channel(4);
                        tx.send(up(Up::Hello(v1::Hello {
                            agent_version: "bench-agent/0".into(),
                            state: Some(v1::AgentState::default()),
                            mesh_addr: String::new(),
                        })))
                        .await?;
                        let mut rx = AgentServiceClient::new(ch)
                            .max_decoding_message_size(64 << 20)
                            .session(ReceiverStream::new(out))
                            .await?
                            .into_inner();
                        match rx.message().await?.and_then(|m| m.msg) {
                            Some(Down::Welcome(w)) if w.agent_name == id.name => {}
                            other => bail!("{}: expected Welcome, got {other:?}", id.name),
                        }
                        Ok((i, tx, rx))
                    }
                })
                .buffer_unordered(SETUP_CONCURRENCY)
                .try_collect(),
        )
        .await??;
    let connect_ms = t.elapsed().as_millis() as u64;
    drop(ids);
    let mut tasks = tokio::task::JoinSet::new();
    let mut go: Vec<Option<tokio::sync::oneshot::Sender<Vec<v1::TraceBatch>>>> =
        (0..n).map(|_| None).collect();
    for (i, tx, rx) in opened {
        let (go_tx, go_rx) = tokio::sync::oneshot::channel();
        go[i] = Some(go_tx);
        tasks.spawn(agent_task(
            tx,
            rx,
            dispatched_tx.clone(),
            go_rx,
            acked_tx.clone(),
        ));
    }
    drop((dispatched_tx, acked_tx));
    say(&FromChild::Ready {
        keys_ms,
        enrol_ms,
        connect_ms,
        rss_mib: rss_mib(),
    })?;

    let (mut first_ns, mut last_ns) = (u64::MAX, 0);
    for _ in 0..n {
        match tokio::time::timeout(PHASE_TIMEOUT, dispatched_rx.recv()).await? {
            Some(at) => {
                first_ns = first_ns.min(at);
                last_ns = last_ns.max(at);
            }
            None => {
                let why = acked_rx.recv().await;
                bail!("a session ended before its campaign arrived: {why:?}");
            }
        }
    }
    say(&FromChild::Dispatched { first_ns, last_ns })?;

    let line = stdin.recv().await.context("driver went away")?;
    let ToChild::Prepare(plan) = serde_json::from_str(&line)? else {
        bail!("expected Prepare");
    };
    let uploads = tokio::task::spawn_blocking(move || {
        (0..n)
            .map(|i| {
                let mine = plan.per_agent[i];
                (0..mine)
                    .step_by(plan.batch)
                    .map(|j| v1::TraceBatch {
                        results: (j..(j + plan.batch).min(mine))
                            .map(|k| record(&plan.campaign_id, first + i, k))
                            .collect(),
                    })
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    })
    .await?;
    say(&FromChild::Prepared)?;
    let line = stdin.recv().await.context("driver went away")?;
    let ToChild::Go = serde_json::from_str(&line)? else {
        bail!("expected Go");
    };
    for (go, batches) in go.iter_mut().zip(uploads) {
        if let Some(go) = go.take() {
            let _ = go.send(batches);
        }
    }
    let mut total = 0;
    for _ in 0..n {
        match tokio::time::timeout(PHASE_TIMEOUT, acked_rx.recv()).await? {
            Some(Ok(k)) => total += k,
            Some(Err(e)) => return Err(e.context(format!("upload failed (agents from {first})"))),
            None => bail!("agent tasks ended early"),
        }
    }
    say(&FromChild::Acked {
        n: total,
        rss_mib: rss_mib(),
    })?;
    // Hold the sessions until the driver closes stdin.
    while stdin.recv().await.is_some() {}
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    Ok(())
}
