//! The enrolment token: everything an agent needs for its first contact, in one string
//! that fits a cloud-init line. It pins the coordinator's CA (the agent trusts nothing
//! else), names the address to dial, and carries a one-time secret the coordinator
//! checks and burns. Format: `tm1.` + base64url (no padding) of the JSON [`EnrolToken`].

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

const PREFIX: &str = "tm1.";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolToken {
    /// Address the agent dials (host:port).
    pub coordinator: String,
    /// The agent name this token enrols.
    pub name: String,
    /// One-time secret; the coordinator stores only its SHA-256.
    pub secret: String,
    /// The coordinator CA certificate (PEM), the only trust anchor the agent uses.
    pub ca_pem: String,
    /// Unix seconds after which the coordinator refuses the token (informational here;
    /// the coordinator's own record decides).
    pub expires_at: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenFormatError {
    #[error("not a tracemesh enrolment token (expected it to start with {PREFIX:?})")]
    Prefix,
    #[error("enrolment token is not valid base64url: {0}")]
    Base64(String),
    #[error("enrolment token payload is not valid: {0}")]
    Json(String),
}

impl EnrolToken {
    pub fn encode(&self) -> String {
        // Serialising a struct of strings and integers cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    pub fn decode(s: &str) -> Result<Self, TokenFormatError> {
        let body = s
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(TokenFormatError::Prefix)?;
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| TokenFormatError::Base64(e.to_string()))?;
        serde_json::from_slice(&json).map_err(|e| TokenFormatError::Json(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EnrolToken {
        EnrolToken {
            coordinator: "127.0.0.1:7443".into(),
            name: "ottawa-1".into(),
            secret: "s3cr3t".into(),
            ca_pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
            expires_at: 1_800_000_000,
        }
    }

    #[test]
    fn round_trips_and_is_shell_safe() {
        let t = sample();
        let s = t.encode();
        assert!(s.starts_with("tm1."));
        assert!(
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "{s}"
        );
        assert_eq!(EnrolToken::decode(&s).unwrap(), t);
        assert_eq!(EnrolToken::decode(&format!("  {s}\n")).unwrap(), t);
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        assert_eq!(EnrolToken::decode("hello"), Err(TokenFormatError::Prefix));
        assert!(matches!(
            EnrolToken::decode("tm1.!!!"),
            Err(TokenFormatError::Base64(_))
        ));
        assert!(matches!(
            EnrolToken::decode(&format!("tm1.{}", URL_SAFE_NO_PAD.encode(b"{\"x\":1}"))),
            Err(TokenFormatError::Json(_))
        ));
    }
}
