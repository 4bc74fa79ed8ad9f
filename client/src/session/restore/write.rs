//! The writing half of a restore: create directories, write each blob of a
//! fetched portion at its offsets (a file is created by its first write), and
//! give each file its permissions and mtime through the handle of its last
//! write; then symlinks, FIFOs and device nodes, the files no write
//! finished (empty ones), hard links, and directories (deepest first).
//! A sparse file's zero blocks are not written, so its holes stay holes.
//!
//! Into a new or empty target nothing needs clearing, so no file is touched
//! before its data arrives; into a non-empty one anything not a directory
//! where a directory goes, and anything at all where a file goes, is removed
//! and the file is created anew (so neither a planted symlink nor a hard link
//! to a file outside is written through). Every entry is reached from the
//! target's handle without following symlinks (see [`Beneath`]); a file is
//! written only while it is a regular file with no other link.
//!
//! Owners and groups are restored when the plan carries them (run as root;
//! see [`Owners`](super::plan::Owners)); setuid, setgid and sticky bits only
//! together with the owner, since on a file the restoring user now owns
//! they would grant that user's rights instead of the owner's. Extended
//! attributes (POSIX ACLs among them) are set after the mode, which would
//! otherwise rewrite an ACL's mask; one the restoring user may not set (a
//! `trusted.` one when not root) or the target's filesystem does not
//! support is counted and left out, as are device nodes when not root.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use filetime::FileTime;
use offsite_proto::PortionId;
use rustix::fs::{
    mkdirat, statat, symlinkat, unlinkat, utimensat, AtFlags, FileType, Mode, OFlags,
};
use rustix::fs::{Timespec, Timestamps};

use crate::format::blob::{open_in_place, BlobKind};
use crate::format::keys::Keys;
use crate::format::portion::{blob_at_mut, check_header};
use crate::format::tree::{EntryKind, Owner, Xattr};
use crate::session::restore::beneath::{is_symlink_refusal, Beneath, Parent};
use crate::session::restore::plan::{BlobWrite, FilePlan, Plan, SpecialPlan};
use crate::session::restore::{Overwrite, RestoreError};

fn io_err<'a>(
    target: &'a Beneath,
    rel: &'a Path,
    what: &'static str,
) -> impl Fn(std::io::Error) -> RestoreError + 'a {
    move |source| {
        let path = target.display(rel);
        if is_symlink_refusal(&source) {
            RestoreError::SymlinkInTheWay { path, what }
        } else {
            RestoreError::Io { path, what, source }
        }
    }
}

/// The permission bits a restore gives an entry of `mode`: setuid, setgid
/// and sticky only together with its owner.
pub fn restored_mode(mode: u32, owner: Option<&Owner>) -> u32 {
    if owner.is_some() {
        mode & 0o7777
    } else {
        mode & 0o777
    }
}

/// Whether restoring `mode` without `owner` drops setuid, setgid or sticky bits.
pub fn loses_special_bits(mode: u32, owner: Option<&Owner>) -> bool {
    owner.is_none() && mode & 0o7000 != 0
}

/// Gives an open entry its owner and group (before its mode: a chown
/// clears setuid and setgid).
fn give_owner(
    target: &Beneath,
    rel: &Path,
    handle: &File,
    owner: Option<&Owner>,
) -> Result<(), RestoreError> {
    let Some(owner) = owner else { return Ok(()) };
    let uid = rustix::fs::Uid::from_raw(owner.uid);
    let gid = rustix::fs::Gid::from_raw(owner.gid);
    rustix::fs::fchown(handle, Some(uid), Some(gid))
        .map_err(|e| io_err(target, rel, "set owner of")(e.into()))
}

/// Whether `target` is missing or an empty directory.
fn is_fresh(target: &Path) -> bool {
    match std::fs::read_dir(target) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// Creates the target directory if need be and opens it; true with it when
/// it was missing or empty.
pub fn open_target(target: &Path) -> Result<(Beneath, bool), RestoreError> {
    let fresh = is_fresh(target);
    let err = |what: &'static str| {
        move |source| RestoreError::Io {
            path: target.to_path_buf(),
            what,
            source,
        }
    };
    std::fs::create_dir_all(target).map_err(err("create the target directory"))?;
    let beneath = Beneath::open(target).map_err(err("open the target directory"))?;
    Ok((beneath, fresh))
}

/// Creates every directory; in a target that held something, also creates
/// every file anew. Into a fresh one, only the empty files are made here.
pub fn prepare(target: &Beneath, plan: &Plan, fresh: bool) -> Result<(), RestoreError> {
    for dir in &plan.dirs {
        make_dir(target, &dir.path)?;
    }
    for file in &plan.files {
        if fresh && file.size > 0 {
            continue;
        }
        let (parent, name) = target.parent(&file.path).map_err(io_err(
            target,
            &file.path,
            "open the directory of",
        ))?;
        if !fresh {
            remove_non_dir(target, &parent, name, &file.path)?;
        }
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        rustix::fs::openat(&parent, name, flags, Mode::from_raw_mode(0o600))
            .map_err(|e| io_err(target, &file.path, "create file")(e.into()))?;
    }
    Ok(())
}

/// Makes a directory (owner-only until [`finish`] gives it its mode); an
/// existing directory is kept, anything else there (a symlink, a file) is
/// replaced, never followed.
fn make_dir(target: &Beneath, rel: &Path) -> Result<(), RestoreError> {
    let (parent, name) =
        target
            .parent(rel)
            .map_err(io_err(target, rel, "open the directory of"))?;
    let err = |what| move |e: rustix::io::Errno| io_err(target, rel, what)(e.into());
    match mkdirat(&parent, name, Mode::RWXU) {
        Err(rustix::io::Errno::EXIST) => {}
        other => return other.map_err(err("create directory")),
    }
    let existing = statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW).map_err(err("inspect"))?;
    if FileType::from_raw_mode(existing.st_mode) == FileType::Directory {
        return Ok(());
    }
    tracing::info!(
        path = %target.display(rel).display(),
        "replacing a non-directory in the target with the snapshot's directory"
    );
    unlinkat(&parent, name, AtFlags::empty()).map_err(err("remove the existing entry"))?;
    mkdirat(&parent, name, Mode::RWXU).map_err(err("create directory"))
}

/// Removes whatever is at `name`, where a file or symlink of the snapshot
/// goes; a directory there is refused (its contents are not the restore's
/// to delete).
fn remove_non_dir(
    target: &Beneath,
    parent: &Parent<'_>,
    name: &std::ffi::OsStr,
    rel: &Path,
) -> Result<(), RestoreError> {
    match unlinkat(parent, name, AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(rustix::io::Errno::ISDIR) => Err(RestoreError::DirInTheWay(target.display(rel))),
        Err(e) => Err(io_err(target, rel, "remove the existing entry")(e.into())),
    }
}

/// Opens a file of the plan, creating it on its first write, and refuses it
/// unless it is a regular file with no other link (something changed the
/// target during the restore, or planted a hard link to a file elsewhere).
fn open_file(target: &Beneath, rel: &Path, flags: OFlags) -> Result<File, RestoreError> {
    let flags = flags | OFlags::NONBLOCK;
    let fd = target
        .open_at(rel, flags, Mode::from_raw_mode(0o600))
        .map_err(io_err(target, rel, "open file"))?;
    let stat = rustix::fs::fstat(&fd).map_err(|e| io_err(target, rel, "inspect")(e.into()))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile || stat.st_nlink != 1 {
        return Err(RestoreError::NotOurFile(target.display(rel)));
    }
    Ok(File::from(fd))
}

/// Bytes each file of the plan still waits for, and what the restore left
/// out so far.
pub struct Remaining {
    bytes: Vec<AtomicU64>,
    /// Extended attributes that could not be set (see the module's doc).
    pub xattrs_skipped: AtomicU64,
    /// Device nodes not made (only root may).
    pub specials_skipped: AtomicU64,
}

impl Remaining {
    pub fn new(plan: &Plan) -> Self {
        Self {
            bytes: plan.files.iter().map(|f| AtomicU64::new(f.size)).collect(),
            xattrs_skipped: AtomicU64::new(0),
            specials_skipped: AtomicU64::new(0),
        }
    }

    /// Counts `len` bytes of `file` written; true when that was the last.
    fn written(&self, file: usize, len: u64) -> bool {
        self.bytes
            .get(file)
            .is_some_and(|left| left.fetch_sub(len, Ordering::AcqRel) == len)
    }

    fn done(&self, file: usize) -> bool {
        self.bytes
            .get(file)
            .is_some_and(|left| left.load(Ordering::Acquire) == 0)
    }
}

/// The block size holes are kept at: a sparse file's all-zero blocks of
/// this size (aligned in the file) are left unwritten.
const HOLE_BLOCK: u64 = 4096;

/// Writes `data` at `offset`, leaving out the aligned blocks that are all
/// zero (the file was created empty, so they read as zeros).
fn write_sparse(out: &File, data: &[u8], offset: u64) -> std::io::Result<()> {
    let mut at = 0usize;
    // The start of a run of non-zero blocks not yet written.
    let mut run: Option<usize> = None;
    while at < data.len() {
        let to_boundary = HOLE_BLOCK - (offset + at as u64) % HOLE_BLOCK;
        let end = (at + to_boundary as usize).min(data.len());
        let zero = data[at..end].iter().all(|&b| b == 0);
        match (zero, run) {
            (true, Some(start)) => {
                out.write_all_at(&data[start..at], offset + start as u64)?;
                run = None;
            }
            (false, None) => run = Some(at),
            _ => {}
        }
        at = end;
    }
    if let Some(start) = run {
        out.write_all_at(&data[start..], offset + start as u64)?;
    }
    Ok(())
}

/// Whether setting an extended attribute failed for a reason that leaves
/// the rest of the restore sound: the user may not, or the filesystem
/// cannot.
fn xattr_not_allowed(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPERM | libc::EACCES | libc::ENOTSUP | libc::ENOSPC | libc::E2BIG)
    )
}

/// Sets each extended attribute with `set`, counting those not allowed.
fn give_xattrs(
    target: &Beneath,
    rel: &Path,
    xattrs: &[Xattr],
    remaining: &Remaining,
    mut set: impl FnMut(&std::ffi::OsStr, &[u8]) -> std::io::Result<()>,
) -> Result<(), RestoreError> {
    for x in xattrs {
        let name = std::ffi::OsStr::from_bytes(&x.name);
        match set(name, &x.value) {
            Ok(()) => {}
            Err(e) if xattr_not_allowed(&e) => {
                tracing::debug!(path = %target.display(rel).display(), name = ?name, error = %e, "extended attribute not restored");
                remaining.xattrs_skipped.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => return Err(io_err(target, rel, "set extended attributes of")(e)),
        }
    }
    Ok(())
}

/// The memory one portion job works in, reused from portion to portion so a
/// restore does not fault in fresh pages for every portion and blob.
#[derive(Default)]
pub struct Scratch {
    /// The fetched portion; each blob is decrypted where it lies.
    pub portion: Vec<u8>,
    /// The plaintext of the blob being written.
    plain: Vec<u8>,
}

/// Writes every planned blob of the portion in `scratch` into its files,
/// finishing each file whose last bytes these were.
pub fn apply_portion(
    target: &Beneath,
    keys: &Keys,
    files: &[FilePlan],
    remaining: &Remaining,
    portion: PortionId,
    scratch: &mut Scratch,
    writes: &[BlobWrite],
) -> Result<u64, RestoreError> {
    let Scratch {
        portion: bytes,
        plain,
    } = scratch;
    check_header(portion, bytes)?;
    let mut written = 0u64;
    for write in writes {
        let sealed = blob_at_mut(portion, bytes, write.offset, write.length)?;
        open_in_place(keys, BlobKind::Data, &write.id, sealed, plain)?;
        if plain.len() != write.plain_len as usize {
            return Err(RestoreError::ChunkLength(write.id));
        }
        for &(index, offset) in &write.targets {
            let Some(file) = files.get(index) else {
                continue;
            };
            let rel = file.path.as_path();
            let out = open_file(target, rel, OFlags::WRONLY | OFlags::CREATE)?;
            if file.sparse {
                write_sparse(&out, plain, offset)
            } else {
                out.write_all_at(plain, offset)
            }
            .map_err(io_err(target, rel, "write file"))?;
            written += plain.len() as u64;
            if remaining.written(index, plain.len() as u64) {
                finish_file(target, file, &out, false, remaining)?;
            }
        }
    }
    Ok(written)
}

/// Gives a file its length (a sparse file's last hole), owner,
/// permissions, extended attributes and mtime (and its atime too, when
/// `atime`).
fn finish_file(
    target: &Beneath,
    file: &FilePlan,
    out: &File,
    atime: bool,
    remaining: &Remaining,
) -> Result<(), RestoreError> {
    use xattr::FileExt as _;
    let rel = file.path.as_path();
    if file.sparse {
        out.set_len(file.size)
            .map_err(io_err(target, rel, "set the length of"))?;
    }
    let owner = file.owner.as_ref();
    give_owner(target, rel, out, owner)?;
    out.set_permissions(std::fs::Permissions::from_mode(restored_mode(
        file.mode, owner,
    )))
    .map_err(io_err(target, rel, "set permissions"))?;
    give_xattrs(target, rel, &file.xattrs, remaining, |name, value| {
        out.set_xattr(name, value)
    })?;
    let atime = atime.then(|| mtime(file.mtime));
    filetime::set_file_handle_times(out, atime, Some(mtime(file.mtime))).map_err(io_err(
        target,
        rel,
        "set mtime",
    ))
}

fn mtime(pair: (i64, u32)) -> FileTime {
    FileTime::from_unix_time(pair.0, pair.1)
}

/// Symlinks, then the permissions and mtimes of files no write finished
/// and of directories.
pub fn finish(target: &Beneath, plan: &Plan, remaining: &Remaining) -> Result<(), RestoreError> {
    for link in &plan.links {
        let rel = link.path.as_path();
        let (parent, name) =
            target
                .parent(rel)
                .map_err(io_err(target, rel, "open the directory of"))?;
        let err = |what| move |e: rustix::io::Errno| io_err(target, rel, what)(e.into());
        remove_non_dir(target, &parent, name, rel)?;
        let to = std::ffi::OsStr::from_bytes(&link.target);
        symlinkat(to, &parent, name).map_err(err("create symlink"))?;
        if let Some(owner) = &link.owner {
            let uid = rustix::fs::Uid::from_raw(owner.uid);
            let gid = rustix::fs::Gid::from_raw(owner.gid);
            rustix::fs::chownat(
                &parent,
                name,
                Some(uid),
                Some(gid),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(err("set owner of"))?;
        }
        utimensat(
            &parent,
            name,
            &timestamps(link.mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(err("set symlink mtime"))?;
    }
    for special in &plan.specials {
        make_special(target, special, remaining)?;
    }
    for (index, file) in plan.files.iter().enumerate() {
        if file.size > 0 && remaining.done(index) {
            continue;
        }
        let out = open_file(target, &file.path, OFlags::RDONLY)?;
        finish_file(target, file, &out, true, remaining)?;
    }
    for link in &plan.hard_links {
        let rel = link.path.as_path();
        let (from, from_name) =
            target
                .parent(&link.to)
                .map_err(io_err(target, &link.to, "open the directory of"))?;
        let (parent, name) =
            target
                .parent(rel)
                .map_err(io_err(target, rel, "open the directory of"))?;
        remove_non_dir(target, &parent, name, rel)?;
        rustix::fs::linkat(&from, from_name, &parent, name, AtFlags::empty())
            .map_err(|e| io_err(target, rel, "create hard link")(e.into()))?;
    }
    let mut dirs: Vec<_> = plan.dirs.iter().collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.depth));
    for dir in dirs {
        let rel = dir.path.as_path();
        let handle = target
            .open_at(rel, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
            .map(File::from)
            .map_err(io_err(target, rel, "open directory"))?;
        let owner = dir.owner.as_ref();
        give_owner(target, rel, &handle, owner)?;
        handle
            .set_permissions(std::fs::Permissions::from_mode(restored_mode(
                dir.mode, owner,
            )))
            .map_err(io_err(target, rel, "set permissions"))?;
        give_xattrs(target, rel, &dir.xattrs, remaining, |name, value| {
            use xattr::FileExt as _;
            handle.set_xattr(name, value)
        })?;
        let at = mtime(dir.mtime);
        filetime::set_file_handle_times(&handle, Some(at), Some(at)).map_err(io_err(
            target,
            rel,
            "set mtime",
        ))?;
    }
    Ok(())
}

/// Makes a FIFO or device node with its owner, mode, extended attributes
/// and mtime; a device node is counted and left out when the restoring
/// user may not make one.
fn make_special(
    target: &Beneath,
    special: &SpecialPlan,
    remaining: &Remaining,
) -> Result<(), RestoreError> {
    let rel = special.path.as_path();
    let (parent, name) =
        target
            .parent(rel)
            .map_err(io_err(target, rel, "open the directory of"))?;
    let err = |what| move |e: rustix::io::Errno| io_err(target, rel, what)(e.into());
    remove_non_dir(target, &parent, name, rel)?;
    let (kind, dev) = node_type(&special.kind);
    match rustix::fs::mknodat(&parent, name, kind, Mode::RUSR | Mode::WUSR, dev) {
        Ok(()) => {}
        Err(rustix::io::Errno::PERM) if kind != FileType::Fifo => {
            tracing::warn!(path = %target.display(rel).display(), "device node not made: only root may make one");
            remaining.specials_skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        Err(e) => return Err(err("create")(e)),
    }
    // A handle that neither opens the pipe nor the device; its path under
    // /proc reaches the node just made even if its name is swapped.
    let node = rustix::fs::openat(
        &parent,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(err("open"))?;
    let stat = rustix::fs::fstat(&node).map_err(err("inspect"))?;
    if FileType::from_raw_mode(stat.st_mode) != kind {
        return Err(RestoreError::NotOurFile(target.display(rel)));
    }
    let by_proc = PathBuf::from(format!("/proc/self/fd/{}", node.as_raw_fd()));
    let owner = special.owner.as_ref();
    if let Some(owner) = owner {
        let (uid, gid) = (
            rustix::fs::Uid::from_raw(owner.uid),
            rustix::fs::Gid::from_raw(owner.gid),
        );
        rustix::fs::chownat(
            &node,
            "",
            Some(uid),
            Some(gid),
            AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(err("set owner of"))?;
    }
    std::fs::set_permissions(
        &by_proc,
        std::fs::Permissions::from_mode(restored_mode(special.mode, owner)),
    )
    .map_err(io_err(target, rel, "set permissions"))?;
    give_xattrs(target, rel, &special.xattrs, remaining, |name, value| {
        xattr::set_deref(&by_proc, name, value)
    })?;
    let times = timestamps(special.mtime);
    utimensat(&parent, name, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(err("set mtime of"))
}

/// The file type and device number a FIFO or device node is made with (a
/// FIFO's is 0, as `stat` shows it).
fn node_type(kind: &EntryKind) -> (FileType, u64) {
    match *kind {
        EntryKind::Device { block: true, rdev } => (FileType::BlockDevice, rdev),
        EntryKind::Device { block: false, rdev } => (FileType::CharacterDevice, rdev),
        _ => (FileType::Fifo, 0),
    }
}

/// Access and modification times both at `mtime` (seconds, nanoseconds).
fn timestamps((secs, nanos): (i64, u32)) -> Timestamps {
    let at = Timespec {
        tv_sec: secs,
        tv_nsec: nanos.into(),
    };
    Timestamps {
        last_access: at,
        last_modification: at,
    }
}

/// Takes out of `plan` the entries `overwrite` leaves as they are in a
/// target that already holds something: with `never` anything at their
/// path, with `if-changed` a regular file of the same size and mtime (to
/// the nanosecond), a symlink to the same target, a FIFO or the same device
/// node, or a hard link already to its file. Returns their paths.
pub fn skip_existing(
    target: &Beneath,
    plan: &mut Plan,
    overwrite: Overwrite,
) -> Result<Vec<PathBuf>, RestoreError> {
    if overwrite == Overwrite::Always {
        return Ok(Vec::new());
    }
    let existing = |rel: &Path| -> Result<Option<rustix::fs::Stat>, RestoreError> {
        let (parent, name) = match target.parent(rel) {
            Ok(found) => found,
            // A missing directory: nothing is there yet.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(target, rel, "open the directory of")(e)),
        };
        match statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(stat)),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(io_err(target, rel, "inspect")(e.into())),
        }
    };
    let mut skipped = Vec::new();
    let mut failed = None;
    plan.retain_files(|file| {
        let stat = match existing(&file.path) {
            Ok(stat) => stat,
            Err(e) => {
                failed.get_or_insert(e);
                return true;
            }
        };
        let skip = match (overwrite, stat) {
            (_, None) => false,
            (Overwrite::Never, Some(_)) => true,
            (_, Some(stat)) => {
                FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile
                    && stat.st_size as u64 == file.size
                    && stat.st_mtime == file.mtime.0
                    && stat.st_mtime_nsec as u32 == file.mtime.1
            }
        };
        if skip {
            skipped.push(file.path.clone());
        }
        !skip
    });
    if let Some(e) = failed {
        return Err(e);
    }
    // The others: what `never` finds anything at, and what `if-changed`
    // finds already as the snapshot has it.
    let unchanged = |found: Option<rustix::fs::Stat>,
                     same: &dyn Fn(&rustix::fs::Stat) -> Result<bool, RestoreError>|
     -> Result<bool, RestoreError> {
        match (overwrite, found) {
            (_, None) => Ok(false),
            (Overwrite::Never, Some(_)) => Ok(true),
            (_, Some(stat)) => same(&stat),
        }
    };
    let links = std::mem::take(&mut plan.links);
    plan.links = keep_unless(
        links,
        &mut skipped,
        |l| &l.path,
        |link| {
            unchanged(existing(&link.path)?, &|stat| {
                Ok(FileType::from_raw_mode(stat.st_mode) == FileType::Symlink
                    && read_link(target, &link.path).as_deref() == Some(link.target.as_slice()))
            })
        },
    )?;
    let specials = std::mem::take(&mut plan.specials);
    plan.specials = keep_unless(
        specials,
        &mut skipped,
        |s| &s.path,
        |special| {
            unchanged(existing(&special.path)?, &|stat| {
                let (kind, rdev) = node_type(&special.kind);
                Ok(FileType::from_raw_mode(stat.st_mode) == kind && stat.st_rdev == rdev)
            })
        },
    )?;
    let hard_links = std::mem::take(&mut plan.hard_links);
    plan.hard_links = keep_unless(
        hard_links,
        &mut skipped,
        |h| &h.path,
        |link| {
            unchanged(existing(&link.path)?, &|stat| {
                let to = existing(&link.to)?;
                Ok(to.is_some_and(|to| (to.st_dev, to.st_ino) == (stat.st_dev, stat.st_ino)))
            })
        },
    )?;
    Ok(skipped)
}

/// The items `skip` answers false for; the paths of the others go to
/// `skipped`.
fn keep_unless<T>(
    items: Vec<T>,
    skipped: &mut Vec<PathBuf>,
    path: impl Fn(&T) -> &Path,
    mut skip: impl FnMut(&T) -> Result<bool, RestoreError>,
) -> Result<Vec<T>, RestoreError> {
    let mut kept = Vec::with_capacity(items.len());
    for item in items {
        if skip(&item)? {
            skipped.push(path(&item).to_path_buf());
        } else {
            kept.push(item);
        }
    }
    Ok(kept)
}

/// Where a symlink in the target points, read without following it.
fn read_link(target: &Beneath, rel: &Path) -> Option<Vec<u8>> {
    let (parent, name) = target.parent(rel).ok()?;
    let link = rustix::fs::readlinkat(&parent, name, Vec::new()).ok()?;
    Some(link.into_bytes())
}

/// Removes from the target every entry the plan does not have, except those
/// `keep` (their path relative to the target) answers true for; never
/// follows a symlink (a symlink is removed, not what it points at). Returns
/// how many entries were removed (a directory with its contents counts once
/// per entry).
pub fn delete_extra(
    target: &Beneath,
    plan: &Plan,
    keep: &dyn Fn(&Path) -> bool,
) -> Result<u64, RestoreError> {
    let mut planned: std::collections::HashSet<&Path> = std::collections::HashSet::new();
    planned.extend(plan.files.iter().map(|f| f.path.as_path()));
    planned.extend(plan.links.iter().map(|l| l.path.as_path()));
    planned.extend(plan.specials.iter().map(|s| s.path.as_path()));
    planned.extend(plan.hard_links.iter().map(|h| h.path.as_path()));
    let dirs: std::collections::HashSet<&Path> =
        plan.dirs.iter().map(|d| d.path.as_path()).collect();
    let mut removed = 0u64;
    let mut stack = vec![PathBuf::new()];
    while let Some(dir) = stack.pop() {
        let fd = target
            .open_dir(&dir)
            .map_err(io_err(target, &dir, "open directory"))?;
        for (name, kind) in list_dir(target, &dir, &fd)? {
            let rel = dir.join(&name);
            if keep(&rel) {
                continue;
            }
            if kind == FileType::Directory && dirs.contains(rel.as_path()) {
                stack.push(rel);
                continue;
            }
            if planned.contains(rel.as_path()) && kind != FileType::Directory {
                continue;
            }
            removed += remove_tree(target, &fd, &name, &rel, kind)?;
        }
    }
    Ok(removed)
}

const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY);

/// The entries of an open directory (not `.` and `..`) with their types.
fn list_dir(
    target: &Beneath,
    rel: &Path,
    fd: &std::os::fd::OwnedFd,
) -> Result<Vec<(std::ffi::OsString, FileType)>, RestoreError> {
    let err = |e: rustix::io::Errno| io_err(target, rel, "list directory")(e.into());
    let mut entries = Vec::new();
    for entry in rustix::fs::Dir::read_from(fd).map_err(err)? {
        let entry = entry.map_err(err)?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = std::ffi::OsStr::from_bytes(name).to_os_string();
        let kind = match entry.file_type() {
            FileType::Unknown => {
                let stat = statat(fd, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW).map_err(err)?;
                FileType::from_raw_mode(stat.st_mode)
            }
            kind => kind,
        };
        entries.push((name, kind));
    }
    Ok(entries)
}

/// Removes `name` in the directory `parent` (at `rel`), a directory with
/// everything in it; returns how many entries went.
fn remove_tree(
    target: &Beneath,
    parent: &std::os::fd::OwnedFd,
    name: &std::ffi::OsStr,
    rel: &Path,
    kind: FileType,
) -> Result<u64, RestoreError> {
    let err = |e: rustix::io::Errno| io_err(target, rel, "remove")(e.into());
    if kind != FileType::Directory {
        unlinkat(parent, name, AtFlags::empty()).map_err(err)?;
        return Ok(1);
    }
    let flags = DIR_FLAGS | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(parent, name, flags, Mode::empty()).map_err(err)?;
    let mut removed = 0;
    for (child, kind) in list_dir(target, rel, &fd)? {
        removed += remove_tree(target, &fd, &child, &rel.join(&child), kind)?;
    }
    unlinkat(parent, name, AtFlags::REMOVEDIR).map_err(err)?;
    Ok(removed + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Zero blocks are left out at any offset, and what is read back is
    /// what was given, zeros included.
    #[test]
    fn sparse_writes_leave_zero_blocks_out_and_keep_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let out = File::create(&path).unwrap();
        let mut data = vec![0u8; 1 << 20];
        data[100] = 1;
        data[(512 << 10) + 7] = 2;
        data[(1 << 20) - 1] = 3;
        let offset = 4096 * 10 + 1234;
        write_sparse(&out, &data, offset).unwrap();
        let mut expected = vec![0u8; offset as usize];
        expected.extend_from_slice(&data);
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        // Three non-zero bytes touch at most four blocks (one may straddle
        // the chunk's unaligned start).
        let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(allocated <= 4 * HOLE_BLOCK, "{allocated} bytes allocated");
    }
}
