//! `tracemesh-lab`: check scenarios, run the emulated internet, run a whole lab.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tracemesh_lab::net::{Emulator, Topology};
use tracemesh_lab::run::{self, RunOptions};
use tracemesh_lab::scenario::World;

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
    /// and diversions.txt.
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
    },
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
            let mut paths = serde_json::Map::new();
            for t in &times {
                let mut pairs = serde_json::Map::new();
                for (vi, v) in w.s.vantages.iter().enumerate() {
                    for (ti, tg) in w.s.targets.iter().enumerate() {
                        let hops = w.hops(vi, ti, *t).context("no path")?;
                        let hops: Vec<serde_json::Value> = hops
                            .iter()
                            .enumerate()
                            .map(|(i, (ttl, addr, rtt))| {
                                let a = if i + 1 == hops.len() {
                                    serde_json::Value::from("DEST")
                                } else {
                                    addr.map_or(serde_json::Value::Null, |a| a.to_string().into())
                                };
                                serde_json::json!([ttl, a, (rtt * 1000.0).round() / 1000.0])
                            })
                            .collect();
                        pairs.insert(format!("{}>{}", v.name, tg.name), hops.into());
                    }
                }
                paths.insert(t.to_string(), pairs.into());
            }
            if json {
                out!("{}", serde_json::json!({"name": w.s.name, "paths": paths}));
            } else {
                out!(
                    "{}: {} ASes, {} routers, {} links, {} vantages, {} targets, {} events",
                    w.s.name,
                    w.s.ases.len(),
                    w.s.routers.len(),
                    w.s.links.len(),
                    w.s.vantages.len(),
                    w.s.targets.len(),
                    w.s.events.len()
                );
                for (t, pairs) in &paths {
                    out!("t={t}s");
                    for (pair, hops) in pairs.as_object().into_iter().flatten() {
                        let h: Vec<String> = hops
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|h| format!("{}({})", h[1].as_str().unwrap_or("*"), h[2]))
                            .collect();
                        out!("  {pair}: {}", h.join(" "));
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
        Cmd::Run {
            scenario,
            out,
            rate,
            emu_threads,
            peeringdb,
        } => {
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
            })?;
            out!("{}", serde_json::to_string_pretty(&lab)?);
            eprintln!(
                "wrote {}/lab.json, traces.jsonl, diversions.json, diversions.txt",
                out.display()
            );
            Ok(())
        }
    }
}
