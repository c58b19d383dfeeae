//! `tracemesh-lab`: check scenarios, run the emulated internet, run a whole lab.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use tracemesh_lab::net::{Emulator, Topology};
use tracemesh_lab::run::{self, RunOptions};
use tracemesh_lab::scenario::World;
use tracemesh_lab::scenario::route::Hop;

#[derive(Parser, Debug)]
#[command(
    name = "tracemesh-lab",
    version,
    about = "The tracemesh lab: an emulated internet for real agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

// Parsed once at start; boxing `Run`'s options would only make its match harder to read.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Cmd {
    /// Validate a scenario and print its expected paths.
    Check {
        scenario: PathBuf,
        /// Seconds after campaign start (default: 0 and every event edge).
        #[arg(long)]
        at: Option<f64>,
        #[arg(long)]
        json: bool,
    },
    /// Build the scenario's namespaces and run the emulator (poke at it with
    /// `ip netns exec NAME ...`); Ctrl-C tears it down.
    Emulate {
        scenario: PathBuf,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 600.0)]
        duration: f64,
    },
    /// The whole lab: namespaces, emulator, the real coordinator and one real agent per
    /// vantage, the scenario's campaign; writes lab.json, traces.jsonl, diversions.json
    /// diversions.txt and report.html (the map).
    Run {
        scenario: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Probe rate cap of each agent (packets per second); by default 25,000 shared
        /// by the vantages, within 100..=2000 (2,000 up to 12 vantages, 500 for 50).
        #[arg(long)]
        rate: Option<u32>,
        /// Emulator threads (default: one per core).
        #[arg(long)]
        emu_threads: Option<usize>,
        /// A PeeringDB dump directory (`*ix.json`, `*ixlan.json`, `*ixpfx.json`) for the
        /// coordinator, as an operator would download it: exchange LANs and the cities
        /// exchanges are in, which sharpen ingress positions.
        #[arg(long, value_name = "DIR")]
        peeringdb: Option<PathBuf>,
        /// Set an agent's clock wrong by MS milliseconds (NAME=MS, repeatable): a test of
        /// the clock correction mesh one-way delays rely on.
        #[arg(long, value_name = "NAME=MS", value_parser = parse_skew)]
        clock_skew: Vec<(String, i64)>,
        /// Multipath rounds: every Nth round of the campaign also runs MDA-Lite to every
        /// target (`campaign create --mda --mda-every N`). Default: what the scenario's
        /// `# tracemesh-lab: mda every=N confidence=C` line asks, else none.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        mda_every: Option<u32>,
        /// With multipath rounds: their confidence, 95 or 99 (default: the scenario's,
        /// else 95).
        #[arg(long, value_parser = ["95", "99"])]
        mda_confidence: Option<String>,
        /// No multipath rounds, whatever the scenario asks (to compare detection with and
        /// without them).
        #[arg(long, conflicts_with_all = ["mda_every", "mda_confidence"])]
        no_mda: bool,
        /// Soak: kill and restart the coordinator every S seconds of the campaign
        /// (kill -9 and SIGTERM in turn).
        #[arg(long, value_name = "S")]
        restart_coordinator_every: Option<f64>,
        /// Soak: kill this vantage's agent with -9 every --kill-every seconds and restart
        /// it 3 s later from its state.
        #[arg(long, value_name = "NAME")]
        kill_agent: Option<String>,
        #[arg(long, value_name = "S", default_value_t = 60.0)]
        kill_every: f64,
        /// Soak: take this vantage's control link (agent to coordinator) down every
        /// --flap-every seconds for --flap-down seconds (repeatable; staggered).
        #[arg(long = "flap-control", value_name = "NAME")]
        flap_control: Vec<String>,
        /// Soak: cut this vantage's probe path beyond its first hop (the emulator drops
        /// its probes there, as when its upstream link is down) on the same period
        /// (repeatable; staggered with the control links).
        #[arg(long = "flap-probe", value_name = "NAME")]
        flap_probe: Vec<String>,
        #[arg(long, value_name = "S", default_value_t = 120.0)]
        flap_every: f64,
        #[arg(long, value_name = "S", default_value_t = 15.0)]
        flap_down: f64,
        /// Soak: an agent uploading garbage (the `garbage_agent` example, built beside
        /// the binaries) runs with the real ones.
        #[arg(long)]
        garbage_agent: bool,
        /// Sample the coordinator's RSS and store size every S seconds (lab.json); with
        /// any fault every 5 s unless given.
        #[arg(long, value_name = "S")]
        rss_every: Option<f64>,
    },
    /// Check a mesh run's one-way delays (OUT/mesh.jsonl) against FORMAT.md's one-way
    /// rule; exits non-zero when fewer than --min-share are within --tolerance-ms.
    CheckMesh {
        scenario: PathBuf,
        out: PathBuf,
        #[arg(long, default_value_t = 0.5)]
        tolerance_ms: f64,
        #[arg(long, default_value_t = 0.95)]
        min_share: f64,
    },
}

fn parse_skew(s: &str) -> Result<(String, i64), String> {
    let (n, ms) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=MS"))?;
    let ms: i64 = ms
        .parse()
        .map_err(|_| format!("{s:?}: {ms:?} is not a whole number of ms"))?;
    Ok((n.to_string(), ms))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    run::install_signal_handlers();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

/// Prints a line; a closed stdout (`| head`) ends output quietly instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout().lock(), $($arg)*).is_err() {
            return Ok(());
        }
    }};
}

fn dispatch(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Check { scenario, at, json } => {
            let w = World::load(&scenario)?;
            let times = at.map_or_else(|| w.edges(), |t| vec![t]);
            let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
            // As the oracle writes hops: [ttl, addr, rtt] (v1) or [ttl, addr, rtt_min,
            // rtt_max, may_be_silent] (v2), "DEST" for the destination, null if silent.
            let hop_json = |h: &Hop| {
                let a = match h.addr {
                    None => serde_json::Value::from("DEST"),
                    Some(a) => a.map_or(serde_json::Value::Null, |a| a.to_string().into()),
                };
                if w.is_v2() {
                    serde_json::json!([h.ttl, a, r3(h.lo), r3(h.hi), h.rated])
                } else {
                    serde_json::json!([h.ttl, a, r3(h.lo)])
                }
            };
            // Instants keyed as the oracle writes them (Python's `str(float)`: "40.0").
            let key = |t: f64| {
                if t.fract() == 0.0 && t.abs() < 1e15 {
                    format!("{t:.1}")
                } else {
                    t.to_string()
                }
            };
            let mut paths = serde_json::Map::new();
            let mut ecmp = serde_json::Map::new();
            for t in &times {
                let mut pairs = serde_json::Map::new();
                let mut multi = serde_json::Map::new();
                for (v, y) in w.pairs() {
                    let branches = w.expected(v, y, *t);
                    anyhow::ensure!(!branches.is_empty(), "no path");
                    let key = format!("{}>{}", w.s.vantages[v].name, w.ep_name(y));
                    let list: Vec<serde_json::Value> = branches
                        .iter()
                        .map(|b| b.iter().map(&hop_json).collect::<Vec<_>>().into())
                        .collect();
                    pairs.insert(key.clone(), list[0].clone());
                    if list.len() > 1 {
                        multi.insert(key, list.into());
                    }
                }
                paths.insert(key(*t), pairs.into());
                if !multi.is_empty() {
                    ecmp.insert(key(*t), multi.into());
                }
            }
            if json {
                let mut doc = serde_json::json!({"name": w.s.name, "paths": paths});
                if w.is_v2() {
                    doc["ecmp_paths"] = ecmp.into();
                }
                out!("{doc}");
            } else {
                out!(
                    "{}: version {}, {} ASes, {} routers, {} links, {} vantages, {} targets, {} events{}",
                    w.s.name,
                    w.s.version,
                    w.s.ases.len(),
                    w.s.routers.len(),
                    w.s.links.len(),
                    w.s.vantages.len(),
                    w.s.targets.len(),
                    w.s.events.len(),
                    if w.mesh() { ", mesh" } else { "" }
                );
                let fmt = |hops: &serde_json::Value| -> String {
                    let h: Vec<String> = hops
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|h| {
                            let a = h[1].as_str().unwrap_or("*");
                            if h.as_array().is_some_and(|x| x.len() == 5) {
                                let q = if h[4] == true { "?" } else { "" };
                                format!("{a}({}..{}){q}", h[2], h[3])
                            } else {
                                format!("{a}({})", h[2])
                            }
                        })
                        .collect();
                    h.join(" ")
                };
                for (t, pairs) in &paths {
                    out!("t={t}s");
                    for (pair, hops) in pairs.as_object().into_iter().flatten() {
                        out!("  {pair}: {}", fmt(hops));
                        let more = ecmp
                            .get(t)
                            .and_then(|m| m.get(pair))
                            .and_then(|l| l.as_array());
                        for (n, b) in more.into_iter().flatten().enumerate().skip(1) {
                            out!("  {pair} #{}: {}", n + 1, fmt(b));
                        }
                    }
                }
            }
            Ok(())
        }
        Cmd::Emulate { scenario, duration } => {
            let w = std::sync::Arc::new(World::load(&scenario)?);
            let topo = Topology::build(&w)?;
            let emu = Emulator::spawn(w.clone(), &topo)?;
            out!("control namespace: {}", topo.control);
            for (v, ns) in w.s.vantages.iter().zip(&topo.vantages) {
                out!("vantage {} ({}): ip netns exec {ns} ...", v.name, v.addr);
            }
            let _ =
                run::sleep_interruptible(Duration::from_secs_f64(duration.clamp(0.0, 86_400.0)));
            eprintln!(
                "emulator: {}",
                emu.stats.report(duration.clamp(0.0, 86_400.0))
            );
            emu.stop();
            drop(topo);
            Ok(())
        }
        Cmd::CheckMesh {
            scenario,
            out,
            tolerance_ms,
            min_share,
        } => {
            let w = World::load(&scenario)?;
            let path = out.join("mesh.jsonl");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let checked =
                tracemesh_lab::mesh::check(&w, &text, tolerance_ms).map_err(|e| anyhow!(e))?;
            let mut summary = tracemesh_lab::mesh::summary(&checked, tolerance_ms);
            // Records between agents: which direction, and its one-way delay step.
            let dpath = out.join("diversions.json");
            if dpath.exists() {
                let doc: serde_json::Value = serde_json::from_str(
                    &std::fs::read_to_string(&dpath)
                        .with_context(|| format!("reading {}", dpath.display()))?,
                )?;
                summary["directions"] = tracemesh_lab::mesh::check_directions(&w, &doc)
                    .map_err(|e| anyhow!(e))?
                    .into();
            }
            out!("{summary}");
            let share = summary["share"].as_f64().unwrap_or(0.0);
            if checked.is_empty() || share < min_share {
                bail!(
                    "{} of {} one-way delays within {tolerance_ms} ms of the scenario's ({:.4} < {min_share})",
                    summary["within_tolerance"],
                    checked.len(),
                    share
                );
            }
            Ok(())
        }
        Cmd::Run {
            scenario,
            out,
            rate,
            emu_threads,
            peeringdb,
            clock_skew,
            mda_every,
            mda_confidence,
            no_mda,
            restart_coordinator_every,
            kill_agent,
            kill_every,
            flap_control,
            flap_probe,
            flap_every,
            flap_down,
            garbage_agent,
            rss_every,
        } => {
            let text = std::fs::read_to_string(&scenario)
                .with_context(|| format!("reading {}", scenario.display()))?;
            let mut mda = run::mda_directive(&text)?;
            if mda_every.is_some() || mda_confidence.is_some() {
                let base = mda.unwrap_or(run::LabMda {
                    every: 1,
                    confidence: 95,
                });
                mda = Some(run::LabMda {
                    every: mda_every.unwrap_or(base.every),
                    confidence: mda_confidence
                        .as_deref()
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(base.confidence),
                });
            }
            if no_mda {
                mda = None;
            }
            let faults = (restart_coordinator_every.is_some()
                || kill_agent.is_some()
                || !flap_control.is_empty()
                || !flap_probe.is_empty()
                || garbage_agent
                || rss_every.is_some())
            .then_some(tracemesh_lab::faults::FaultPlan {
                restart_every_s: restart_coordinator_every,
                victim: kill_agent,
                kill_every_s: kill_every,
                restart_after_s: 3.0,
                flap: flap_control,
                flap_probe,
                flap_every_s: flap_every,
                flap_down_s: flap_down,
                garbage: garbage_agent,
                rss_every_s: rss_every.unwrap_or(5.0),
            });
            let rate = match rate {
                Some(r) => r,
                None => run::default_rate(World::load(&scenario)?.s.vantages.len()),
            };
            let lab = run::run(&RunOptions {
                scenario,
                out: out.clone(),
                rate,
                emu_threads,
                peeringdb,
                clock_skew,
                mda,
                faults,
            })?;
            out!("{}", serde_json::to_string_pretty(&lab)?);
            eprintln!(
                "wrote {}/lab.json, traces.jsonl, diversions.json, diversions.txt, report.html",
                out.display()
            );
            Ok(())
        }
    }
}
