//! The sled side of [`super::super::access`]: three small JSON trees, opened on demand
//! (sled caches open trees) so the store's own layout is untouched.

use super::{SledStore, corrupt, json};
use crate::store::StoreError;
use crate::store::access::{IdentityRecord, RevocationRecord};

const IDENTITIES: &str = "identities";
const REVOKED: &str = "revoked_certs";
const OWNERS: &str = "campaign_owners";

impl SledStore {
    pub(super) fn put_identity_impl(&self, r: &IdentityRecord) -> Result<(), StoreError> {
        self.db
            .open_tree(IDENTITIES)?
            .insert(r.name.as_bytes(), json("identity", r)?)?;
        Ok(())
    }

    pub(super) fn get_identity_impl(
        &self,
        name: &str,
    ) -> Result<Option<IdentityRecord>, StoreError> {
        self.db
            .open_tree(IDENTITIES)?
            .get(name.as_bytes())?
            .map(|v| {
                serde_json::from_slice(&v).map_err(|e| corrupt("identity", name.as_bytes(), e))
            })
            .transpose()
    }

    pub(super) fn list_identities_impl(&self) -> Result<Vec<IdentityRecord>, StoreError> {
        self.db
            .open_tree(IDENTITIES)?
            .iter()
            .map(|e| {
                let (k, v) = e?;
                serde_json::from_slice(&v).map_err(|e| corrupt("identity", &k, e))
            })
            .collect()
    }

    pub(super) fn put_revocation_impl(&self, r: &RevocationRecord) -> Result<(), StoreError> {
        self.db
            .open_tree(REVOKED)?
            .insert(r.cert_sha256.as_bytes(), json("revocation", r)?)?;
        Ok(())
    }

    pub(super) fn list_revocations_impl(&self) -> Result<Vec<RevocationRecord>, StoreError> {
        self.db
            .open_tree(REVOKED)?
            .iter()
            .map(|e| {
                let (k, v) = e?;
                serde_json::from_slice(&v).map_err(|e| corrupt("revocation", &k, e))
            })
            .collect()
    }

    pub(super) fn put_campaign_owner_impl(&self, id: &str, owner: &str) -> Result<(), StoreError> {
        self.db
            .open_tree(OWNERS)?
            .insert(id.as_bytes(), owner.as_bytes())?;
        Ok(())
    }

    pub(super) fn campaign_owner_impl(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.db
            .open_tree(OWNERS)?
            .get(id.as_bytes())?
            .map(|v| {
                String::from_utf8(v.to_vec())
                    .map_err(|e| corrupt("campaign owner", id.as_bytes(), e))
            })
            .transpose()
    }
}
