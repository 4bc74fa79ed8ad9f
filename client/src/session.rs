//! One CLI invocation's view of the marketplace: the coordinator group, the
//! vendors and the cache, wired together for `backup`, `snapshots`, `ls` and
//! `restore`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use offsite_proto::{PortionLocation, SnapshotId, SnapshotRecord};

use crate::backup::{estimate_bytes, pack, BackupError, BackupPlan};
use crate::cache::Cache;
use crate::config::ClientConfig;
use crate::coordinator::{Coordinator, CoordinatorError};
use crate::keys::{passphrase, unlock_key_file, KeyError, Keys};
use crate::manifest::{Index, Manifest};
use crate::restore::{
    self, fetch_manifest, open_manifest, Plan, RestoreError, RestoreStats, VendorSource,
};
use crate::upload::{UploadError, UploadSettings, UploadStats, Uploader};
use crate::vendor::VendorPool;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Coordinator(#[from] CoordinatorError),
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(transparent)]
    Upload(#[from] UploadError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error("no snapshot matches {0:?}; run `offsite snapshots` to see them")]
    NoSnapshot(String),
    #[error("{0:?} matches several snapshots; give more of the id")]
    Ambiguous(String),
    #[error(
        "the coordinator has no location for portion {0} of the snapshot; its FAT is incomplete"
    )]
    NoLocation(offsite_proto::PortionId),
}

/// What a backup did.
#[derive(Debug, Clone)]
pub struct BackupSummary {
    pub snapshot: SnapshotId,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub skipped: u64,
    pub bytes_read: u64,
    pub new_blobs: u64,
    pub upload: UploadStats,
}

/// The CLI's connection to everything.
pub struct Session {
    config: ClientConfig,
    coordinator: Arc<Coordinator>,
    pool: VendorPool,
    cache: Cache,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Session {
    pub fn new(config: ClientConfig) -> Self {
        Self {
            coordinator: Arc::new(Coordinator::new(
                config.coordinators.clone(),
                &config.tenant,
            )),
            pool: VendorPool::default(),
            cache: Cache::new(config.tenant_cache_dir()),
            config,
        }
    }

    /// Unlocks the key file with the passphrase.
    pub fn unlock(&self) -> Result<Arc<Keys>, KeyError> {
        let pass = passphrase(self.config.password_file.as_deref())?;
        Ok(Arc::new(unlock_key_file(&self.config.key_file, &pass)?))
    }

    /// The tenant's snapshots, oldest first; cached, and the cached list is
    /// used when no coordinator answers.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotRecord>, SessionError> {
        let mut list = match self.coordinator.list_snapshots().await {
            Ok(list) => list,
            Err(e @ CoordinatorError::Unreachable { .. }) => match self.cache.snapshots() {
                Some(list) => {
                    tracing::warn!(error = %e, "using the cached snapshot list");
                    list
                }
                None => return Err(e.into()),
            },
            Err(e) => return Err(e.into()),
        };
        list.sort_by_key(|s| (s.time_unix_ms, s.id));
        if let Err(e) = self.cache.put_snapshots(&list) {
            tracing::warn!(error = %e, "snapshot list not cached");
        }
        Ok(list)
    }

    /// `latest`, a full snapshot id or a unique prefix of one.
    pub async fn resolve(&self, spec: &str) -> Result<SnapshotRecord, SessionError> {
        let list = self.snapshots().await?;
        if spec == "latest" {
            return list
                .last()
                .cloned()
                .ok_or_else(|| SessionError::NoSnapshot(spec.into()));
        }
        let matches: Vec<&SnapshotRecord> = list
            .iter()
            .filter(|s| {
                !spec.is_empty() && s.id.to_string().starts_with(&spec.to_ascii_lowercase())
            })
            .collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(SessionError::NoSnapshot(spec.into())),
            _ => Err(SessionError::Ambiguous(spec.into())),
        }
    }

    /// A snapshot's manifest (cached or fetched), its portion locations and a source.
    async fn open_snapshot(
        &self,
        keys: &Keys,
        record: &SnapshotRecord,
    ) -> Result<
        (
            Manifest,
            HashMap<offsite_proto::PortionId, PortionLocation>,
            VendorSource,
        ),
        SessionError,
    > {
        let (_, locations) = self.coordinator.get_snapshot(record.id).await?;
        let source =
            VendorSource::probe(self.pool.clone(), self.config.tenant.clone(), &locations).await;
        let locations: HashMap<_, _> = locations.into_iter().map(|l| (l.portion, l)).collect();
        let manifest = match self.cached_manifest(keys, record) {
            Some(manifest) => manifest,
            None => {
                let at = locations
                    .get(&record.manifest.portion)
                    .ok_or(SessionError::NoLocation(record.manifest.portion))?;
                let (manifest, sealed) = fetch_manifest(&source, keys, record, at).await?;
                self.cache_manifest(record.id, &sealed);
                manifest
            }
        };
        Ok((manifest, locations, source))
    }

    fn cached_manifest(&self, keys: &Keys, record: &SnapshotRecord) -> Option<Manifest> {
        let sealed = self.cache.manifest(record.id)?;
        match open_manifest(keys, record, &sealed) {
            Ok(manifest) => Some(manifest),
            Err(e) => {
                tracing::warn!(snapshot = %record.id, error = %e, "cached manifest unusable; fetching it");
                None
            }
        }
    }

    fn cache_manifest(&self, id: SnapshotId, sealed: &[u8]) {
        if let Err(e) = self.cache.put_manifest(id, sealed) {
            tracing::warn!(error = %e, "manifest not cached");
        }
    }

    /// The union of the indexes of the tenant's snapshots: what need not be stored again.
    async fn dedup_index(
        &self,
        keys: &Keys,
        snapshots: &[SnapshotRecord],
    ) -> Result<Index, SessionError> {
        let mut index = Index::new();
        let mut missing = Vec::new();
        for record in snapshots {
            match self.cached_manifest(keys, record) {
                Some(manifest) => index.extend(manifest.index),
                None => missing.push(record),
            }
        }
        if missing.is_empty() {
            return Ok(index);
        }
        let portions: Vec<_> = missing.iter().map(|r| r.manifest.portion).collect();
        let locations = self.coordinator.locate_portions(&portions).await?;
        let source =
            VendorSource::probe(self.pool.clone(), self.config.tenant.clone(), &locations).await;
        for record in missing {
            let Some(at) = locations
                .iter()
                .find(|l| l.portion == record.manifest.portion)
            else {
                tracing::warn!(snapshot = %record.id, "manifest portion not located; its blobs will not dedup");
                continue;
            };
            match fetch_manifest(&source, keys, record, at).await {
                Ok((manifest, sealed)) => {
                    self.cache_manifest(record.id, &sealed);
                    index.extend(manifest.index);
                }
                Err(e) => {
                    tracing::warn!(snapshot = %record.id, error = %e, "manifest unavailable; its blobs will not dedup")
                }
            }
        }
        Ok(index)
    }

    /// Backs up `paths` as a new snapshot.
    pub async fn backup(
        &self,
        keys: Arc<Keys>,
        paths: Vec<PathBuf>,
    ) -> Result<BackupSummary, SessionError> {
        let snapshots = self.snapshots().await?;
        let known = Arc::new(self.dedup_index(&keys, &snapshots).await?);
        let estimate_paths = paths.clone();
        let estimate = tokio::task::spawn_blocking(move || estimate_bytes(&estimate_paths))
            .await
            .unwrap_or(0);
        let remaining = Arc::new(AtomicU64::new(estimate));
        let settings = UploadSettings {
            tenant: self.config.tenant.clone(),
            replication: self.config.replication as usize,
            piece_bytes: self.config.piece_bytes,
        };
        let mut uploader = Uploader::new(
            self.coordinator.clone(),
            self.pool.clone(),
            settings,
            remaining.clone(),
        );
        let snapshot = SnapshotId::random();
        let time_unix_ms = now_ms();
        let record_paths = paths
            .iter()
            .map(|p| {
                std::path::absolute(p)
                    .unwrap_or_else(|_| p.clone())
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let plan = BackupPlan {
            paths,
            keys,
            known,
            portion_bytes: self.config.portion_bytes,
            snapshot,
            time_unix_ms,
            remaining,
        };
        let packed = match pack(plan, &mut uploader).await {
            Ok(packed) => packed,
            Err(e) => {
                uploader.abort().await;
                return Err(e.into());
            }
        };
        let record = SnapshotRecord {
            id: snapshot,
            host: self.config.host_name(),
            time_unix_ms,
            paths: record_paths,
            tags: Vec::new(),
            manifest: packed.manifest_location,
            portions: packed.portions,
            logical_bytes: packed.stats.bytes_read,
            file_count: packed.stats.files,
        };
        let upload = uploader.finish(record).await?;
        self.cache_manifest(snapshot, &packed.sealed_manifest);
        Ok(BackupSummary {
            snapshot,
            files: packed.stats.files,
            dirs: packed.stats.dirs,
            symlinks: packed.stats.symlinks,
            skipped: packed.stats.skipped,
            bytes_read: packed.stats.bytes_read,
            new_blobs: packed.stats.new_blobs,
            upload,
        })
    }

    /// Everything a snapshot holds, as a restore plan.
    pub async fn list(
        &self,
        keys: &Keys,
        spec: &str,
    ) -> Result<(SnapshotRecord, Plan), SessionError> {
        let record = self.resolve(spec).await?;
        let (manifest, locations, source) = self.open_snapshot(keys, &record).await?;
        let plan = restore::plan(&source, keys, &manifest, &locations).await?;
        Ok((record, plan))
    }

    /// Restores a snapshot into `target`.
    pub async fn restore(
        &self,
        keys: Arc<Keys>,
        spec: &str,
        target: &Path,
    ) -> Result<(SnapshotRecord, RestoreStats), SessionError> {
        restore::check_target(target)?;
        let record = self.resolve(spec).await?;
        let (manifest, locations, source) = self.open_snapshot(&keys, &record).await?;
        let stats = restore::restore(&source, keys, &manifest, &locations, target).await?;
        Ok((record, stats))
    }
}
