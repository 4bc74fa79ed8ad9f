//! Walking the paths of a backup: directories bottom-up into tree blobs,
//! regular files chunked into data blobs, symlinks recorded (never followed),
//! FIFOs and device nodes recorded, sockets skipped with a warning. Each
//! entry keeps its owner and extended attributes (POSIX ACLs are among
//! them); files linked more than once are read once and marked as one
//! link group, and files with holes are marked sparse. Excluded paths are left out (see
//! [`crate::filter`]); a file unchanged since the parent snapshot (its
//! [`Stamp`] matches the parent's file metadata cache) is not read. Runs on
//! its own thread; every blob not already in the dedup index or already sent
//! in this run goes down the channel to be sealed, in batches.

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

use crate::estimate::Remaining;
use crate::filter::Filter;
use crate::format::blob::{BlobId, BlobKind, BlobSet};
use crate::format::chunker::Chunker;
use crate::format::keys::Keys;
use crate::format::manifest::Index;
use crate::format::tree::{ChunkRef, Entry, EntryKind, Owner, Tree, Xattr, MAX_XATTRS};
use crate::local::filecache::{self, Parent, Stamp};
use crate::progress::Progress;

/// A blob this backup must store.
pub struct NewBlob {
    pub kind: BlobKind,
    pub id: BlobId,
    pub plaintext: Vec<u8>,
}

/// Blobs sent to be sealed together: small files come in their thousands,
/// and one hand-over (and one sealing task) per blob would cost more than
/// sealing them. A batch is sent once it holds this many bytes of
/// plaintext or this many blobs; a blob that would take it past the bytes
/// goes in the next, so a batch is at most this or one largest chunk.
const BATCH_BYTES: usize = 1024 * 1024;
const BATCH_BLOBS: usize = 512;

/// What the walk saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalkStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// FIFOs and device nodes.
    pub specials: u64,
    /// Files met again through another hard link (not read again).
    pub hard_links: u64,
    /// Entries that could not be read, and sockets.
    pub skipped: u64,
    /// Of the skipped, those that could not be read (a partial backup).
    pub unreadable: u64,
    /// Entries left out by the exclude rules.
    pub excluded: u64,
    /// Files unchanged since the parent snapshot, not read again.
    pub unchanged: u64,
    /// Bytes of the files backed up (read or unchanged).
    pub bytes_total: u64,
    pub bytes_read: u64,
    pub new_blobs: u64,
}

/// The walk's result: the root tree and every blob the snapshot needs.
pub struct Walked {
    pub root: BlobId,
    pub needed: BlobSet,
    pub stats: WalkStats,
    /// The new file metadata cache, to keep once the snapshot is committed.
    pub files: Option<filecache::Writer>,
    /// The first unreadable paths, with why.
    pub unreadable: Vec<String>,
}

/// Unreadable paths named in the report (all are counted).
const MAX_REPORTED: usize = 100;

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
    pub tx: mpsc::Sender<Vec<NewBlob>>,
    /// Bytes still to read, counted down as files are read.
    pub remaining: &'a Remaining,
    pub filter: &'a Filter,
    pub parent: &'a Parent,
    pub files: Option<filecache::Writer>,
    pub progress: &'a Progress,
}

impl Walker<'_> {
    pub fn walk(mut self, paths: &[PathBuf]) -> Result<Walked, WalkError> {
        let files = self.files.take();
        let mut state = State {
            walker: self,
            needed: BlobSet::default(),
            stats: WalkStats::default(),
            files,
            device: 0,
            unreadable: Vec::new(),
            chunker: None,
            batch: Vec::new(),
            batch_bytes: 0,
            linked: HashMap::new(),
        };
        let mut entries = Vec::with_capacity(paths.len());
        let mut names: Vec<(Vec<u8>, &PathBuf)> = Vec::new();
        let paths: Vec<PathBuf> = paths
            .iter()
            .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
            .collect();
        for path in &paths {
            let meta = path.symlink_metadata().map_err(|source| WalkError::Root {
                path: path.clone(),
                source,
            })?;
            state.device = meta.dev();
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
        state.send_batch()?;
        Ok(Walked {
            root,
            needed: state.needed,
            stats: state.stats,
            files: state.files,
            unreadable: state.unreadable,
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
    needed: BlobSet,
    stats: WalkStats,
    files: Option<filecache::Writer>,
    /// The device of the backup path being walked (for `--one-file-system`).
    device: u64,
    unreadable: Vec<String>,
    /// Reused for every file; taken out while a file is read.
    chunker: Option<Chunker>,
    /// New blobs not yet sent, and their plaintext bytes.
    batch: Vec<NewBlob>,
    batch_bytes: usize,
    /// Files with more than one link met so far, by (device, inode): their
    /// link group and content.
    linked: HashMap<(u64, u64), Linked>,
}

/// A file met through one of its hard links.
struct Linked {
    group: u64,
    size: u64,
    content: Vec<ChunkRef>,
}

/// Whether a file occupies fewer blocks than its size needs: it has holes.
fn is_sparse(meta: &Metadata) -> bool {
    meta.blocks().saturating_mul(512) < meta.size()
}

/// The extended attributes of `path` (not following a symlink), sorted by
/// name; none where the filesystem has none. One that cannot be read is
/// left out with a warning: the file itself is still backed up.
fn read_xattrs(path: &Path) -> Vec<Xattr> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) => {
            if e.raw_os_error() != Some(libc::ENOTSUP) {
                tracing::warn!(path = %path.display(), error = %e, "cannot list extended attributes; none kept");
            }
            return Vec::new();
        }
    };
    let mut xattrs = Vec::new();
    for name in names {
        if xattrs.len() == MAX_XATTRS {
            tracing::warn!(path = %path.display(), "more than {MAX_XATTRS} extended attributes; the rest left out");
            break;
        }
        match xattr::get(path, &name) {
            Ok(Some(value)) => xattrs.push(Xattr {
                name: name.as_bytes().to_vec(),
                value,
            }),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), name = ?name, error = %e, "cannot read an extended attribute; left out")
            }
        }
    }
    xattrs.sort_by(|a, b| a.name.cmp(&b.name));
    xattrs.dedup_by(|a, b| a.name == b.name);
    xattrs
}

impl State<'_> {
    /// Sends a blob unless the snapshot already has it.
    fn emit(&mut self, kind: BlobKind, id: BlobId, plaintext: Vec<u8>) -> Result<(), WalkError> {
        if !self.needed.insert(id) || self.walker.known.contains_key(&id) {
            return Ok(());
        }
        self.stats.new_blobs += 1;
        if self.batch_bytes + plaintext.len() > BATCH_BYTES {
            self.send_batch()?;
        }
        self.batch_bytes += plaintext.len();
        self.batch.push(NewBlob {
            kind,
            id,
            plaintext,
        });
        if self.batch_bytes >= BATCH_BYTES || self.batch.len() >= BATCH_BLOBS {
            self.send_batch()?;
        }
        Ok(())
    }

    /// Sends the blobs gathered so far to be sealed.
    fn send_batch(&mut self) -> Result<(), WalkError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.batch_bytes = 0;
        self.walker
            .tx
            .blocking_send(std::mem::take(&mut self.batch))
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
        let mut link_group = None;
        let result = if kind.is_file() {
            self.file(path, meta).map(|(size, content, group)| {
                link_group = group;
                EntryKind::File { size, content }
            })
        } else if kind.is_dir() {
            self.dir(path).map(|subtree| EntryKind::Dir { subtree })
        } else if kind.is_symlink() {
            std::fs::read_link(path).map(|target| EntryKind::Symlink {
                target: target.as_os_str().as_bytes().to_vec(),
            })
        } else if kind.is_fifo() {
            Ok(EntryKind::Fifo)
        } else if kind.is_char_device() || kind.is_block_device() {
            Ok(EntryKind::Device {
                block: kind.is_block_device(),
                rdev: meta.rdev(),
            })
        } else {
            tracing::warn!(path = %path.display(), "a socket; skipped");
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
                self.unreadable(path, &e);
                return Ok(None);
            }
        };
        match &kind {
            EntryKind::File { .. } => self.stats.files += 1,
            EntryKind::Dir { .. } => self.stats.dirs += 1,
            EntryKind::Symlink { .. } => self.stats.symlinks += 1,
            EntryKind::Fifo | EntryKind::Device { .. } => self.stats.specials += 1,
        }
        // Linux keeps no user extended attributes on symlinks, and reading
        // one's would read its target's.
        let xattrs = if matches!(kind, EntryKind::Symlink { .. }) {
            Vec::new()
        } else {
            read_xattrs(path)
        };
        let sparse = matches!(kind, EntryKind::File { .. }) && is_sparse(meta);
        let accounts = crate::accounts::Accounts::local();
        let owner = Owner {
            uid: meta.uid(),
            gid: meta.gid(),
            user: accounts.user_name(meta.uid()),
            group: accounts.group_name(meta.gid()),
        };
        Ok(Some(Entry {
            name,
            kind,
            mode: meta.mode(),
            mtime_secs: meta.mtime(),
            mtime_nanos: meta.mtime_nsec().clamp(0, 999_999_999) as u32,
            owner: Some(owner),
            xattrs,
            link_group,
            sparse,
        }))
    }

    /// Counts bytes done: for the reservation estimate and the progress bar.
    fn done(&self, len: u64) {
        self.walker.remaining.done(len);
        self.walker.progress.add_bytes(len);
    }

    /// The parent's chunks of an unchanged file whose blobs are all stored.
    fn unchanged(&self, path: &Path, stamp: &Stamp) -> Option<Vec<ChunkRef>> {
        let content = self
            .walker
            .parent
            .unchanged(path.as_os_str().as_bytes(), stamp)?;
        content
            .iter()
            .all(|c| self.walker.known.contains_key(&c.id))
            .then(|| content.to_vec())
    }

    /// A file's size and chunks, and its link group when it has more than
    /// one link; a file met before through another link is not read again.
    fn file(
        &mut self,
        path: &Path,
        meta: &Metadata,
    ) -> std::io::Result<(u64, Vec<ChunkRef>, Option<u64>)> {
        if meta.nlink() < 2 {
            let (size, content) = self.file_content(path, meta)?;
            return Ok((size, content, None));
        }
        let inode = (meta.dev(), meta.ino());
        if let Some(linked) = self.linked.get(&inode) {
            self.stats.hard_links += 1;
            self.stats.bytes_total += linked.size;
            self.walker.progress.add_files(1);
            self.done(linked.size);
            return Ok((linked.size, linked.content.clone(), Some(linked.group)));
        }
        let (size, content) = self.file_content(path, meta)?;
        let group = self.linked.len() as u64;
        self.linked.insert(
            inode,
            Linked {
                group,
                size,
                content: content.clone(),
            },
        );
        Ok((size, content, Some(group)))
    }

    fn file_content(
        &mut self,
        path: &Path,
        meta: &Metadata,
    ) -> std::io::Result<(u64, Vec<ChunkRef>)> {
        let stamp = Stamp::of(meta);
        let (size, content) = match self.unchanged(path, &stamp) {
            Some(content) => {
                for chunk in &content {
                    self.needed.insert(chunk.id);
                }
                self.stats.unchanged += 1;
                self.done(stamp.size);
                (stamp.size, content)
            }
            None => self.read_file(path)?,
        };
        self.stats.bytes_total += size;
        self.walker.progress.add_files(1);
        if let Some(files) = self.files.as_mut() {
            files.add(path.as_os_str().as_bytes(), stamp, &content);
        }
        Ok((size, content))
    }

    fn read_file(&mut self, path: &Path) -> std::io::Result<(u64, Vec<ChunkRef>)> {
        // The file was listed as a regular file a while ago (its directory is
        // stat'ed at once): if it has been replaced since, a symlink is not
        // followed and a FIFO does not block the walk.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)?;
        if !file.metadata()?.is_file() {
            return Err(std::io::Error::other(
                "it stopped being a regular file while the backup ran",
            ));
        }
        let seed = self.walker.keys.chunker_seed();
        let mut chunker = self.chunker.take().unwrap_or_else(|| Chunker::new(seed));
        let read = self.read_chunks(&mut chunker, file);
        self.chunker = Some(chunker);
        read
    }

    fn read_chunks(
        &mut self,
        chunker: &mut Chunker,
        file: std::fs::File,
    ) -> std::io::Result<(u64, Vec<ChunkRef>)> {
        let mut content = Vec::new();
        let mut size = 0u64;
        for chunk in chunker.chunks(file) {
            let chunk = chunk?;
            let len = chunk.data.len() as u64;
            size += len;
            self.stats.bytes_read += len;
            self.done(len);
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
        // Each child is stat'ed through the directory's handle, which spares
        // the kernel a walk of the whole path per child; the handle is closed
        // (the entries dropped) before the walk goes down a level.
        let mut children: Vec<(Vec<u8>, PathBuf, std::io::Result<Metadata>)> = std::fs::read_dir(
            path,
        )?
        .filter_map(|entry| match entry {
            Ok(entry) => Some((
                entry.file_name().as_bytes().to_vec(),
                entry.path(),
                entry.metadata(),
            )),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot list an entry; skipped");
                None
            }
        })
        .collect();
        children.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut entries = Vec::with_capacity(children.len());
        for (name, child, meta) in children {
            if self.walker.filter.excludes(&child) {
                self.stats.excluded += 1;
                continue;
            }
            let meta = match meta {
                Ok(meta) => meta,
                Err(e) => {
                    tracing::warn!(path = %child.display(), error = %e, "cannot stat; skipped");
                    self.unreadable(&child, &e);
                    continue;
                }
            };
            if meta.is_dir() && self.left_out(&child, &meta) {
                self.stats.excluded += 1;
                continue;
            }
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

impl State<'_> {
    /// Counts an entry that could not be read, keeping the first few for the report.
    fn unreadable(&mut self, path: &Path, error: &std::io::Error) {
        self.stats.skipped += 1;
        self.stats.unreadable += 1;
        if self.unreadable.len() < MAX_REPORTED {
            self.unreadable.push(format!("{}: {error}", path.display()));
        }
    }

    /// A directory on another filesystem (with `--one-file-system`) or holding
    /// an `--exclude-if-present` marker.
    fn left_out(&self, dir: &Path, meta: &Metadata) -> bool {
        self.walker
            .filter
            .leaves_out_dir(dir, meta.dev(), self.device)
    }
}
