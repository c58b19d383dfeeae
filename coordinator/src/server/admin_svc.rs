//! `AdminService`: client identities with roles, and revocation of identities and agents.
//! Every call needs the admin role.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracemesh_proto::v1;

use super::auth::authorize;
use super::state::{Coordinator, now_ns};
use crate::ca::{CaError, Role, cert_fingerprint, pem_first_der};
use crate::store::{IdentityRecord, RevocationRecord, StoreError};

#[derive(Debug, Clone)]
pub struct AdminSvc {
    c: Arc<Coordinator>,
}

impl AdminSvc {
    pub fn new(c: Arc<Coordinator>) -> Self {
        AdminSvc { c }
    }

    /// Persists the revocation, then refuses the certificate and ends its streams.
    async fn revoke(
        &self,
        name: String,
        role: Role,
        cert_sha256: String,
        identity: Option<IdentityRecord>,
    ) -> Result<i64, Status> {
        let now = now_ns();
        let rec = RevocationRecord {
            cert_sha256: cert_sha256.clone(),
            name,
            role: role.as_str().to_string(),
            revoked_at_ns: now,
        };
        self.c
            .blocking(move |s| {
                s.put_revocation(&rec)?;
                if let Some(mut id) = identity {
                    id.revoked_at_ns = Some(now);
                    s.put_identity(&id)?;
                }
                s.flush()
            })
            .await?;
        self.c.revocations.revoke(&cert_sha256);
        Ok(now)
    }
}

/// Registers an identity issued outside `CreateIdentity` (the admin identity `serve`
/// writes), so it is listed and revocable like the others.
pub fn register_identity(
    store: &dyn crate::store::Store,
    name: &str,
    role: Role,
    cert_pem: &str,
) -> Result<(), StoreError> {
    let Some(der) = pem_first_der(cert_pem) else {
        return Ok(());
    };
    let fp = cert_fingerprint(&der);
    if store
        .get_identity(name)?
        .is_some_and(|r| r.cert_sha256 == fp)
    {
        return Ok(());
    }
    store.put_identity(&IdentityRecord {
        name: name.to_string(),
        role: role.as_str().to_string(),
        cert_sha256: fp,
        created_at_ns: now_ns(),
        revoked_at_ns: None,
    })?;
    store.flush()
}

fn identity_proto(r: IdentityRecord) -> v1::Identity {
    v1::Identity {
        name: r.name,
        role: r.role,
        cert_sha256: r.cert_sha256,
        created_at_ns: r.created_at_ns,
        revoked_at_ns: r.revoked_at_ns,
    }
}

#[tonic::async_trait]
impl v1::admin_service_server::AdminService for AdminSvc {
    async fn create_identity(
        &self,
        req: Request<v1::CreateIdentityRequest>,
    ) -> Result<Response<v1::CreateIdentityResponse>, Status> {
        let by = authorize(&req, Role::Admin)?;
        let r = req.into_inner();
        let role = match Role::parse(&r.role) {
            Some(role @ (Role::Admin | Role::Operator | Role::Reader)) => role,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "invalid role {:?}: use admin, operator or reader (agents enrol with a token)",
                    r.role
                )));
            }
        };
        let name = r.name.clone();
        let existing = self.c.blocking(move |s| s.get_identity(&name)).await?;
        if existing.as_ref().is_some_and(|e| e.revoked_at_ns.is_none()) {
            return Err(Status::already_exists(format!(
                "identity {:?} exists; revoke it first to issue the name again",
                r.name
            )));
        }
        let cert_pem = self
            .c
            .ca
            .sign_client_csr(role, &r.name, &r.csr_pem)
            .map_err(|e| match e {
                CaError::BadCsr(_) | CaError::BadName(_) => Status::invalid_argument(e.to_string()),
                other => Status::internal(other.to_string()),
            })?;
        let fp = pem_first_der(&cert_pem)
            .map(|d| cert_fingerprint(&d))
            .ok_or_else(|| Status::internal("issued certificate is not PEM"))?;
        let rec = IdentityRecord {
            name: r.name.clone(),
            role: role.as_str().to_string(),
            cert_sha256: fp.clone(),
            created_at_ns: now_ns(),
            revoked_at_ns: None,
        };
        self.c
            .blocking(move |s| {
                s.put_identity(&rec)?;
                s.flush()
            })
            .await?;
        tracing::info!(name = %r.name, role = role.as_str(), %by, "identity issued");
        Ok(Response::new(v1::CreateIdentityResponse {
            cert_pem,
            ca_pem: self.c.ca.cert_pem().to_string(),
            cert_sha256: fp,
        }))
    }

    async fn list_identities(
        &self,
        req: Request<v1::ListIdentitiesRequest>,
    ) -> Result<Response<v1::ListIdentitiesResponse>, Status> {
        authorize(&req, Role::Admin)?;
        let list = self.c.blocking(|s| s.list_identities()).await?;
        Ok(Response::new(v1::ListIdentitiesResponse {
            identities: list.into_iter().map(identity_proto).collect(),
        }))
    }

    async fn revoke_identity(
        &self,
        req: Request<v1::RevokeRequest>,
    ) -> Result<Response<v1::RevokeResponse>, Status> {
        let by = authorize(&req, Role::Admin)?;
        let name = req.into_inner().name;
        let n = name.clone();
        let rec = self
            .c
            .blocking(move |s| s.get_identity(&n))
            .await?
            .ok_or_else(|| Status::not_found(format!("no identity {name:?}")))?;
        let role = Role::parse(&rec.role).unwrap_or(Role::Reader);
        let fp = rec.cert_sha256.clone();
        let at = match rec.revoked_at_ns {
            Some(at) => at,
            None => {
                self.revoke(name.clone(), role, fp.clone(), Some(rec))
                    .await?
            }
        };
        tracing::warn!(%name, role = role.as_str(), %by, "identity revoked");
        Ok(Response::new(v1::RevokeResponse {
            name,
            cert_sha256: fp,
            revoked_at_ns: at,
            was_connected: false,
        }))
    }

    async fn revoke_agent(
        &self,
        req: Request<v1::RevokeRequest>,
    ) -> Result<Response<v1::RevokeResponse>, Status> {
        let by = authorize(&req, Role::Admin)?;
        let name = req.into_inner().name;
        let n = name.clone();
        let rec = self
            .c
            .blocking(move |s| s.get_agent(&n))
            .await?
            .ok_or_else(|| Status::not_found(format!("no agent {name:?} is enrolled")))?;
        if rec.cert_sha256.is_empty() {
            return Err(Status::failed_precondition(format!(
                "agent {name:?} has no certificate on record"
            )));
        }
        let was_connected = self.c.live(&name).is_some();
        let fp = rec.cert_sha256.clone();
        let at = self
            .revoke(name.clone(), Role::Agent, fp.clone(), None)
            .await?;
        tracing::warn!(%name, was_connected, %by, "agent revoked; its stored results stay");
        Ok(Response::new(v1::RevokeResponse {
            name,
            cert_sha256: fp,
            revoked_at_ns: at,
            was_connected,
        }))
    }
}
