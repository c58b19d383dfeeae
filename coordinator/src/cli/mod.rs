//! The `tracemesh` command line: `serve` runs the coordinator; every other subcommand is
//! a client of a running coordinator's ConsumerService, found through `--data DIR` (the
//! address file and admin identity `serve` writes there) or `--coordinator` +
//! `--identity` for a remote one.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use tonic::transport::Channel;
use tracemesh::server::{self, DataDir, ServeConfig};
use tracemesh_proto::v1;
use tracemesh_proto::v1::consumer_service_client::ConsumerServiceClient;

pub mod annot;
pub mod diversions;
pub mod json;
pub mod live;
pub mod parse;

#[derive(Debug, Parser)]
#[command(
    name = "tracemesh",
    version,
    about = "tracemesh coordinator and CLI: distributed, synchronised traceroutes"
)]
pub struct Cli {
    /// Coordinator data directory (CA, store, admin identity, address file).
    #[arg(
        long,
        global = true,
        env = "TRACEMESH_DATA",
        default_value = "./tracemesh-data"
    )]
    pub data: PathBuf,
    /// Remote coordinator HOST:PORT (with --identity) instead of the one in --data.
    #[arg(long, global = true, value_name = "HOST:PORT")]
    pub coordinator: Option<String>,
    /// Admin identity bundle (client cert, CA cert, key; PEM) for --coordinator.
    #[arg(long, global = true, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the coordinator (gRPC with mutual TLS) until SIGINT/SIGTERM.
    Serve(ServeArgs),
    /// Enrolment tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Campaigns: create, list, show, cancel.
    #[command(subcommand)]
    Campaign(CampaignCmd),
    /// List enrolled agents and whether they are connected.
    Agents {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Query stored traces.
    Traces(TracesArgs),
    /// Find diversions through an adversary's networks in stored traces (the detector runs
    /// here, over the traces and vantages fetched from the coordinator).
    Diversions(DiversionsArgs),
    /// Deploy agents on cloud VMs.
    #[command(subcommand)]
    Deploy(DeployCmd),
}

#[derive(Debug, Subcommand)]
pub enum DeployCmd {
    /// Write one cloud-init user-data file per inventory agent (OUT/NAME.yaml), each with
    /// a fresh one-time token minted by the running coordinator.
    Render(DeployRenderArgs),
}

#[derive(Debug, Args)]
pub struct DeployRenderArgs {
    /// Inventory (TOML): `coordinator = "HOST:PORT"` and one [[agent]] per VM.
    #[arg(long, value_name = "FILE")]
    pub inventory: PathBuf,
    /// Directory for the user-data files (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Where VMs download the agent binary (with --binary-sha256).
    #[arg(
        long,
        value_name = "URL",
        requires = "binary_sha256",
        conflicts_with = "embed_binary"
    )]
    pub binary_url: Option<String>,
    /// SHA-256 of the binary at --binary-url; anything else is refused on the VM.
    #[arg(long, value_name = "HEX", requires = "binary_url")]
    pub binary_sha256: Option<String>,
    /// Carry this agent binary inside the user-data (gzip + base64); for NoCloud seeds and
    /// providers without a small user-data cap.
    #[arg(long, value_name = "PATH")]
    pub embed_binary: Option<PathBuf>,
    /// Token validity, e.g. 30m, 24h, 7d: the VMs must boot within it.
    #[arg(long, default_value = "24h", value_parser = parse::duration_s)]
    pub ttl: u32,
}

#[derive(Debug, Args)]
pub struct DiversionsArgs {
    /// Only this campaign's traces (default: all stored traces).
    #[arg(long)]
    pub campaign: Option<String>,
    /// Adversary AS numbers (repeatable or comma-separated: 4134,4809).
    #[arg(long = "adversary", value_parser = parse::asn, value_name = "ASN", value_delimiter = ',')]
    pub adversary: Vec<u32>,
    /// Treat every AS registered in this country as the adversary's too (repeatable).
    #[arg(long = "adversary-country", value_name = "CC", value_delimiter = ',')]
    pub adversary_countries: Vec<String>,
    #[command(flatten)]
    pub annotation: annot::AnnotationArgs,
    /// Print `{"diversions": [...], "incidents": [...]}`.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on, e.g. 0.0.0.0:7443 (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// HOST:PORT agents should dial, written into tokens (default: the listen address).
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// Run the detector live against this adversary AS (repeatable); diversions stream to
    /// SubscribeDiversions. Needs --pfx2as.
    #[arg(long = "adversary", value_parser = parse::asn, value_name = "ASN", value_delimiter = ',')]
    pub adversary: Vec<u32>,
    /// Treat ASes registered in this country as the adversary's too (repeatable).
    #[arg(long = "adversary-country", value_name = "CC", value_delimiter = ',')]
    pub adversary_countries: Vec<String>,
    /// Annotation for live detection; re-read on SIGHUP (the detector then replays the
    /// stored history with the fresh tables).
    #[command(flatten)]
    pub annotation: annot::AnnotationArgs,
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a one-time enrolment token for an agent; prints the token alone.
    Create(TokenCreateArgs),
}

#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// Agent name ([A-Za-z0-9._-], at most 64).
    #[arg(long)]
    pub name: String,
    /// ISO 3166 alpha-2 country of the vantage.
    #[arg(long, value_name = "CC")]
    pub country: Option<String>,
    #[arg(long)]
    pub city: Option<String>,
    /// Position of the vantage, LAT,LON in degrees.
    #[arg(long, value_name = "LAT,LON", value_parser = parse::loc, allow_hyphen_values = true)]
    pub loc: Option<(f64, f64)>,
    /// AS number of the vantage's network.
    #[arg(long, value_parser = parse::asn)]
    pub asn: Option<u32>,
    /// Free-form tag for selecting agents (repeatable).
    #[arg(long = "tag", value_name = "T")]
    pub tags: Vec<String>,
    /// Validity, e.g. 30m, 24h, 7d.
    #[arg(long, default_value = "24h", value_parser = parse::duration_s)]
    pub ttl: u32,
}

#[derive(Debug, Subcommand)]
pub enum CampaignCmd {
    /// Schedule a campaign; prints its id (or the campaign as JSON with --json).
    Create(CampaignCreateArgs),
    /// List campaigns.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one campaign.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a campaign; agents stop scheduling its rounds.
    Cancel {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct CampaignCreateArgs {
    /// Targets: addresses, CIDR prefixes, or @FILE (one per line).
    #[arg(long, required = true, num_args = 1.., value_name = "ADDR|CIDR|@FILE")]
    pub targets: Vec<String>,
    /// Vantages: all, name:X, country:CC, asn:N, tag:T (OR-ed).
    #[arg(long, num_args = 1.., default_value = "all")]
    pub agents: Vec<String>,
    /// Probe method.
    #[arg(long = "proto", default_value = "icmp", value_parser = ["icmp", "udp", "tcp"])]
    pub proto: String,
    /// Probes per TTL.
    #[arg(long, default_value_t = 3)]
    pub attempts: u32,
    #[arg(long, default_value_t = 30)]
    pub max_ttl: u32,
    /// How long agents wait for late answers, in ms (0 = agent default).
    #[arg(long, default_value_t = 0)]
    pub wait_ms: u32,
    /// Interval between rounds, e.g. 10s, 5m.
    #[arg(long, value_parser = parse::duration_s)]
    pub every: Option<u32>,
    /// Number of rounds.
    #[arg(long, default_value_t = 1)]
    pub rounds: u32,
    /// Start of round 0, RFC 3339 (default: in a few seconds).
    #[arg(long, value_parser = parse::rfc3339_ns, value_name = "RFC3339")]
    pub start_at: Option<i64>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TracesArgs {
    #[arg(long)]
    pub campaign: Option<String>,
    /// Only traces from this vantage (agent name).
    #[arg(long)]
    pub vantage: Option<String>,
    /// Only traces toward this destination address.
    #[arg(long)]
    pub target: Option<String>,
    /// Only traces started at or after this RFC 3339 time.
    #[arg(long, value_parser = parse::rfc3339_ns, value_name = "RFC3339")]
    pub since: Option<i64>,
    /// Only traces started at or before this RFC 3339 time.
    #[arg(long, value_parser = parse::rfc3339_ns, value_name = "RFC3339")]
    pub until: Option<i64>,
    /// At most this many traces (0 = all).
    #[arg(long, default_value_t = 0)]
    pub limit: u32,
    /// JSON lines, one trace per line.
    #[arg(long)]
    pub json: bool,
    /// With any of these, every hop also gets its AS, AS name, country and exchange.
    #[command(flatten)]
    pub annotation: annot::AnnotationArgs,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(a) => serve(cli.data, a).await,
        Command::Token(TokenCmd::Create(a)) => {
            let mut c = connect(&cli.data, cli.coordinator, cli.identity).await?;
            token_create(&mut c, a).await
        }
        Command::Campaign(cmd) => {
            let mut c = connect(&cli.data, cli.coordinator, cli.identity).await?;
            campaign(&mut c, cmd).await
        }
        Command::Agents { json } => {
            let mut c = connect(&cli.data, cli.coordinator, cli.identity).await?;
            agents(&mut c, json).await
        }
        Command::Traces(a) => {
            let mut c = connect(&cli.data, cli.coordinator, cli.identity).await?;
            traces(&mut c, a).await
        }
        Command::Diversions(a) => {
            // Load tables first: a typo in a path should not wait on the network.
            let loaded = diversions::annotation(&a)?;
            let mut c = connect(&cli.data, cli.coordinator, cli.identity).await?;
            diversions::run(&mut c, a, &loaded).await
        }
        Command::Deploy(DeployCmd::Render(a)) => {
            deploy_render(&cli.data, cli.coordinator, cli.identity, a).await
        }
    }
}

async fn deploy_render(
    data: &std::path::Path,
    coordinator: Option<String>,
    identity: Option<PathBuf>,
    a: DeployRenderArgs,
) -> anyhow::Result<()> {
    use tracemesh::deploy::{self, BinarySource, Inventory};
    // Everything local is checked before any token is minted, so a mistake wastes none.
    let text = std::fs::read_to_string(&a.inventory)
        .with_context(|| format!("cannot read inventory {}", a.inventory.display()))?;
    let inv = Inventory::parse(&text, &a.inventory.display().to_string())?;
    let bin = match (&a.binary_url, &a.binary_sha256, &a.embed_binary) {
        (Some(url), Some(sha), None) => BinarySource::url(url, sha)?,
        (None, None, Some(path)) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read agent binary {}", path.display()))?;
            BinarySource::embedded(&bytes)?
        }
        _ => bail!(
            "say how VMs get the agent: --binary-url URL --binary-sha256 HEX, or --embed-binary PATH"
        ),
    };
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let mut c = connect(data, coordinator, identity).await?;
    for agent in &inv.agents {
        let resp = c
            .create_token(deploy::token_request(agent, a.ttl))
            .await
            .map_err(|s| status(&format!("token for {}", agent.name), s))?
            .into_inner();
        let expires = deploy::rfc3339_utc(resp.expires_at_ns.div_euclid(1_000_000_000));
        let doc = deploy::render(&inv, agent, &resp.token, &expires, &bin);
        let path = a.out.join(format!("{}.yaml", agent.name));
        write_secret(&path, doc.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

/// User-data holds a live token: readable by its owner only, from the first byte.
fn write_secret(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

async fn serve(data: PathBuf, a: ServeArgs) -> anyhow::Result<()> {
    let shutdown = async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {},
                        _ = term.recv() => {},
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    };
    let live = if a.adversary.is_empty() && a.adversary_countries.is_empty() {
        None
    } else {
        if !a.annotation.has_origins() {
            bail!("--adversary needs a --pfx2as table or --mrt dump to tell which hops are whose");
        }
        // Loaded now so a bad path fails `serve` at once rather than in the background.
        let loaded = a.annotation.load()?;
        let adversary = tracemesh::detect::Adversary::from_asns(a.adversary.iter().copied())
            .with_countries(&a.adversary_countries);
        Some((adversary, loaded, a.annotation.clone()))
    };
    server::serve_with(
        ServeConfig {
            data,
            listen: a.listen,
            advertise: a.advertise,
        },
        shutdown,
        move |c| {
            if let Some((adversary, loaded, sources)) = live {
                live::spawn(c, adversary, loaded, sources);
            } else {
                // SIGHUP reloads tables; without live detection there are none, and the
                // default action (exit) would surprise an operator.
                tokio::spawn(async {
                    if let Ok(mut hup) =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                    {
                        while hup.recv().await.is_some() {
                            tracing::info!(
                                "SIGHUP: no annotation to reload (serve has no --adversary)"
                            );
                        }
                    }
                });
            }
        },
    )
    .await?;
    Ok(())
}

async fn connect(
    data: &std::path::Path,
    coordinator: Option<String>,
    identity: Option<PathBuf>,
) -> anyhow::Result<ConsumerServiceClient<Channel>> {
    let (addr, identity_path) = match (coordinator, identity) {
        (Some(c), Some(i)) => (c, i),
        (Some(_), None) | (None, Some(_)) => {
            bail!("--coordinator and --identity go together")
        }
        (None, None) => {
            let dd = DataDir(data.to_path_buf());
            let addr_file = dd.addr_file();
            let addr = std::fs::read_to_string(&addr_file).with_context(|| {
                format!(
                    "no running coordinator found in {} (start `tracemesh serve --data {}` or pass --coordinator/--identity)",
                    data.display(),
                    data.display()
                )
            })?;
            (addr.trim().to_string(), dd.admin_identity())
        }
    };
    let bundle = std::fs::read_to_string(&identity_path)
        .with_context(|| format!("cannot read identity {}", identity_path.display()))?;
    Ok(server::client::connect_admin(&addr, &bundle).await?)
}

/// gRPC status → one line the operator can act on.
pub(crate) fn status(what: &str, s: tonic::Status) -> anyhow::Error {
    anyhow!("{what}: {} ({:?})", s.message(), s.code())
}

fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

async fn token_create(
    c: &mut ConsumerServiceClient<Channel>,
    a: TokenCreateArgs,
) -> anyhow::Result<()> {
    let resp = c
        .create_token(v1::CreateTokenRequest {
            metadata: Some(v1::AgentMetadata {
                name: a.name,
                country: a.country.unwrap_or_default(),
                city: a.city.unwrap_or_default(),
                lat: a.loc.map(|l| l.0),
                lon: a.loc.map(|l| l.1),
                asn: a.asn,
                tags: a.tags,
            }),
            ttl_s: a.ttl,
        })
        .await
        .map_err(|s| status("token create", s))?
        .into_inner();
    println!("{}", resp.token);
    Ok(())
}

async fn campaign(c: &mut ConsumerServiceClient<Channel>, cmd: CampaignCmd) -> anyhow::Result<()> {
    match cmd {
        CampaignCmd::Create(a) => {
            let targets = parse::expand_at_files(&a.targets).map_err(|e| anyhow!(e))?;
            if targets.is_empty() {
                bail!("no targets given");
            }
            let agents = parse::expand_at_files(&a.agents).map_err(|e| anyhow!(e))?;
            let proto = v1::ProbeProtocol::from_name(&a.proto)
                .ok_or_else(|| anyhow!("unknown probe method {:?}", a.proto))?;
            if a.rounds > 1 && a.every.is_none() {
                bail!(
                    "--rounds {} needs --every (the interval between rounds)",
                    a.rounds
                );
            }
            let spec = v1::CampaignSpec {
                targets,
                agents,
                method: Some(v1::ProbeMethod {
                    proto: proto as i32,
                    attempts: a.attempts,
                    max_ttl: a.max_ttl,
                    wait_ms: a.wait_ms,
                    flow_id: 0,
                }),
                every_s: a.every.unwrap_or(0),
                rounds: a.rounds,
                start_at_ns: a.start_at.unwrap_or(0),
            };
            let created = c
                .create_campaign(v1::CreateCampaignRequest { spec: Some(spec) })
                .await
                .map_err(|s| status("campaign create", s))?
                .into_inner();
            if a.json {
                print_json(&json::campaign(&created))?;
            } else {
                println!("{}", created.id);
            }
        }
        CampaignCmd::List { json: as_json } => {
            let list = c
                .list_campaigns(v1::ListCampaignsRequest {})
                .await
                .map_err(|s| status("campaign list", s))?
                .into_inner()
                .campaigns;
            if as_json {
                print_json(&serde_json::json!({
                    "campaigns": list.iter().map(json::campaign).collect::<Vec<_>>()
                }))?;
            } else {
                println!(
                    "{:<10} {:<10} {:>7} {:>6} {:>7} {:>8}",
                    "ID", "STATE", "TARGETS", "ROUNDS", "EVERY", "TRACES"
                );
                for cp in &list {
                    let v = json::campaign(cp);
                    println!(
                        "{:<10} {:<10} {:>7} {:>6} {:>6}s {:>8}",
                        cp.id,
                        v["state"].as_str().unwrap_or(""),
                        cp.expanded_targets.len(),
                        cp.spec.as_ref().map(|s| s.rounds).unwrap_or(0),
                        cp.spec.as_ref().map(|s| s.every_s).unwrap_or(0),
                        cp.traces_stored
                    );
                }
            }
        }
        CampaignCmd::Show { id, json: as_json } => {
            let cp = c
                .get_campaign(v1::GetCampaignRequest { id })
                .await
                .map_err(|s| status("campaign show", s))?
                .into_inner();
            let v = json::campaign(&cp);
            if as_json {
                print_json(&v)?;
            } else {
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
        }
        CampaignCmd::Cancel { id, json: as_json } => {
            let cp = c
                .cancel_campaign(v1::CancelCampaignRequest { id })
                .await
                .map_err(|s| status("campaign cancel", s))?
                .into_inner();
            if as_json {
                print_json(&json::campaign(&cp))?;
            } else {
                println!("cancelled {}", cp.id);
            }
        }
    }
    Ok(())
}

async fn agents(c: &mut ConsumerServiceClient<Channel>, as_json: bool) -> anyhow::Result<()> {
    let list = c
        .list_agents(v1::ListAgentsRequest {})
        .await
        .map_err(|s| status("agents", s))?
        .into_inner()
        .agents;
    if as_json {
        return print_json(&serde_json::json!({
            "agents": list.iter().map(json::agent).collect::<Vec<_>>()
        }));
    }
    println!(
        "{:<20} {:<3} {:>8} {:<10} {:>12}",
        "NAME", "CC", "ASN", "CONNECTED", "OFFSET_MS"
    );
    for a in &list {
        let m = a.metadata.clone().unwrap_or_default();
        println!(
            "{:<20} {:<3} {:>8} {:<10} {:>12}",
            m.name,
            m.country,
            m.asn.map(|n| n.to_string()).unwrap_or_default(),
            if a.connected { "yes" } else { "no" },
            a.clock_offset_ns
                .map(|n| format!("{:.3}", n as f64 / 1e6))
                .unwrap_or_default()
        );
    }
    Ok(())
}

async fn traces(c: &mut ConsumerServiceClient<Channel>, a: TracesArgs) -> anyhow::Result<()> {
    if a.campaign.is_none() && a.vantage.is_none() && a.target.is_none() && a.since.is_none() {
        bail!("say which traces: --campaign, --vantage, --target or --since");
    }
    if let Some(t) = &a.target {
        t.parse::<std::net::IpAddr>()
            .map_err(|_| anyhow!("invalid --target {t:?}: expected an IP address"))?;
    }
    let annot = if a.annotation.is_empty() {
        None
    } else {
        Some(a.annotation.load()?.annot)
    };
    let mut stream = c
        .query_traces(v1::QueryTracesRequest {
            campaign_id: a.campaign,
            vantage: a.vantage,
            dst: a.target,
            since_ns: a.since,
            until_ns: a.until,
            limit: a.limit,
        })
        .await
        .map_err(|s| status("traces", s))?
        .into_inner();
    let mut out = std::io::stdout().lock();
    while let Some(t) = stream.message().await.map_err(|s| status("traces", s))? {
        if a.json {
            let mut v = json::trace(&t);
            if let (Some(annot), Some(hops)) = (&annot, v["hops"].as_array_mut()) {
                for h in hops {
                    annot::annotate_hop(annot, h);
                }
            }
            serde_json::to_writer(&mut out, &v)?;
            writeln!(out)?;
        } else {
            let path: Vec<String> = t
                .hops
                .iter()
                .map(|h| {
                    let addr = h.addr.clone().unwrap_or_else(|| "*".into());
                    let asn = annot
                        .as_ref()
                        .and_then(|an| an.asn(h.addr.as_deref()?.parse().ok()?));
                    match asn {
                        Some(n) => format!("{addr}[AS{n}]"),
                        None => addr,
                    }
                })
                .collect();
            writeln!(
                out,
                "{} r{} {} -> {}: {}",
                t.campaign_id,
                t.round,
                t.vantage,
                t.dst,
                path.join(" ")
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adversaries_take_lists_and_repeats() {
        let cli = Cli::try_parse_from([
            "tracemesh",
            "diversions",
            "--adversary",
            "4134,AS4809",
            "--adversary",
            "9808",
            "--adversary-country",
            "CN,ru",
            "--pfx2as",
            "t.txt",
        ])
        .unwrap();
        let Command::Diversions(a) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(a.adversary, vec![4134, 4809, 9808]);
        assert_eq!(a.adversary_countries, vec!["CN", "ru"]);
        assert_eq!(a.annotation.pfx2as, vec![PathBuf::from("t.txt")]);
        let cli = Cli::try_parse_from([
            "tracemesh",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--adversary",
            "4134,4809",
            "--mrt",
            "rib.bz2",
            "--peeringdb",
            "pdb",
        ])
        .unwrap();
        let Command::Serve(a) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(a.adversary, vec![4134, 4809]);
        assert_eq!(a.annotation.mrt, vec![PathBuf::from("rib.bz2")]);
        assert_eq!(a.annotation.peeringdb, Some(PathBuf::from("pdb")));
    }
}
