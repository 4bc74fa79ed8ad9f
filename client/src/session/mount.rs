//! `mount`: every snapshot of the tenant as a read-only FUSE file system.
//!
//! ```text
//! hosts/HOST/2026-12-01T02:00:00/...   each snapshot by host and time (UTC)
//! tags/TAG/HOST-2026-12-01T02:00:00    symlinks to the snapshots carrying TAG
//! latest/HOST                          a symlink to the host's newest snapshot
//! ```
//!
//! A snapshot's trees are read when its directory is first looked into, and
//! kept while mounted; file data is fetched on demand, a portion at a time
//! (hash-checked, each blob opened as in a restore), with at most
//! four portions held (`restore::pieces::KEPT_PORTIONS`). Times of the same second on one host get
//! the snapshot id's first characters appended.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, LockOwner, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, Request,
};
use offsite_proto::{PortionId, PortionLocation, SnapshotRecord};

use super::restore::pieces::{pieces_by_file, HeldPortions, Piece};
use super::restore::Plan;
use super::Session;
use crate::format::keys::Keys;
use crate::format::tree::EntryKind;
use crate::market::fetch::{PortionSource, VendorSource};

/// How long the kernel may keep what it was told: nothing changes.
const TTL: Duration = Duration::from_secs(60);

/// The name of a snapshot's directory: its time, UTC, to the second.
pub fn snapshot_dir_name(unix_ms: u64) -> String {
    let t = crate::calendar::DateTime::from_unix_secs((unix_ms / 1000) as i64);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

enum Kind {
    /// A directory whose entries are known.
    Dir(BTreeMap<OsString, u64>),
    /// A snapshot's root, its trees not read yet.
    Snapshot(usize),
    File {
        snapshot: usize,
        file: usize,
    },
    Link(Vec<u8>),
    /// A FIFO or device node (the mount is `nodev`: no device opens).
    Special {
        kind: FileType,
        rdev: u32,
    },
}

impl Kind {
    fn file_type(&self) -> FileType {
        match self {
            Kind::Dir(_) | Kind::Snapshot(_) => FileType::Directory,
            Kind::File { .. } => FileType::RegularFile,
            Kind::Link(_) => FileType::Symlink,
            Kind::Special { kind, .. } => *kind,
        }
    }
}

struct Node {
    kind: Kind,
    size: u64,
    mode: u32,
    mtime: (i64, u32),
}

/// A snapshot whose trees were read.
struct Loaded {
    plan: Plan,
    pieces: Vec<Vec<Piece>>,
    locations: HashMap<PortionId, PortionLocation>,
    source: VendorSource,
}

/// The mounted file system.
pub struct SnapshotFs {
    session: Arc<Session>,
    keys: Arc<Keys>,
    runtime: tokio::runtime::Handle,
    records: Vec<SnapshotRecord>,
    nodes: Mutex<Vec<Node>>,
    loaded: Mutex<HashMap<usize, Arc<Loaded>>>,
    portions: Mutex<HeldPortions>,
    /// Who the files belong to: the user who mounted.
    uid: u32,
    gid: u32,
}

fn dir(entries: BTreeMap<OsString, u64>, mtime: i64) -> Node {
    Node {
        kind: Kind::Dir(entries),
        size: 0,
        mode: 0o555,
        mtime: (mtime, 0),
    }
}

fn link(target: String, mtime: i64) -> Node {
    Node {
        size: target.len() as u64,
        kind: Kind::Link(target.into_bytes()),
        mode: 0o777,
        mtime: (mtime, 0),
    }
}

impl SnapshotFs {
    /// The layout over `records`; no snapshot is read yet.
    pub fn new(session: Arc<Session>, keys: Arc<Keys>, mut records: Vec<SnapshotRecord>) -> Self {
        records.sort_by_key(|r| r.time_unix_ms);
        // Node 0 is unused (inode 0 is not valid); node 1 is the root.
        let mut nodes = vec![dir(BTreeMap::new(), 0), dir(BTreeMap::new(), 0)];
        let add = |nodes: &mut Vec<Node>, parent: u64, name: String, node: Node| -> u64 {
            let ino = nodes.len() as u64;
            nodes.push(node);
            if let Kind::Dir(entries) = &mut nodes[parent as usize].kind {
                entries.insert(OsString::from(name), ino);
            }
            ino
        };
        let hosts = add(&mut nodes, 1, "hosts".into(), dir(BTreeMap::new(), 0));
        let tags = add(&mut nodes, 1, "tags".into(), dir(BTreeMap::new(), 0));
        let latest = add(&mut nodes, 1, "latest".into(), dir(BTreeMap::new(), 0));
        let mut host_dirs: HashMap<String, u64> = HashMap::new();
        let mut tag_dirs: HashMap<String, u64> = HashMap::new();
        let mut names: Vec<String> = Vec::with_capacity(records.len());
        for (index, r) in records.iter().enumerate() {
            let secs = (r.time_unix_ms / 1000) as i64;
            let host = *host_dirs.entry(r.host.clone()).or_insert_with(|| {
                add(
                    &mut nodes,
                    hosts,
                    r.host.clone(),
                    dir(BTreeMap::new(), secs),
                )
            });
            let mut name = snapshot_dir_name(r.time_unix_ms);
            let taken = |nodes: &Vec<Node>, name: &str| match &nodes[host as usize].kind {
                Kind::Dir(entries) => entries.contains_key(OsStr::new(name)),
                _ => false,
            };
            if taken(&nodes, &name) {
                name = format!("{name}-{}", &r.id.to_string()[..8]);
            }
            let node = Node {
                kind: Kind::Snapshot(index),
                size: 0,
                mode: 0o555,
                mtime: (secs, 0),
            };
            add(&mut nodes, host, name.clone(), node);
            for tag in &r.tags {
                let tag_dir = *tag_dirs.entry(tag.clone()).or_insert_with(|| {
                    add(&mut nodes, tags, tag.clone(), dir(BTreeMap::new(), secs))
                });
                let target = format!("../../hosts/{}/{name}", r.host);
                add(
                    &mut nodes,
                    tag_dir,
                    format!("{}-{name}", r.host),
                    link(target, secs),
                );
            }
            names.push(name);
        }
        // Records are oldest first, so the last one of each host wins.
        let mut newest: BTreeMap<&str, (usize, i64)> = BTreeMap::new();
        for (index, r) in records.iter().enumerate() {
            newest.insert(&r.host, (index, (r.time_unix_ms / 1000) as i64));
        }
        for (host, (index, secs)) in newest {
            let target = format!("../hosts/{host}/{}", names[index]);
            add(&mut nodes, latest, host.to_string(), link(target, secs));
        }
        Self {
            session,
            keys,
            runtime: tokio::runtime::Handle::current(),
            records,
            nodes: Mutex::new(nodes),
            loaded: Mutex::new(HashMap::new()),
            portions: Mutex::default(),
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
        }
    }

    fn nodes(&self) -> std::sync::MutexGuard<'_, Vec<Node>> {
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the trees of the snapshot at node `ino` and puts its entries
    /// under it.
    fn load(&self, ino: u64, index: usize) -> Result<(), Errno> {
        let record = self.records[index].clone();
        let keys = self.keys.clone();
        let session = self.session.clone();
        let opened = self
            .runtime
            .block_on(async move { session.open_plan(&keys, &record).await });
        let (plan, locations, source) = opened.map_err(|e| {
            tracing::warn!(error = %e, "cannot read a snapshot for the mount");
            Errno::EIO
        })?;
        let pieces = pieces_by_file(&plan);
        let mut nodes = self.nodes();
        if !matches!(nodes[ino as usize].kind, Kind::Snapshot(_)) {
            return Ok(());
        }
        nodes[ino as usize].kind = Kind::Dir(BTreeMap::new());
        let mut by_path: HashMap<std::path::PathBuf, u64> = HashMap::new();
        by_path.insert(std::path::PathBuf::new(), ino);
        let mut place = |nodes: &mut Vec<Node>, path: &Path, node: Node| -> u64 {
            let parent = path
                .parent()
                .and_then(|p| by_path.get(p))
                .copied()
                .unwrap_or(ino);
            let new = nodes.len() as u64;
            nodes.push(node);
            if let (Kind::Dir(entries), Some(name)) =
                (&mut nodes[parent as usize].kind, path.file_name())
            {
                entries.insert(name.to_os_string(), new);
            }
            by_path.insert(path.to_path_buf(), new);
            new
        };
        // Directories come parents first in the plan.
        for d in &plan.dirs {
            let node = Node {
                kind: Kind::Dir(BTreeMap::new()),
                size: 0,
                mode: d.mode & 0o555,
                mtime: d.mtime,
            };
            place(&mut nodes, &d.path, node);
        }
        for (file, f) in plan.files.iter().enumerate() {
            let node = Node {
                kind: Kind::File {
                    snapshot: index,
                    file,
                },
                size: f.size,
                mode: f.mode & 0o555,
                mtime: f.mtime,
            };
            place(&mut nodes, &f.path, node);
        }
        for l in &plan.links {
            let node = Node {
                size: l.target.len() as u64,
                kind: Kind::Link(l.target.clone()),
                mode: 0o777,
                mtime: l.mtime,
            };
            place(&mut nodes, &l.path, node);
        }
        for special in &plan.specials {
            let (kind, rdev) = match special.kind {
                EntryKind::Device { block: true, rdev } => (FileType::BlockDevice, rdev),
                EntryKind::Device { block: false, rdev } => (FileType::CharDevice, rdev),
                _ => (FileType::NamedPipe, 0),
            };
            // FUSE carries the kernel's 32-bit encoding (`new_encode_dev`).
            let (major, minor) = (libc::major(rdev), libc::minor(rdev));
            let rdev = (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12);
            let node = Node {
                kind: Kind::Special { kind, rdev },
                size: 0,
                mode: special.mode & 0o555,
                mtime: special.mtime,
            };
            place(&mut nodes, &special.path, node);
        }
        drop(nodes);
        let loaded = Loaded {
            plan,
            pieces,
            locations,
            source,
        };
        self.loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(index, Arc::new(loaded));
        Ok(())
    }

    /// The entries of directory `ino`, its snapshot read first if need be.
    fn entries(&self, ino: u64) -> Result<BTreeMap<OsString, u64>, Errno> {
        let pending = match self.nodes().get(ino as usize).map(|n| &n.kind) {
            Some(Kind::Dir(entries)) => return Ok(entries.clone()),
            Some(Kind::Snapshot(index)) => *index,
            Some(_) => return Err(Errno::ENOTDIR),
            None => return Err(Errno::ENOENT),
        };
        self.load(ino, pending)?;
        match self.nodes().get(ino as usize).map(|n| &n.kind) {
            Some(Kind::Dir(entries)) => Ok(entries.clone()),
            _ => Err(Errno::EIO),
        }
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let nodes = self.nodes();
        let node = nodes.get(ino as usize).filter(|_| ino > 0)?;
        let kind = node.kind.file_type();
        let rdev = match node.kind {
            Kind::Special { rdev, .. } => rdev,
            _ => 0,
        };
        let mtime =
            UNIX_EPOCH + Duration::new(node.mtime.0.max(0) as u64, node.mtime.1.min(999_999_999));
        Some(FileAttr {
            ino: INodeNo(ino),
            size: node.size,
            blocks: node.size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind,
            perm: (node.mode & 0o7777) as u16,
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            rdev,
            blksize: 4096,
            flags: 0,
        })
    }

    /// A portion's bytes, from those held or fetched.
    fn portion(&self, loaded: &Loaded, id: PortionId) -> Result<Arc<Vec<u8>>, Errno> {
        let held = self
            .portions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id);
        if let Some(bytes) = held {
            return Ok(bytes);
        }
        let location = loaded.locations.get(&id).ok_or(Errno::EIO)?;
        let fetched = self
            .runtime
            .block_on(loaded.source.portion(location, Vec::new()))
            .map_err(|e| {
                tracing::warn!(portion = %id, error = %e, "cannot fetch a portion for the mount");
                Errno::EIO
            })?;
        let fetched = Arc::new(fetched);
        self.portions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keep(id, fetched.clone());
        Ok(fetched)
    }

    /// `size` bytes of file `file` of snapshot `snapshot` from `offset`.
    fn read_file(
        &self,
        snapshot: usize,
        file: usize,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, Errno> {
        let loaded = self
            .loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&snapshot)
            .cloned()
            .ok_or(Errno::EIO)?;
        let total = loaded.plan.files.get(file).map_or(0, |f| f.size);
        let end = offset.saturating_add(u64::from(size)).min(total);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        for piece in loaded.pieces.get(file).into_iter().flatten() {
            if piece.end() <= offset || piece.offset >= end {
                continue;
            }
            let bytes = self.portion(&loaded, piece.portion)?;
            let plain = piece.open(&self.keys, &bytes).map_err(|e| {
                tracing::warn!(portion = %piece.portion, error = %e, "a chunk for the mount does not open");
                Errno::EIO
            })?;
            let from = offset.max(piece.offset) - piece.offset;
            let to = end.min(piece.end()) - piece.offset;
            out.extend_from_slice(plain.get(from as usize..to as usize).ok_or(Errno::EIO)?);
        }
        Ok(out)
    }
}

impl Filesystem for SnapshotFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = self
            .entries(parent.0)
            .map(|entries| entries.get(name).copied());
        match found {
            Ok(Some(ino)) => match self.attr(ino) {
                Some(attr) => reply.entry(&TTL, &attr, Generation(0)),
                None => reply.error(Errno::ENOENT),
            },
            Ok(None) => reply.error(Errno::ENOENT),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.nodes().get(ino.0 as usize).map(|n| &n.kind) {
            Some(Kind::Link(target)) => reply.data(target),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let file = match self.nodes().get(ino.0 as usize).map(|n| &n.kind) {
            Some(Kind::File { snapshot, file }) => Some((*snapshot, *file)),
            _ => None,
        };
        match file {
            Some((snapshot, file)) => match self.read_file(snapshot, file, offset, size) {
                Ok(bytes) => reply.data(&bytes),
                Err(e) => reply.error(e),
            },
            None => reply.error(Errno::EISDIR),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.entries(ino.0) {
            Ok(entries) => entries,
            Err(e) => return reply.error(e),
        };
        let kinds: Vec<(u64, FileType, OsString)> = {
            let nodes = self.nodes();
            let kind = |ino: u64| {
                nodes
                    .get(ino as usize)
                    .map_or(FileType::Directory, |n| n.kind.file_type())
            };
            let mut all = vec![
                (ino.0, FileType::Directory, OsString::from(".")),
                (ino.0, FileType::Directory, OsString::from("..")),
            ];
            all.extend(
                entries
                    .into_iter()
                    .map(|(name, child)| (child, kind(child), name)),
            );
            all
        };
        for (i, (child, kind, name)) in kinds.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }
}

/// Why the mount cannot be made, in words a user can act on.
pub fn fuse_unavailable() -> Option<String> {
    if Path::new("/dev/fuse").exists() {
        return None;
    }
    Some(
        "FUSE is not available here (no /dev/fuse): load the fuse module (`modprobe fuse`), or \
         in a container pass the device (`--device /dev/fuse --cap-add SYS_ADMIN`); `restore` \
         and `dump` work without it"
            .into(),
    )
}
