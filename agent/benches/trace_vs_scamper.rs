//! tracemesh-agent against scamper: 2,000 destinations behind a chain of 8 routers in
//! network namespaces, every method, IPv4. Prints wall times, their ratio, hop agreement
//! and peak RSS of each. Run: `cargo bench -p tracemesh-agent --bench trace_vs_scamper`
//! (as root; scamper from Debian's packages; GNU time for RSS).
//!
//! Environment: TM_BENCH_DESTS (default 2000), TM_BENCH_SCAMPER_PPS (10000),
//! TM_BENCH_RATE (50000), TM_BENCH_PROTOS (icmp,udp,tcp), TM_BENCH_RUNS (3, median kept).
//!
//! Without its prerequisites it skips, except under CI (`CI` set): CI runs it to get the
//! numbers, so there a skip would be a silent pass, and it fails instead.

use std::net::IpAddr;
use std::process::ExitCode;

use tracemesh_testnet::compare::{self, Run};
use tracemesh_testnet::{Chain, addr, available};

/// What this machine lacks for the benchmark, if anything.
fn missing() -> Vec<&'static str> {
    let mut missing = Vec::new();
    if !available() {
        missing.push("root and network namespaces (iproute2)");
    }
    if !compare::scamper_available() {
        missing.push("scamper (apt-get install scamper)");
    }
    missing
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss(r: &Run) -> String {
    r.max_rss_kib
        .map_or_else(|| "n/a".into(), |k| format!("{:.1} MB", k as f64 / 1024.0))
}

fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by_key(|r| r.wall);
    runs.swap_remove(runs.len() / 2)
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let missing = missing();
    if !missing.is_empty() {
        let missing = missing.join(", ");
        if std::env::var_os("CI").is_some() {
            eprintln!("error: trace_vs_scamper: this machine lacks {missing}");
            return ExitCode::FAILURE;
        }
        eprintln!("trace_vs_scamper: this machine lacks {missing}; skipped (under CI this fails)");
        return ExitCode::SUCCESS;
    }
    let dests: usize = env_or("TM_BENCH_DESTS", 2000).clamp(1, 60_000);
    let scamper_pps: u32 = env_or("TM_BENCH_SCAMPER_PPS", 10_000);
    let rate: u32 = env_or("TM_BENCH_RATE", 50_000);
    let protos: String = env_or("TM_BENCH_PROTOS", "icmp,udp,tcp".to_string());
    let runs: usize = env_or("TM_BENCH_RUNS", 3).clamp(1, 20);
    let agent = env!("CARGO_BIN_EXE_tracemesh-agent");

    let chain = match Chain::build(8, "bench") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let targets: Vec<IpAddr> = (0..dests).map(|i| addr::destination(i, false)).collect();
    let Ok(file) = compare::write_targets(dir.path(), "targets.txt", &targets) else {
        eprintln!("error: cannot write targets");
        return ExitCode::FAILURE;
    };
    println!(
        "{dests} destinations behind 8 routers; scamper -p {scamper_pps}, tracemesh --rate {rate}; median of {runs} runs"
    );
    println!(
        "{:<6} {:>12} {:>12} {:>7} {:>14} {:>12} {:>12}",
        "method", "scamper s", "tracemesh s", "speedup", "hops agree", "scamper RSS", "ours RSS"
    );
    let mut wrong_addresses = 0;
    for proto in protos.split(',') {
        let method = match proto {
            "icmp" => "icmp-paris",
            "udp" => "udp-paris",
            "tcp" => "tcp",
            other => {
                eprintln!("error: unknown method {other:?}");
                return ExitCode::FAILURE;
            }
        };
        let rate_s = rate.to_string();
        // Alternate the two, `runs` times each, and keep each one's median run.
        let mut scamper_runs = Vec::new();
        let mut our_runs = Vec::new();
        for _ in 0..runs {
            let theirs = compare::scamper(&chain.source, method, &file, scamper_pps, 1);
            let ours = compare::agent(
                &chain.source,
                agent,
                &file,
                &[
                    "--proto",
                    proto,
                    "--rate",
                    &rate_s,
                    "--attempts",
                    "1",
                    "--allow",
                    "10.0.0.0/8",
                ],
            );
            match (theirs, ours) {
                (Ok(t), Ok(o)) => {
                    scamper_runs.push(t);
                    our_runs.push(o);
                }
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        let (theirs, ours) = (median(scamper_runs), median(our_runs));
        let (agree, total) = compare::agreement(&theirs.paths, &ours.paths);
        let speedup = theirs.wall.as_secs_f64() / ours.wall.as_secs_f64();
        println!(
            "{:<6} {:>12.3} {:>12.3} {:>6.2}x {:>8}/{:<5} {:>12} {:>12}",
            proto,
            theirs.wall.as_secs_f64(),
            ours.wall.as_secs_f64(),
            speedup,
            agree,
            total,
            rss(&theirs),
            rss(&ours)
        );
        if agree != total {
            // Say who missed what: a hop one side has and the other lacks is a lost reply
            // (the emulated routers share two cores), a different address is a real bug.
            let mut missing = (0, 0);
            let mut different = 0;
            for (dst, theirs_hops) in &theirs.paths {
                let empty = Default::default();
                let ours_hops = ours.paths.get(dst).unwrap_or(&empty);
                for ttl in theirs_hops.keys().chain(ours_hops.keys()) {
                    match (theirs_hops.get(ttl), ours_hops.get(ttl)) {
                        (Some(a), Some(b)) if a != b => different += 1,
                        (Some(_), None) => missing.1 += 1,
                        (None, Some(_)) => missing.0 += 1,
                        _ => {}
                    }
                }
            }
            println!(
                "  {proto}: hops only tracemesh saw: {}, only scamper saw: {}, different addresses: {}",
                missing.0,
                missing.1,
                different / 2
            );
            wrong_addresses += different;
        }
    }
    if wrong_addresses == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("error: tracemesh and scamper saw different addresses at the same hop");
        ExitCode::FAILURE
    }
}
