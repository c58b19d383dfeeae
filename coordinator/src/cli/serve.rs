//! `tracemesh serve`: the coordinator itself, with live detection when an adversary is
//! named.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use tracemesh::live;
use tracemesh::server::{self, ServeConfig};

use super::args::ServeArgs;

pub async fn run(data: PathBuf, a: ServeArgs) -> anyhow::Result<()> {
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
        let tables = a.annotation.load()?;
        let adversary = tracemesh::detect::Adversary::from_asns(a.adversary.iter().copied())
            .with_countries(&a.adversary_countries);
        let sources = a.annotation.clone();
        let reload: live::Reload = Arc::new(move || sources.load());
        let sources = a.annotation.clone();
        let checkpoint = tracemesh::live_checkpoint::Config {
            every: std::time::Duration::from_secs(u64::from(a.checkpoint_every)),
            annotation_digest: Arc::new(move || sources.digest()),
        };
        Some((adversary, tables, reload, checkpoint))
    };
    // Bound before serving, so that a taken port fails `serve` at once.
    let metrics = match a.metrics {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for metrics on {addr}"))?;
            tracing::info!(addr = %l.local_addr()?, "metrics at /metrics");
            Some(l)
        }
        None => None,
    };
    let http = match a.http {
        Some(_) if live.is_none() => {
            bail!(
                "--http shows live detection: name the adversary with --adversary ASN (and give --pfx2as)"
            )
        }
        Some(addr) => {
            let token = match &a.http_token_file {
                Some(p) => {
                    let t = std::fs::read_to_string(p)
                        .with_context(|| format!("cannot read {}", p.display()))?
                        .trim()
                        .to_owned();
                    if t.len() < 16 {
                        bail!("the token in {} is shorter than 16 characters", p.display());
                    }
                    Some(t)
                }
                None if tracemesh::live_view::is_loopback(addr) => None,
                None => bail!(
                    "--http {addr} is reachable beyond this host: give --http-token-file (or bind 127.0.0.1)"
                ),
            };
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for the live view on {addr}"))?;
            let local = l.local_addr()?;
            tracing::info!(addr = %local, token = token.is_some(), "live view");
            println!("tracemesh live view at http://{local}/");
            Some((l, token))
        }
        None => None,
    };
    let db_dir = server::DataDir(data.clone()).db_dir();
    let limits = server::Limits {
        agent_traces_per_s: a.limits.agent_rate,
        agent_burst: a.limits.agent_burst,
        max_batch: a.limits.max_batch,
        max_message_bytes: (a.limits.max_message_mib as usize) << 20,
        max_streams: a.limits.max_streams,
        operator_campaigns: a.limits.operator_campaigns,
        operator_targets: a.limits.operator_targets,
        ..server::Limits::default()
    };
    let (retain, retain_archive, retain_every) =
        (a.retain, a.retain_archive.clone(), a.retain_every);
    // With live detection, retention waits for the checkpoint to cover what it deletes.
    let live_on = live.is_some();
    // Live detection saves its checkpoint after the shutdown signal: serve waits for it.
    let live_task: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>> = Arc::default();
    let live_slot = live_task.clone();
    server::serve_with_limits(
        ServeConfig {
            data,
            listen: a.listen,
            advertise: a.advertise,
        },
        limits,
        shutdown,
        move |c| {
            if let (Some(window), Some(dir)) = (retain, retain_archive) {
                tracemesh::retention::spawn(
                    c.clone(),
                    std::time::Duration::from_secs(u64::from(window)),
                    std::time::Duration::from_secs(u64::from(retain_every)),
                    dir,
                    live_on,
                );
            }
            if let Some(l) = metrics {
                tracemesh::metrics::spawn(l, c.clone(), db_dir);
            }
            if let Some((l, token)) = http {
                c.live_view.enable();
                tokio::spawn(tracemesh::live_view::serve(
                    l,
                    c.live_view.clone(),
                    token,
                    c.shutdown_signal(),
                ));
            }
            if let Some((adversary, tables, reload, checkpoint)) = live {
                let task = live::spawn_with(c, adversary, tables, reload, Some(checkpoint));
                *live_task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
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
    let task = live_slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(task) = task
        && tokio::time::timeout(LIVE_SHUTDOWN, task).await.is_err()
    {
        tracing::warn!(
            "live detection did not finish its checkpoint in time; the next start replays from the previous one"
        );
    }
    Ok(())
}

/// How long `serve` waits at shutdown for live detection's last checkpoint.
const LIVE_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(120);
