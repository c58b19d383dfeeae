//! Running scamper and the agent side by side and comparing their hops.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::{NetError, in_netns};

/// Per destination: responding address per TTL.
pub type Paths = HashMap<IpAddr, BTreeMap<u8, IpAddr>>;

#[derive(Debug)]
pub struct Run {
    pub paths: Paths,
    /// Stop reason per destination, lower-cased ("completed", "gaplimit"...).
    pub stop: HashMap<IpAddr, String>,
    pub wall: Duration,
    /// Peak resident set size in KiB, from GNU time.
    pub max_rss_kib: Option<u64>,
    pub stderr: String,
}

pub fn scamper_available() -> bool {
    std::process::Command::new("scamper")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// For tests and benchmarks that compare with scamper: fails, saying so, without it.
pub fn require_scamper() {
    assert!(
        scamper_available(),
        "this test needs scamper on the PATH (apt-get install scamper)"
    );
}

pub fn write_targets(dir: &Path, name: &str, targets: &[IpAddr]) -> std::io::Result<PathBuf> {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path)?;
    for t in targets {
        writeln!(f, "{t}")?;
    }
    Ok(path)
}

/// Runs `prog args` inside `ns` under GNU time (if present) and times it.
fn timed(ns: &str, prog: &str, args: &[String]) -> Result<(String, Run), NetError> {
    let gnu_time = Path::new("/usr/bin/time").exists();
    let mut cmd = if gnu_time {
        let mut c = std::process::Command::new("/usr/bin/time");
        c.args(["-f", "tracemesh-rss %M", "ip", "netns", "exec", ns, prog]);
        c
    } else {
        in_netns(ns, prog)
    };
    cmd.args(args).stdin(Stdio::null());
    let cmdline = format!("{prog} {}", args.join(" "));
    let t0 = Instant::now();
    let out = cmd.output().map_err(|source| NetError::Spawn {
        cmd: cmdline.clone(),
        source,
    })?;
    let wall = t0.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let max_rss_kib = stderr
        .lines()
        .find_map(|l| l.strip_prefix("tracemesh-rss "))
        .and_then(|v| v.trim().parse().ok());
    // The agent exits 1 when a target was refused; anything else non-zero is a failure.
    if !out.status.success() && out.status.code() != Some(1) {
        return Err(NetError::Command {
            cmd: cmdline,
            stderr,
        });
    }
    Ok((
        String::from_utf8_lossy(&out.stdout).to_string(),
        Run {
            paths: HashMap::new(),
            stop: HashMap::new(),
            wall,
            max_rss_kib,
            stderr,
        },
    ))
}

fn ip_of(v: &serde_json::Value) -> Option<IpAddr> {
    v.as_str().and_then(|s| s.parse().ok())
}

/// scamper's `trace` with JSON output. `method` as scamper names it (icmp-paris,
/// udp-paris, udp, tcp).
pub fn scamper(
    ns: &str,
    method: &str,
    targets_file: &Path,
    pps: u32,
    wait_s: u32,
) -> Result<Run, NetError> {
    let args = vec![
        "-O".into(),
        "json".into(),
        "-p".into(),
        pps.to_string(),
        "-c".into(),
        format!("trace -P {method} -q 1 -w {wait_s}"),
        "-f".into(),
        targets_file.display().to_string(),
    ];
    let (stdout, mut run) = timed(ns, "scamper", &args)?;
    for line in stdout.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["type"] != "trace" {
            continue;
        }
        let Some(dst) = ip_of(&v["dst"]) else {
            continue;
        };
        let mut hops = BTreeMap::new();
        for h in v["hops"].as_array().into_iter().flatten() {
            if let (Some(ttl), Some(addr)) = (h["probe_ttl"].as_u64(), ip_of(&h["addr"])) {
                hops.entry(ttl as u8).or_insert(addr);
            }
        }
        run.paths.insert(dst, hops);
        let stop = v["stop_reason"].as_str().unwrap_or("").to_lowercase();
        run.stop.insert(dst, stop);
    }
    Ok(run)
}

/// `tracemesh-agent trace` with the given extra arguments.
pub fn agent(
    ns: &str,
    agent_bin: &str,
    targets_file: &Path,
    extra: &[&str],
) -> Result<Run, NetError> {
    let mut args: Vec<String> = vec![
        "trace".into(),
        "-f".into(),
        targets_file.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let (stdout, mut run) = timed(ns, agent_bin, &args)?;
    for line in stdout.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(dst) = ip_of(&v["dst"]) else {
            continue;
        };
        let mut hops = BTreeMap::new();
        for h in v["hops"].as_array().into_iter().flatten() {
            if let (Some(ttl), Some(addr)) = (h["ttl"].as_u64(), ip_of(&h["addr"])) {
                hops.insert(ttl as u8, addr);
            }
        }
        run.paths.insert(dst, hops);
        let stop = v["stop_reason"].as_str().unwrap_or("").replace('_', "");
        run.stop.insert(dst, stop);
    }
    Ok(run)
}

/// Hop agreement between two runs: (agreeing (dst, ttl) pairs, all pairs either saw).
pub fn agreement(a: &Paths, b: &Paths) -> (usize, usize) {
    let mut agree = 0;
    let mut total = 0;
    let dsts: std::collections::BTreeSet<&IpAddr> = a.keys().chain(b.keys()).collect();
    let empty = BTreeMap::new();
    for d in dsts {
        let (ha, hb) = (a.get(d).unwrap_or(&empty), b.get(d).unwrap_or(&empty));
        let ttls: std::collections::BTreeSet<&u8> = ha.keys().chain(hb.keys()).collect();
        for t in ttls {
            total += 1;
            if ha.get(t) == hb.get(t) {
                agree += 1;
            }
        }
    }
    (agree, total)
}
