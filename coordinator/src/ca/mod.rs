//! The coordinator's own certificate authority.
//!
//! Created on first start in `DATA/ca/`, reloaded afterwards. It issues: agent client
//! certificates (from the agent's CSR: the agent's key never leaves the agent), the admin
//! client identity the CLI uses, and the server certificate. The role of a client is in
//! its certificate as a SAN URI `tracemesh:role:ROLE/NAME`, so authorisation needs no
//! lookup and survives store loss.

use std::fmt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use tracemesh_proto::COORDINATOR_TLS_NAME;

pub mod role;

pub use role::{Role, RoleError, role_of_cert_der};

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation ({what})")]
    Rcgen {
        what: &'static str,
        source: rcgen::Error,
    },
    #[error("invalid certificate signing request: {0}")]
    BadCsr(rcgen::Error),
    #[error("invalid name {0:?}: use 1-64 characters from [A-Za-z0-9._-]")]
    BadName(String),
}

fn rc(what: &'static str) -> impl FnOnce(rcgen::Error) -> CaError {
    move |source| CaError::Rcgen { what, source }
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct IssuedIdentity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for IssuedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedIdentity")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .finish()
    }
}

/// Names end up in certificates, store keys and URIs: keep them boring.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn write_private(path: &Path, contents: &str) -> Result<(), CaError> {
    use std::io::Write as _;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let io = |source| CaError::Io {
        action: "writing",
        path: path.to_path_buf(),
        source,
    };
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::Io {
        action: "reading",
        path: path.to_path_buf(),
        source,
    })
}

impl Ca {
    /// Loads `dir/ca.pem` + `dir/ca.key`, or creates them if neither exists.
    pub fn load_or_create(dir: &Path) -> Result<Ca, CaError> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        if cert_path.exists() || key_path.exists() {
            let cert_pem = read(&cert_path)?;
            let key = KeyPair::from_pem(&read(&key_path)?).map_err(rc("loading CA key"))?;
            let issuer =
                Issuer::from_ca_cert_pem(&cert_pem, key).map_err(rc("loading CA certificate"))?;
            return Ok(Ca { cert_pem, issuer });
        }
        std::fs::create_dir_all(dir).map_err(|source| CaError::Io {
            action: "creating",
            path: dir.to_path_buf(),
            source,
        })?;
        let key = KeyPair::generate().map_err(rc("CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "tracemesh");
        dn.push(DnType::CommonName, "tracemesh coordinator CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).map_err(rc("CA certificate"))?;
        let cert_pem = cert.pem();
        // Key first: a crash between the two writes leaves a key without a cert, which
        // load_or_create reports instead of silently minting a second CA.
        write_private(&key_path, &key.serialize_pem())?;
        write_private(&cert_path, &cert_pem)?;
        tracing::info!(dir = %dir.display(), "created coordinator CA");
        Ok(Ca {
            cert_pem,
            issuer: Issuer::new(params, key),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    fn client_params(role: Role, name: &str) -> Result<CertificateParams, CaError> {
        if !valid_name(name) {
            return Err(CaError::BadName(name.to_string()));
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "tracemesh");
        dn.push(DnType::OrganizationalUnitName, role.as_str());
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(
            role::role_uri(role, name)
                .try_into()
                .map_err(rc("role URI"))?,
        )];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }

    /// Signs an agent's CSR. Only the CSR's public key is used: subject and extensions are
    /// ours, so an agent cannot ask for another name or role.
    pub fn sign_agent_csr(&self, name: &str, csr_pem: &str) -> Result<String, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(CaError::BadCsr)?;
        let params = Self::client_params(Role::Agent, name)?;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(rc("agent certificate"))?;
        Ok(cert.pem())
    }

    /// Signs a consumer identity's CSR (`tracemesh identity create`: the key is made where
    /// the CLI runs). As for agents, only the CSR's public key is used.
    pub fn sign_client_csr(
        &self,
        role: Role,
        name: &str,
        csr_pem: &str,
    ) -> Result<String, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(CaError::BadCsr)?;
        let params = Self::client_params(role, name)?;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(rc("client certificate"))?;
        Ok(cert.pem())
    }

    /// A fresh key and client certificate with the given role.
    pub fn issue_client(&self, role: Role, name: &str) -> Result<IssuedIdentity, CaError> {
        let key = KeyPair::generate().map_err(rc("client key"))?;
        let params = Self::client_params(role, name)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(rc("client certificate"))?;
        Ok(IssuedIdentity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Server certificate valid for [`COORDINATOR_TLS_NAME`], loopback, and `extra_names`
    /// (hostnames or IP literals the coordinator is advertised under).
    pub fn issue_server(&self, extra_names: &[String]) -> Result<IssuedIdentity, CaError> {
        let mut names = vec![
            COORDINATOR_TLS_NAME.to_string(),
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        for n in extra_names {
            if !n.is_empty() && !names.contains(n) {
                names.push(n.clone());
            }
        }
        let key = KeyPair::generate().map_err(rc("server key"))?;
        let mut params = CertificateParams::new(names).map_err(rc("server names"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "tracemesh");
        dn.push(DnType::CommonName, COORDINATOR_TLS_NAME);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(rc("server certificate"))?;
        Ok(IssuedIdentity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A client identity bundle as one PEM file: the client certificate, then the CA
/// certificate(s) it trusts for the server, then the private key.
pub fn identity_bundle(id: &IssuedIdentity, ca_pem: &str) -> String {
    format!("{}{}{}", id.cert_pem, ca_pem, id.key_pem)
}

/// Splits an [`identity_bundle`]: (client cert PEM, CA PEM, key PEM).
pub fn split_identity_bundle(pem: &str) -> Option<(String, String, String)> {
    let mut certs = Vec::new();
    let mut key = None;
    let mut rest = pem;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start..];
        let label_end = after[11..].find("-----")? + 11;
        let label = &after[11..label_end];
        let end_marker = format!("-----END {label}-----");
        let end = after.find(&end_marker)? + end_marker.len();
        let block = format!("{}\n", &after[..end]);
        if label == "CERTIFICATE" {
            certs.push(block);
        } else if label.ends_with("PRIVATE KEY") {
            key = Some(block);
        }
        rest = &after[end..];
    }
    if certs.len() < 2 {
        return None;
    }
    let client = certs.remove(0);
    Some((client, certs.concat(), key?))
}

/// Write a bundle with owner-only permissions.
pub fn write_identity_bundle(path: &Path, bundle: &str) -> Result<(), CaError> {
    write_private(path, bundle)
}

/// The DER of the first certificate in a PEM text.
pub fn pem_first_der(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let start = pem.find("-----BEGIN CERTIFICATE-----")? + "-----BEGIN CERTIFICATE-----".len();
    let end = pem[start..].find("-----END CERTIFICATE-----")? + start;
    let body: String = pem[start..end].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

/// SHA-256 of a certificate's DER, hex: how the registry remembers which cert an agent has.
pub fn cert_fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests;
