//! What the agent mesh costs an agent: one agent measuring 10 and then 50 peers over
//! real QUIC on loopback (each round: a train of 10 datagrams each way per peer, as
//! campaigns run it), CPU time and UDP bytes per peer per round. The peers run in this
//! process too, so CPU is reported for the whole mesh and divided by the pairs' two ends;
//! bytes are the measured agent's own connections (QUIC's accounting: headers,
//! handshake, acks, keep-alives). The coordinator is not involved: it never relays mesh
//! traffic, it only stores one small sample per direction per round.
//!
//! `cargo bench -p tracemesh-agent --bench mesh_cost`

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use tracemesh_agent::mesh::{MeshClock, MeshCredentials, MeshNode, Peer, TrainSpec};

struct Wall;
impl MeshClock for Wall {
    fn now_ns(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64)
    }
    fn error_ns(&self) -> i64 {
        0
    }
}

/// utime + stime of this process, seconds (from /proc: no unsafe needed).
fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat (utime, stime) are the 12th and 13th after the name.
    (ticks(11) + ticks(12)) / 100.0
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let ca_key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, "bench CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = p.self_signed(&ca_key)?.pem();
        let issuer = Issuer::new(p, ca_key);
        let ident = |name: &str| -> Result<MeshCredentials, Error> {
            let key = KeyPair::generate()?;
            let mut p = CertificateParams::new(Vec::<String>::new())?;
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            p.subject_alt_names = vec![SanType::URI(
                format!("tracemesh:role:agent/{name}").try_into()?,
            )];
            Ok(MeshCredentials {
                cert_chain_pem: p.signed_by(&key, &issuer)?.pem(),
                key_pem: key.serialize_pem(),
                ca_pem: ca_pem.clone(),
            })
        };
        let lo: std::net::SocketAddr = "127.0.0.1:0".parse()?;
        let rounds = 5u32;
        println!("mesh cost: one agent and N peers, {rounds} rounds, trains of 10 datagrams each way");
        for n in [10usize, 50] {
            let me = MeshNode::bind("me", lo, &ident("me")?, Arc::new(Wall))?;
            let mut peers: Vec<Arc<MeshNode>> = Vec::with_capacity(n);
            for i in 0..n {
                let name = format!("p{i}");
                peers.push(MeshNode::bind(&name, lo, &ident(&name)?, Arc::new(Wall))?);
            }
            let as_peer = |x: &Arc<MeshNode>| -> Result<Peer, Error> {
                Ok(Peer {
                    name: x.name().to_string(),
                    addr: x.local_addr()?,
                })
            };
            let all: Vec<Peer> = peers.iter().map(as_peer).collect::<Result<_, _>>()?;
            let me_peer = vec![as_peer(&me)?];
            let spec = TrainSpec::default();
            let mut received = 0u64;
            let (cpu0, t0) = (cpu_s(), Instant::now());
            let mut first = None;
            for r in 0..rounds {
                let start = Wall.now_ns() + 300_000_000;
                let mut tasks = tokio::task::JoinSet::new();
                for p in &peers {
                    let (p, me_peer) = (p.clone(), me_peer.clone());
                    tasks.spawn(async move { p.round("bench", r, &me_peer, start, spec).await.len() });
                }
                let mine = me.round("bench", r, &all, start, spec).await;
                received += mine.iter().map(|s| u64::from(s.received)).sum::<u64>();
                while tasks.join_next().await.is_some() {}
                if r == 0 {
                    first = Some(me.udp_totals());
                }
            }
            let cpu = cpu_s() - cpu0;
            let wall = t0.elapsed().as_secs_f64();
            let total = me.udp_totals();
            let first = first.unwrap_or_default();
            let per = (n as f64) * f64::from(rounds);
            let steady = (n as f64) * f64::from(rounds - 1);
            println!(
                "  {n:>2} peers: {:.0} datagrams received of {} sent to it; CPU {:.3} s for the mesh ({:.2} ms per peer per round per end); UDP {:.0} B per peer per round (all rounds, handshake included), {:.0} B once connected (rounds 2..{rounds}); wall {:.1} s",
                received,
                per as u64 * u64::from(spec.count),
                cpu,
                cpu * 1000.0 / per / 2.0,
                (total.tx_bytes + total.rx_bytes) as f64 / per,
                ((total.tx_bytes + total.rx_bytes) - (first.tx_bytes + first.rx_bytes)) as f64 / steady,
                wall
            );
            me.close();
            for p in &peers {
                p.close();
            }
        }
        Ok::<(), Error>(())
    })
}
