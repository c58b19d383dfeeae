//! The agent's mesh endpoint: one quinn endpoint that accepts peers and dials them, and a
//! round that sends a timestamped datagram train to every peer at the round's instant
//! and collects the trains the peers send back (`train.rs` does the arithmetic).
//!
//! Connections outlive rounds (keep-alives every 5 s), so a round's instant is not spent
//! on handshakes: the round dials before its instant and only datagrams fly at it. Either
//! end may dial; a connection either way carries both directions' trains.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;

use super::tls::{self, MeshCredentials, TlsError};
use super::train::{Receiver, Sample, Stamp, TrainSpec};

/// After the last datagram of a train, wait this long for stragglers before reporting.
const WAIT_AFTER_TRAIN: Duration = Duration::from_millis(1500);
/// A dial that takes longer than this gives up for the round (the train is still
/// expected from the peer, which may dial us).
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Error)]
pub enum MeshError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("mesh endpoint on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("mesh peer {peer} ({addr}): {reason}")]
    Peer {
        peer: String,
        addr: SocketAddr,
        reason: String,
    },
}

/// The agent's clock as the mesh reads it: Unix ns corrected to the coordinator's clock,
/// and the bound on that correction's error.
pub trait MeshClock: Send + Sync + 'static {
    fn now_ns(&self) -> i64;
    fn error_ns(&self) -> i64;
}

/// A peer to measure this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub addr: SocketAddr,
}

/// UDP totals of a node's connections.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UdpTotals {
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub tx_datagrams: u64,
    pub rx_datagrams: u64,
}

/// What the endpoint moved, for the cost benchmark and metrics.
#[derive(Debug, Default)]
pub struct MeshStats {
    pub datagrams_sent: AtomicU64,
    pub datagrams_received: AtomicU64,
    pub refused: AtomicU64,
}

pub struct MeshNode {
    name: String,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    clock: Arc<dyn MeshClock>,
    conns: Mutex<HashMap<String, quinn::Connection>>,
    rx: Mutex<Receiver>,
    pub stats: MeshStats,
}

impl std::fmt::Debug for MeshNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshNode")
            .field("name", &self.name)
            .field("local", &self.endpoint.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl MeshNode {
    /// Binds `listen` and starts accepting peers. `name` is this agent's enrolled name
    /// (its own certificate's); it never measures itself.
    pub fn bind(
        name: &str,
        listen: SocketAddr,
        creds: &MeshCredentials,
        clock: Arc<dyn MeshClock>,
    ) -> Result<Arc<MeshNode>, MeshError> {
        let (server, client) = tls::quic_configs(creds)?;
        let endpoint =
            quinn::Endpoint::server(server, listen).map_err(|source| MeshError::Bind {
                addr: listen,
                source,
            })?;
        let node = Arc::new(MeshNode {
            name: name.to_string(),
            endpoint,
            client,
            clock,
            conns: Mutex::new(HashMap::new()),
            rx: Mutex::new(Receiver::default()),
            stats: MeshStats::default(),
        });
        let acceptor = node.clone();
        tokio::spawn(async move { acceptor.accept_loop().await });
        Ok(node)
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    async fn accept_loop(self: Arc<Self>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let node = self.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                match incoming.await {
                    Ok(conn) => match peer_name(&conn) {
                        Some(peer) if peer != node.name => node.adopt(peer, conn),
                        _ => {
                            node.stats.refused.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(%remote, "mesh peer is not another enrolled agent: refused");
                            conn.close(1u32.into(), b"not an agent");
                        }
                    },
                    Err(e) => {
                        node.stats.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%remote, error = %e, "mesh handshake failed");
                    }
                }
            });
        }
    }

    /// Keeps `conn` as the way to `peer` and reads its datagrams until it closes.
    fn adopt(self: &Arc<Self>, peer: String, conn: quinn::Connection) {
        tracing::debug!(%peer, remote = %conn.remote_address(), "mesh peer connected");
        self.conns
            .lock()
            .expect("mesh connections lock")
            .insert(peer.clone(), conn.clone());
        let node = self.clone();
        tokio::spawn(async move {
            while let Ok(d) = conn.read_datagram().await {
                let recv_ns = node.clock.now_ns();
                node.stats
                    .datagrams_received
                    .fetch_add(1, Ordering::Relaxed);
                match Stamp::decode(&d) {
                    Ok(s) => node.rx.lock().expect("mesh receiver lock").on_datagram(
                        &peer,
                        &s,
                        recv_ns,
                        node.clock.error_ns(),
                        (WAIT_AFTER_TRAIN * 4).as_nanos() as i64,
                    ),
                    Err(e) => tracing::debug!(%peer, error = %e, "mesh datagram dropped"),
                }
            }
            let mut conns = node.conns.lock().expect("mesh connections lock");
            if conns
                .get(&peer)
                .is_some_and(|c| c.stable_id() == conn.stable_id())
            {
                conns.remove(&peer);
            }
        });
    }

    /// A live connection to `peer`, dialling when there is none.
    pub async fn connect(self: &Arc<Self>, peer: &Peer) -> Result<quinn::Connection, MeshError> {
        if let Some(c) = self
            .conns
            .lock()
            .expect("mesh connections lock")
            .get(&peer.name)
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        let err = |reason: String| MeshError::Peer {
            peer: peer.name.clone(),
            addr: peer.addr,
            reason,
        };
        let connecting = self
            .endpoint
            .connect_with(self.client.clone(), peer.addr, tls::SNI)
            .map_err(|e| err(e.to_string()))?;
        let conn = tokio::time::timeout(DIAL_TIMEOUT, connecting)
            .await
            .map_err(|_| err("handshake timed out".into()))?
            .map_err(|e| err(e.to_string()))?;
        match peer_name(&conn) {
            Some(n) if n == peer.name => {}
            other => {
                conn.close(1u32.into(), b"unexpected agent");
                return Err(err(format!(
                    "answered as {}, not as {}",
                    other.as_deref().unwrap_or("no agent"),
                    peer.name
                )));
            }
        }
        self.adopt(peer.name.clone(), conn.clone());
        Ok(conn)
    }

    /// One round with `peers`: dial now, send a train to each at `start_ns` (corrected
    /// clock), and return the trains received from them (one sample per peer, total
    /// loss when nothing came).
    pub async fn round(
        self: &Arc<Self>,
        campaign: &str,
        round: u32,
        peers: &[Peer],
        start_ns: i64,
        spec: TrainSpec,
    ) -> Vec<Sample> {
        let peers: Vec<&Peer> = peers.iter().filter(|p| p.name != self.name).collect();
        let train_ns = (spec.spacing * u32::from(spec.count)).as_nanos() as i64;
        // The deadline leaves room for the peer's own start error and the path's delay.
        let deadline = start_ns + train_ns + WAIT_AFTER_TRAIN.as_nanos() as i64;
        {
            let mut rx = self.rx.lock().expect("mesh receiver lock");
            for p in &peers {
                rx.expect(&p.name, campaign, round, spec.count, deadline);
            }
        }
        let mut dials = tokio::task::JoinSet::new();
        for p in &peers {
            let (node, p) = (self.clone(), (*p).clone());
            dials.spawn(async move { node.connect(&p).await });
        }
        let mut conns = Vec::with_capacity(peers.len());
        while let Some(r) = dials.join_next().await {
            match r {
                Ok(Ok(c)) => conns.push(c),
                Ok(Err(e)) => tracing::warn!(error = %e, "mesh peer unreachable this round"),
                Err(e) => tracing::warn!(error = %e, "mesh dial task failed"),
            }
        }
        sleep_until_ns(&*self.clock, start_ns).await;
        let err_ns = self.clock.error_ns();
        for seq in 0..spec.count {
            let due = start_ns + (spec.spacing * u32::from(seq)).as_nanos() as i64;
            sleep_until_ns(&*self.clock, due).await;
            for c in &conns {
                let s = Stamp {
                    campaign: campaign.to_string(),
                    round,
                    seq,
                    count: spec.count,
                    send_ns: self.clock.now_ns(),
                    err_ns,
                };
                if c.send_datagram(s.encode(spec.size).into()).is_ok() {
                    self.stats.datagrams_sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let names: Vec<&str> = peers.iter().map(|p| p.name.as_str()).collect();
        let mut out = Vec::with_capacity(names.len());
        loop {
            let now = self.clock.now_ns();
            out.extend(
                self.rx
                    .lock()
                    .expect("mesh receiver lock")
                    .take_round(campaign, round, now),
            );
            if out.len() >= names.len() || now >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        out.retain(|s| names.contains(&s.src.as_str()));
        self.rx
            .lock()
            .expect("mesh receiver lock")
            .expire(self.clock.now_ns(), 60_000_000_000);
        out
    }

    /// UDP bytes and datagrams sent and received over every live connection (QUIC's own
    /// accounting: headers, handshakes, acks and keep-alives included).
    pub fn udp_totals(&self) -> UdpTotals {
        let conns = self.conns.lock().expect("mesh connections lock");
        let mut t = UdpTotals::default();
        for c in conns.values() {
            let s = c.stats();
            t.tx_bytes += s.udp_tx.bytes;
            t.rx_bytes += s.udp_rx.bytes;
            t.tx_datagrams += s.udp_tx.datagrams;
            t.rx_datagrams += s.udp_rx.datagrams;
        }
        t
    }

    /// Closes every connection and the endpoint.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"bye");
    }
}

/// The agent name in the certificate a connected peer presented.
fn peer_name(conn: &quinn::Connection) -> Option<String> {
    let id = conn.peer_identity()?;
    let certs = id
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    tls::agent_name(certs.first()?.as_ref())
}

async fn sleep_until_ns(clock: &dyn MeshClock, at_ns: i64) {
    loop {
        let left = at_ns - clock.now_ns();
        if left <= 0 {
            return;
        }
        tokio::time::sleep(Duration::from_nanos(left as u64)).await;
    }
}
