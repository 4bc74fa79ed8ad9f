//! The dedup index cache: the union of the indexes of a set of snapshots,
//! with the set it covers (each snapshot by id and manifest location), kept
//! in the client's cache so that a backup decodes only the manifests of
//! snapshots it has not covered yet, not every snapshot's on every run.
//!
//! Before use it is fitted to the current snapshot list ([`Union::fit_to`]):
//! a snapshot forgotten or repacked since is no longer covered (a repacked
//! one's manifest is decoded again), and every entry in a portion that no
//! listed snapshot names is dropped, because `prune` may have released that
//! portion. An entry whose portion a listed snapshot names is sound: the
//! coordinator releases no portion a snapshot record names, and a stored
//! portion never changes.
//!
//! Sealed like a manifest blob (under [`BlobId::index_cache`]), so a damaged
//! or foreign file does not open and is simply no cache.

use std::collections::{HashMap, HashSet};

use offsite_proto::{BlobLocation, PortionId, SnapshotId, SnapshotRecord};
use serde::{Deserialize, Serialize};

use crate::format::blob::{open, seal, BlobError, BlobId, BlobKind};
use crate::format::keys::Keys;
use crate::format::manifest::{Index, StoredIndex};

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

/// A union of snapshot indexes and the snapshots it covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Union {
    /// The snapshots covered, by id, with where each one's manifest was.
    pub covers: HashMap<SnapshotId, BlobLocation>,
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
    /// Fits the union to the current snapshot list; see the module docs.
    /// Returns how many entries were dropped.
    pub fn fit_to(&mut self, snapshots: &[SnapshotRecord]) -> usize {
        let current: HashMap<SnapshotId, &BlobLocation> =
            snapshots.iter().map(|s| (s.id, &s.manifest)).collect();
        let covered = self.covers.len();
        self.covers
            .retain(|id, manifest| current.get(id) == Some(&&*manifest));
        if self.covers.len() == covered {
            // Every entry came from a snapshot still listed as it was.
            return 0;
        }
        let named: HashSet<PortionId> = snapshots
            .iter()
            .flat_map(|s| s.portions.iter().copied().chain([s.manifest.portion]))
            .collect();
        let entries = self.index.len();
        self.index.retain(|_, at| named.contains(&at.portion));
        entries - self.index.len()
    }

    /// The sealed file.
    pub fn seal(&self, keys: &Keys) -> Result<Vec<u8>, BlobError> {
        let mut covers: Vec<([u8; 16], BlobLocation)> = self
            .covers
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
        Ok(Self { covers, index })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        union.covers.insert(a.id, a.manifest);
        union.covers.insert(b.id, b.manifest);
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

    fn entry(union: &mut Union, byte: u8, portion: PortionId) -> BlobId {
        let id = BlobId([byte; 32]);
        let at = BlobLocation {
            portion,
            offset: 8,
            length: 10,
        };
        union.index.insert(id, at);
        id
    }

    #[test]
    fn fitting_drops_what_a_forget_or_a_repack_may_have_released() {
        let (old, kept, new) = (
            record(PortionId::random()),
            record(PortionId::random()),
            record(PortionId::random()),
        );
        let mut union = Union::default();
        union.covers.insert(old.id, old.manifest);
        union.covers.insert(kept.id, kept.manifest);
        let only_old = entry(&mut union, 1, old.manifest.portion);
        let shared = PortionId::random();
        let mut kept = kept;
        kept.portions.push(shared);
        let in_shared = entry(&mut union, 2, shared);
        let in_kept = entry(&mut union, 3, kept.manifest.portion);

        // A snapshot added since: nothing dropped, it is decoded on top.
        let mut fitted = union.clone();
        assert_eq!(fitted.fit_to(&[old.clone(), kept.clone(), new.clone()]), 0);
        assert_eq!(fitted, union);

        // `old` forgotten: its cover goes, and so does the entry in a
        // portion only it named; entries in portions `kept` names stay.
        let mut fitted = union.clone();
        assert_eq!(fitted.fit_to(&[kept.clone(), new.clone()]), 1);
        assert!(!fitted.covers.contains_key(&old.id) && fitted.covers.contains_key(&kept.id));
        assert!(!fitted.index.contains_key(&only_old));
        assert!(fitted.index.contains_key(&in_shared) && fitted.index.contains_key(&in_kept));

        // `kept` repacked: its manifest moved, so it is no longer covered and
        // is decoded again; the portions it no longer names lose their entries.
        let mut repacked = kept.clone();
        repacked.manifest.portion = PortionId::random();
        repacked.portions = vec![repacked.manifest.portion];
        let mut fitted = union.clone();
        assert_eq!(fitted.fit_to(&[old.clone(), repacked]), 2);
        assert!(fitted.covers.contains_key(&old.id) && !fitted.covers.contains_key(&kept.id));
        assert_eq!(fitted.index.keys().collect::<Vec<_>>(), vec![&only_old]);

        let mut empty = Union::default();
        assert_eq!(empty.fit_to(&[]), 0);
    }
}
