//! The agent's state directory: its identity (key, certificate, pinned CA), the campaigns
//! it holds, and the result spool. Everything the agent needs after its first start.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::schedule::Held;

#[derive(Debug, Error)]
pub enum StateError {
    #[error("state {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is not valid: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentIdentity {
    pub name: String,
    /// Where sessions dial (host:port).
    pub coordinator: String,
}

/// PEM material of an enrolled agent.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub key_pem: String,
    pub cert_chain_pem: String,
    pub ca_pem: String,
}

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn open(root: &Path) -> Result<Self, StateError> {
        fs::create_dir_all(root).map_err(io(root))?;
        Ok(StateDir {
            root: root.to_path_buf(),
        })
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.root.join("spool")
    }

    fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The identity and credentials, if the agent has enrolled.
    pub fn load_identity(&self) -> Result<Option<(AgentIdentity, Credentials)>, StateError> {
        let id_path = self.file("identity.json");
        if !id_path.exists() {
            return Ok(None);
        }
        let identity: AgentIdentity = read_json(&id_path)?;
        let read = |n: &str| {
            let p = self.file(n);
            fs::read_to_string(&p).map_err(io(&p))
        };
        Ok(Some((
            identity,
            Credentials {
                key_pem: read("key.pem")?,
                cert_chain_pem: read("cert.pem")?,
                ca_pem: read("ca.pem")?,
            },
        )))
    }

    /// Stores a fresh enrolment; the identity file goes last, so a crash midway leaves
    /// an agent that simply enrols again.
    pub fn save_identity(&self, id: &AgentIdentity, c: &Credentials) -> Result<(), StateError> {
        write_atomic(&self.file("key.pem"), c.key_pem.as_bytes(), true)?;
        write_atomic(&self.file("cert.pem"), c.cert_chain_pem.as_bytes(), false)?;
        write_atomic(&self.file("ca.pem"), c.ca_pem.as_bytes(), false)?;
        let json = serde_json::to_vec_pretty(id).map_err(|e| StateError::Invalid {
            path: self.file("identity.json"),
            reason: e.to_string(),
        })?;
        write_atomic(&self.file("identity.json"), &json, false)
    }

    pub fn load_campaigns(&self) -> Result<Held, StateError> {
        let p = self.file("campaigns.json");
        if !p.exists() {
            return Ok(Held::default());
        }
        read_json(&p)
    }

    pub fn save_campaigns(&self, held: &Held) -> Result<(), StateError> {
        let p = self.file("campaigns.json");
        let json = serde_json::to_vec_pretty(held).map_err(|e| StateError::Invalid {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&p, &json, false)
    }
}

fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> Result<T, StateError> {
    let bytes = fs::read(p).map_err(io(p))?;
    serde_json::from_slice(&bytes).map_err(|e| StateError::Invalid {
        path: p.to_path_buf(),
        reason: e.to_string(),
    })
}

fn write_atomic(p: &Path, bytes: &[u8], secret: bool) -> Result<(), StateError> {
    let tmp = p.with_extension("tmp");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, p).map_err(io(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::schedule::HeldCampaign;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn identity_and_campaigns_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        assert!(s.load_identity().unwrap().is_none());
        let id = AgentIdentity {
            name: "ottawa-1".into(),
            coordinator: "127.0.0.1:7443".into(),
        };
        let c = Credentials {
            key_pem: "KEY".into(),
            cert_chain_pem: "CERT".into(),
            ca_pem: "CA".into(),
        };
        s.save_identity(&id, &c).unwrap();
        let (id2, c2) = s.load_identity().unwrap().unwrap();
        assert_eq!(id2, id);
        assert_eq!(c2.key_pem, "KEY");
        let mode = fs::metadata(dir.path().join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the private key is readable by its owner only"
        );

        let mut held = Held::default();
        held.upsert(HeldCampaign {
            id: "c1".into(),
            targets: vec!["192.0.2.1".into()],
            proto: crate::probe::Proto::Udp,
            attempts: 2,
            max_ttl: 16,
            wait_ms: 500,
            every_s: 10,
            rounds: 3,
            start_at_ns: 5,
            next_round: 1,
            alias: None,
            mesh: None,
            mda: None,
        });
        s.save_campaigns(&held).unwrap();
        assert_eq!(s.load_campaigns().unwrap(), held);
        fs::write(dir.path().join("campaigns.json"), b"{not json").unwrap();
        let e = s.load_campaigns().unwrap_err();
        assert!(e.to_string().contains("campaigns.json is not valid"), "{e}");
    }
}
