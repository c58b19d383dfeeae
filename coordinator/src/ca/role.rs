//! Roles carried in client certificates as SAN URIs: `tracemesh:role:agent/NAME`,
//! `tracemesh:role:admin/NAME`, `tracemesh:role:operator/NAME`, `tracemesh:role:reader/NAME`.
//!
//! Consumer roles are nested: an admin may do everything an operator may (campaigns,
//! tokens), and an operator everything a reader may (query and subscribe). Agents are
//! apart: an agent certificate opens a session and nothing else.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer as _;

const URI_PREFIX: &str = "tracemesh:role:";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Agent,
    Admin,
    Operator,
    Reader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Reader => "reader",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "agent" => Some(Role::Agent),
            "admin" => Some(Role::Admin),
            "operator" => Some(Role::Operator),
            "reader" => Some(Role::Reader),
            _ => None,
        }
    }

    /// Rank among consumer roles; agents have none.
    fn rank(self) -> Option<u8> {
        match self {
            Role::Agent => None,
            Role::Reader => Some(1),
            Role::Operator => Some(2),
            Role::Admin => Some(3),
        }
    }

    /// Whether a holder of `self` may make a call that needs `required`.
    pub fn grants(self, required: Role) -> bool {
        match (self.rank(), required.rank()) {
            (Some(have), Some(need)) => have >= need,
            _ => self == required,
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
    let role = Role::parse(role)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_roles_nest_and_agents_stand_apart() {
        use Role::*;
        let all = [Agent, Admin, Operator, Reader];
        for r in all {
            assert_eq!(Role::parse(r.as_str()), Some(r));
            assert_eq!(parse_role_uri(&role_uri(r, "x")), Some((r, "x".into())));
        }
        assert!(Admin.grants(Operator) && Admin.grants(Reader) && Operator.grants(Reader));
        assert!(!Reader.grants(Operator) && !Reader.grants(Admin) && !Operator.grants(Admin));
        assert!(Agent.grants(Agent));
        for r in [Admin, Operator, Reader] {
            assert!(!Agent.grants(r) && !r.grants(Agent));
        }
        assert_eq!(parse_role_uri("tracemesh:role:root/x"), None);
    }
}
