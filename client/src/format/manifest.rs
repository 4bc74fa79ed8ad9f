//! The snapshot manifest: an encrypted blob (kind manifest), written last in a
//! backup, holding the root tree id and the index of every blob the snapshot
//! needs (blob id -> portion, offset, length). Its location goes in the
//! snapshot record; the index of all manifests is the dedup index.

use std::collections::{BTreeSet, HashMap};

use offsite_proto::limits::MAX_PORTION_BYTES;
use offsite_proto::{BlobLocation, PortionId, SnapshotId};
use serde::{Deserialize, Serialize};

use crate::format::blob::{BlobId, BlobMap};

/// Version of the manifest format.
pub const MANIFEST_VERSION: u32 = 1;

/// Blob id -> where the blob lives.
pub type Index = BlobMap<BlobLocation>;

/// One snapshot's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub snapshot: SnapshotId,
    pub root: BlobId,
    pub time_unix_ms: u64,
    pub index: Index,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    version: u32,
    snapshot: [u8; 16],
    root: BlobId,
    time_unix_ms: u64,
    index: StoredIndex,
}

/// An index as stored (in a manifest, and in the client's dedup index
/// cache): portions once in a table, each entry naming its portion by
/// position; entries sorted by blob id, so the same index always encodes
/// the same.
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredIndex {
    portions: Vec<[u8; 16]>,
    entries: Vec<(BlobId, u32, u64, u64)>,
}

impl StoredIndex {
    pub(crate) fn of(index: &Index) -> Self {
        let mut table: HashMap<PortionId, u32> = HashMap::new();
        let mut portions = Vec::new();
        let mut entries: Vec<(BlobId, u32, u64, u64)> = index
            .iter()
            .map(|(id, loc)| {
                let slot = *table.entry(loc.portion).or_insert_with(|| {
                    portions.push(*loc.portion.as_bytes());
                    portions.len() as u32 - 1
                });
                (*id, slot, loc.offset, loc.length)
            })
            .collect();
        entries.sort_unstable_by_key(|e| e.0);
        Self { portions, entries }
    }

    /// The index, or the first blob whose entry names no portion of the
    /// table or lies outside any portion.
    pub(crate) fn into_index(self) -> Result<Index, BlobId> {
        let mut index = Index::with_capacity_and_hasher(self.entries.len(), Default::default());
        for (id, slot, offset, length) in self.entries {
            let portion = self.portions.get(slot as usize).ok_or(id)?;
            let in_bounds = offset
                .checked_add(length)
                .is_some_and(|end| end <= MAX_PORTION_BYTES && length > 0);
            if !in_bounds {
                return Err(id);
            }
            let location = BlobLocation {
                portion: PortionId::from_bytes(*portion),
                offset,
                length,
            };
            index.insert(id, location);
        }
        Ok(index)
    }
}

/// A manifest blob that does not decode.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest has format version {0}; this client reads version {MANIFEST_VERSION}, upgrade offsite")]
    Version(u32),
    #[error("manifest does not decode: {0}; the manifest blob is corrupt")]
    Decode(postcard::Error),
    #[error("manifest entry for blob {0} is out of bounds; the manifest blob is corrupt")]
    Entry(BlobId),
    #[error("manifest is for snapshot {found}, not {expected}; the snapshot record points at the wrong blob")]
    WrongSnapshot {
        expected: SnapshotId,
        found: SnapshotId,
    },
}

impl Manifest {
    /// Every portion the snapshot needs: those its index names and the one
    /// holding the manifest itself (at `manifest_portion`), sorted, once each.
    pub fn portions(&self, manifest_portion: PortionId) -> Vec<PortionId> {
        let portions: BTreeSet<PortionId> = self
            .index
            .values()
            .map(|l| l.portion)
            .chain([manifest_portion])
            .collect();
        portions.into_iter().collect()
    }

    /// The manifest's stored bytes (the plaintext of its blob); entries are
    /// sorted so the same manifest always encodes the same.
    pub fn encode(&self) -> Vec<u8> {
        let stored = Stored {
            version: MANIFEST_VERSION,
            snapshot: *self.snapshot.as_bytes(),
            root: self.root,
            time_unix_ms: self.time_unix_ms,
            index: StoredIndex::of(&self.index),
        };
        // Serializing plain data into a Vec cannot fail.
        postcard::to_stdvec(&stored).unwrap_or_default()
    }

    /// Decodes and checks a manifest, which must be `expected`'s.
    pub fn decode(bytes: &[u8], expected: SnapshotId) -> Result<Self, ManifestError> {
        let stored: Stored = postcard::from_bytes(bytes).map_err(ManifestError::Decode)?;
        if stored.version != MANIFEST_VERSION {
            return Err(ManifestError::Version(stored.version));
        }
        let found = SnapshotId::from_bytes(stored.snapshot);
        if found != expected {
            return Err(ManifestError::WrongSnapshot { expected, found });
        }
        let index = stored.index.into_index().map_err(ManifestError::Entry)?;
        Ok(Self {
            snapshot: found,
            root: stored.root,
            time_unix_ms: stored.time_unix_ms,
            index,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_checks_the_snapshot() {
        let (p1, p2) = (PortionId::random(), PortionId::random());
        let mut index = Index::default();
        for i in 0..50u8 {
            let portion = if i % 2 == 0 { p1 } else { p2 };
            index.insert(
                BlobId([i; 32]),
                BlobLocation {
                    portion,
                    offset: 8 + u64::from(i) * 100,
                    length: 100,
                },
            );
        }
        let manifest = Manifest {
            snapshot: SnapshotId::random(),
            root: BlobId([9; 32]),
            time_unix_ms: 1_700_000_000_000,
            index,
        };
        let bytes = manifest.encode();
        assert_eq!(bytes, manifest.encode(), "encoding is deterministic");
        assert_eq!(
            Manifest::decode(&bytes, manifest.snapshot).unwrap(),
            manifest
        );
        assert!(matches!(
            Manifest::decode(&bytes, SnapshotId::random()),
            Err(ManifestError::WrongSnapshot { .. })
        ));
        assert!(Manifest::decode(&bytes[..bytes.len() / 2], manifest.snapshot).is_err());
    }

    /// The layout manifests have always had, field after field: stored
    /// manifests must keep decoding.
    #[derive(Serialize)]
    struct Version1 {
        version: u32,
        snapshot: [u8; 16],
        root: BlobId,
        time_unix_ms: u64,
        portions: Vec<[u8; 16]>,
        entries: Vec<(BlobId, u32, u64, u64)>,
    }

    #[test]
    fn the_encoding_is_that_of_format_version_1() {
        let portion = PortionId::random();
        let (a, b) = (BlobId([2; 32]), BlobId([1; 32]));
        let mut index = Index::default();
        for (id, offset) in [(a, 8), (b, 500)] {
            let at = BlobLocation {
                portion,
                offset,
                length: 100,
            };
            index.insert(id, at);
        }
        let manifest = Manifest {
            snapshot: SnapshotId::random(),
            root: a,
            time_unix_ms: 1_700_000_000_000,
            index,
        };
        let flat = Version1 {
            version: 1,
            snapshot: *manifest.snapshot.as_bytes(),
            root: a,
            time_unix_ms: 1_700_000_000_000,
            portions: vec![*portion.as_bytes()],
            entries: vec![(b, 0, 500, 100), (a, 0, 8, 100)],
        };
        assert_eq!(manifest.encode(), postcard::to_stdvec(&flat).unwrap());
    }

    #[test]
    fn an_entry_beyond_its_table_or_a_portion_is_refused() {
        let id = BlobId([3; 32]);
        let portion = *PortionId::random().as_bytes();
        for (portions, entry) in [
            (vec![], (id, 0, 0, 10)),
            (vec![portion], (id, 1, 0, 10)),
            (vec![portion], (id, 0, MAX_PORTION_BYTES, 1)),
            (vec![portion], (id, 0, 0, 0)),
            (vec![portion], (id, 0, u64::MAX, 2)),
        ] {
            let stored = StoredIndex {
                portions,
                entries: vec![entry],
            };
            assert_eq!(stored.into_index(), Err(id), "{entry:?}");
        }
    }
}
