//! Who may call the coordinator, as it remembers across restarts: identities it issued
//! (`tracemesh identity create`), certificates it revoked, and who created each campaign
//! (for per-operator caps).

use serde::{Deserialize, Serialize};

/// A client identity issued by `CreateIdentity` (or the admin identity `serve` wrote).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdentityRecord {
    pub name: String,
    /// `admin`, `operator` or `reader`.
    pub role: String,
    /// SHA-256 (hex) of the issued certificate's DER.
    pub cert_sha256: String,
    pub created_at_ns: i64,
    #[serde(default)]
    pub revoked_at_ns: Option<i64>,
}

/// A revoked certificate: refused from then on, whoever presents it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevocationRecord {
    pub cert_sha256: String,
    pub name: String,
    /// The certificate's role: `agent`, `admin`, `operator` or `reader`.
    pub role: String,
    pub revoked_at_ns: i64,
}
