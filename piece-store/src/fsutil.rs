//! Durable file operations: write to a temporary file, fsync it, rename it into
//! place and fsync the directory, so a crash leaves either the old state or the
//! whole new file, never half of one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use crate::PieceError;

/// Fsyncs a directory so a rename or removal inside it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), PieceError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(PieceError::io(dir))
}

/// Writes `parts` to `tmp`, fsyncs it, and renames it to `dest`, creating and
/// fsyncing `dest`'s directory as needed. On failure the temporary file is
/// removed.
pub(crate) fn write_atomic(tmp: &Path, dest: &Path, parts: &[&[u8]]) -> Result<(), PieceError> {
    let result = write_synced(tmp, parts).and_then(|()| rename_into_place(tmp, dest));
    if result.is_err() {
        remove_quietly(tmp);
    }
    result
}

fn write_synced(tmp: &Path, parts: &[&[u8]]) -> Result<(), PieceError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(PieceError::io(tmp))?;
    for part in parts {
        file.write_all(part).map_err(PieceError::io(tmp))?;
    }
    file.sync_all().map_err(PieceError::io(tmp))
}

fn rename_into_place(tmp: &Path, dest: &Path) -> Result<(), PieceError> {
    let dir = dest.parent().ok_or_else(|| PieceError::Io {
        path: dest.to_path_buf(),
        source: io::Error::other("destination has no parent directory"),
    })?;
    if !dir.is_dir() {
        fs::create_dir_all(dir).map_err(PieceError::io(dir))?;
        if let Some(grandparent) = dir.parent() {
            sync_dir(grandparent)?;
        }
    }
    fs::rename(tmp, dest).map_err(PieceError::io(dest))?;
    sync_dir(dir)
}

/// Removes a file whose removal is only tidying; failures are logged.
pub(crate) fn remove_quietly(path: &Path) {
    if let Err(err) = fs::remove_file(path) {
        if err.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), %err, "could not remove temporary file");
        }
    }
}

/// Empties a directory of leftovers (files and subdirectories).
pub(crate) fn clear_dir(dir: &Path) -> Result<usize, PieceError> {
    let mut removed = 0;
    for entry in fs::read_dir(dir).map_err(PieceError::io(dir))? {
        let path = entry.map_err(PieceError::io(dir))?.path();
        let result = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        result.map_err(PieceError::io(&path))?;
        removed += 1;
    }
    Ok(removed)
}
