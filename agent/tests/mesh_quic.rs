//! Agent↔agent QUIC on loopback: real quinn endpoints, real TLS with certificates laid out
//! as the coordinator's CA issues them (clientAuth, `tracemesh:role:agent/NAME`).
//! Two enrolled agents measure each other with one clock 40 ms wrong and corrected; a
//! peer from another CA, one without a certificate, and one that is not an agent are all
//! refused.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use tracemesh_agent::mesh::{MeshClock, MeshCredentials, MeshNode, Peer, TrainSpec};

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = p.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(p, key),
    }
}

fn identity(ca: &Ca, role: &str, name: &str) -> MeshCredentials {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.subject_alt_names = vec![SanType::URI(
        format!("tracemesh:role:{role}/{name}").try_into().unwrap(),
    )];
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    MeshCredentials {
        cert_chain_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        ca_pem: ca.pem.clone(),
    }
}

fn wall_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// A clock `skew_ns` off, corrected by an offset as the session would learn it.
struct Clock {
    skew_ns: i64,
    offset_ns: AtomicI64,
}

impl MeshClock for Clock {
    fn now_ns(&self) -> i64 {
        wall_ns() + self.skew_ns + self.offset_ns.load(Ordering::Relaxed)
    }
    fn error_ns(&self) -> i64 {
        20_000
    }
}

fn clock(skew_ms: i64, corrected: bool) -> Arc<Clock> {
    let skew_ns = skew_ms * 1_000_000;
    Arc::new(Clock {
        skew_ns,
        offset_ns: AtomicI64::new(if corrected { -skew_ns } else { 0 }),
    })
}

fn node(name: &str, creds: &MeshCredentials, c: Arc<Clock>) -> Arc<MeshNode> {
    MeshNode::bind(name, "127.0.0.1:0".parse().unwrap(), creds, c).unwrap()
}

fn peer(n: &Arc<MeshNode>) -> Peer {
    Peer {
        name: n.name().to_string(),
        addr: n.local_addr().unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_measure_each_other_both_ways_with_a_corrected_clock() {
    let ca = ca("tracemesh coordinator CA");
    let a = node("a", &identity(&ca, "agent", "a"), clock(0, true));
    // b's clock is 40 ms fast; its session's offset undoes that.
    let b = node("b", &identity(&ca, "agent", "b"), clock(40, true));
    let peers = [peer(&a), peer(&b)];
    let start = wall_ns() + 500_000_000;
    let spec = TrainSpec::default();
    let (ra, rb) = tokio::join!(
        a.round("c1", 0, &peers, start, spec),
        b.round("c1", 0, &peers, start, spec)
    );
    for (who, samples, from) in [("a", &ra, "b"), ("b", &rb, "a")] {
        assert_eq!(samples.len(), 1, "{who}: {samples:?}");
        let s = &samples[0];
        assert_eq!(s.src, from);
        assert_eq!((s.sent, s.received), (10, 10), "{who}: {s:?}");
        let owd = s.owd_min_ns.unwrap();
        // Loopback: well under a millisecond each way, and never negative once the
        // 40 ms error is corrected.
        assert!((0..2_000_000).contains(&owd), "{who}: one-way {owd} ns");
        assert!(s.owd_median_ns.unwrap() >= owd);
        assert_eq!(s.clock_error_ns, 40_000);
    }
    // A second round reuses the connections: no new handshake needed.
    let start = wall_ns() + 200_000_000;
    let (ra, rb) = tokio::join!(
        a.round("c1", 1, &peers, start, spec),
        b.round("c1", 1, &peers, start, spec)
    );
    assert_eq!((ra[0].received, rb[0].received), (10, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncorrected_clock_shows_as_a_40_ms_one_way_step() {
    // The check the correction is for: without it, b→a reads 40 ms short (negative) and
    // a→b 40 ms long.
    let ca = ca("tracemesh coordinator CA");
    let a = node("a", &identity(&ca, "agent", "a"), clock(0, true));
    let b = node("b", &identity(&ca, "agent", "b"), clock(40, false));
    let peers = [peer(&a), peer(&b)];
    let start = wall_ns() + 500_000_000;
    let spec = TrainSpec::default();
    let (ra, rb) = tokio::join!(
        a.round("c1", 0, &peers, start, spec),
        b.round("c1", 0, &peers, start, spec)
    );
    let at_a = ra[0].owd_min_ns.unwrap();
    let at_b = rb[0].owd_min_ns.unwrap();
    assert!(at_a < -35_000_000, "b→a {at_a}");
    assert!(at_b > 35_000_000, "a→b {at_b}");
}

async fn refused(a: &Arc<MeshNode>, intruder: Arc<MeshNode>, claims: &str) {
    let before = a.stats.refused.load(Ordering::Relaxed);
    // The intruder dials a: a's TLS refuses it (or a's check of the role does).
    let to_a = Peer {
        name: a.name().to_string(),
        addr: a.local_addr().unwrap(),
    };
    let dial = intruder.connect(&to_a).await;
    // Whatever the handshake says on the intruder's side, a must not keep it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let kept = dial.as_ref().is_ok_and(|c| c.close_reason().is_none());
    assert!(!kept, "{claims}: connection to a still open");
    assert!(
        a.stats.refused.load(Ordering::Relaxed) > before,
        "{claims}: a did not count a refusal"
    );
    // And a refuses to dial it.
    let from_a = Peer {
        name: claims.to_string(),
        addr: intruder.local_addr().unwrap(),
    };
    assert!(
        a.connect(&from_a).await.is_err(),
        "{claims}: a accepted it as a peer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_from_another_ca_is_refused() {
    let ca1 = ca("tracemesh coordinator CA");
    let ca2 = ca("tracemesh coordinator CA");
    let a = node("a", &identity(&ca1, "agent", "a"), clock(0, true));
    // Same name and layout, another CA (which it pins itself).
    let x = node("b", &identity(&ca2, "agent", "b"), clock(0, true));
    refused(&a, x, "b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_is_not_an_agents_is_refused() {
    let ca1 = ca("tracemesh coordinator CA");
    let a = node("a", &identity(&ca1, "agent", "a"), clock(0, true));
    let admin = node("ops", &identity(&ca1, "admin", "ops"), clock(0, true));
    refused(&a, admin, "ops").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_a_certificate_is_refused() {
    let ca1 = ca("tracemesh coordinator CA");
    let a = node("a", &identity(&ca1, "agent", "a"), clock(0, true));
    let before = a.stats.refused.load(Ordering::Relaxed);
    // A plain QUIC client that trusts a's CA but shows no certificate.
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca1.pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything))
        .with_no_client_auth();
    tls.alpn_protocols = vec![tracemesh_agent::mesh::tls::ALPN.to_vec()];
    let cfg = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ));
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse::<SocketAddr>().unwrap()).unwrap();
    let r = ep
        .connect_with(
            cfg,
            a.local_addr().unwrap(),
            tracemesh_agent::mesh::tls::SNI,
        )
        .unwrap()
        .await;
    if let Ok(c) = &r {
        // TLS 1.3 may finish on the client before the server's verdict arrives.
        let closed = tokio::time::timeout(Duration::from_secs(2), c.closed()).await;
        assert!(closed.is_ok(), "a kept a connection without a certificate");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(a.stats.refused.load(Ordering::Relaxed) > before);
}

use rustls::pki_types::pem::PemObject as _;

#[derive(Debug)]
struct AcceptAnything;

impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
