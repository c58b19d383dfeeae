//! TLS for agent↔agent QUIC: both ends show the client certificate the coordinator issued
//! at enrolment, and both pin the coordinator's CA. A peer is accepted only when its chain
//! leads to that CA and its certificate names it an agent (`tracemesh:role:agent/NAME`).
//!
//! Agent certificates carry the clientAuth purpose only, and name agents with a URI rather
//! than a DNS name, so the dialling side cannot use rustls's web-PKI server verifier: it
//! verifies the chain exactly as the accepting side does (rustls's client-certificate
//! verifier, same roots) and the handshake signature with the same provider.

use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use thiserror::Error;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer as _;

/// ALPN of the mesh protocol; a peer speaking anything else is refused.
pub const ALPN: &[u8] = b"tracemesh-mesh/1";
/// SNI the dialler sends: agents are named in certificates by URI, checked after the
/// handshake, not by DNS name.
pub const SNI: &str = "tracemesh-agent";
const ROLE_PREFIX: &str = "tracemesh:role:agent/";

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("mesh TLS: {what}: {source}")]
    Rustls {
        what: &'static str,
        source: rustls::Error,
    },
    #[error("mesh TLS: {0}")]
    Pem(String),
    #[error("mesh TLS: client verifier: {0}")]
    Verifier(String),
    #[error("mesh TLS: QUIC needs TLS 1.3 with a QUIC cipher suite: {0}")]
    Quic(String),
}

/// The agent's enrolment material, PEM.
#[derive(Clone)]
pub struct MeshCredentials {
    pub cert_chain_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

impl std::fmt::Debug for MeshCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("MeshCredentials").finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let v: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let v = v.map_err(|e| TlsError::Pem(format!("certificates: {e}")))?;
    if v.is_empty() {
        return Err(TlsError::Pem("no certificate in PEM".into()));
    }
    Ok(v)
}

fn roots(ca_pem: &str) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca_pem)? {
        roots.add(c).map_err(|source| TlsError::Rustls {
            what: "CA certificate",
            source,
        })?;
    }
    Ok(Arc::new(roots))
}

fn client_verifier(
    ca_pem: &str,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider.clone())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))
}

/// The agent name in a certificate issued to an agent, if it is one.
pub fn agent_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut names = san.value.general_names.iter().filter_map(|gn| match gn {
        GeneralName::URI(u) if u.starts_with("tracemesh:role:") => Some(*u),
        _ => None,
    });
    let only = names.next()?;
    if names.next().is_some() {
        return None;
    }
    let name = only.strip_prefix(ROLE_PREFIX)?;
    (!name.is_empty()).then(|| name.to_string())
}

/// The dialling side's check of the accepting agent.
#[derive(Debug)]
struct PeerAgentVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PeerAgentVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.chain
            .verify_client_cert(end_entity, intermediates, now)?;
        if agent_name(end_entity.as_ref()).is_none() {
            return Err(rustls::Error::General(
                "peer certificate does not name an agent".into(),
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // QUIC is TLS 1.3 only.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// quinn's server and client configurations for one agent.
pub fn quic_configs(
    creds: &MeshCredentials,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), TlsError> {
    let provider = provider();
    let chain = certs(&creds.cert_chain_pem)?;
    let key = PrivateKeyDer::from_pem_slice(creds.key_pem.as_bytes())
        .map_err(|e| TlsError::Pem(format!("private key: {e}")))?;
    let verifier = client_verifier(&creds.ca_pem, &provider)?;
    let rustls_err = |what| move |source| TlsError::Rustls { what, source };

    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(rustls_err("server versions"))?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(rustls_err("server certificate"))?;
    server.alpn_protocols = vec![ALPN.to_vec()];

    let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(rustls_err("client versions"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerAgentVerifier {
            chain: verifier,
            algs: provider.signature_verification_algorithms,
        }))
        .with_client_auth_cert(chain, key)
        .map_err(rustls_err("client certificate"))?;
    client.alpn_protocols = vec![ALPN.to_vec()];

    let server = quinn::crypto::rustls::QuicServerConfig::try_from(server)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let client = quinn::crypto::rustls::QuicClientConfig::try_from(client)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut transport = quinn::TransportConfig::default();
    // Connections live across rounds; keep-alives hold NAT bindings and notice dead peers.
    transport.keep_alive_interval(Some(std::time::Duration::from_secs(5)));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(std::time::Duration::from_secs(30))
            .expect("30 s is a valid idle timeout"),
    ));
    // Only datagrams flow: no streams from peers.
    transport.max_concurrent_bidi_streams(0u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    let transport = Arc::new(transport);
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
    server.transport_config(transport.clone());
    let mut client = quinn::ClientConfig::new(Arc::new(client));
    client.transport_config(transport);
    Ok((server, client))
}
