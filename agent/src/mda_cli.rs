//! `tracemesh-agent trace --mda`: multipath traces (MDA-Lite), one JSON line per target
//! or the drawing (`--text`).

use std::io::{BufWriter, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tracemesh_agent::probe::denylist::DenyList;
use tracemesh_agent::probe::driver::{DriverError, Needs, Sockets};
use tracemesh_agent::probe::engine::RequestError;
use tracemesh_agent::probe::mda::{MdaParams, MdaResult, MdaStop};
use tracemesh_agent::probe::mda_engine::{MdaEngine, MdaRequest};
use tracemesh_agent::probe::mda_text::write_mda_text;
use tracemesh_agent::probe::{EngineConfig, Proto};

use super::{TraceArgs, engine_cookie, read_targets, routed_targets, unix_now};

pub(crate) fn trace_mda(args: &TraceArgs) -> Result<ExitCode> {
    let proto = args.proto.unwrap_or(Proto::Udp);
    let targets = read_targets(args)?;
    if args.first_ttl > args.max_ttl {
        bail!(
            "--first-ttl {} is above --max-ttl {}",
            args.first_ttl,
            args.max_ttl
        );
    }
    let params = MdaParams {
        proto,
        confidence: args.confidence,
        first_ttl: args.first_ttl,
        max_ttl: args.max_ttl,
        attempts: args.attempts,
        wait: Duration::from_millis(args.wait_ms),
        gap_limit: args.gap_limit,
        budget: args.budget,
    };
    let cfg = EngineConfig {
        rate_pps: args.rate,
        per_dst_pps: args.per_dst_rate,
        window: args.window as usize,
        cookie: engine_cookie(),
        denylist: DenyList::with_allowed(args.allow.iter().copied()),
    };
    let mut engine = MdaEngine::new(cfg, Instant::now(), unix_now());
    let mut needs = Needs::default();
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut failures = 0usize;
    let mut queued = 0usize;
    for (dst, src) in routed_targets(&targets, args.ipv6, &mut failures) {
        match engine.add(MdaRequest { dst, src, params }) {
            Ok(()) => {
                needs.add(dst, proto);
                queued += 1;
            }
            Err(RequestError::Denied(d)) => {
                eprintln!("error: {d}");
                failures += 1;
                let denied = MdaResult {
                    kind: "mda".into(),
                    dst,
                    src: Some(src),
                    proto,
                    confidence: params.confidence,
                    stop_reason: MdaStop::Denied,
                    start: unix_now(),
                    probes_sent: 0,
                    flows: 0,
                    meshed: false,
                    hops: vec![],
                    links: vec![],
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
        let t0 = Instant::now();
        let text = args.text;
        rt.block_on(async {
            Sockets::open(&needs)?
                .drive(&mut engine, |e, _| {
                    while let Some(r) = e.poll_result() {
                        emit(&mut out, &r, text).map_err(DriverError::Sink)?;
                    }
                    Ok(())
                })
                .await
        })?;
        let stats = engine.stats();
        let secs = t0.elapsed().as_secs_f64();
        tracing::info!(
            traces = stats.traces_done,
            probes = stats.probes_sent,
            matched = stats.replies_matched,
            seconds = format!("{secs:.3}"),
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

fn emit(out: &mut impl Write, r: &MdaResult, text: bool) -> Result<(), String> {
    let res = if text {
        write_mda_text(out, r)
    } else {
        serde_json::to_writer(&mut *out, r)
            .map_err(std::io::Error::other)
            .and_then(|()| out.write_all(b"\n"))
    };
    res.map_err(|e| format!("writing results: {e}"))
}
