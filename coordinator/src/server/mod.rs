//! The coordinator's gRPC server: `AgentService` (enrolment, sessions) and
//! `ConsumerService` (operators and analysts) on one mutual-TLS port, plus gRPC health
//! and reflection.
//!
//! TLS asks for a client certificate but does not require one, because an agent that
//! comes to enrol has none yet; every call except `Enrol` then checks the verified
//! certificate's role itself ([`auth`]).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tracemesh_proto::v1;

use crate::ca::{self, Ca, CaError, Role};
use crate::store::{SledStore, Store, StoreError};

mod admin_svc;
mod agent_svc;
pub mod auth;
pub mod client;
mod consumer_svc;
pub mod ingest;
pub mod issued;
pub mod quota;
pub mod revoke;
pub mod state;
pub mod streams;

pub use quota::Limits;
pub use state::{Coordinator, now_ns};

/// How long to let open streams wind down after a shutdown signal before returning anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message an agent may send (a TraceBatch); agents should batch below it.
pub const MAX_AGENT_MESSAGE: usize = 32 << 20;
/// HTTP/2 streams a connection may have open beyond `--max-streams` (see `streams.rs`).
const STREAM_HEADROOM: u32 = 16;

/// The data directory's layout, in one place so `serve` and the CLI agree.
#[derive(Debug, Clone)]
pub struct DataDir(pub PathBuf);

impl DataDir {
    pub fn ca_dir(&self) -> PathBuf {
        self.0.join("ca")
    }
    pub fn db_dir(&self) -> PathBuf {
        self.0.join("db")
    }
    /// The admin client identity bundle (client cert, CA cert, key).
    pub fn admin_identity(&self) -> PathBuf {
        self.0.join("admin.pem")
    }
    /// The address the running coordinator listens on, for CLI subcommands.
    pub fn addr_file(&self) -> PathBuf {
        self.0.join("coordinator.addr")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC transport")]
    Transport(#[from] tonic::transport::Error),
}

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data: PathBuf,
    pub listen: SocketAddr,
    /// host:port agents should dial (goes into tokens and the server certificate);
    /// defaults to the listen address (loopback if listening on a wildcard).
    pub advertise: Option<String>,
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ServerError {
    let path = path.to_path_buf();
    move |source| ServerError::Io {
        action,
        path,
        source,
    }
}

/// Writes a small file so that a reader never sees it half-written.
fn write_atomic(path: &Path, contents: &str) -> Result<(), ServerError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).map_err(io_err("writing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err("renaming", path))
}

fn host_of(addr: &str) -> String {
    match addr.parse::<SocketAddr>() {
        Ok(sa) => sa.ip().to_string(),
        Err(_) => addr
            .rsplit_once(':')
            .map(|(h, _)| h.trim_matches(['[', ']']).to_string())
            .unwrap_or_else(|| addr.to_string()),
    }
}

/// Opens (or initialises) the data directory and runs the server until `shutdown`
/// completes, then drains streams for up to [`SHUTDOWN_GRACE`] and flushes the store.
pub async fn serve<F>(cfg: ServeConfig, shutdown: F) -> Result<(), ServerError>
where
    F: Future<Output = ()> + Send + 'static,
{
    serve_with(cfg, shutdown, |_| {}).await
}

/// [`serve`], calling `on_start` with the live coordinator once it listens: the hook for
/// in-process components (the detector subscribes to traces and publishes diversions
/// through [`Coordinator::subscribe_traces`] and [`Coordinator::publish_diversion`]).
pub async fn serve_with<F, H>(cfg: ServeConfig, shutdown: F, on_start: H) -> Result<(), ServerError>
where
    F: Future<Output = ()> + Send + 'static,
    H: FnOnce(Arc<Coordinator>),
{
    serve_with_limits(cfg, Limits::default(), shutdown, on_start).await
}

/// [`serve_with`] under the given quotas and limits.
pub async fn serve_with_limits<F, H>(
    cfg: ServeConfig,
    limits: Limits,
    shutdown: F,
    on_start: H,
) -> Result<(), ServerError>
where
    F: Future<Output = ()> + Send + 'static,
    H: FnOnce(Arc<Coordinator>),
{
    let dd = DataDir(cfg.data.clone());
    std::fs::create_dir_all(&dd.0).map_err(io_err("creating", &dd.0))?;
    let ca = Ca::load_or_create(&dd.ca_dir())?;
    let admin_path = dd.admin_identity();
    if !admin_path.exists() {
        let admin = ca.issue_client(Role::Admin, "admin")?;
        ca::write_identity_bundle(&admin_path, &ca::identity_bundle(&admin, ca.cert_pem()))?;
        tracing::info!(path = %admin_path.display(), "wrote admin identity");
    }
    let store = SledStore::open(&dd.db_dir())?;
    // The admin identity is listed and revocable like any other; a revoked one stays
    // refused even if admin.pem is still on disk (delete it and restart for a fresh one).
    if let Ok(bundle) = std::fs::read_to_string(&admin_path) {
        admin_svc::register_identity(&store, "admin", Role::Admin, &bundle)?;
    }
    let revoked = store.list_revocations()?;

    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: cfg.listen,
        source,
    })?;
    let dial = if local.ip().is_unspecified() {
        SocketAddr::new(
            if local.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            },
            local.port(),
        )
    } else {
        local
    };
    if cfg.advertise.is_none() && local.ip().is_unspecified() {
        tracing::warn!(
            %dial,
            "listening on a wildcard address without --advertise: tokens will tell agents to dial {dial}, which only works on this host"
        );
    }
    let advertise = cfg.advertise.clone().unwrap_or_else(|| dial.to_string());
    let server_id = ca.issue_server(&[host_of(&advertise)])?;
    write_atomic(&dd.addr_file(), &format!("{dial}\n"))?;

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let coordinator = Coordinator::new(
        Arc::new(store.clone()) as Arc<dyn Store>,
        Arc::new(ca),
        advertise.clone(),
        shutdown_rx.clone(),
    )
    .with_limits(limits.clone());
    for r in &revoked {
        coordinator.revocations.revoke(&r.cert_sha256);
    }
    if !revoked.is_empty() {
        tracing::info!(revoked = revoked.len(), "refusing revoked certificates");
    }
    let coordinator = Arc::new(coordinator);

    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&server_id.cert_pem, &server_id.key_pem))
        .client_ca_root(Certificate::from_pem(coordinator.ca.cert_pem()))
        .client_auth_optional(true)
        .timeout(TLS_HANDSHAKE_TIMEOUT);

    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_serving::<v1::agent_service_server::AgentServiceServer<agent_svc::AgentSvc>>()
        .await;
    health
        .set_serving::<v1::consumer_service_server::ConsumerServiceServer<consumer_svc::ConsumerSvc>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tracemesh_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::Io {
            action: "building reflection service for",
            path: PathBuf::from("tracemesh.v1"),
            source: std::io::Error::other(e),
        })?;

    on_start(coordinator.clone());
    tracing::info!(%local, %advertise, data = %dd.0.display(), "coordinator listening");
    println!("tracemesh coordinator listening on {local}");
    tracing::debug!(?limits, "quotas and limits");

    let serve = Server::builder()
        .tls_config(tls)?
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        // Room above the per-identity stream cap (`streams.rs`, the clear refusal) for
        // the unary calls beside a client's streams: a conforming client queues what
        // goes over this, so it must not be the limit that bites first.
        .max_concurrent_streams(limits.max_streams.saturating_add(STREAM_HEADROOM))
        .layer(tonic::service::InterceptorLayer::new(revoke::interceptor(
            coordinator.revocations.clone(),
        )))
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(
            v1::agent_service_server::AgentServiceServer::new(agent_svc::AgentSvc::new(
                coordinator.clone(),
            ))
            // A batch of a few hundred full traces can pass tonic's 4 MiB default.
            .max_decoding_message_size(limits.max_message_bytes),
        )
        .add_service(v1::consumer_service_server::ConsumerServiceServer::new(
            consumer_svc::ConsumerSvc::new(coordinator.clone()),
        ))
        .add_service(v1::admin_service_server::AdminServiceServer::new(
            admin_svc::AdminSvc::new(coordinator.clone()),
        ))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), async move {
            shutdown.await;
            tracing::info!("shutting down");
            let _ = shutdown_tx.send(true);
        });
    tokio::pin!(serve);
    let mut grace_rx = shutdown_rx;
    tokio::select! {
        r = &mut serve => r?,
        _ = async {
            let _ = grace_rx.wait_for(|v| *v).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => tracing::warn!("streams still open after the grace period; stopping anyway"),
    }
    let _ = std::fs::remove_file(dd.addr_file());
    store.flush()?;
    Ok(())
}
