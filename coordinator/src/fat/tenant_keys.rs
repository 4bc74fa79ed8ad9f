//! The tenants' key files, kept so that a tenant can restore on a new machine
//! with only its passphrase and its certificate. A key file holds the data
//! key wrapped under a key derived from the passphrase (argon2id, parameters
//! inside): the coordinator group stores it and hands it back to the same
//! tenant, and cannot unwrap it.

use offsite_proto::TenantId;

use super::command::StoreTenantKey;
use super::{Fat, FatError, Outcome};

/// Largest key file the FAT keeps (a real one is under 1 KiB).
pub const MAX_TENANT_KEY_BYTES: usize = 16 * 1024;

pub(super) fn check_tenant_key(c: &StoreTenantKey) -> Result<(), FatError> {
    if c.key_file.is_empty() || c.key_file.len() > MAX_TENANT_KEY_BYTES {
        return Err(FatError::Invalid(format!(
            "a key file of {} bytes; send the key file `offsite init` wrote (1 to \
             {MAX_TENANT_KEY_BYTES} bytes)",
            c.key_file.len()
        )));
    }
    Ok(())
}

impl Fat {
    /// Keeps (or replaces) the tenant's key file.
    pub(super) fn store_tenant_key(&mut self, c: StoreTenantKey) -> Result<Outcome, FatError> {
        check_tenant_key(&c)?;
        self.tenant_keys.insert(c.tenant, c.key_file);
        Ok(Outcome::TenantKeyStored)
    }

    /// The tenant's key file, if it stored one.
    pub fn tenant_key(&self, tenant: &TenantId) -> Option<Vec<u8>> {
        self.tenant_keys.get(tenant).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fat::Command;

    fn store(tenant: &str, key_file: &[u8]) -> Command {
        Command::StoreTenantKey(StoreTenantKey {
            tenant: TenantId::new(tenant).unwrap(),
            key_file: key_file.to_vec(),
            now_unix_ms: 1,
        })
    }

    #[test]
    fn each_tenant_gets_back_only_its_own_latest_key_file() {
        let mut fat = Fat::default();
        fat.apply(store("acme", b"first")).unwrap();
        fat.apply(store("globex", b"theirs")).unwrap();
        fat.apply(store("acme", b"second")).unwrap();
        let acme = TenantId::new("acme").unwrap();
        assert_eq!(fat.tenant_key(&acme), Some(b"second".to_vec()));
        assert_eq!(
            fat.tenant_key(&TenantId::new("globex").unwrap()),
            Some(b"theirs".to_vec())
        );
        assert_eq!(fat.tenant_key(&TenantId::new("initech").unwrap()), None);
    }

    #[test]
    fn empty_and_oversize_key_files_are_refused_and_change_nothing() {
        let mut fat = Fat::default();
        fat.apply(store("acme", b"kept")).unwrap();
        let before = fat.clone();
        assert!(matches!(
            fat.apply(store("acme", b"")),
            Err(FatError::Invalid(_))
        ));
        let huge = vec![b'x'; MAX_TENANT_KEY_BYTES + 1];
        assert!(matches!(
            fat.apply(store("acme", &huge)),
            Err(FatError::Invalid(_))
        ));
        assert_eq!(fat, before);
    }
}
