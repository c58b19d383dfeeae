//! Roles carried in client certificates as SAN URIs: `tracemesh:role:agent/NAME`,
//! `tracemesh:role:admin/NAME`.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer as _;

const URI_PREFIX: &str = "tracemesh:role:";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Agent,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Admin => "admin",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RoleError {
    #[error("client certificate is not valid X.509: {0}")]
    Parse(String),
    #[error("client certificate carries no tracemesh role")]
    NoRole,
    #[error("client certificate carries more than one tracemesh role")]
    Ambiguous,
}

pub fn role_uri(role: Role, name: &str) -> String {
    format!("{URI_PREFIX}{}/{name}", role.as_str())
}

/// Parses `tracemesh:role:ROLE/NAME`; anything else is not a role URI.
pub fn parse_role_uri(uri: &str) -> Option<(Role, String)> {
    let rest = uri.strip_prefix(URI_PREFIX)?;
    let (role, name) = rest.split_once('/')?;
    let role = match role {
        "agent" => Role::Agent,
        "admin" => Role::Admin,
        _ => return None,
    };
    if !super::valid_name(name) {
        return None;
    }
    Some((role, name.to_string()))
}

/// The role and name in a (chain-verified) client certificate.
pub fn role_of_cert_der(der: &[u8]) -> Result<(Role, String), RoleError> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| RoleError::Parse(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| RoleError::Parse(e.to_string()))?;
    let mut found = None;
    for gn in san.iter().flat_map(|s| s.value.general_names.iter()) {
        if let GeneralName::URI(uri) = gn
            && let Some(r) = parse_role_uri(uri)
        {
            if found.is_some() {
                return Err(RoleError::Ambiguous);
            }
            found = Some(r);
        }
    }
    found.ok_or(RoleError::NoRole)
}
