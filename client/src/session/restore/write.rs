//! The writing half of a restore: create directories, write each blob of a
//! fetched portion at its offsets (a file is created by its first write), and
//! give each file its permissions and mtime through the handle of its last
//! write; then symlinks, the files no write finished (empty ones), and
//! directories (deepest first).
//!
//! Into a new or empty target nothing needs clearing, so no file is touched
//! before its data arrives; into a non-empty one every file is first
//! truncated, and anything not a directory where one goes is removed.

use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use filetime::FileTime;
use offsite_proto::PortionId;

use crate::format::blob::{open_in_place, BlobKind};
use crate::format::keys::Keys;
use crate::format::portion::{blob_at_mut, check_header};
use crate::session::restore::plan::{BlobWrite, FilePlan, Plan};
use crate::session::restore::RestoreError;

fn io_err<'a>(path: &'a Path, what: &'static str) -> impl Fn(std::io::Error) -> RestoreError + 'a {
    move |source| RestoreError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// Removes a symlink or file where a directory or file is to be created, so
/// writes never follow a link out of the target.
fn clear_non_dir(path: &Path) -> Result<(), RestoreError> {
    if let Ok(meta) = path.symlink_metadata() {
        if !meta.is_dir() {
            std::fs::remove_file(path).map_err(io_err(path, "remove the existing entry"))?;
        }
    }
    Ok(())
}

/// Bytes each file of the plan still waits for.
pub struct Remaining(Vec<AtomicU64>);

impl Remaining {
    pub fn new(plan: &Plan) -> Self {
        Self(plan.files.iter().map(|f| AtomicU64::new(f.size)).collect())
    }

    /// Counts `len` bytes of `file` written; true when that was the last.
    fn written(&self, file: usize, len: u64) -> bool {
        self.0
            .get(file)
            .is_some_and(|left| left.fetch_sub(len, Ordering::AcqRel) == len)
    }

    fn done(&self, file: usize) -> bool {
        self.0
            .get(file)
            .is_some_and(|left| left.load(Ordering::Acquire) == 0)
    }
}

/// Whether `target` is missing or an empty directory.
fn is_fresh(target: &Path) -> bool {
    match std::fs::read_dir(target) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// Creates every directory; in a target that held something, also clears
/// the way for and truncates every file.
pub fn prepare(target: &Path, plan: &Plan) -> Result<(), RestoreError> {
    let fresh = is_fresh(target);
    std::fs::create_dir_all(target).map_err(io_err(target, "create the target directory"))?;
    for dir in &plan.dirs {
        let path = target.join(&dir.path);
        if !fresh {
            clear_non_dir(&path)?;
        }
        std::fs::create_dir_all(&path).map_err(io_err(&path, "create directory"))?;
    }
    for file in &plan.files {
        if fresh && file.size > 0 {
            continue;
        }
        let path = target.join(&file.path);
        if !fresh {
            clear_non_dir(&path)?;
        }
        File::create(&path).map_err(io_err(&path, "create file"))?;
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
    target: &Path,
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
            let path = target.join(&file.path);
            let out = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io_err(&path, "open file"))?;
            out.write_all_at(plain, offset)
                .map_err(io_err(&path, "write file"))?;
            written += plain.len() as u64;
            if remaining.written(index, plain.len() as u64) {
                out.set_permissions(std::fs::Permissions::from_mode(file.mode & 0o7777))
                    .map_err(io_err(&path, "set permissions"))?;
                filetime::set_file_handle_times(&out, None, Some(mtime(file.mtime)))
                    .map_err(io_err(&path, "set mtime"))?;
            }
        }
    }
    Ok(written)
}

fn mtime(pair: (i64, u32)) -> FileTime {
    FileTime::from_unix_time(pair.0, pair.1)
}

/// Symlinks, then the permissions and mtimes of files no write finished
/// and of directories.
pub fn finish(target: &Path, plan: &Plan, remaining: &Remaining) -> Result<(), RestoreError> {
    for link in &plan.links {
        let path = target.join(&link.path);
        clear_non_dir(&path)?;
        let to = std::ffi::OsStr::from_bytes(&link.target);
        std::os::unix::fs::symlink(to, &path).map_err(io_err(&path, "create symlink"))?;
        filetime::set_symlink_file_times(&path, mtime(link.mtime), mtime(link.mtime))
            .map_err(io_err(&path, "set symlink mtime"))?;
    }
    for (index, file) in plan.files.iter().enumerate() {
        if file.size > 0 && remaining.done(index) {
            continue;
        }
        let path = target.join(&file.path);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file.mode & 0o7777))
            .map_err(io_err(&path, "set permissions"))?;
        filetime::set_file_times(&path, mtime(file.mtime), mtime(file.mtime))
            .map_err(io_err(&path, "set mtime"))?;
    }
    let mut dirs: Vec<_> = plan.dirs.iter().collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.depth));
    for dir in dirs {
        let path = target.join(&dir.path);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(dir.mode & 0o7777))
            .map_err(io_err(&path, "set permissions"))?;
        filetime::set_file_times(&path, mtime(dir.mtime), mtime(dir.mtime))
            .map_err(io_err(&path, "set mtime"))?;
    }
    Ok(())
}
