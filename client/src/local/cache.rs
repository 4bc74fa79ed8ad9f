//! The client's local cache under `<cache_dir>/<tenant>/`: the sealed manifest
//! blob of each snapshot (still encrypted), the last snapshot list, and the
//! final FAT (portion locations) of each snapshot, so `snapshots` and `ls`
//! answer when no coordinator can be reached (through
//! [`crate::market::cached`]). The cache only saves fetches: anything
//! missing or unreadable is fetched again. Also under it: the file metadata
//! caches ([`crate::local::filecache`]), the resume journal
//! ([`crate::local::resume`]) and the dedup index cache
//! ([`crate::local::index_cache`]).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use offsite_proto::{PortionLocation, SnapshotId, SnapshotRecord};
use serde::{Deserialize, Serialize};

/// Version of the cached snapshot list.
const SNAPSHOTS_VERSION: u32 = 1;
/// Version of a cached final FAT.
const LOCATIONS_VERSION: u32 = 1;
/// Largest cached file read back.
const MAX_CACHED_BYTES: u64 = 256 * 1024 * 1024;

/// A cache write that failed; the caller logs it and goes on.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the cache at {path}: {source}; check cache_dir in the config")]
pub struct CacheError {
    path: PathBuf,
    source: std::io::Error,
}

#[derive(Serialize, Deserialize)]
struct CachedSnapshots {
    version: u32,
    snapshots: Vec<SnapshotRecord>,
}

#[derive(Serialize, Deserialize)]
struct CachedLocations {
    version: u32,
    portions: Vec<PortionLocation>,
}

/// One tenant's cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn locations_path(&self, id: SnapshotId) -> PathBuf {
        self.dir.join("fat").join(format!("{id}.json"))
    }

    /// The cached final FAT of a snapshot's portions.
    pub fn locations(&self, id: SnapshotId) -> Option<Vec<PortionLocation>> {
        let bytes = read_bounded(&self.locations_path(id))?;
        let cached: CachedLocations = serde_json::from_slice(&bytes).ok()?;
        (cached.version == LOCATIONS_VERSION).then_some(cached.portions)
    }

    /// Keeps a snapshot's final FAT.
    pub fn put_locations(
        &self,
        id: SnapshotId,
        portions: &[PortionLocation],
    ) -> Result<(), CacheError> {
        let cached = CachedLocations {
            version: LOCATIONS_VERSION,
            portions: portions.to_vec(),
        };
        let path = self.locations_path(id);
        let bytes = serde_json::to_vec(&cached).map_err(|e| CacheError {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&path, &bytes)
    }

    /// Drops what is cached about a forgotten snapshot. (The dedup index
    /// cache drops it when next fitted to the snapshot list.)
    pub fn forget(&self, id: SnapshotId) {
        for path in [
            self.manifest_path(id),
            self.listing_path(id),
            self.locations_path(id),
            crate::local::filecache::path_of(&self.dir, id),
        ] {
            let _ = std::fs::remove_file(path);
        }
    }

    fn manifest_path(&self, id: SnapshotId) -> PathBuf {
        self.dir.join("manifests").join(id.to_string())
    }

    /// The sealed manifest blob of a snapshot, if cached.
    pub fn manifest(&self, id: SnapshotId) -> Option<Vec<u8>> {
        read_bounded(&self.manifest_path(id))
    }

    /// Keeps a snapshot's sealed manifest blob.
    pub fn put_manifest(&self, id: SnapshotId, sealed: &[u8]) -> Result<(), CacheError> {
        write_atomic(&self.manifest_path(id), sealed)
    }

    fn listing_path(&self, id: SnapshotId) -> PathBuf {
        self.dir.join("listings").join(id.to_string())
    }

    /// The sealed listing of a snapshot ([`crate::local::listing`]), if cached.
    pub fn listing(&self, id: SnapshotId) -> Option<Vec<u8>> {
        read_bounded(&self.listing_path(id))
    }

    /// Keeps a snapshot's sealed listing.
    pub fn put_listing(&self, id: SnapshotId, sealed: &[u8]) -> Result<(), CacheError> {
        write_atomic(&self.listing_path(id), sealed)
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("index")
    }

    /// The sealed dedup index cache ([`crate::local::index_cache`]), if cached.
    pub fn index(&self) -> Option<Vec<u8>> {
        read_bounded(&self.index_path())
    }

    /// Keeps the sealed dedup index cache.
    pub fn put_index(&self, sealed: &[u8]) -> Result<(), CacheError> {
        write_atomic(&self.index_path(), sealed)
    }

    /// The last snapshot list seen, if cached and readable.
    pub fn snapshots(&self) -> Option<Vec<SnapshotRecord>> {
        let bytes = read_bounded(&self.dir.join("snapshots.json"))?;
        let cached: CachedSnapshots = serde_json::from_slice(&bytes).ok()?;
        (cached.version == SNAPSHOTS_VERSION).then_some(cached.snapshots)
    }

    /// Keeps the snapshot list.
    pub fn put_snapshots(&self, snapshots: &[SnapshotRecord]) -> Result<(), CacheError> {
        let cached = CachedSnapshots {
            version: SNAPSHOTS_VERSION,
            snapshots: snapshots.to_vec(),
        };
        let path = self.dir.join("snapshots.json");
        let bytes = serde_json::to_vec(&cached).map_err(|e| CacheError {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&path, &bytes)
    }
}

fn read_bounded(path: &Path) -> Option<Vec<u8>> {
    let file = std::fs::File::open(path).ok()?;
    let mut bytes = Vec::new();
    file.take(MAX_CACHED_BYTES + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    if bytes.len() as u64 > MAX_CACHED_BYTES {
        tracing::warn!(path = %path.display(), "cached file too large; ignored");
        return None;
    }
    Some(bytes)
}

/// Writes through a temporary file and a rename, so a crash never leaves half a file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    let err = |source| CacheError {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    offsite_identity::private::create_private_dir(dir).map_err(err)?;
    let tmp = dir.join(format!(".tmp-{}", hex::encode(rand::random::<[u8; 8]>())));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_and_snapshot_lists_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("acme"));
        let id = SnapshotId::random();
        assert!(cache.manifest(id).is_none());
        cache.put_manifest(id, b"sealed").unwrap();
        assert_eq!(cache.manifest(id).unwrap(), b"sealed");
        assert!(cache.snapshots().is_none());
        cache.put_snapshots(&[]).unwrap();
        assert_eq!(cache.snapshots().unwrap(), vec![]);
        std::fs::write(dir.path().join("acme/snapshots.json"), b"{garbage").unwrap();
        assert!(cache.snapshots().is_none(), "a broken cache is a miss");
        assert!(cache.locations(id).is_none());
        cache.put_locations(id, &[]).unwrap();
        assert_eq!(cache.locations(id).unwrap(), vec![]);
        cache.forget(id);
        assert!(cache.locations(id).is_none() && cache.manifest(id).is_none());
    }

    /// The cache holds plaintext paths and snapshot lists: only its user
    /// may enter it.
    #[test]
    fn the_cache_directory_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cache/acme"));
        cache.put_snapshots(&[]).unwrap();
        for made in ["cache", "cache/acme"] {
            let mode = std::fs::metadata(dir.path().join(made))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700, "{made}");
        }
    }
}
