//! The file metadata cache of a snapshot (`<cache>/files/<snapshot>`): for
//! each regular file backed up, its absolute path, size, mtime, ctime, inode
//! and chunks. The next backup of the same host and paths reads it as its
//! parent: a file whose metadata has not changed, and whose chunks are all
//! still in the dedup index, is not read again.
//!
//! Format: the magic `OFFILES`, a version byte, then records, each a u32 LE
//! length and a postcard-encoded [`Record`]. Written as the walk goes (memory
//! stays flat); a truncated or unreadable file is simply no parent.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use offsite_proto::SnapshotId;
use serde::{Deserialize, Serialize};

use crate::format::records;
use crate::format::tree::ChunkRef;

const MAGIC: &[u8; 7] = b"OFFILES";
/// Version of the file metadata cache format.
pub const FILES_VERSION: u8 = 1;

/// What decides whether a file changed since the parent snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub inode: u64,
}

impl Stamp {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            size: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            inode: meta.ino(),
        }
    }
}

/// One file of the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub path: Vec<u8>,
    pub stamp: Stamp,
    pub content: Vec<ChunkRef>,
}

/// The parent snapshot's files, by absolute path.
#[derive(Debug, Default)]
pub struct Parent {
    files: HashMap<Vec<u8>, (Stamp, Vec<ChunkRef>)>,
}

impl Parent {
    /// The cached chunks of `path` when its stamp is unchanged.
    pub fn unchanged(&self, path: &[u8], stamp: &Stamp) -> Option<&[ChunkRef]> {
        self.files
            .get(path)
            .filter(|(cached, _)| cached == stamp)
            .map(|(_, content)| content.as_slice())
    }

    /// Files cached.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.files.len()
    }
}

/// Where a snapshot's file metadata cache lives.
pub fn path_of(cache_dir: &Path, snapshot: SnapshotId) -> PathBuf {
    cache_dir.join("files").join(snapshot.to_string())
}

/// Reads a snapshot's file metadata cache; `None` when missing or damaged.
pub fn load(path: &Path) -> Option<Parent> {
    let file = File::open(path).ok()?;
    let reader = BufReader::with_capacity(256 * 1024, file);
    let Some(mut records) = records::Reader::open(reader, MAGIC, FILES_VERSION) else {
        tracing::warn!(path = %path.display(), "file cache of another format; ignored");
        return None;
    };
    let mut parent = Parent::default();
    while let Some(record) = records.next::<Record>() {
        let record = record.ok()?;
        parent
            .files
            .insert(record.path, (record.stamp, record.content));
    }
    Some(parent)
}

/// Writes a new file metadata cache as the walk goes; `finish` moves it into
/// place. Dropped without `finish`, the partial file is removed.
#[derive(Debug)]
pub struct Writer {
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
}

impl Writer {
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        let files = dir.join("files");
        offsite_identity::private::create_private_dir(&files)?;
        let tmp = files.join(format!(".tmp-{}", hex::encode(rand::random::<[u8; 8]>())));
        let mut out = BufWriter::new(File::create(&tmp)?);
        out.write_all(&records::header(MAGIC, FILES_VERSION))?;
        Ok(Self {
            tmp,
            out: Some(out),
        })
    }

    /// Appends one file; a write error disables the cache for this backup.
    pub fn add(&mut self, path: &[u8], stamp: Stamp, content: &[ChunkRef]) {
        let Some(out) = self.out.as_mut() else {
            return;
        };
        #[derive(Serialize)]
        struct Borrowed<'a> {
            path: &'a [u8],
            stamp: Stamp,
            content: &'a [ChunkRef],
        }
        let record = Borrowed {
            path,
            stamp,
            content,
        };
        let mut bytes = Vec::new();
        let written = records::encode(&record, &mut bytes).and_then(|()| out.write_all(&bytes));
        if let Err(e) = written {
            tracing::warn!(error = %e, "file metadata cache not written; the next backup reads every file");
            self.out = None;
        }
    }

    /// Keeps the cache as `final_path`.
    pub fn finish(mut self, final_path: &Path) -> std::io::Result<()> {
        let out = self
            .out
            .take()
            .ok_or_else(|| std::io::Error::other("an earlier write failed"))?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&self.tmp, final_path)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.tmp.exists() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::blob::BlobId;

    #[test]
    fn written_records_come_back_and_changes_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let stamp = Stamp {
            size: 3,
            mtime: (10, 1),
            ctime: (11, 2),
            inode: 7,
        };
        let content = vec![ChunkRef {
            id: BlobId([4; 32]),
            len: 3,
        }];
        let mut writer = Writer::create(dir.path()).unwrap();
        writer.add(b"/a/b", stamp, &content);
        writer.add(b"/a/\xffc", stamp, &[]);
        let id = SnapshotId::random();
        let path = path_of(dir.path(), id);
        writer.finish(&path).unwrap();
        let parent = load(&path).unwrap();
        assert_eq!(parent.len(), 2);
        assert_eq!(parent.unchanged(b"/a/b", &stamp), Some(&content[..]));
        let touched = Stamp {
            mtime: (12, 0),
            ..stamp
        };
        assert_eq!(parent.unchanged(b"/a/b", &touched), None);
        assert_eq!(parent.unchanged(b"/a/x", &stamp), None);

        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(load(&path).is_none(), "a truncated cache is no parent");
        let leftovers = std::fs::read_dir(dir.path().join("files")).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file left behind");
    }
}
