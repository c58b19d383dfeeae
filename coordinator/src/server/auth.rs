//! Which verified client may call what. rustls has already verified any presented chain
//! against the coordinator CA; this only reads the role out of the leaf. Revoked
//! certificates never get here: `revoke::interceptor` refuses them on every service.
//!
//! Which role each RPC needs: `Session` agent; `QueryTraces`, `SubscribeTraces`,
//! `SubscribeDiversions`, `QueryDiversionRecords`, `QueryAliases`, `ListAgents`,
//! `ListCampaigns`, `GetCampaign` reader; `CreateToken`, `CreateCampaign`, `CancelCampaign` operator; `AdminService`
//! (identities, revocation) admin. A higher consumer role includes the lower ones.

use rustls::pki_types::CertificateDer;
use tonic::{Request, Status};

use crate::ca::{Role, role_of_cert_der};

/// The name in the caller's certificate, if its role grants `required`.
pub fn authorize<T>(req: &Request<T>, required: Role) -> Result<String, Status> {
    authorize_role(req, required).map(|(_, name)| name)
}

/// [`authorize`], also returning the caller's own role (quotas differ by role).
pub fn authorize_role<T>(req: &Request<T>, required: Role) -> Result<(Role, String), Status> {
    let certs = req.peer_certs();
    authorize_certs_role(certs.as_deref().map(Vec::as_slice), required)
}

pub fn authorize_certs(
    certs: Option<&[CertificateDer<'_>]>,
    required: Role,
) -> Result<String, Status> {
    authorize_certs_role(certs, required).map(|(_, name)| name)
}

fn authorize_certs_role(
    certs: Option<&[CertificateDer<'_>]>,
    required: Role,
) -> Result<(Role, String), Status> {
    let leaf = certs.and_then(|c| c.first()).ok_or_else(|| {
        Status::unauthenticated(
            "this call requires a client certificate issued by the coordinator \
             (agents: enrol first; people and programs: an identity from \
             `tracemesh identity create`, or the admin identity)",
        )
    })?;
    let (role, name) =
        role_of_cert_der(leaf).map_err(|e| Status::permission_denied(e.to_string()))?;
    if !role.grants(required) {
        return Err(Status::permission_denied(format!(
            "certificate of {} {name:?} may not call this service (it needs the {} role)",
            role.as_str(),
            required.as_str()
        )));
    }
    Ok((role, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::Ca;
    use tonic::Code;

    fn der(pem: &str) -> CertificateDer<'static> {
        use base64::Engine as _;
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        CertificateDer::from(
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .unwrap(),
        )
    }

    #[test]
    fn roles_gate_services() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let admin = [der(&ca
            .issue_client(Role::Admin, "admin")
            .unwrap()
            .cert_pem)];
        let agent = [der(&ca
            .issue_client(Role::Agent, "tor-1")
            .unwrap()
            .cert_pem)];
        let server = [der(&ca.issue_server(&[]).unwrap().cert_pem)];
        assert_eq!(authorize_certs(Some(&admin), Role::Admin).unwrap(), "admin");
        assert_eq!(authorize_certs(Some(&agent), Role::Agent).unwrap(), "tor-1");
        assert_eq!(
            authorize_certs(Some(&agent), Role::Admin)
                .unwrap_err()
                .code(),
            Code::PermissionDenied
        );
        assert_eq!(
            authorize_certs(Some(&admin), Role::Agent)
                .unwrap_err()
                .code(),
            Code::PermissionDenied
        );
        assert_eq!(
            authorize_certs(Some(&server), Role::Admin)
                .unwrap_err()
                .code(),
            Code::PermissionDenied
        );
        assert_eq!(
            authorize_certs(None, Role::Agent).unwrap_err().code(),
            Code::Unauthenticated
        );
        assert_eq!(
            authorize_certs(Some(&[]), Role::Agent).unwrap_err().code(),
            Code::Unauthenticated
        );
    }
}
