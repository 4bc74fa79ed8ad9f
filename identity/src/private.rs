//! Files and directories that hold secrets: private keys, the coordinator's
//! FAT store with the group's grant keys, a vendor's identity key, the
//! client's key file and caches (which hold plaintext paths). Directories
//! are made 0700 and files 0600, secret files are written atomically, and a
//! daemon refuses a key file that other users can read.

use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A secret file whose mode lets other users read or change it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} holds a secret key but other users may read it (mode {mode:03o}); \
     run `chmod 600 {}` (and keep its directory private)",
    path.display(),
    path.display()
)]
pub struct Exposed {
    pub path: PathBuf,
    pub mode: u32,
}

/// Refuses `path` if its group or others have any access to it. Callers
/// have just read the file, so a file that cannot be stat'ed has already
/// been reported; it is not refused here.
pub fn check_private_file(path: &Path) -> Result<(), Exposed> {
    let Ok(metadata) = std::fs::metadata(path) else {
        return Ok(());
    };
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        Ok(())
    } else {
        Err(Exposed {
            path: path.to_path_buf(),
            mode,
        })
    }
}

/// Creates `dir` and any missing parents with mode 0700. A `dir` that
/// already exists is left as it is (it may be a directory the operator
/// shares on purpose, or a mistake such as `/var/lib`), but one that others
/// may enter is logged with the `chmod` that makes it private.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            dir = %dir.display(),
            mode = format!("{mode:03o}"),
            "other users may enter this directory, which holds secrets; run `chmod 700 {}`",
            dir.display()
        );
    }
    Ok(())
}

/// Writes `bytes` to `path` (mode 0600) through a temporary file in the
/// same directory, fsynced and renamed into place, then fsyncs the
/// directory: a crash leaves the old file or the new one, never half of it.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a secret file needs a file name",
        )
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{:016x}",
        name.to_string_lossy(),
        rand_suffix()
    ));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A suffix that keeps two writers' temporary files apart.
fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn missing_directories_are_made_private_and_existing_ones_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("a/b/c");
        create_private_dir(&deep).unwrap();
        assert_eq!(mode(&deep), 0o700);
        assert_eq!(mode(&root.path().join("a")), 0o700);

        let open = root.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&open).unwrap();
        assert_eq!(mode(&open), 0o755);
    }

    #[test]
    fn a_secret_is_written_whole_with_mode_0600_and_replaced_atomically() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("identity.key");
        write_private(&path, b"first").unwrap();
        assert_eq!(mode(&path), 0o600);
        write_private(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(mode(&path), 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("identity.key")]);
    }

    #[test]
    fn a_key_file_others_can_read_is_named_with_the_chmod_that_fixes_it() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("vendor.key");
        write_private(&path, b"secret").unwrap();
        assert_eq!(check_private_file(&path), Ok(()));
        for open in [0o640, 0o604, 0o644] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(open)).unwrap();
            let exposed = check_private_file(&path).unwrap_err();
            assert_eq!(exposed.mode, open);
            let text = exposed.to_string();
            assert!(
                text.contains(&format!("chmod 600 {}", path.display())),
                "{text}"
            );
        }
    }
}
