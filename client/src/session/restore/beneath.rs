//! Entries beneath the restore target, reached without following any
//! symlink: every path is resolved from the target directory's handle, with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` or, where the kernel
//! lacks it, one directory at a time with `O_NOFOLLOW`. A symlink planted in
//! the target, or one this restore made, is never written through: opening
//! through it fails with `ELOOP`, and the caller replaces it or refuses.
//!
//! The target itself is the user's choice and may be a symlink; nothing
//! below it is followed.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{openat, openat2, Mode, OFlags, ResolveFlags, CWD};
use rustix::io::Errno;

/// Flags of a directory opened on the way to an entry.
const DIR: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// The restore target's directory handle.
pub struct Beneath {
    root: OwnedFd,
    path: PathBuf,
    /// Cleared when the kernel has no `openat2` (before Linux 5.6, or a
    /// seccomp filter refusing it); then every path is walked.
    openat2: AtomicBool,
}

/// The directory that holds an entry: the target itself or one beneath it.
pub enum Parent<'a> {
    Target(BorrowedFd<'a>),
    Below(OwnedFd),
}

impl AsFd for Parent<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Parent::Target(fd) => *fd,
            Parent::Below(fd) => fd.as_fd(),
        }
    }
}

impl Beneath {
    /// Opens the target directory (which must exist).
    pub fn open(target: &Path) -> io::Result<Self> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        Ok(Self {
            root: openat(CWD, target, flags, Mode::empty())?,
            path: target.to_path_buf(),
            openat2: AtomicBool::new(true),
        })
    }

    /// `rel` as the user would name it, for messages.
    pub fn display(&self, rel: &Path) -> PathBuf {
        self.path.join(rel)
    }

    /// Opens `rel` with `flags` (`O_NOFOLLOW` and `O_CLOEXEC` added) and
    /// `mode`; `ELOOP` when `rel` or a directory on its way is a symlink.
    pub fn open_at(&self, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        // openat2 refuses a mode without O_CREAT.
        let mode = if flags.contains(OFlags::CREATE) {
            mode
        } else {
            Mode::empty()
        };
        let root = self.root.as_fd();
        let mut opened = None;
        if self.openat2.load(Ordering::Relaxed) {
            match open_resolved(root, rel, flags, mode) {
                Err(Errno::NOSYS) => self.openat2.store(false, Ordering::Relaxed),
                // Refused by a filter, a path longer than PATH_MAX, or a
                // rename racing the lookup: the walk answers for itself.
                Err(Errno::PERM | Errno::NAMETOOLONG | Errno::AGAIN) => {}
                other => opened = Some(other.map_err(io::Error::from)),
            }
        }
        let opened = opened.unwrap_or_else(|| open_walked(root, rel, flags, mode));
        // `O_DIRECTORY | O_NOFOLLOW` on a symlink fails with `ENOTDIR`.
        opened.map_err(|error| match error.raw_os_error() {
            Some(code) if code == Errno::NOTDIR.raw_os_error() && is_link(root, rel) => {
                Errno::LOOP.into()
            }
            _ => error,
        })
    }

    /// Opens the directory `rel` (the target itself when `rel` is empty).
    pub fn open_dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        if rel.as_os_str().is_empty() {
            return Ok(openat(self.root.as_fd(), ".", DIR, Mode::empty())?);
        }
        self.open_at(rel, DIR, Mode::empty())
    }

    /// The directory holding `rel`, and `rel`'s last name.
    pub fn parent<'a>(&self, rel: &'a Path) -> io::Result<(Parent<'_>, &'a OsStr)> {
        let name = match rel.components().next_back() {
            Some(Component::Normal(name)) => name,
            _ => return Err(not_beneath(rel)),
        };
        let parent = match rel.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => {
                Parent::Below(self.open_at(dir, DIR, Mode::empty())?)
            }
            _ => Parent::Target(self.root.as_fd()),
        };
        Ok((parent, name))
    }
}

/// One `openat2` call that refuses any symlink and any way out of `root`.
fn open_resolved(
    root: BorrowedFd<'_>,
    rel: &Path,
    flags: OFlags,
    mode: Mode,
) -> rustix::io::Result<OwnedFd> {
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    openat2(root, rel, flags, mode, resolve)
}

/// Each directory of `rel` opened from the one before with `O_NOFOLLOW`,
/// then `rel`'s last name with `flags`.
fn open_walked(root: BorrowedFd<'_>, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
    let names = rel
        .components()
        .map(|c| match c {
            Component::Normal(name) => Ok(name),
            _ => Err(not_beneath(rel)),
        })
        .collect::<io::Result<Vec<&OsStr>>>()?;
    let Some((last, dirs)) = names.split_last() else {
        return Err(not_beneath(rel));
    };
    let mut dir: Option<OwnedFd> = None;
    for name in dirs {
        let at = dir.as_ref().map_or(root, AsFd::as_fd);
        dir =
            Some(openat(at, *name, DIR, Mode::empty()).map_err(|e| symlink_as_loop(at, name, e))?);
    }
    let at = dir.as_ref().map_or(root, AsFd::as_fd);
    Ok(openat(
        at,
        *last,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        mode,
    )?)
}

/// `O_DIRECTORY | O_NOFOLLOW` on a symlink fails with `ENOTDIR`; say
/// `ELOOP` then, as `openat2` does for a symlink on the way, so callers see
/// one refusal.
fn symlink_as_loop(at: BorrowedFd<'_>, name: &OsStr, error: Errno) -> Errno {
    match error {
        Errno::NOTDIR if is_link(at, Path::new(name)) => Errno::LOOP,
        other => other,
    }
}

/// Whether the last name of `rel` is a symlink (only to explain a refusal:
/// nothing is opened or written by this look).
fn is_link(at: BorrowedFd<'_>, rel: &Path) -> bool {
    rustix::fs::statat(at, rel, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|stat| {
        rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Symlink
    })
}

fn not_beneath(rel: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{} is not a path of names beneath the target",
            rel.display()
        ),
    )
}

/// Whether an error is a symlink met on the way (and not followed).
pub fn is_symlink_refusal(error: &io::Error) -> bool {
    error.raw_os_error() == Some(Errno::LOOP.raw_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ways of resolving refuse a planted symlink, as the entry itself
    /// and as a directory on the way, and a path that is not all names.
    #[test]
    fn no_way_of_resolving_follows_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let (target, outside) = (dir.path().join("target"), dir.path().join("outside"));
        std::fs::create_dir_all(target.join("real")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("victim"), b"keep").unwrap();
        std::os::unix::fs::symlink(&outside, target.join("dir")).unwrap();
        std::os::unix::fs::symlink(outside.join("victim"), target.join("file")).unwrap();
        let beneath = Beneath::open(&target).unwrap();
        let root = beneath.root.as_fd();
        let write = OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW;
        let mode = Mode::from_raw_mode(0o600);
        for rel in ["dir/victim", "dir/new", "file"] {
            let rel = Path::new(rel);
            let resolved = open_resolved(root, rel, write, mode).map_err(io::Error::from);
            let walked = open_walked(root, rel, write, mode);
            let through_handle = beneath.open_at(rel, write, mode);
            for result in [resolved, walked, through_handle] {
                let error = result.err().unwrap_or_else(|| panic!("{rel:?} was opened"));
                assert!(is_symlink_refusal(&error), "{rel:?}: {error}");
            }
        }
        for rel in [
            "../outside/victim",
            "real/../../outside/victim",
            "/etc/hostname",
        ] {
            assert!(
                open_resolved(root, Path::new(rel), write, mode).is_err(),
                "{rel}"
            );
            assert!(
                open_walked(root, Path::new(rel), write, mode).is_err(),
                "{rel}"
            );
        }
        // A symlink opened as a directory, with and without openat2.
        let walking = Beneath::open(&target).unwrap();
        walking.openat2.store(false, Ordering::Relaxed);
        for handle in [&beneath, &walking] {
            for rel in ["dir", "dir/sub", "file"] {
                let as_dir = handle.open_at(Path::new(rel), DIR, Mode::empty());
                let error = as_dir
                    .err()
                    .unwrap_or_else(|| panic!("{rel} was opened as a directory"));
                assert!(is_symlink_refusal(&error), "{rel}: {error}");
            }
        }
        assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"keep");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
        // A real directory on the way is fine both ways.
        open_walked(root, Path::new("real/a"), write, mode).unwrap();
        open_resolved(root, Path::new("real/b"), write, mode).unwrap();
    }
}
