//! `tracemesh-agent`: standalone traceroutes today; the coordinator session joins later.

use std::io::{BufRead, BufWriter, Write};
use std::net::{IpAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;
use tracemesh_agent::probe::alias::{AliasConfig, AliasProber, AliasReport, Evidence, Method};
use tracemesh_agent::probe::denylist::DenyList;
use tracemesh_agent::probe::driver::{self, Needs};
use tracemesh_agent::probe::engine::RequestError;
use tracemesh_agent::probe::{
    Engine, EngineConfig, Proto, StopReason, TraceParams, TraceRequest, TraceResult,
};

mod mda_cli;

#[derive(Parser, Debug)]
#[command(name = "tracemesh-agent", version, about = "tracemesh probing agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run traceroutes locally and print one JSON object per target (like scamper).
    Trace(TraceArgs),
    /// Join a coordinator: enrol once with a token, then run its campaigns.
    Run(RunArgs),
    /// Find which addresses belong to one router (alias resolution): Mercator UDP probes
    /// and IP-ID series.
    Alias(AliasArgs),
}

#[derive(Args, Debug)]
struct AliasArgs {
    /// mercator: UDP to a closed port, note where the Port Unreachable comes from; ipid:
    /// interleaved pings, one IPv4 identification counter means one router (IPv4 only).
    #[arg(long, default_value = "both")]
    method: Method,
    /// Global cap on probes per second.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    rate: u32,
    /// IP-ID rounds: echo probes per address.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    rounds: u32,
    /// Least time between two probes to one address.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    spacing_ms: u64,
    /// How long to wait for each reply.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    wait_ms: u64,
    /// Mercator UDP probes per address at most (retries follow timeouts).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=10))]
    attempts: u8,
    /// Lift the deny-list for a range (repeatable), e.g. --allow 10.0.0.0/8.
    #[arg(long = "allow", value_name = "CIDR")]
    allow: Vec<IpNet>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Addresses to resolve (IPv4 or IPv6 literals).
    #[arg(required = true, value_name = "ADDR")]
    addrs: Vec<String>,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Directory for the agent's key, certificate, campaigns and result spool.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Coordinator address (host:port); defaults to the one in the token or state.
    #[arg(long)]
    coordinator: Option<String>,
    /// One-time enrolment token from `tracemesh token create` (first start only).
    #[arg(long, env = "TRACEMESH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Lift the deny-list for a range (repeatable).
    #[arg(long = "allow", value_name = "CIDR")]
    allow: Vec<IpNet>,
    /// Global cap on probes per second.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    rate: Option<u32>,
    /// Cap on probes per second toward any one destination.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    per_dst_rate: Option<u32>,
    /// Listen for other agents (mesh campaigns, UDP/QUIC): `IP:PORT`, `IP` or `:PORT`;
    /// the port defaults to 7444. Off unless given.
    #[arg(long, value_name = "ADDR")]
    mesh_listen: Option<String>,
    /// The address other agents dial (`IP` or `IP:PORT`), when it is not the listen
    /// address (e.g. behind a cloud's NAT); default: the listen address, or the address
    /// the coordinator sees this agent connect from.
    #[arg(long, value_name = "ADDR")]
    mesh_advertise: Option<String>,
    /// Test-only: offset this agent's clock by this many milliseconds (the session's clock
    /// correction must undo it).
    #[arg(long, hide = true, default_value_t = 0, allow_negative_numbers = true)]
    test_clock_skew_ms: i64,
    /// TOML file with the same settings (state, coordinator, token, allow, rate,
    /// per_dst_rate, mesh_listen, mesh_advertise, metrics); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP, no authentication:
    /// bind loopback or a monitoring network).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
}

/// `tracemesh-agent run --config FILE`: what cloud-init writes.
#[derive(serde::Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    state: Option<PathBuf>,
    coordinator: Option<String>,
    token: Option<String>,
    #[serde(default)]
    allow: Vec<IpNet>,
    rate: Option<u32>,
    per_dst_rate: Option<u32>,
    mesh_listen: Option<String>,
    mesh_advertise: Option<String>,
    metrics: Option<std::net::SocketAddr>,
}

#[derive(Args, Debug)]
struct TraceArgs {
    /// Probe method (all Paris-style: constant flow identifiers per trace); icmp by
    /// default, udp with --mda.
    #[arg(long)]
    proto: Option<Proto>,
    /// Multipath: MDA-Lite, every interface and link of the load-balanced paths (flows
    /// vary the UDP/TCP source port or the ICMP checksum).
    #[arg(long)]
    mda: bool,
    /// With --mda: chance in percent (95 or 99) that no interface of a hop is missed.
    #[arg(long, default_value_t = 95, requires = "mda", value_parser = parse_confidence)]
    confidence: u8,
    /// With --mda: most probes per destination.
    #[arg(long, default_value_t = 5000, requires = "mda", value_parser = clap::value_parser!(u32).range(1..=65_534))]
    budget: u32,
    /// Resolve host names to IPv6 and refuse IPv4 targets.
    #[arg(short = '6')]
    ipv6: bool,
    /// Global cap on probes per second.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    rate: u32,
    /// Cap on probes per second toward any one destination.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    per_dst_rate: u32,
    /// Traces probing at once.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    window: u32,
    /// Probes per hop before it counts as silent.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=10))]
    attempts: u8,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=255))]
    first_ttl: u8,
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u8).range(1..=255))]
    max_ttl: u8,
    /// How long to wait for each probe's reply.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    wait_ms: u64,
    /// Stop after this many consecutive silent hops.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u8).range(1..=255))]
    gap_limit: u8,
    /// Lift the deny-list for a range (repeatable), e.g. --allow 10.0.0.0/8.
    #[arg(long = "allow", value_name = "CIDR")]
    allow: Vec<IpNet>,
    /// Read targets from a file, one per line ('#' starts a comment).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// Print a traceroute-style table instead of JSON lines.
    #[arg(long, conflicts_with = "json")]
    text: bool,
    /// JSON lines on stdout (the default).
    #[arg(long)]
    json: bool,
    /// Target addresses or host names.
    targets: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,tracemesh_agent=info".into()),
        )
        .init();
    let outcome = match cli.command {
        Command::Trace(args) => trace(args),
        Command::Run(args) => run(args),
        Command::Alias(args) => alias(args),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: RunArgs) -> Result<ExitCode> {
    let file: FileConfig = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read config {}", p.display()))?;
            toml::from_str(&text).map_err(|e| {
                anyhow::anyhow!(
                    "config {}: {}",
                    p.display(),
                    e.message().lines().next().unwrap_or("invalid")
                )
            })?
        }
        None => FileConfig::default(),
    };
    let state_dir = args
        .state
        .or(file.state)
        .context("--state DIR is required (or `state` in --config)")?;
    let mut allow = file.allow;
    allow.extend(args.allow);
    let cfg = tracemesh_agent::session::RunConfig {
        state_dir,
        coordinator: args.coordinator.or(file.coordinator),
        token: args.token.or(file.token),
        allow,
        rate_pps: args.rate.or(file.rate).unwrap_or(1000).clamp(1, 1_000_000),
        per_dst_pps: args
            .per_dst_rate
            .or(file.per_dst_rate)
            .unwrap_or(100)
            .clamp(1, 1_000_000),
        mesh_listen: args
            .mesh_listen
            .or(file.mesh_listen)
            .map(|a| parse_mesh_listen(&a))
            .transpose()?,
        mesh_advertise: args.mesh_advertise.or(file.mesh_advertise),
        clock_skew_ns: args.test_clock_skew_ms.saturating_mul(1_000_000),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let metrics = args.metrics.or(file.metrics);
    rt.block_on(async {
        if let Some(addr) = metrics {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for metrics on {addr}"))?;
            tracing::info!(addr = %l.local_addr()?, "metrics at /metrics");
            tokio::spawn(tracemesh_proto::metrics::serve(
                l,
                tracemesh_agent::metrics::render,
            ));
        }
        tokio::select! {
            r = tracemesh_agent::session::run(cfg) => r.map_err(anyhow::Error::from),
            _ = shutdown_signal() => {
                tracing::info!("stopping; results not yet acknowledged stay in the spool");
                Ok(())
            }
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// SIGINT from a terminal or SIGTERM from systemd.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Each target as (destination, source address toward it); those that cannot be
/// resolved or routed are reported on stderr and counted in `failures`.
fn routed_targets(
    targets: &[String],
    v6_only: bool,
    failures: &mut usize,
) -> Vec<(IpAddr, IpAddr)> {
    let mut out = Vec::with_capacity(targets.len());
    for t in targets {
        let dst = match resolve(t, v6_only) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("error: {e:#}");
                *failures += 1;
                continue;
            }
        };
        match driver::source_for(dst) {
            Ok(src) => out.push((dst, src)),
            Err(e) => {
                eprintln!("error: no route to {dst}: {e}");
                *failures += 1;
            }
        }
    }
    out
}

fn resolve(target: &str, v6_only: bool) -> Result<IpAddr> {
    if let Ok(ip) = target.parse::<IpAddr>() {
        if v6_only && ip.is_ipv4() {
            bail!("-6 was given but target {ip} is IPv4");
        }
        return Ok(ip);
    }
    let addrs: Vec<IpAddr> = (target, 0)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve target {target:?}"))?
        .map(|a| a.ip())
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv6() == v6_only)
        .copied()
        .with_context(|| {
            format!(
                "target {target:?} has no IPv{} address",
                if v6_only { 6 } else { 4 }
            )
        })
}

fn read_targets(args: &TraceArgs) -> Result<Vec<String>> {
    let mut targets = args.targets.clone();
    if let Some(path) = &args.file {
        let f = std::fs::File::open(path)
            .with_context(|| format!("cannot open target file {}", path.display()))?;
        for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line =
                line.with_context(|| format!("reading {} line {}", path.display(), n + 1))?;
            let t = line.split('#').next().unwrap_or("").trim();
            if !t.is_empty() {
                targets.push(t.to_string());
            }
        }
    }
    if targets.is_empty() {
        bail!("no targets: give addresses or -f FILE");
    }
    Ok(targets)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn parse_confidence(s: &str) -> Result<u8, String> {
    match s {
        "95" => Ok(95),
        "99" => Ok(99),
        _ => Err(format!("confidence {s:?}: expected 95 or 99")),
    }
}

fn trace(args: TraceArgs) -> Result<ExitCode> {
    if args.mda {
        return mda_cli::trace_mda(&args);
    }
    let proto = args.proto.unwrap_or(Proto::Icmp);
    let targets = read_targets(&args)?;
    let params = TraceParams {
        proto,
        first_ttl: args.first_ttl,
        max_ttl: args.max_ttl,
        attempts: args.attempts,
        wait: Duration::from_millis(args.wait_ms),
        gap_limit: args.gap_limit,
    };
    if args.first_ttl > args.max_ttl {
        bail!(
            "--first-ttl {} is above --max-ttl {}",
            args.first_ttl,
            args.max_ttl
        );
    }
    let cookie = engine_cookie();
    let cfg = EngineConfig {
        rate_pps: args.rate,
        per_dst_pps: args.per_dst_rate,
        window: args.window as usize,
        cookie,
        denylist: DenyList::with_allowed(args.allow.iter().copied()),
    };
    let mut engine = Engine::new(cfg, Instant::now(), unix_now());
    let mut needs = Needs::default();
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut failures = 0usize;
    let mut queued = 0usize;
    for (dst, src) in routed_targets(&targets, args.ipv6, &mut failures) {
        match engine.add(TraceRequest { dst, src, params }) {
            Ok(()) => {
                needs.add(dst, proto);
                queued += 1;
            }
            Err(RequestError::Denied(d)) => {
                eprintln!("error: {d}");
                failures += 1;
                let denied = TraceResult {
                    dst,
                    src: Some(src),
                    proto,
                    stop_reason: StopReason::Denied,
                    start: unix_now(),
                    hops: vec![],
                    probes_sent: 0,
                };
                emit(&mut out, &denied, args.text).map_err(anyhow::Error::msg)?;
            }
            Err(e) => {
                eprintln!("error: {dst}: {e}");
                failures += 1;
            }
        }
    }
    if queued > 0 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the runtime")?;
        let total = queued;
        let t0 = Instant::now();
        let stats = rt.block_on(driver::run(
            &mut engine,
            &needs,
            |r| emit(&mut out, &r, args.text),
            |e, elapsed| {
                tracing::info!(
                    done = e.stats().traces_done,
                    total,
                    active = e.active(),
                    probes = e.stats().probes_sent,
                    pps = (e.stats().probes_sent as f64 / elapsed.as_secs_f64()) as u64,
                    "tracing"
                );
            },
        ))?;
        let secs = t0.elapsed().as_secs_f64();
        tracing::info!(
            traces = stats.traces_done,
            probes = stats.probes_sent,
            matched = stats.replies_matched,
            seconds = format!("{secs:.3}"),
            pps = (stats.probes_sent as f64 / secs) as u64,
            "done"
        );
    }
    out.flush().context("writing results")?;
    Ok(if failures > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn emit(out: &mut impl Write, r: &TraceResult, text: bool) -> Result<(), String> {
    let res = if text {
        write_text(out, r)
    } else {
        serde_json::to_writer(&mut *out, r)
            .map_err(std::io::Error::other)
            .and_then(|()| out.write_all(b"\n"))
    };
    res.map_err(|e| format!("writing results: {e}"))
}

fn write_text(out: &mut impl Write, r: &TraceResult) -> std::io::Result<()> {
    let src = r.src.map_or_else(|| "?".to_string(), |s| s.to_string());
    writeln!(
        out,
        "trace to {} from {} ({}): {:?}, {} probes",
        r.dst,
        src,
        r.proto.as_str(),
        r.stop_reason,
        r.probes_sent
    )?;
    for h in &r.hops {
        match (h.addr, h.rtt_ms) {
            (Some(a), Some(rtt)) => {
                write!(out, "{:3}  {a}  {rtt:.3} ms", h.ttl)?;
                if !h.mpls.is_empty() {
                    let labels: Vec<String> = h.mpls.iter().map(|l| l.label.to_string()).collect();
                    write!(out, "  [MPLS {}]", labels.join(","))?;
                }
                writeln!(out)?;
            }
            _ => writeln!(out, "{:3}  *", h.ttl)?,
        }
    }
    Ok(())
}

fn engine_cookie() -> u16 {
    // TRACEMESH_COOKIE pins it, for reproducible runs: the cookie picks the source ports
    // (hence the branches) of --mda's flows.
    if let Some(c) = std::env::var("TRACEMESH_COOKIE")
        .ok()
        .and_then(|v| v.parse::<u16>().ok())
    {
        return c;
    }
    // Distinct per process, so two agents (or scamper) on one host ignore each other.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (std::process::id() as u16) ^ (nanos as u16) ^ ((nanos >> 16) as u16)
}

fn alias(args: AliasArgs) -> Result<ExitCode> {
    let denylist = DenyList::with_allowed(args.allow.iter().copied());
    let mut failures = 0usize;
    let mut targets = Vec::new();
    for a in &args.addrs {
        let dst: IpAddr = a
            .parse()
            .map_err(|_| anyhow::anyhow!("{a:?} is not an IP address"))?;
        if let Err(d) = denylist.check(dst) {
            eprintln!("error: {d}");
            failures += 1;
            continue;
        }
        match driver::source_for(dst) {
            Ok(src) => targets.push((dst, src)),
            Err(e) => {
                eprintln!("error: no route to {dst}: {e}");
                failures += 1;
            }
        }
    }
    if targets.is_empty() {
        bail!("no address left to probe");
    }
    let cfg = AliasConfig {
        method: args.method,
        rate_pps: args.rate,
        rounds: args.rounds,
        spacing: Duration::from_millis(args.spacing_ms),
        wait: Duration::from_millis(args.wait_ms),
        mercator_attempts: args.attempts,
        cookie: engine_cookie(),
        denylist,
        ..AliasConfig::default()
    };
    let mut prober = AliasProber::new(cfg, &targets, Instant::now())?;
    let mut needs = Needs::default();
    for (dst, _) in &targets {
        needs.add(*dst, Proto::Icmp);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(driver::run_alias(&mut prober, &needs))?;
    let report = prober.report();
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    if args.json {
        serde_json::to_writer(&mut out, &report).context("writing the report")?;
        writeln!(out).context("writing the report")?;
    } else {
        write_alias_text(&mut out, &report, args.method).context("writing the report")?;
    }
    out.flush().context("writing the report")?;
    Ok(if failures > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn write_alias_text(out: &mut impl Write, r: &AliasReport, method: Method) -> std::io::Result<()> {
    writeln!(
        out,
        "alias resolution ({}) of {} addresses: {} probes",
        method.as_str(),
        r.probes_per_addr.len(),
        r.probes_sent
    )?;
    if r.groups.is_empty() {
        writeln!(out, "no aliases found")?;
    }
    for g in &r.groups {
        let addrs: Vec<String> = g.addrs.iter().map(ToString::to_string).collect();
        let why = match &g.evidence {
            Evidence::Mercator { answers } => answers
                .iter()
                .filter(|(x, y)| x != y)
                .map(|(x, y)| format!("{x} answered from {y}"))
                .collect::<Vec<_>>()
                .join(", "),
            Evidence::IpId {
                samples,
                velocity_per_s,
                ..
            } => {
                let n: Vec<String> = samples.values().map(ToString::to_string).collect();
                let v = velocity_per_s.values().copied().fold(0.0, f64::max);
                format!("one IP-ID counter, {} samples, {v:.1} ids/s", n.join("+"))
            }
        };
        writeln!(out, "{:<9} {}  ({why})", g.method.as_str(), addrs.join(" "))?;
    }
    for u in &r.unusable {
        let reason = serde_json::to_value(u.reason)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        writeln!(out, "unusable  {} ({})", u.addr, reason.replace('_', " "))?;
    }
    let per: Vec<String> = r
        .probes_per_addr
        .iter()
        .map(|(a, n)| format!("{a} {n}"))
        .collect();
    writeln!(out, "probes per address: {}", per.join(", "))
}

/// `IP:PORT`, `[IPv6]:PORT`, `IP` or `:PORT`; the port defaults to the mesh's.
fn parse_mesh_listen(a: &str) -> Result<std::net::SocketAddr> {
    use std::net::{Ipv4Addr, SocketAddr};
    let port = tracemesh_agent::mesh::DEFAULT_PORT;
    if let Ok(sa) = a.parse::<SocketAddr>() {
        return Ok(sa);
    }
    if let Ok(ip) = a.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    if let Some(p) = a.strip_prefix(':')
        && let Ok(p) = p.parse::<u16>()
    {
        return Ok(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), p));
    }
    bail!("--mesh-listen {a:?}: expected IP:PORT, IP or :PORT")
}
