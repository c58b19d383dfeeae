//! `tracemesh-lab-bench [SCENARIO] [--seconds S]`: how many probes per second the
//! emulator's pure core answers (every vantage × probe address × ICMP/UDP/TCP × TTL
//! 1..=path+1, IPv4 and IPv6 where the scenario has both). The live send-time error of a
//! running emulator is printed by `tracemesh-lab emulate` when it stops.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tracemesh_agent::probe::Proto;
use tracemesh_agent::probe::packet::{Flow, ProbeSpec, build_probe};
use tracemesh_lab::respond::Responder;
use tracemesh_lab::scenario::World;

fn main() -> Result<()> {
    let mut file = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scenarios/lab-emulator.toml"
    ));
    let mut seconds = 2.0f64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .context("--seconds needs a value")?
                    .parse()
                    .context("--seconds: not a number")?;
            }
            "-h" | "--help" => {
                println!("usage: tracemesh-lab-bench [SCENARIO] [--seconds S]");
                return Ok(());
            }
            _ if a.starts_with('-') => bail!("unknown option {a}"),
            _ => file = PathBuf::from(a),
        }
    }
    let seconds = seconds.clamp(0.1, 60.0);
    let w = World::load(&file)?;
    let mut probes: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut buf = Vec::new();
    for (vi, v) in w.s.vantages.iter().enumerate() {
        for dst in w.probes.iter().flatten() {
            let src: Option<IpAddr> = if dst.is_ipv6() { v.addr6 } else { Some(v.addr) };
            let Some(src) = src.filter(|s| s.is_ipv6() == dst.is_ipv6()) else {
                continue;
            };
            let hops = w.target_of(*dst).and_then(|tg| w.hops(vi, tg, 0.0));
            let max_ttl = hops.map_or(8, |h| h.len()) as u8;
            for proto in [Proto::Icmp, Proto::Udp, Proto::Tcp] {
                for ttl in 1..=max_ttl {
                    let spec = ProbeSpec {
                        proto,
                        src,
                        dst: *dst,
                        ttl,
                        flow: Flow::from_cookie(0x2345, proto),
                        probe_id: u16::from(ttl),
                    };
                    build_probe(&spec, &mut buf)?;
                    probes.push((vi, buf.clone()));
                }
            }
        }
    }
    if probes.is_empty() {
        bail!("{}: no vantage can probe any target", file.display());
    }
    let responder = Responder::new(&w);
    let (mut handled, mut answers, mut bytes) = (0u64, 0u64, 0u64);
    let began = Instant::now();
    let budget = Duration::from_secs_f64(seconds);
    // Bounded by time; checked once per pass over the probe set.
    while began.elapsed() < budget {
        for (v, p) in &probes {
            handled += 1;
            if let Ok(emits) = responder.handle(*v, p, 1.0) {
                answers += emits.len() as u64;
                bytes += emits.iter().map(|e| e.packet.len() as u64).sum::<u64>();
            }
        }
    }
    let s = began.elapsed().as_secs_f64();
    println!(
        "{}: {} distinct probes; {:.0} probes/s handled, {:.0} answers/s built ({:.1} MB/s of replies) over {s:.2} s",
        w.s.name,
        probes.len(),
        handled as f64 / s,
        answers as f64 / s,
        bytes as f64 / s / 1e6
    );
    Ok(())
}
