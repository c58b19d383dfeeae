//! Every command, subcommand and flag of `tracemesh`, as clap types.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tracemesh_proto::time::parse_rfc3339_ns;

use super::parse;

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
    /// Identity bundle (client cert, CA cert, key; PEM) for --coordinator: the admin's,
    /// or one from `tracemesh identity create`.
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
    /// Alias sets (addresses of one router) merged over every stored alias result.
    Aliases(AliasesArgs),
    /// One-way delays agents measured between each other (mesh campaigns).
    Mesh(MeshArgs),
    /// Multipath traces of campaigns created with --mda (every interface and link).
    Mda(MdaArgs),
    /// Find diversions through an adversary's networks in stored traces (the detector runs
    /// here, over the traces and vantages fetched from the coordinator).
    Diversions(DiversionsArgs),
    /// Write the diversions as one self-contained HTML page (world map, paths, ingress
    /// regions, timelines, hop tables) that opens offline.
    Report(ReportArgs),
    /// Deploy agents on cloud VMs.
    #[command(subcommand)]
    Deploy(DeployCmd),
    /// Import RIPE Atlas or scamper traceroutes into the store of --data (the
    /// coordinator must be stopped), as traces from vantages `atlas:<prb_id>` and
    /// `scamper:<monitor>`; stored once however often imported.
    Import(ImportArgs),
    /// Export stored traces from the running coordinator as warts, scamper JSON, Atlas
    /// JSON or Hive-partitioned Parquet.
    Export(ExportArgs),
    /// Client identities with roles (admin, operator, reader): create, list, revoke.
    #[command(subcommand)]
    Identity(IdentityCmd),
    /// One agent: revoke.
    #[command(subcommand)]
    Agent(AgentCmd),
    /// Archive, then delete, stored traces older than a window (the store of --data,
    /// with the coordinator stopped; a running one sweeps itself with serve --retain).
    Retain(RetainArgs),
}

#[derive(Debug, Args)]
pub struct RetainArgs {
    /// Traces that started longer ago than this go (e.g. 30d, 12h).
    #[arg(long, value_name = "DURATION", value_parser = parse::duration_s)]
    pub older_than: u32,
    /// Where they go first: Parquet, DIR/date=YYYY-MM-DD/part-*.parquet.
    #[arg(long, value_name = "DIR")]
    pub archive: PathBuf,
    /// Then rewrite the store into fresh files, giving the freed space back to the
    /// file system (sled only reuses it otherwise).
    #[arg(long)]
    pub compact: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Input format.
    #[arg(long, value_parser = ["atlas", "scamper-json", "warts"])]
    pub format: String,
    /// Atlas probe objects (the probe archive JSON, an API `results` list, or an
    /// export's OUT.probes.json): country, AS and position of the `atlas:` vantages.
    #[arg(long, value_name = "FILE")]
    pub atlas_probes: Option<PathBuf>,
    /// Print the counts as JSON.
    #[arg(long)]
    pub json: bool,
    /// Input files (plain, .gz or .bz2; `-` for stdin).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Output format.
    #[arg(long, value_parser = ["warts", "scamper-json", "atlas", "parquet"])]
    pub format: String,
    /// Output file (`-`: stdout, JSON formats only); for parquet a directory, filled
    /// with date=YYYY-MM-DD/part-0.parquet. An Atlas export also writes
    /// OUT.probes.json, the vantages as Atlas probe objects.
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
    #[arg(long)]
    pub campaign: Option<String>,
    /// Only traces from this vantage.
    #[arg(long)]
    pub vantage: Option<String>,
    /// Only traces started at or after this RFC 3339 time.
    #[arg(long, value_parser = parse_rfc3339_ns, value_name = "RFC3339")]
    pub since: Option<i64>,
    /// Only traces started at or before this RFC 3339 time.
    #[arg(long, value_parser = parse_rfc3339_ns, value_name = "RFC3339")]
    pub until: Option<i64>,
    /// Parquet: with a prefix table (--pfx2as/--mrt), every hop also gets its origin AS.
    #[command(flatten)]
    pub annotation: AnnotationArgs,
}

#[derive(Debug, Subcommand)]
pub enum IdentityCmd {
    /// Make a key here (never sent anywhere) and have the coordinator certify it with a
    /// role; writes OUT/NAME.pem (certificate, CA, key; mode 0600) for --identity.
    Create {
        #[arg(long, value_parser = ["admin", "operator", "reader"])]
        role: String,
        /// Identity name ([A-Za-z0-9._-], at most 64).
        #[arg(long)]
        name: String,
        /// Directory for NAME.pem (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// List issued identities and whether they are revoked.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Refuse an identity's certificate from now on (also after restarts) and end its
    /// open streams.
    Revoke {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// Refuse an agent's certificate from now on (also after restarts) and end its
    /// session at once; its stored results stay. A new token re-enrols the name.
    Revoke {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

/// Quotas and limits of `serve` (each party that goes over gets a clear status).
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Sustained trace uploads per agent, per second (0 = unlimited).
    #[arg(long, default_value_t = 2000.0, value_name = "N")]
    pub agent_rate: f64,
    /// Uploads an agent may make at once above --agent-rate.
    #[arg(long, default_value_t = 20000.0, value_name = "N")]
    pub agent_burst: f64,
    /// Largest batch of results in one upload message.
    #[arg(long, default_value_t = 10000, value_name = "N")]
    pub max_batch: usize,
    /// Largest gRPC message a client may send, MiB.
    #[arg(long, default_value_t = 32, value_name = "MIB", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_message_mib: u32,
    /// Open query, export and subscription streams per client identity, over all its
    /// connections; one more is refused with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams: u32,
    /// Live campaigns per operator identity (0 = no cap; admins are not capped).
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub operator_campaigns: usize,
    /// Targets over an operator's live campaigns (0 = no cap).
    #[arg(long, default_value_t = 100000, value_name = "N")]
    pub operator_targets: usize,
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
    pub annotation: AnnotationArgs,
    /// Print `{"diversions": [...], "incidents": [...]}`.
    #[arg(long)]
    pub json: bool,
    /// Also the traces retention archived there (serve --retain, tracemesh retain):
    /// detection over the archive and the live store together.
    #[arg(long, value_name = "DIR")]
    pub archive: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Write the HTML report to this file.
    #[arg(long, value_name = "FILE")]
    pub html: PathBuf,
    /// The page's title.
    #[arg(long, default_value = "tracemesh: traffic diversions")]
    pub title: String,
    /// Also print the map view the page draws, as JSON.
    #[arg(long)]
    pub json: bool,
    /// Only this campaign's traces (default: all stored traces).
    #[arg(long)]
    pub campaign: Option<String>,
    /// Adversary AS numbers (repeatable or comma-separated), as for `diversions`.
    #[arg(long = "adversary", value_parser = parse::asn, value_name = "ASN", value_delimiter = ',')]
    pub adversary: Vec<u32>,
    /// Treat every AS registered in this country as the adversary's too (repeatable).
    #[arg(long = "adversary-country", value_name = "CC", value_delimiter = ',')]
    pub adversary_countries: Vec<String>,
    #[command(flatten)]
    pub annotation: AnnotationArgs,
}

impl ReportArgs {
    /// The same detection `diversions` runs.
    pub fn detect(&self) -> DiversionsArgs {
        DiversionsArgs {
            campaign: self.campaign.clone(),
            adversary: self.adversary.clone(),
            adversary_countries: self.adversary_countries.clone(),
            annotation: self.annotation.clone(),
            json: false,
            archive: None,
        }
    }
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
    pub annotation: AnnotationArgs,
    /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP, no authentication:
    /// bind loopback or a monitoring network).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Serve the live view (the HTML report of live detection, updated over server-sent
    /// events) at http://ADDR/. Read-only; needs --adversary. Beyond loopback it needs
    /// --http-token-file.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// File holding the token the live view requires (`?token=` or `Authorization:
    /// Bearer`); required when --http is not a loopback address.
    #[arg(long, value_name = "FILE", requires = "http")]
    pub http_token_file: Option<PathBuf>,
    /// With --adversary: how often the detector's state is saved in the store (and at
    /// shutdown), so a restart replays only the traces stored after it.
    #[arg(long, value_name = "DURATION", value_parser = parse::duration_s, default_value = "10m")]
    pub checkpoint_every: u32,
    /// Archive (into --retain-archive), then delete, traces older than this, in the
    /// background every --retain-every (e.g. 30d).
    #[arg(long, value_name = "DURATION", value_parser = parse::duration_s, requires = "retain_archive")]
    pub retain: Option<u32>,
    /// Where --retain archives: Parquet, DIR/date=YYYY-MM-DD/part-*.parquet.
    #[arg(long, value_name = "DIR", requires = "retain")]
    pub retain_archive: Option<PathBuf>,
    #[arg(long, value_name = "DURATION", value_parser = parse::duration_s, default_value = "1h")]
    pub retain_every: u32,
    #[command(flatten)]
    pub limits: LimitArgs,
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
    #[arg(long, required_unless_present = "mesh", num_args = 1.., value_name = "ADDR|CIDR|@FILE")]
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
    #[arg(long, value_parser = parse_rfc3339_ns, value_name = "RFC3339")]
    pub start_at: Option<i64>,
    /// Resolve aliases among the targets (router addresses) instead of tracing to them:
    /// mercator, ipid or both.
    #[arg(long, value_name = "METHOD", value_parser = ["mercator", "ipid", "both"])]
    pub alias: Option<String>,
    /// With --alias: IP-ID echo probes per address (0 = the agent's default, 8).
    #[arg(long, default_value_t = 0, requires = "alias", value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub alias_rounds: u32,
    /// Agents measure each other too: each round, a train of timestamped QUIC datagrams
    /// each way (one-way delay, loss) and a traceroute from both ends. Pairs every selected
    /// agent that runs a mesh endpoint with every other (or with --mesh-peers).
    #[arg(long, conflicts_with = "alias")]
    pub mesh: bool,
    /// With --mesh: the agents the selected ones pair with (same selectors as --agents).
    #[arg(long, num_args = 1.., requires = "mesh")]
    pub mesh_peers: Vec<String>,
    /// With --mesh: datagrams per train (0 = the agent's default, 10).
    #[arg(long, default_value_t = 0, requires = "mesh", value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub mesh_train: u32,
    /// With --mesh: ms between datagrams of a train (0 = the agent's default, 10).
    #[arg(long, default_value_t = 0, requires = "mesh", value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub mesh_spacing_ms: u32,
    /// Multipath rounds: every --mda-every-th round (rounds 0, N, 2N, ...) each agent also
    /// traces each target with MDA-Lite, after the round's Paris traces (`tracemesh mda`
    /// reads them back; the detector learns every branch as a normal path).
    #[arg(long, conflicts_with = "alias")]
    pub mda: bool,
    /// With --mda: every Nth round is an MDA round (1: every round).
    #[arg(long, default_value_t = 1, requires = "mda", value_parser = clap::value_parser!(u32).range(1..))]
    pub mda_every: u32,
    /// With --mda: the stopping rule's confidence per hop, 95 or 99.
    #[arg(long, default_value_t = 95, requires = "mda", value_parser = super::mda::parse_confidence)]
    pub confidence: u32,
    /// With --mda: most probes per target (0 = the agent's default, 5000).
    #[arg(long, default_value_t = 0, requires = "mda", value_parser = clap::value_parser!(u32).range(0..=65534))]
    pub mda_budget: u32,
    #[arg(long)]
    pub json: bool,
}

/// `tracemesh mda`: stored multipath traces.
#[derive(Debug, Args)]
pub struct MdaArgs {
    /// Only traces of this campaign.
    #[arg(long)]
    pub campaign: Option<String>,
    /// Only traces from this vantage.
    #[arg(long)]
    pub vantage: Option<String>,
    /// Only traces to this address.
    #[arg(long)]
    pub dst: Option<String>,
    /// One JSON line per trace (the agent's `trace --mda` fields, plus campaign, round,
    /// vantage); without it, the diamonds drawn.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct MeshArgs {
    /// Only samples of this campaign.
    #[arg(long)]
    pub campaign: Option<String>,
    /// Only the direction from this agent.
    #[arg(long)]
    pub src: Option<String>,
    /// Only the direction toward this agent.
    #[arg(long)]
    pub dst: Option<String>,
    /// Keep streaming new samples as agents report them.
    #[arg(long)]
    pub follow: bool,
    /// JSON lines: one object per src, dst and round (see docs/formats.md).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AliasesArgs {
    /// Only results of this campaign.
    #[arg(long)]
    pub campaign: Option<String>,
    /// Print JSON: {"aliases": [{"addrs", "evidence", "first_seen", "last_seen"}]}.
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
    #[arg(long, value_parser = parse_rfc3339_ns, value_name = "RFC3339")]
    pub since: Option<i64>,
    /// Only traces started at or before this RFC 3339 time.
    #[arg(long, value_parser = parse_rfc3339_ns, value_name = "RFC3339")]
    pub until: Option<i64>,
    /// At most this many traces (0 = all).
    #[arg(long, default_value_t = 0)]
    pub limit: u32,
    /// JSON lines, one trace per line.
    #[arg(long)]
    pub json: bool,
    /// With any of these, every hop also gets its AS, AS name, country and exchange.
    #[command(flatten)]
    pub annotation: AnnotationArgs,
}

#[derive(Debug, Clone, Default, Args)]
pub struct AnnotationArgs {
    /// Prefix-to-AS table (CAIDA pfx2as or pyasn ipasn; plain, .gz or .bz2; repeatable;
    /// later files win).
    #[arg(long = "pfx2as", value_name = "FILE")]
    pub pfx2as: Vec<PathBuf>,
    /// MRT RIB dump (TABLE_DUMP_V2 from RouteViews or RIS; plain, .gz or .bz2;
    /// repeatable): origins from the AS paths. A damaged file is reported with the byte
    /// offset and what was read before the damage is kept.
    #[arg(long = "mrt", value_name = "FILE")]
    pub mrt: Vec<PathBuf>,
    /// AS names and countries, pyasn's asnames JSON.
    #[arg(long, value_name = "FILE")]
    pub asnames: Option<PathBuf>,
    /// AS organisations and countries, CAIDA as2org text (fills ASes --asnames lacks).
    #[arg(long, value_name = "FILE")]
    pub as2org: Option<PathBuf>,
    /// Directory with a PeeringDB dump: files ending in ix.json, ixlan.json and
    /// ixpfx.json. Gives exchange LAN prefixes and exchange cities.
    #[arg(long, value_name = "DIR")]
    pub peeringdb: Option<PathBuf>,
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

    #[test]
    fn report_takes_the_detection_flags_and_a_file() {
        let cli = Cli::try_parse_from([
            "tracemesh",
            "report",
            "--html",
            "r.html",
            "--adversary",
            "4134",
            "--pfx2as",
            "t.txt",
            "--json",
        ])
        .unwrap();
        let Command::Report(a) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(a.html, PathBuf::from("r.html"));
        assert!(a.json);
        let d = a.detect();
        assert_eq!(d.adversary, vec![4134]);
        assert_eq!(d.annotation.pfx2as, vec![PathBuf::from("t.txt")]);
        assert!(!d.json);
    }

    #[test]
    fn every_subcommand_is_well_formed() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
