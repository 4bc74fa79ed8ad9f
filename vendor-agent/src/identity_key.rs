//! The vendor's identity key: an ed25519 key that signs every receipt. It is
//! made on the first start, kept in `data_dir/identity.key` (64 hex digits,
//! mode 0600), and its public half is registered with the coordinator group,
//! which checks every receipt against it.

use std::path::{Path, PathBuf};

use offsite_identity::private::{check_private_file, create_private_dir, write_private, Exposed};
use offsite_proto::signing::VendorKey;
use rand::RngCore;

/// The key file's name inside the data directory.
pub const IDENTITY_KEY_FILE: &str = "identity.key";

/// Why the identity key could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum IdentityKeyError {
    #[error("cannot read identity key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot write identity key {path}: {source}; check that the data directory is writable"
    )]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("identity key: {0}")]
    Exposed(#[from] Exposed),
    #[error("identity key {0} is not 64 hex digits; restore it from a backup, or delete it to make a new identity (receipts then carry the new key, which the vendor registers on its next start)")]
    Malformed(PathBuf),
}

/// Loads the identity key from `data_dir`, making it on the first start.
pub fn load_or_create(data_dir: &Path) -> Result<VendorKey, IdentityKeyError> {
    let path = data_dir.join(IDENTITY_KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            check_private_file(&path)?;
            parse(&bytes).ok_or(IdentityKeyError::Malformed(path))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(&path),
        Err(source) => Err(IdentityKeyError::Read { path, source }),
    }
}

fn parse(bytes: &[u8]) -> Option<VendorKey> {
    let text = std::str::from_utf8(bytes).ok()?.trim();
    let mut secret = [0u8; 32];
    hex::decode_to_slice(text, &mut secret).ok()?;
    Some(VendorKey::from_secret(&secret))
}

fn create(path: &Path) -> Result<VendorKey, IdentityKeyError> {
    let write_err = |source| IdentityKeyError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    if let Some(parent) = path.parent() {
        create_private_dir(parent).map_err(write_err)?;
    }
    write_private(path, format!("{}\n", hex::encode(secret)).as_bytes()).map_err(write_err)?;
    tracing::info!(path = %path.display(), "made a new identity key");
    Ok(VendorKey::from_secret(&secret))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let path = dir.path().join(IDENTITY_KEY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_create(dir.path()).unwrap();
        assert_eq!(first.public_key(), again.public_key());
    }

    #[test]
    fn a_damaged_key_file_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(IDENTITY_KEY_FILE);
        std::fs::write(&path, "not hex").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityKeyError::Malformed(_)), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not hex");
    }

    #[test]
    fn a_key_others_can_read_is_refused_with_the_chmod_that_fixes_it() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        let path = dir.path().join(IDENTITY_KEY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityKeyError::Exposed(_)), "{err}");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
