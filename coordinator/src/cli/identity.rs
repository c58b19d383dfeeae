//! `tracemesh identity create|list|revoke` and `tracemesh agent revoke`: clients of the
//! coordinator's AdminService. `identity create` makes the key here and sends only a
//! CSR, so the coordinator never holds a consumer's private key.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde_json::json;
use tracemesh_proto::v1;
use tracemesh_proto::v1::admin_service_client::AdminServiceClient;

use super::args::{AgentCmd, IdentityCmd};
use super::client::{connect_channel, status};
use super::json::print_json;

fn secs(ns: i64) -> f64 {
    ns as f64 / 1e9
}

async fn admin(
    data: &Path,
    coordinator: Option<String>,
    identity: Option<PathBuf>,
) -> anyhow::Result<AdminServiceClient<tonic::transport::Channel>> {
    Ok(AdminServiceClient::new(
        connect_channel(data, coordinator, identity).await?,
    ))
}

pub async fn identity(
    data: &Path,
    coordinator: Option<String>,
    identity: Option<PathBuf>,
    cmd: IdentityCmd,
) -> anyhow::Result<()> {
    match cmd {
        IdentityCmd::Create { role, name, out } => {
            if !tracemesh::ca::valid_name(&name) {
                bail!("invalid identity name {name:?}: use 1-64 characters from [A-Za-z0-9._-]");
            }
            let path = out.join(format!("{name}.pem"));
            if path.exists() {
                bail!("{} exists; not overwriting an identity", path.display());
            }
            // Checked before the coordinator is asked, so a bad directory wastes no name.
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let key = rcgen::KeyPair::generate().context("generating a key")?;
            let csr = rcgen::CertificateParams::new(Vec::<String>::new())
                .and_then(|p| p.serialize_request(&key))
                .and_then(|r| r.pem())
                .context("building the certificate request")?;
            let mut c = admin(data, coordinator, identity).await?;
            let resp = c
                .create_identity(v1::CreateIdentityRequest {
                    name: name.clone(),
                    role: role.clone(),
                    csr_pem: csr,
                })
                .await
                .map_err(|s| status("identity create", s))?
                .into_inner();
            let issued = tracemesh::ca::IssuedIdentity {
                cert_pem: resp.cert_pem,
                key_pem: key.serialize_pem(),
            };
            tracemesh::ca::write_identity_bundle(
                &path,
                &tracemesh::ca::identity_bundle(&issued, &resp.ca_pem),
            )?;
            println!("{}", path.display());
            Ok(())
        }
        IdentityCmd::List { json } => {
            let mut c = admin(data, coordinator, identity).await?;
            let list = c
                .list_identities(v1::ListIdentitiesRequest {})
                .await
                .map_err(|s| status("identity list", s))?
                .into_inner()
                .identities;
            if json {
                return print_json(&json!({
                    "identities": list.iter().map(|i| json!({
                        "name": i.name,
                        "role": i.role,
                        "cert_sha256": i.cert_sha256,
                        "created_at": secs(i.created_at_ns),
                        "revoked_at": i.revoked_at_ns.map(secs),
                    })).collect::<Vec<_>>()
                }));
            }
            println!(
                "{:<24} {:<9} {:<8} {:<16}",
                "NAME", "ROLE", "REVOKED", "CERT_SHA256"
            );
            for i in &list {
                println!(
                    "{:<24} {:<9} {:<8} {:.16}",
                    i.name,
                    i.role,
                    if i.revoked_at_ns.is_some() {
                        "yes"
                    } else {
                        "no"
                    },
                    i.cert_sha256
                );
            }
            Ok(())
        }
        IdentityCmd::Revoke { name, json } => {
            let mut c = admin(data, coordinator, identity).await?;
            let r = c
                .revoke_identity(v1::RevokeRequest { name })
                .await
                .map_err(|s| status("identity revoke", s))?
                .into_inner();
            print_revoked(&r, json)
        }
    }
}

pub async fn agent(
    data: &Path,
    coordinator: Option<String>,
    identity: Option<PathBuf>,
    cmd: AgentCmd,
) -> anyhow::Result<()> {
    match cmd {
        AgentCmd::Revoke { name, json } => {
            let mut c = admin(data, coordinator, identity).await?;
            let r = c
                .revoke_agent(v1::RevokeRequest { name })
                .await
                .map_err(|s| status("agent revoke", s))?
                .into_inner();
            print_revoked(&r, json)
        }
    }
}

fn print_revoked(r: &v1::RevokeResponse, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return print_json(&json!({
            "name": r.name,
            "cert_sha256": r.cert_sha256,
            "revoked_at": secs(r.revoked_at_ns),
            "was_connected": r.was_connected,
        }));
    }
    println!(
        "revoked {} (certificate {:.16}){}",
        r.name,
        r.cert_sha256,
        if r.was_connected {
            "; its session was closed"
        } else {
            ""
        }
    );
    Ok(())
}
