//! `tracemesh serve`: the coordinator itself, with live detection when an adversary is
//! named.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::bail;
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
        Some((adversary, tables, reload))
    };
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
    server::serve_with_limits(
        ServeConfig {
            data,
            listen: a.listen,
            advertise: a.advertise,
        },
        limits,
        shutdown,
        move |c| {
            if let Some((adversary, tables, reload)) = live {
                live::spawn(c, adversary, tables, reload);
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
