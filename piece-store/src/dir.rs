//! [`PieceDir`]: the pieces of one store as files `<root>/pieces/<id[0..2]>/<id>`
//! in the versioned format of `format`, written atomically through
//! `<root>/tmp/`, with the bytes held counted in memory.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use offsite_proto::limits::MAX_PIECE_BYTES;
use offsite_proto::{Hash, PieceId};

use crate::format::{self, HEADER_LEN};
use crate::fsutil;
use crate::space::{self, Capacity, FsSpace};
use crate::PieceError;

/// What [`PieceDir::stat`] reports of a stored piece, from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieceStat {
    /// Bytes of piece data (without the file header).
    pub size: u64,
    pub hash: Hash,
}

/// A directory of pieces. Cheap to clone; clones share the directory, its
/// lock and its used-bytes counter. Blocking: async callers use
/// [`PieceDir::run_blocking`].
#[derive(Clone)]
pub struct PieceDir {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    pieces: PathBuf,
    tmp: PathBuf,
    cap: Option<u64>,
    /// Bytes of piece data held; changed only under `writes`.
    used: AtomicU64,
    /// Serialises puts and deletes so the existence check, the rename and
    /// the used counter agree.
    writes: Mutex<()>,
    /// Held open for its exclusive lock: one process per directory.
    _lock: File,
}

/// What a put finds already stored under its id.
enum Existing {
    Nothing,
    Same,
    Other,
    Corrupt { len: u64 },
}

impl PieceDir {
    /// Opens (creating if needed) the piece directory at `root`, removes
    /// leftovers of interrupted writes and counts the bytes held.
    pub fn open(root: &Path, cap_bytes: Option<u64>) -> Result<PieceDir, PieceError> {
        let pieces = root.join("pieces");
        let tmp = root.join("tmp");
        // The root is private to the device's user: the pieces are sealed,
        // but which pieces a device holds is nobody else's business.
        offsite_identity::private::create_private_dir(root).map_err(PieceError::io(root))?;
        for dir in [&pieces, &tmp] {
            fs::create_dir_all(dir).map_err(PieceError::io(dir))?;
        }
        let lock = lock_root(root)?;
        let leftovers = fsutil::clear_dir(&tmp)?;
        let (count, used) = scan(&pieces)?;
        tracing::info!(
            root = %root.display(), pieces = count, used_bytes = used, leftovers,
            "opened piece directory"
        );
        Ok(PieceDir {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                pieces,
                tmp,
                cap: cap_bytes,
                used: AtomicU64::new(used),
                writes: Mutex::new(()),
                _lock: lock,
            }),
        })
    }

    /// The directory this store keeps its pieces under.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Stores a piece if its bytes hash to `expected`, and returns that hash
    /// (the validation). Storing the same bytes again is a no-op; other bytes
    /// under a stored id are a [`PieceError::Conflict`].
    pub fn put(&self, id: &PieceId, data: &[u8], expected: &Hash) -> Result<Hash, PieceError> {
        let size = data.len() as u64;
        if size > MAX_PIECE_BYTES {
            return Err(PieceError::TooLarge { size });
        }
        let actual = Hash::of(data);
        if actual != *expected {
            return Err(PieceError::HashMismatch {
                expected: *expected,
                actual,
            });
        }
        let path = self.piece_path(id)?;
        let _writes = self.lock_writes();
        let replaced = match existing(id, &path, &actual)? {
            Existing::Same => return Ok(actual),
            Existing::Other => return Err(PieceError::Conflict(id.clone())),
            Existing::Corrupt { len } => len,
            Existing::Nothing => 0,
        };
        let free = self.capacity()?.free_bytes.saturating_add(replaced);
        if size > free {
            return Err(PieceError::Full { needed: size, free });
        }
        let header = format::encode_header(&actual, size);
        fsutil::write_atomic(&self.tmp_path(id), &path, &[&header, data])?;
        self.count_used(size, replaced);
        tracing::debug!(piece = %id, size, "stored piece");
        Ok(actual)
    }

    /// Reads a piece, checking its magic, version, length and hash.
    pub fn get(&self, id: &PieceId) -> Result<Vec<u8>, PieceError> {
        let path = self.piece_path(id)?;
        let Some(file) = read_piece_file(id, &path)? else {
            return Err(PieceError::NotFound(id.clone()));
        };
        format::decode(&file).map_err(|problem| corrupt(id, problem))?;
        let mut data = file;
        data.drain(..HEADER_LEN);
        Ok(data)
    }

    /// Removes a piece; returns whether it existed.
    pub fn delete(&self, id: &PieceId) -> Result<bool, PieceError> {
        let path = self.piece_path(id)?;
        let _writes = self.lock_writes();
        let len = match fs::metadata(&path) {
            Ok(meta) => data_len(meta.len()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(err) => return Err(PieceError::io(&path)(err)),
        };
        fs::remove_file(&path).map_err(PieceError::io(&path))?;
        if let Some(dir) = path.parent() {
            fsutil::sync_dir(dir)?;
        }
        self.count_used(0, len);
        tracing::debug!(piece = %id, size = len, "deleted piece");
        Ok(true)
    }

    /// Size and hash of a stored piece from its header (the data is not
    /// read; [`PieceDir::get`] checks it).
    pub fn stat(&self, id: &PieceId) -> Result<Option<PieceStat>, PieceError> {
        let path = self.piece_path(id)?;
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(PieceError::io(&path)(err)),
        };
        let file_len = file.metadata().map_err(PieceError::io(&path))?.len();
        let mut header = Vec::with_capacity(HEADER_LEN);
        (&mut file)
            .take(HEADER_LEN as u64)
            .read_to_end(&mut header)
            .map_err(PieceError::io(&path))?;
        let header = format::decode_header(&header).map_err(|p| corrupt(id, p))?;
        format::check_length(&header, file_len).map_err(|p| corrupt(id, p))?;
        Ok(Some(PieceStat {
            size: header.len,
            hash: header.hash,
        }))
    }

    /// Up to `limit` ids of the pieces held, in order, after `after` (from
    /// the first when `None`): page through a store with the last id of
    /// each page. Files that cannot name a piece are skipped.
    pub fn list(&self, after: Option<&PieceId>, limit: usize) -> Result<Vec<PieceId>, PieceError> {
        let pieces = &self.inner.pieces;
        let mut shards: Vec<String> = fs::read_dir(pieces)
            .map_err(PieceError::io(pieces))?
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|entry| entry.file_name().into_string().ok())
            .collect();
        shards.sort();
        let after = after.map(PieceId::as_str);
        let first_shard = after.map_or("", |a| &a[..a.len().min(2)]);
        let mut listed = Vec::new();
        for shard in shards.iter().filter(|s| s.as_str() >= first_shard) {
            let dir = pieces.join(shard);
            let mut names: Vec<String> = fs::read_dir(&dir)
                .map_err(PieceError::io(&dir))?
                .filter_map(|entry| entry.ok())
                .filter(|entry| entry.file_type().is_ok_and(|t| t.is_file()))
                .filter_map(|entry| entry.file_name().into_string().ok())
                // A leading '.' never names a piece (see `piece_path`).
                .filter(|name| !name.starts_with('.'))
                .filter(|name| after.is_none_or(|a| name.as_str() > a))
                .collect();
            names.sort();
            for name in names {
                if listed.len() >= limit {
                    return Ok(listed);
                }
                if let Ok(id) = PieceId::new(name) {
                    listed.push(id);
                }
            }
        }
        Ok(listed)
    }

    /// Capacity, used and free bytes (see [`Capacity`]).
    pub fn capacity(&self) -> Result<Capacity, PieceError> {
        let fs = self.filesystem()?;
        let used = self.inner.used.load(Ordering::SeqCst);
        Ok(space::capacity(self.inner.cap, used, fs.available_bytes))
    }

    /// Size and available bytes of the filesystem holding the directory.
    pub fn filesystem(&self) -> Result<FsSpace, PieceError> {
        space::filesystem(&self.inner.root)
    }

    /// `<root>/pieces/<id[0..2]>/<id>`. Ids are `[A-Za-z0-9._-]`, so only a
    /// leading '.' could make a path leave the directory or hide a file.
    fn piece_path(&self, id: &PieceId) -> Result<PathBuf, PieceError> {
        let name = id.as_str();
        if name.starts_with('.') {
            let problem = format!(
                "piece id {id} starts with '.', which cannot name a piece file; use another piece id"
            );
            return Err(PieceError::refused(
                &self.inner.pieces,
                io::ErrorKind::InvalidInput,
                problem,
            ));
        }
        let shard = &name[..name.len().min(2)];
        Ok(self.inner.pieces.join(shard).join(name))
    }

    /// Adds and removes bytes from the used counter, never below zero: a
    /// file changed behind our back (grown by corruption) must not wrap the
    /// counter and make the store look full forever.
    fn count_used(&self, added: u64, removed: u64) {
        let update = |used: u64| Some(used.saturating_add(added).saturating_sub(removed));
        // The closure never returns None, so the update always succeeds.
        let _ = self
            .inner
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, update);
    }

    fn tmp_path(&self, id: &PieceId) -> PathBuf {
        let nonce: u64 = rand::random();
        self.inner.tmp.join(format!("{id}.{nonce:016x}"))
    }

    fn lock_writes(&self) -> MutexGuard<'_, ()> {
        // The guarded state lives on disk and in an atomic; a panic while
        // holding the lock leaves nothing half-updated in memory.
        self.inner
            .writes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn corrupt(id: &PieceId, problem: String) -> PieceError {
    PieceError::Corrupt {
        id: id.clone(),
        problem,
    }
}

fn data_len(file_len: u64) -> u64 {
    file_len.saturating_sub(HEADER_LEN as u64)
}

/// Reads a whole piece file, refusing one larger than any piece can be.
fn read_piece_file(id: &PieceId, path: &Path) -> Result<Option<Vec<u8>>, PieceError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(PieceError::io(path)(err)),
    };
    let limit = HEADER_LEN as u64 + MAX_PIECE_BYTES;
    let file_len = file.metadata().map_err(PieceError::io(path))?.len();
    if file_len > limit {
        let problem = format!("file is {file_len} bytes, more than any piece file ({limit})");
        return Err(corrupt(id, problem));
    }
    let mut bytes = Vec::with_capacity(file_len as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(PieceError::io(path))?;
    Ok(Some(bytes))
}

/// What is stored under `id` compared with the bytes about to be written.
fn existing(id: &PieceId, path: &Path, hash: &Hash) -> Result<Existing, PieceError> {
    let file = match read_piece_file(id, path) {
        Ok(None) => return Ok(Existing::Nothing),
        Ok(Some(file)) => file,
        Err(PieceError::Corrupt { problem, .. }) => return existing_corrupt(id, path, &problem),
        Err(other) => return Err(other),
    };
    match format::decode(&file) {
        Ok((header, _)) if header.hash == *hash => Ok(Existing::Same),
        Ok(_) => Ok(Existing::Other),
        Err(problem) => existing_corrupt(id, path, &problem),
    }
}

/// A corrupt piece holds no recoverable bytes; a put may replace it.
fn existing_corrupt(id: &PieceId, path: &Path, problem: &str) -> Result<Existing, PieceError> {
    let len = fs::metadata(path).map_err(PieceError::io(path))?.len();
    tracing::warn!(piece = %id, %problem, "replacing corrupt piece");
    Ok(Existing::Corrupt { len: data_len(len) })
}

/// Takes the directory's exclusive lock file.
fn lock_root(root: &Path) -> Result<File, PieceError> {
    let path = root.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(PieceError::io(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(PieceError::refused(
            &path,
            io::ErrorKind::WouldBlock,
            "the piece directory is in use by another process (or another PieceDir); \
             stop it or give this one another directory"
                .to_string(),
        )),
        Err(TryLockError::Error(err)) => Err(PieceError::io(&path)(err)),
    }
}

/// Counts the pieces under `pieces` and their data bytes.
fn scan(pieces: &Path) -> Result<(u64, u64), PieceError> {
    let (mut count, mut used) = (0u64, 0u64);
    for shard in fs::read_dir(pieces).map_err(PieceError::io(pieces))? {
        let shard = shard.map_err(PieceError::io(pieces))?.path();
        if !shard.is_dir() {
            continue;
        }
        for entry in fs::read_dir(&shard).map_err(PieceError::io(&shard))? {
            let entry = entry.map_err(PieceError::io(&shard))?;
            let meta = entry.metadata().map_err(PieceError::io(entry.path()))?;
            if meta.is_file() {
                count += 1;
                used += data_len(meta.len());
            }
        }
    }
    Ok((count, used))
}
