//! The dedup index cache: the union of the indexes of a set of snapshots,
//! with the set it covers (each snapshot by id and manifest location), kept
//! in the client's cache so that a backup decodes only the manifests of
//! snapshots it has not covered yet, not every snapshot's on every run.
//!
//! It may be used only while every snapshot it covers still exists with the
//! same manifest: a forgotten snapshot's portions may since have been
//! released by `prune`, and a repacked one's blobs moved. [`Covered::fits`]
//! checks that; otherwise the union is rebuilt from the manifests.
//!
//! Sealed like a manifest blob (under [`BlobId::index_cache`]), so a damaged
//! or foreign file does not open and is simply no cache.

use std::collections::HashMap;

use offsite_proto::{BlobLocation, SnapshotId, SnapshotRecord};
use serde::{Deserialize, Serialize};

use crate::blob::{open, seal, BlobError, BlobId, BlobKind};
use crate::keys::Keys;
use crate::manifest::{Index, StoredIndex};

/// Version of the dedup index cache format.
const INDEX_CACHE_VERSION: u32 = 1;

/// A backup writes the union again once it has decoded this many manifests
/// beyond it: each write costs about as much as decoding one manifest, so
/// writing after every new snapshot would not pay.
pub const REWRITE_AFTER: usize = 4;

#[derive(Serialize, Deserialize)]
struct Stored {
    version: u32,
    covers: Vec<([u8; 16], BlobLocation)>,
    index: StoredIndex,
}

/// The snapshots a union covers, by id, with where each one's manifest was.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Covered(HashMap<SnapshotId, BlobLocation>);

impl Covered {
    pub fn add(&mut self, record: &SnapshotRecord) {
        self.0.insert(record.id, record.manifest);
    }

    pub fn contains(&self, id: &SnapshotId) -> bool {
        self.0.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when every snapshot covered is among `snapshots` with the same
    /// manifest location: none was forgotten or repacked since.
    pub fn fits(&self, snapshots: &[SnapshotRecord]) -> bool {
        let current: HashMap<SnapshotId, &BlobLocation> =
            snapshots.iter().map(|s| (s.id, &s.manifest)).collect();
        self.0
            .iter()
            .all(|(id, manifest)| current.get(id) == Some(&manifest))
    }
}

/// A union of snapshot indexes and the snapshots it covers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Union {
    pub covers: Covered,
    pub index: Index,
}

/// Why a cached union could not be read; the backup rebuilds it.
#[derive(Debug, thiserror::Error)]
pub enum IndexCacheError {
    #[error("{0}")]
    Blob(#[from] BlobError),
    #[error("it does not decode: {0}")]
    Decode(postcard::Error),
    #[error("it has format version {0}, this client reads {INDEX_CACHE_VERSION}")]
    Version(u32),
    #[error("its entry for blob {0} is out of bounds")]
    Entry(BlobId),
}

impl Union {
    /// The sealed file.
    pub fn seal(&self, keys: &Keys) -> Result<Vec<u8>, BlobError> {
        let mut covers: Vec<([u8; 16], BlobLocation)> = self
            .covers
            .0
            .iter()
            .map(|(id, at)| (*id.as_bytes(), *at))
            .collect();
        covers.sort_unstable_by_key(|c| c.0);
        let stored = Stored {
            version: INDEX_CACHE_VERSION,
            covers,
            index: StoredIndex::of(&self.index),
        };
        // Serializing plain data into a Vec cannot fail.
        let plain = postcard::to_stdvec(&stored).unwrap_or_default();
        seal(keys, BlobKind::Manifest, &BlobId::index_cache(keys), &plain)
    }

    /// Opens and checks a sealed file.
    pub fn open(keys: &Keys, sealed: &[u8]) -> Result<Self, IndexCacheError> {
        let plain = open(keys, BlobKind::Manifest, &BlobId::index_cache(keys), sealed)?;
        let stored: Stored = postcard::from_bytes(&plain).map_err(IndexCacheError::Decode)?;
        if stored.version != INDEX_CACHE_VERSION {
            return Err(IndexCacheError::Version(stored.version));
        }
        let covers = stored
            .covers
            .into_iter()
            .map(|(id, at)| (SnapshotId::from_bytes(id), at))
            .collect();
        let index = stored.index.into_index().map_err(IndexCacheError::Entry)?;
        Ok(Self {
            covers: Covered(covers),
            index,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use offsite_proto::PortionId;

    fn keys() -> Keys {
        Keys::from_data_key(&[7u8; 32])
    }

    fn record(manifest_portion: PortionId) -> SnapshotRecord {
        SnapshotRecord {
            id: SnapshotId::random(),
            host: "h".into(),
            time_unix_ms: 1,
            paths: vec!["/data".into()],
            tags: vec![],
            manifest: BlobLocation {
                portion: manifest_portion,
                offset: 8,
                length: 100,
            },
            portions: vec![manifest_portion],
            logical_bytes: 0,
            file_count: 0,
        }
    }

    #[test]
    fn a_union_round_trips_sealed_and_opens_only_under_its_key() {
        let keys = keys();
        let (a, b) = (record(PortionId::random()), record(PortionId::random()));
        let mut union = Union::default();
        union.covers.add(&a);
        union.covers.add(&b);
        union.index.insert(
            BlobId([5; 32]),
            BlobLocation {
                portion: a.manifest.portion,
                offset: 200,
                length: 50,
            },
        );
        let sealed = union.seal(&keys).unwrap();
        assert_eq!(Union::open(&keys, &sealed).unwrap(), union);
        let stranger = Keys::from_data_key(&[8u8; 32]);
        assert!(Union::open(&stranger, &sealed).is_err());
        let mut damaged = sealed.clone();
        damaged[40] ^= 1;
        assert!(Union::open(&keys, &damaged).is_err());
        // A manifest blob, sealed under its own id, is not taken for a union.
        let manifest = seal(
            &keys,
            BlobKind::Manifest,
            &BlobId::manifest(&keys, a.id),
            b"x",
        );
        assert!(Union::open(&keys, &manifest.unwrap()).is_err());
    }

    #[test]
    fn a_union_fits_only_while_its_snapshots_stand_unchanged() {
        let (a, b) = (record(PortionId::random()), record(PortionId::random()));
        let mut covers = Covered::default();
        covers.add(&a);
        assert!(covers.fits(std::slice::from_ref(&a)));
        // A snapshot added since: still fits (its manifest is decoded on top).
        assert!(covers.fits(&[a.clone(), b.clone()]));
        // A snapshot forgotten since: its portions may have been released.
        assert!(!covers.fits(std::slice::from_ref(&b)));
        // A snapshot repacked since: its blobs moved, its manifest with them.
        let mut repacked = a.clone();
        repacked.manifest.portion = PortionId::random();
        assert!(!covers.fits(&[repacked, b]));
        assert!(Covered::default().fits(&[]));
    }
}
