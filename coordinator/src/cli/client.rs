//! Reaching a running coordinator's ConsumerService, and turning its refusals into one
//! line the operator can act on.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use tonic::transport::Channel;
use tracemesh::server::{self, DataDir};
use tracemesh_proto::v1::consumer_service_client::ConsumerServiceClient;

/// The coordinator named by `--coordinator` + `--identity`, or else the one whose
/// address file and admin identity are in the data directory.
pub async fn connect(
    data: &Path,
    coordinator: Option<String>,
    identity: Option<PathBuf>,
) -> anyhow::Result<ConsumerServiceClient<Channel>> {
    let channel = connect_channel(data, coordinator, identity).await?;
    Ok(ConsumerServiceClient::new(channel).max_decoding_message_size(64 << 20))
}

/// The TLS channel [`connect`] makes, for other services (AdminService).
pub async fn connect_channel(
    data: &Path,
    coordinator: Option<String>,
    identity: Option<PathBuf>,
) -> anyhow::Result<Channel> {
    let (addr, identity_path) = match (coordinator, identity) {
        (Some(c), Some(i)) => (c, i),
        (Some(_), None) | (None, Some(_)) => {
            bail!("--coordinator and --identity go together")
        }
        (None, None) => {
            let dd = DataDir(data.to_path_buf());
            let addr_file = dd.addr_file();
            let addr = std::fs::read_to_string(&addr_file).with_context(|| {
                format!(
                    "no running coordinator found in {} (start `tracemesh serve --data {}` or pass --coordinator/--identity)",
                    data.display(),
                    data.display()
                )
            })?;
            (addr.trim().to_string(), dd.admin_identity())
        }
    };
    let bundle = std::fs::read_to_string(&identity_path)
        .with_context(|| format!("cannot read identity {}", identity_path.display()))?;
    let (cert, ca, key) = tracemesh::ca::split_identity_bundle(&bundle)
        .ok_or(server::client::ClientError::BadIdentity)?;
    Ok(server::client::connect(&addr, &ca, Some((&cert, &key))).await?)
}

/// gRPC status → one line the operator can act on.
pub fn status(what: &str, s: tonic::Status) -> anyhow::Error {
    anyhow!("{what}: {} ({:?})", s.message(), s.code())
}
