//! The tenant's keys. `offsite init` writes the key file: a random 32-byte
//! data key wrapped (XChaCha20-Poly1305) under a key derived from the
//! passphrase with argon2id. Unlocking gives the sub-keys the client uses:
//! the blob encryption key and the blob-id key. The data key never leaves the
//! client.

use std::io::Write;
use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

/// Version of the key file format.
pub const KEY_FILE_VERSION: u32 = 1;
/// Environment variable naming a file that holds the passphrase.
pub const PASSWORD_FILE_ENV: &str = "OFFSITE_PASSWORD_FILE";
/// Environment variable holding the passphrase itself.
pub const PASSWORD_ENV: &str = "OFFSITE_PASSWORD";
/// Environment variable naming a file that holds the new passphrase (`key passwd`).
pub const NEW_PASSWORD_FILE_ENV: &str = "OFFSITE_NEW_PASSWORD_FILE";
/// Environment variable holding the new passphrase itself (`key passwd`).
pub const NEW_PASSWORD_ENV: &str = "OFFSITE_NEW_PASSWORD";
/// Largest key file we read.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;
/// Largest passphrase file we read.
const MAX_PASSWORD_FILE_BYTES: u64 = 4096;
const WRAP_CONTEXT: &[u8] = b"offsite key file v1";

/// argon2id cost of deriving the wrapping key from the passphrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub passes: u32,
    pub lanes: u32,
}

impl KdfParams {
    /// What `offsite init` uses: 64 MiB, 3 passes, 1 lane.
    pub const DEFAULT: KdfParams = KdfParams {
        memory_kib: 64 * 1024,
        passes: 3,
        lanes: 1,
    };

    fn check(&self) -> Result<Params, String> {
        if self.memory_kib > 4 * 1024 * 1024 || self.passes > 64 || self.lanes > 64 {
            return Err(format!(
                "argon2 parameters {self:?} are beyond any sane cost"
            ));
        }
        Params::new(self.memory_kib, self.passes, self.lanes, Some(32)).map_err(|e| e.to_string())
    }
}

/// The key file as stored (JSON).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    version: u32,
    kdf: String,
    params: KdfParams,
    salt: String,
    nonce: String,
    wrapped_key: String,
}

/// Why a key could not be created or unlocked.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the passphrase does not unlock key file {0}; check the passphrase (OFFSITE_PASSWORD_FILE, OFFSITE_PASSWORD or password_file)")]
    WrongPassphrase(PathBuf),
    #[error("key file {0} already exists; refusing to overwrite it (move it away first if you really mean to start over)")]
    AlreadyExists(PathBuf),
    #[error(
        "no passphrase: set {PASSWORD_FILE_ENV} or {PASSWORD_ENV}, or password_file in the config"
    )]
    NoPassphrase,
    #[error("no new passphrase: pass --new-password-file FILE, or set {NEW_PASSWORD_FILE_ENV} or {NEW_PASSWORD_ENV}")]
    NoNewPassphrase,
    #[error("the passphrase is empty; choose a non-empty passphrase")]
    EmptyPassphrase,
    #[error("cannot read {path}: {source}; run `offsite init` first if there is no key file yet")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write key file {path}: {source}; check the directory exists and is writable")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path} is malformed: {problem}; restore it from your copy")]
    Malformed { path: PathBuf, problem: String },
}

/// The unlocked keys. Zeroized on drop.
pub struct Keys {
    encryption: Zeroizing<[u8; 32]>,
    blob_id: Zeroizing<[u8; 32]>,
    chunker_seed: u64,
}

impl Keys {
    /// Derives the sub-keys from a data key.
    pub fn from_data_key(data_key: &[u8; 32]) -> Self {
        Self {
            encryption: Zeroizing::new(blake3::derive_key(
                "offsite 2024 blob encryption key",
                data_key,
            )),
            blob_id: Zeroizing::new(blake3::derive_key("offsite 2024 blob id key", data_key)),
            chunker_seed: {
                let seed = blake3::derive_key("offsite 2024 chunker seed", data_key);
                u64::from_le_bytes([
                    seed[0], seed[1], seed[2], seed[3], seed[4], seed[5], seed[6], seed[7],
                ])
            },
        }
    }

    /// The key blobs are sealed with.
    pub fn encryption_key(&self) -> &[u8; 32] {
        &self.encryption
    }

    /// Seeds the chunker's gear table so chunk boundaries reveal nothing of the content.
    pub fn chunker_seed(&self) -> u64 {
        self.chunker_seed
    }

    /// The key blob ids are keyed hashes under.
    pub fn blob_id_key(&self) -> &[u8; 32] {
        &self.blob_id
    }
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

/// Finds the passphrase: `OFFSITE_PASSWORD_FILE`, else `OFFSITE_PASSWORD`, else the config's file.
pub fn passphrase(config_file: Option<&Path>) -> Result<Zeroizing<String>, KeyError> {
    let pass = if let Some(path) = std::env::var_os(PASSWORD_FILE_ENV) {
        passphrase_from_file(Path::new(&path))?
    } else if let Ok(pass) = std::env::var(PASSWORD_ENV) {
        Zeroizing::new(pass)
    } else if let Some(path) = config_file {
        passphrase_from_file(path)?
    } else {
        return Err(KeyError::NoPassphrase);
    };
    non_empty(pass)
}

/// Finds the new passphrase of `key passwd`: the file named by the flag, else
/// `OFFSITE_NEW_PASSWORD_FILE`, else `OFFSITE_NEW_PASSWORD`.
pub fn new_passphrase(flag_file: Option<&Path>) -> Result<Zeroizing<String>, KeyError> {
    let pass = if let Some(path) = flag_file {
        passphrase_from_file(path)?
    } else if let Some(path) = std::env::var_os(NEW_PASSWORD_FILE_ENV) {
        passphrase_from_file(Path::new(&path))?
    } else if let Ok(pass) = std::env::var(NEW_PASSWORD_ENV) {
        Zeroizing::new(pass)
    } else {
        return Err(KeyError::NoNewPassphrase);
    };
    non_empty(pass)
}

/// The first line of a passphrase file (its line ending dropped).
fn passphrase_from_file(path: &Path) -> Result<Zeroizing<String>, KeyError> {
    let mut text = read_bounded(path, MAX_PASSWORD_FILE_BYTES)?;
    let trimmed = Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_string());
    text.zeroize();
    Ok(trimmed)
}

fn non_empty(pass: Zeroizing<String>) -> Result<Zeroizing<String>, KeyError> {
    if pass.is_empty() {
        return Err(KeyError::EmptyPassphrase);
    }
    Ok(pass)
}

fn read_bounded(path: &Path, max: u64) -> Result<String, KeyError> {
    use std::io::Read;
    let read_err = |source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut text = String::new();
    file.take(max + 1)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > max {
        return Err(KeyError::Malformed {
            path: path.to_path_buf(),
            problem: format!("larger than {max} bytes"),
        });
    }
    Ok(text)
}

fn derive_wrapping_key(
    pass: &str,
    salt: &[u8],
    params: KdfParams,
    path: &Path,
) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let malformed = |problem: String| KeyError::Malformed {
        path: path.to_path_buf(),
        problem,
    };
    let argon = Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        params.check().map_err(malformed)?,
    );
    let mut out = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(pass.as_bytes(), salt, out.as_mut())
        .map_err(|e| malformed(format!("argon2: {e}")))?;
    Ok(out)
}

/// Creates a new key file with a random data key; refuses to overwrite one.
pub fn init_key_file(path: &Path, pass: &str, params: KdfParams) -> Result<Keys, KeyError> {
    let mut data_key = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(data_key.as_mut());
    let file = wrap(&data_key, pass, params, path)?;
    write_new(path, &file)?;
    Ok(Keys::from_data_key(&data_key))
}

/// Re-wraps the data key of the key file at `path` under a new passphrase,
/// with a fresh salt and nonce, and replaces the file atomically (a new file
/// beside it, fsynced, renamed over it). The data key, and so every blob
/// ever stored, stays the same. Returns the new key file's bytes.
pub fn change_passphrase(
    path: &Path,
    old: &str,
    new: &str,
    params: KdfParams,
) -> Result<Vec<u8>, KeyError> {
    let text = read_bounded(path, MAX_KEY_FILE_BYTES)?;
    let data_key = unwrap(&text, old, path)?;
    let file = wrap(&data_key, new, params, path)?;
    let bytes = encode(&file, path)?;
    let fresh = path.with_extension("new");
    let _ = std::fs::remove_file(&fresh);
    write_bytes_new(&fresh, &bytes)?;
    std::fs::rename(&fresh, path).map_err(|source| KeyError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(dir) = std::fs::File::open(parent) {
            let _ = dir.sync_all();
        }
    }
    Ok(bytes)
}

/// The key file's bytes, for a copy kept elsewhere (it is only as secret as
/// the passphrase: the data key inside is wrapped under it).
pub fn read_key_file(path: &Path) -> Result<Vec<u8>, KeyError> {
    read_bounded(path, MAX_KEY_FILE_BYTES).map(String::into_bytes)
}

/// Writes a key file fetched from a copy, after checking that `pass` unlocks
/// it; refuses to overwrite an existing file.
pub fn install_key_file(path: &Path, bytes: &[u8], pass: &str) -> Result<Keys, KeyError> {
    if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(KeyError::Malformed {
            path: path.to_path_buf(),
            problem: format!("larger than {MAX_KEY_FILE_BYTES} bytes"),
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|_| KeyError::Malformed {
        path: path.to_path_buf(),
        problem: "not UTF-8 JSON".into(),
    })?;
    let data_key = unwrap(text, pass, path)?;
    write_bytes_new(path, bytes)?;
    Ok(Keys::from_data_key(&data_key))
}

/// Wraps `data_key` under `pass` with a fresh salt and nonce.
fn wrap(
    data_key: &[u8; 32],
    pass: &str,
    params: KdfParams,
    path: &Path,
) -> Result<KeyFile, KeyError> {
    if pass.is_empty() {
        return Err(KeyError::EmptyPassphrase);
    }
    let mut rng = rand::rngs::OsRng;
    let mut salt = [0u8; 16];
    rng.fill_bytes(&mut salt);
    let mut nonce = [0u8; 24];
    rng.fill_bytes(&mut nonce);
    let wrapping = derive_wrapping_key(pass, &salt, params, path)?;
    let cipher = XChaCha20Poly1305::new(wrapping.as_ref().into());
    let wrapped = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: data_key.as_ref(),
                aad: WRAP_CONTEXT,
            },
        )
        .map_err(|_| KeyError::Malformed {
            path: path.to_path_buf(),
            problem: "encryption failed".into(),
        })?;
    Ok(KeyFile {
        version: KEY_FILE_VERSION,
        kdf: "argon2id".into(),
        params,
        salt: hex::encode(salt),
        nonce: hex::encode(nonce),
        wrapped_key: hex::encode(wrapped),
    })
}

fn encode(file: &KeyFile, path: &Path) -> Result<Vec<u8>, KeyError> {
    serde_json::to_vec_pretty(file).map_err(|e| KeyError::Write {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })
}

fn write_new(path: &Path, file: &KeyFile) -> Result<(), KeyError> {
    write_bytes_new(path, &encode(file, path)?)
}

/// Creates `path` (mode 0600) with `bytes`, fsynced; refuses to overwrite.
fn write_bytes_new(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let write_err = |source| KeyError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        offsite_identity::private::create_private_dir(parent).map_err(write_err)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut out = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::AlreadyExists(path.to_path_buf())
        } else {
            write_err(e)
        }
    })?;
    out.write_all(bytes).map_err(write_err)?;
    out.sync_all().map_err(write_err)
}

/// Reads the key file and unwraps the data key with the passphrase.
pub fn unlock_key_file(path: &Path, pass: &str) -> Result<Keys, KeyError> {
    let text = read_bounded(path, MAX_KEY_FILE_BYTES)?;
    let data_key = unwrap(&text, pass, path)?;
    Ok(Keys::from_data_key(&data_key))
}

/// The data key inside key file `text` (read from `path`, named in errors).
fn unwrap(text: &str, pass: &str, path: &Path) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let malformed = |problem: String| KeyError::Malformed {
        path: path.to_path_buf(),
        problem,
    };
    let file: KeyFile = serde_json::from_str(text).map_err(|e| malformed(e.to_string()))?;
    if file.version != KEY_FILE_VERSION {
        return Err(malformed(format!(
            "format version {} is not {KEY_FILE_VERSION}; use a matching offsite release",
            file.version
        )));
    }
    if file.kdf != "argon2id" {
        return Err(malformed(format!("unknown kdf {:?}", file.kdf)));
    }
    let salt = hex::decode(&file.salt).map_err(|_| malformed("salt is not hex".into()))?;
    let mut nonce = [0u8; 24];
    hex::decode_to_slice(&file.nonce, &mut nonce)
        .map_err(|_| malformed("nonce is not 24 bytes of hex".into()))?;
    let wrapped =
        hex::decode(&file.wrapped_key).map_err(|_| malformed("wrapped_key is not hex".into()))?;
    let wrapping = derive_wrapping_key(pass, &salt, file.params, path)?;
    let cipher = XChaCha20Poly1305::new(wrapping.as_ref().into());
    let plain = Zeroizing::new(
        cipher
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &wrapped,
                    aad: WRAP_CONTEXT,
                },
            )
            .map_err(|_| KeyError::WrongPassphrase(path.to_path_buf()))?,
    );
    let data_key: [u8; 32] = plain
        .as_slice()
        .try_into()
        .map_err(|_| malformed("the wrapped key is not 32 bytes".into()))?;
    Ok(Zeroizing::new(data_key))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const FAST: KdfParams = KdfParams {
        memory_kib: 64,
        passes: 1,
        lanes: 1,
    };

    #[test]
    fn init_then_unlock_gives_the_same_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/key.json");
        let made = init_key_file(&path, "correct horse", FAST).unwrap();
        let opened = unlock_key_file(&path, "correct horse").unwrap();
        assert_eq!(made.encryption_key(), opened.encryption_key());
        assert_eq!(made.blob_id_key(), opened.blob_id_key());
        assert_ne!(made.encryption_key(), made.blob_id_key());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"version\": 1"), "{text}");
    }

    #[test]
    fn wrong_passphrase_is_its_own_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.json");
        init_key_file(&path, "right", FAST).unwrap();
        let err = unlock_key_file(&path, "wrong").unwrap_err();
        assert!(matches!(err, KeyError::WrongPassphrase(_)), "{err}");
        assert!(err.to_string().contains(&format!(
            "the passphrase does not unlock key file {}",
            path.display()
        )));
    }

    #[test]
    fn existing_key_file_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.json");
        init_key_file(&path, "one", FAST).unwrap();
        let before = std::fs::read(&path).unwrap();
        let err = init_key_file(&path, "two", FAST).unwrap_err();
        assert!(matches!(err, KeyError::AlreadyExists(_)));
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn tampered_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.json");
        init_key_file(&path, "pw", FAST).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("\"version\": 1", "\"version\": 9")).unwrap();
        let err = unlock_key_file(&path, "pw").unwrap_err();
        assert!(matches!(err, KeyError::Malformed { .. }), "{err}");
        assert!(matches!(
            unlock_key_file(&dir.path().join("none.json"), "pw").unwrap_err(),
            KeyError::Read { .. }
        ));
    }

    #[test]
    fn a_new_passphrase_unlocks_the_same_keys_and_the_old_one_no_longer_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.json");
        let made = init_key_file(&path, "old pass", FAST).unwrap();
        let before = std::fs::read(&path).unwrap();

        let err = change_passphrase(&path, "not it", "new pass", FAST).unwrap_err();
        assert!(matches!(err, KeyError::WrongPassphrase(_)), "{err}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "a refused change changes nothing"
        );

        let bytes = change_passphrase(&path, "old pass", "new pass", FAST).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        assert!(!path.with_extension("new").exists());
        let opened = unlock_key_file(&path, "new pass").unwrap();
        assert_eq!(made.encryption_key(), opened.encryption_key());
        assert_eq!(made.blob_id_key(), opened.blob_id_key());
        assert!(matches!(
            unlock_key_file(&path, "old pass").unwrap_err(),
            KeyError::WrongPassphrase(_)
        ));
        assert!(matches!(
            change_passphrase(&path, "new pass", "", FAST).unwrap_err(),
            KeyError::EmptyPassphrase
        ));
    }

    #[test]
    fn a_copied_key_file_is_installed_only_with_its_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.json");
        let made = init_key_file(&path, "pw", FAST).unwrap();
        let copy = read_key_file(&path).unwrap();

        let elsewhere = dir.path().join("new-machine/key.json");
        let err = install_key_file(&elsewhere, &copy, "wrong").unwrap_err();
        assert!(matches!(err, KeyError::WrongPassphrase(_)), "{err}");
        assert!(
            !elsewhere.exists(),
            "nothing is written for a wrong passphrase"
        );
        let installed = install_key_file(&elsewhere, &copy, "pw").unwrap();
        assert_eq!(made.encryption_key(), installed.encryption_key());
        assert!(matches!(
            install_key_file(&elsewhere, &copy, "pw").unwrap_err(),
            KeyError::AlreadyExists(_)
        ));
        assert!(matches!(
            install_key_file(&dir.path().join("x.json"), b"{not json", "pw").unwrap_err(),
            KeyError::Malformed { .. }
        ));
    }
}
