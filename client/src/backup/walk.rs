//! Walking the paths of a backup: directories bottom-up into tree blobs,
//! regular files chunked into data blobs, symlinks recorded (never followed),
//! anything else skipped with a warning. Runs on its own thread; every blob
//! not already in the dedup index or already sent in this run goes down the
//! channel to be sealed.

use std::collections::HashSet;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::blob::{BlobId, BlobKind};
use crate::chunker::Chunker;
use crate::keys::Keys;
use crate::manifest::Index;
use crate::tree::{ChunkRef, Entry, EntryKind, Tree};

/// A blob this backup must store.
pub struct NewBlob {
    pub kind: BlobKind,
    pub id: BlobId,
    pub plaintext: Vec<u8>,
}

/// What the walk saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalkStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Entries that could not be read or are not files, dirs or symlinks.
    pub skipped: u64,
    pub bytes_read: u64,
    pub new_blobs: u64,
}

/// The walk's result: the root tree and every blob the snapshot needs.
pub struct Walked {
    pub root: BlobId,
    pub needed: HashSet<BlobId>,
    pub stats: WalkStats,
}

/// Why a walk stopped.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("cannot read backup path {path}: {source}; check that it exists and is readable")]
    Root {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("backup paths {0} and {1} have the same name; back them up in separate snapshots")]
    SameName(PathBuf, PathBuf),
    #[error("the backup stopped while walking")]
    Cancelled,
}

/// Walks `paths` into a root tree whose entries are the paths by their names.
pub struct Walker<'a> {
    pub keys: &'a Keys,
    pub known: &'a Index,
    pub tx: mpsc::Sender<NewBlob>,
    /// Bytes still to read, counted down as files are read.
    pub remaining: &'a AtomicU64,
}

impl Walker<'_> {
    pub fn walk(self, paths: &[PathBuf]) -> Result<Walked, WalkError> {
        let mut state = State {
            walker: self,
            needed: HashSet::new(),
            stats: WalkStats::default(),
        };
        let mut entries = Vec::with_capacity(paths.len());
        let mut names: Vec<(Vec<u8>, &PathBuf)> = Vec::new();
        for path in paths {
            let meta = path.symlink_metadata().map_err(|source| WalkError::Root {
                path: path.clone(),
                source,
            })?;
            let name = root_name(path);
            if let Some((_, other)) = names.iter().find(|(n, _)| *n == name) {
                return Err(WalkError::SameName((*other).clone(), path.clone()));
            }
            names.push((name.clone(), path));
            if let Some(entry) = state.entry(path, name, &meta)? {
                entries.push(entry);
            }
        }
        let root = state.emit_tree(entries)?;
        Ok(Walked {
            root,
            needed: state.needed,
            stats: state.stats,
        })
    }
}

/// The name a backup path gets in the root tree: its last component.
fn root_name(path: &Path) -> Vec<u8> {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    absolute
        .file_name()
        .map_or_else(|| b"root".to_vec(), |n| n.as_bytes().to_vec())
}

struct State<'a> {
    walker: Walker<'a>,
    needed: HashSet<BlobId>,
    stats: WalkStats,
}

impl State<'_> {
    /// Sends a blob unless the snapshot already has it.
    fn emit(&mut self, kind: BlobKind, id: BlobId, plaintext: Vec<u8>) -> Result<(), WalkError> {
        if !self.needed.insert(id) || self.walker.known.contains_key(&id) {
            return Ok(());
        }
        self.stats.new_blobs += 1;
        self.walker
            .tx
            .blocking_send(NewBlob {
                kind,
                id,
                plaintext,
            })
            .map_err(|_| WalkError::Cancelled)
    }

    fn emit_tree(&mut self, entries: Vec<Entry>) -> Result<BlobId, WalkError> {
        let bytes = Tree::new(entries).encode();
        let id = BlobId::of(self.walker.keys, &bytes);
        self.emit(BlobKind::Tree, id, bytes)?;
        Ok(id)
    }

    /// The entry for one path, or `None` when it is skipped.
    fn entry(
        &mut self,
        path: &Path,
        name: Vec<u8>,
        meta: &Metadata,
    ) -> Result<Option<Entry>, WalkError> {
        let kind = meta.file_type();
        let result = if kind.is_file() {
            self.file(path)
                .map(|(size, content)| EntryKind::File { size, content })
        } else if kind.is_dir() {
            self.dir(path).map(|subtree| EntryKind::Dir { subtree })
        } else if kind.is_symlink() {
            std::fs::read_link(path).map(|target| EntryKind::Symlink {
                target: target.as_os_str().as_bytes().to_vec(),
            })
        } else {
            tracing::warn!(path = %path.display(), "not a file, directory or symlink; skipped");
            self.stats.skipped += 1;
            return Ok(None);
        };
        let kind = match result {
            Ok(kind) => kind,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                return Err(WalkError::Cancelled)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read; skipped");
                self.stats.skipped += 1;
                return Ok(None);
            }
        };
        match &kind {
            EntryKind::File { .. } => self.stats.files += 1,
            EntryKind::Dir { .. } => self.stats.dirs += 1,
            EntryKind::Symlink { .. } => self.stats.symlinks += 1,
        }
        Ok(Some(Entry {
            name,
            kind,
            mode: meta.mode(),
            mtime_secs: meta.mtime(),
            mtime_nanos: meta.mtime_nsec().clamp(0, 999_999_999) as u32,
        }))
    }

    fn file(&mut self, path: &Path) -> std::io::Result<(u64, Vec<ChunkRef>)> {
        let file = std::fs::File::open(path)?;
        let mut content = Vec::new();
        let mut size = 0u64;
        for chunk in Chunker::new(file, self.walker.keys.chunker_seed()) {
            let chunk = chunk?;
            let len = chunk.data.len() as u64;
            size += len;
            self.stats.bytes_read += len;
            let _ = self
                .walker
                .remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                    Some(r.saturating_sub(len))
                });
            let id = BlobId::of(self.walker.keys, &chunk.data);
            content.push(ChunkRef {
                id,
                len: chunk.data.len() as u32,
            });
            // The pipeline stopping shows up here as an I/O error that ends the walk.
            self.emit(BlobKind::Data, id, chunk.data)
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::Interrupted))?;
        }
        Ok((size, content))
    }

    fn dir(&mut self, path: &Path) -> std::io::Result<BlobId> {
        let mut children: Vec<(Vec<u8>, PathBuf)> = std::fs::read_dir(path)?
            .filter_map(|entry| match entry {
                Ok(entry) => Some((entry.file_name().as_bytes().to_vec(), entry.path())),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot list an entry; skipped");
                    None
                }
            })
            .collect();
        children.sort();
        let mut entries = Vec::with_capacity(children.len());
        for (name, child) in children {
            let meta = match child.symlink_metadata() {
                Ok(meta) => meta,
                Err(e) => {
                    tracing::warn!(path = %child.display(), error = %e, "cannot stat; skipped");
                    self.stats.skipped += 1;
                    continue;
                }
            };
            match self.entry(&child, name, &meta) {
                Ok(Some(entry)) => entries.push(entry),
                Ok(None) => {}
                Err(_) => return Err(std::io::Error::from(std::io::ErrorKind::Interrupted)),
            }
        }
        self.emit_tree(entries)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::Interrupted))
    }
}

/// Sums the sizes of the regular files under `paths` (symlinks not followed),
/// to size reservations before the walk reads anything.
pub fn estimate_bytes(paths: &[PathBuf]) -> u64 {
    let mut total = 0u64;
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(path) = stack.pop() {
        let Ok(meta) = path.symlink_metadata() else {
            continue;
        };
        if meta.is_file() {
            total = total.saturating_add(meta.len());
        } else if meta.is_dir() {
            if let Ok(list) = std::fs::read_dir(&path) {
                stack.extend(list.filter_map(|e| e.ok()).map(|e| e.path()));
            }
        }
    }
    total
}
