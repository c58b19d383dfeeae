//! Dialing the coordinator with the pinned CA, for the CLI, tests and tools.

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tracemesh_proto::COORDINATOR_TLS_NAME;
use tracemesh_proto::v1::consumer_service_client::ConsumerServiceClient;

use crate::ca::split_identity_bundle;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid coordinator address {addr:?}")]
    Address {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("cannot connect to coordinator at {addr}: {detail}")]
    Connect { addr: String, detail: String },
    #[error(
        "identity file must hold a client certificate, the CA certificate and a private key (PEM)"
    )]
    BadIdentity,
}

/// A TLS channel to `addr` (host:port) that trusts only `ca_pem`, presenting `identity`
/// (cert PEM, key PEM) if given.
pub async fn connect(
    addr: &str,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<Channel, ClientError> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(COORDINATOR_TLS_NAME);
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let endpoint = Channel::from_shared(format!("https://{addr}"))
        .map_err(|e| ClientError::Connect {
            addr: addr.to_string(),
            detail: e.to_string(),
        })?
        .tls_config(tls)
        .map_err(|source| ClientError::Address {
            addr: addr.to_string(),
            source,
        })?
        .connect_timeout(std::time::Duration::from_secs(10));
    endpoint.connect().await.map_err(|e| ClientError::Connect {
        addr: addr.to_string(),
        detail: error_chain(&e),
    })
}

/// A consumer client from an identity bundle (as `serve` writes to `DATA/admin.pem`).
pub async fn connect_admin(
    addr: &str,
    bundle_pem: &str,
) -> Result<ConsumerServiceClient<Channel>, ClientError> {
    let (cert, ca, key) = split_identity_bundle(bundle_pem).ok_or(ClientError::BadIdentity)?;
    let channel = connect(addr, &ca, Some((&cert, &key))).await?;
    Ok(ConsumerServiceClient::new(channel).max_decoding_message_size(64 << 20))
}

/// An error and all its sources, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
