//! Enrolment token records and the pure decision whether one may be used now.

use serde::{Deserialize, Serialize};

use super::AgentMeta;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub meta: AgentMeta,
    pub created_at_ns: i64,
    pub expires_at_ns: i64,
    #[serde(default)]
    pub used_at_ns: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    #[error("enrolment token unknown to this coordinator")]
    Unknown,
    #[error("enrolment token expired")]
    Expired,
    #[error("enrolment token already used")]
    AlreadyUsed,
}

/// May `token` enrol an agent at `now_ns`? Use wins over expiry in the answer, since
/// "already used" tells the operator more.
pub fn check_token(token: &TokenRecord, now_ns: i64) -> Result<(), TokenRejection> {
    if token.used_at_ns.is_some() {
        return Err(TokenRejection::AlreadyUsed);
    }
    if now_ns >= token.expires_at_ns {
        return Err(TokenRejection::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(expires: i64, used: Option<i64>) -> TokenRecord {
        TokenRecord {
            meta: AgentMeta {
                name: "a".into(),
                ..Default::default()
            },
            created_at_ns: 0,
            expires_at_ns: expires,
            used_at_ns: used,
        }
    }

    #[test]
    fn fresh_token_is_accepted_until_expiry() {
        assert_eq!(check_token(&tok(100, None), 99), Ok(()));
        assert_eq!(
            check_token(&tok(100, None), 100),
            Err(TokenRejection::Expired)
        );
    }

    #[test]
    fn used_token_is_refused_even_before_expiry() {
        assert_eq!(
            check_token(&tok(100, Some(5)), 10),
            Err(TokenRejection::AlreadyUsed)
        );
        assert_eq!(
            check_token(&tok(100, Some(5)), 200),
            Err(TokenRejection::AlreadyUsed)
        );
    }
}
