//! The resume journal (`<cache>/resume/journal`): the blob index of every
//! portion committed by a backup that has not finished yet. A backup commits
//! rounds of portions before its snapshot; when it is interrupted, the next
//! backup adds the journal's blobs (of the portions the coordinator still
//! locates) to its dedup index, so portions already stored are not sent
//! again. A backup that commits its snapshot clears the journal.
//!
//! Format: the magic `OFRESUM`, a version byte, then records, each a u32 LE
//! length and a postcard-encoded portion with its blobs. Each commit appends
//! and syncs; a torn last record is ignored.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use offsite_proto::{BlobLocation, PortionId};
use serde::{Deserialize, Serialize};

use crate::format::blob::BlobId;
use crate::format::manifest::Index;
use crate::format::records;

const MAGIC: &[u8; 7] = b"OFRESUM";
/// Version of the resume journal format.
pub const JOURNAL_VERSION: u8 = 1;

/// One committed portion and where its blobs are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub portion: [u8; 16],
    /// (blob, offset, length) in the portion.
    pub blobs: Vec<(BlobId, u64, u64)>,
}

/// The journal of one tenant's cache directory.
#[derive(Debug, Clone)]
pub struct Journal {
    path: PathBuf,
}

impl Journal {
    pub fn new(cache_dir: &Path) -> Self {
        Self {
            path: cache_dir.join("resume").join("journal"),
        }
    }

    /// Appends committed portions and syncs them to disk.
    pub fn append(&self, portions: &[Committed]) -> std::io::Result<()> {
        if portions.is_empty() {
            return Ok(());
        }
        if let Some(dir) = self.path.parent() {
            offsite_identity::private::create_private_dir(dir)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let mut bytes = Vec::new();
        if file.metadata()?.len() == 0 {
            bytes.extend_from_slice(&records::header(MAGIC, JOURNAL_VERSION));
        }
        for portion in portions {
            records::encode(portion, &mut bytes)?;
        }
        file.write_all(&bytes)?;
        file.sync_data()
    }

    /// Every portion recorded; a damaged tail ends the list early.
    pub fn read(&self) -> Vec<Committed> {
        let Ok(file) = File::open(&self.path) else {
            return Vec::new();
        };
        let Some(mut records) = records::Reader::open(BufReader::new(file), MAGIC, JOURNAL_VERSION)
        else {
            tracing::warn!(path = %self.path.display(), "resume journal unreadable; ignored");
            return Vec::new();
        };
        let mut out = Vec::new();
        while let Some(Ok(record)) = records.next() {
            out.push(record);
        }
        out
    }

    /// Forgets everything: the backup that needed it has committed its snapshot.
    pub fn clear(&self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "resume journal not cleared");
            }
        }
    }
}

/// The blob index of the recorded portions that are in `committed`.
pub fn index_of(records: &[Committed], committed: &[PortionId]) -> Index {
    let mut index = Index::default();
    for record in records {
        let portion = PortionId::from_bytes(record.portion);
        if !committed.contains(&portion) {
            continue;
        }
        for (id, offset, length) in &record.blobs {
            let location = BlobLocation {
                portion,
                offset: *offset,
                length: *length,
            };
            index.insert(*id, location);
        }
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_portions_come_back_and_clear_empties() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(dir.path());
        assert!(journal.read().is_empty());
        let (a, b) = (PortionId::random(), PortionId::random());
        let rec = |p: PortionId, n: u8| Committed {
            portion: *p.as_bytes(),
            blobs: vec![(BlobId([n; 32]), 8, 100)],
        };
        journal.append(&[rec(a, 1)]).unwrap();
        journal.append(&[rec(b, 2)]).unwrap();
        assert_eq!(journal.read(), vec![rec(a, 1), rec(b, 2)]);
        let index = index_of(&journal.read(), &[b]);
        assert_eq!(index.len(), 1);
        assert_eq!(index[&BlobId([2; 32])].portion, b);

        let path = dir.path().join("resume/journal");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 2]).unwrap();
        assert_eq!(journal.read(), vec![rec(a, 1)], "a torn tail is dropped");
        journal.clear();
        assert!(journal.read().is_empty());
    }
}
