//! The writing half of a restore: create directories and files (sized up
//! front), write each blob of a fetched portion at its offsets, then create
//! symlinks and apply permissions and mtimes (directories last, deepest first).

use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;

use filetime::FileTime;
use offsite_proto::PortionId;

use crate::blob::{open, BlobKind};
use crate::keys::Keys;
use crate::portion::{blob_at, check_header};
use crate::restore::plan::{BlobWrite, FilePlan, Plan};
use crate::restore::RestoreError;

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

/// Creates every directory and every file at its final size.
pub fn prepare(target: &Path, plan: &Plan) -> Result<(), RestoreError> {
    std::fs::create_dir_all(target).map_err(io_err(target, "create the target directory"))?;
    for dir in &plan.dirs {
        let path = target.join(&dir.path);
        clear_non_dir(&path)?;
        std::fs::create_dir_all(&path).map_err(io_err(&path, "create directory"))?;
    }
    for file in &plan.files {
        let path = target.join(&file.path);
        clear_non_dir(&path)?;
        let out = File::create(&path).map_err(io_err(&path, "create file"))?;
        out.set_len(file.size).map_err(io_err(&path, "size file"))?;
    }
    Ok(())
}

/// Writes every planned blob of one fetched portion into its files.
pub fn apply_portion(
    target: &Path,
    keys: &Keys,
    files: &[FilePlan],
    portion: PortionId,
    bytes: &[u8],
    writes: &[BlobWrite],
) -> Result<u64, RestoreError> {
    check_header(portion, bytes)?;
    let mut written = 0u64;
    for write in writes {
        let sealed = blob_at(portion, bytes, write.offset, write.length)?;
        let plain = open(keys, BlobKind::Data, &write.id, sealed)?;
        if plain.len() != write.plain_len as usize {
            return Err(RestoreError::ChunkLength(write.id));
        }
        for (file, offset) in &write.targets {
            let Some(file) = files.get(*file) else {
                continue;
            };
            let path = target.join(&file.path);
            let out = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_err(&path, "open file"))?;
            out.write_all_at(&plain, *offset)
                .map_err(io_err(&path, "write file"))?;
            written += plain.len() as u64;
        }
    }
    Ok(written)
}

fn mtime(pair: (i64, u32)) -> FileTime {
    FileTime::from_unix_time(pair.0, pair.1)
}

/// Symlinks, then file and directory permissions and mtimes.
pub fn finish(target: &Path, plan: &Plan) -> Result<(), RestoreError> {
    for link in &plan.links {
        let path = target.join(&link.path);
        clear_non_dir(&path)?;
        let to = std::ffi::OsStr::from_bytes(&link.target);
        std::os::unix::fs::symlink(to, &path).map_err(io_err(&path, "create symlink"))?;
        filetime::set_symlink_file_times(&path, mtime(link.mtime), mtime(link.mtime))
            .map_err(io_err(&path, "set symlink mtime"))?;
    }
    for file in &plan.files {
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
