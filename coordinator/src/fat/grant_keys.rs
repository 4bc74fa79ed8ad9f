//! The coordinator group's grant keys: the ed25519 keys that sign store,
//! fetch, delete and copy grants. They belong to the group, so they live in
//! the FAT and every coordinator signs with the same key. The newest key
//! signs; the [`KEPT_GRANT_KEYS`]` - 1` before it stay so that vendors keep
//! accepting grants signed before a rotation until those expire.
//!
//! The secret of a new key is drawn by the proposer, outside `apply`
//! ([`InstallGrantKey`]); `apply` only checks that it is the next key id, so
//! two coordinators proposing the first key at once install it once.

use std::collections::BTreeMap;

use offsite_proto::signing::GroupKey;
use serde::{Deserialize, Serialize};

use super::command::InstallGrantKey;
use super::{Fat, FatError, Outcome};

/// How many grant keys the FAT keeps: the signing one and the ones before it.
pub const KEPT_GRANT_KEYS: usize = 3;

/// The 32 secret bytes of a grant key; never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantSecret(pub [u8; 32]);

impl std::fmt::Debug for GrantSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrantSecret(..)")
    }
}

impl GrantSecret {
    /// A fresh random secret, for the proposer of [`InstallGrantKey`].
    pub fn random() -> Self {
        use rand::RngCore;
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }
}

/// One grant key as the FAT keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GrantKeyRecord {
    secret: GrantSecret,
    installed_unix_ms: u64,
}

/// The group's grant keys by key id; the highest id signs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GrantKeys {
    keys: BTreeMap<u32, GrantKeyRecord>,
}

/// A grant key's public side, as vendors and operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantKeyInfo {
    pub key_id: u32,
    pub public_key: [u8; 32],
    pub installed_unix_ms: u64,
}

impl Fat {
    pub(super) fn install_grant_key(&mut self, c: InstallGrantKey) -> Result<Outcome, FatError> {
        let next = self.next_grant_key_id();
        if c.key_id != next {
            return Err(FatError::Conflict(format!(
                "grant key {} is not the next key ({next}); another rotation happened \
                 meanwhile, so the group already has a fresh key: check `status`, rotate \
                 again only if you still need to",
                c.key_id
            )));
        }
        self.grant_keys.keys.insert(
            c.key_id,
            GrantKeyRecord {
                secret: c.secret,
                installed_unix_ms: c.now_unix_ms,
            },
        );
        let mut retired = Vec::new();
        while self.grant_keys.keys.len() > KEPT_GRANT_KEYS {
            if let Some((id, _)) = self.grant_keys.keys.pop_first() {
                retired.push(id);
            }
        }
        Ok(Outcome::GrantKeyInstalled {
            key_id: c.key_id,
            retired,
        })
    }

    /// The id the next grant key must have.
    pub fn next_grant_key_id(&self) -> u32 {
        self.grant_keys
            .keys
            .last_key_value()
            .map_or(1, |(id, _)| id.saturating_add(1))
    }

    /// The key that signs grants now, if the group has one yet.
    pub fn signing_grant_key(&self) -> Option<GroupKey> {
        self.grant_keys
            .keys
            .last_key_value()
            .map(|(id, k)| GroupKey::from_secret(*id, &k.secret.0))
    }

    /// Every kept grant key's public side, oldest first: what vendors verify
    /// grants with.
    pub fn grant_public_keys(&self) -> Vec<GrantKeyInfo> {
        self.grant_keys
            .keys
            .iter()
            .map(|(id, k)| GrantKeyInfo {
                key_id: *id,
                public_key: GroupKey::from_secret(*id, &k.secret.0).public_key(),
                installed_unix_ms: k.installed_unix_ms,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use offsite_proto::signing::{GrantBody, GrantOp, GrantSubject, GrantVerifier};
    use offsite_proto::{ReservationId, TenantId, VendorId};

    use super::*;
    use crate::fat::Command;

    fn install(fat: &mut Fat, key_id: u32, seed: u8) -> Result<Outcome, FatError> {
        fat.apply(Command::InstallGrantKey(InstallGrantKey {
            key_id,
            secret: GrantSecret([seed; 32]),
            now_unix_ms: u64::from(seed),
        }))
    }

    fn verifier(fat: &Fat) -> GrantVerifier {
        let keys: Vec<(u32, Vec<u8>)> = fat
            .grant_public_keys()
            .into_iter()
            .map(|k| (k.key_id, k.public_key.to_vec()))
            .collect();
        GrantVerifier::new(&keys).unwrap()
    }

    fn body() -> GrantBody {
        GrantBody {
            op: GrantOp::Store,
            tenant: TenantId::new("acme").unwrap(),
            vendor: VendorId::new("v1").unwrap(),
            subject: GrantSubject::Reservation(ReservationId::from_bytes([1; 16])),
            max_bytes: 10,
            expires_unix_ms: 100,
            address: String::new(),
        }
    }

    #[test]
    fn keys_are_installed_in_order_and_the_newest_signs() {
        let mut fat = Fat::default();
        assert!(fat.signing_grant_key().is_none());
        assert_eq!(fat.next_grant_key_id(), 1);
        assert!(matches!(
            install(&mut fat, 2, 1),
            Err(FatError::Conflict(_))
        ));
        assert_eq!(fat, Fat::default(), "a refused install changes nothing");
        install(&mut fat, 1, 1).unwrap();
        // A second proposer of the first key loses cleanly.
        let before = fat.clone();
        assert!(matches!(
            install(&mut fat, 1, 9),
            Err(FatError::Conflict(_))
        ));
        assert_eq!(fat, before);
        let old_grant = fat.signing_grant_key().unwrap().grant(&body());
        install(&mut fat, 2, 2).unwrap();
        assert_eq!(fat.signing_grant_key().unwrap().key_id, 2);
        let v = verifier(&fat);
        assert!(
            v.open(&old_grant, 0).is_ok(),
            "the previous key still verifies"
        );
        assert!(v
            .open(&fat.signing_grant_key().unwrap().grant(&body()), 0)
            .is_ok());
    }

    #[test]
    fn only_the_last_few_keys_are_kept() {
        let mut fat = Fat::default();
        let first = {
            install(&mut fat, 1, 1).unwrap();
            fat.signing_grant_key().unwrap().grant(&body())
        };
        for id in 2..=KEPT_GRANT_KEYS as u32 {
            install(&mut fat, id, id as u8).unwrap();
        }
        assert!(verifier(&fat).open(&first, 0).is_ok());
        let next = KEPT_GRANT_KEYS as u32 + 1;
        assert_eq!(
            install(&mut fat, next, 50).unwrap(),
            Outcome::GrantKeyInstalled {
                key_id: next,
                retired: vec![1]
            }
        );
        assert_eq!(fat.grant_public_keys().len(), KEPT_GRANT_KEYS);
        assert!(verifier(&fat).open(&first, 0).is_err());
        assert!(
            !format!("{fat:?}").contains("[1, 1, 1"),
            "secrets are not printed"
        );
    }
}
