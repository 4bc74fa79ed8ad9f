//! `backup`: the dedup index (every snapshot's manifest, plus the resume
//! journal's committed portions), the parent snapshot's file metadata cache,
//! the pipeline into the uploader, and what is cached once the snapshot is
//! committed. A dry run walks, chunks and seals the same way but uploads
//! nothing.

use std::path::PathBuf;
use std::sync::Arc;

use offsite_proto::clock::now_unix_ms;
use offsite_proto::{SnapshotId, SnapshotRecord};

pub(crate) mod pipeline;
mod walk;

use super::{Session, SessionError, Unlocking};
use crate::config::PriceLimits;
use crate::estimate::Remaining;
use crate::filter::{ExcludeOptions, Filter};
use crate::format::blob::Compression;
use crate::format::keys::Keys;
use crate::format::manifest::Index;
use crate::format::portion::Portion;
use crate::local::filecache::{self, Parent};
use crate::local::index_cache::{self, Union};
use crate::local::resume::{self, Journal};
use crate::market::upload::{UploadError, UploadSettings, UploadStats, Uploader};
use crate::progress::Progress;
use crate::usage;
use pipeline::{pack, BackupError, BackupPlan, Packed, PortionSink};

/// What to back up and how.
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    pub paths: Vec<PathBuf>,
    pub tags: Vec<String>,
    pub excludes: ExcludeOptions,
    /// Walk, chunk and seal, but upload and commit nothing.
    pub dry_run: bool,
    /// Overrides the config's `compression`.
    pub compression: Option<Compression>,
    /// Each limit set here overrides the config's `max_storage_price` /
    /// `max_egress_price`.
    pub limits: PriceLimits,
}

/// What a backup did.
#[derive(Debug, Clone)]
pub struct BackupSummary {
    /// The new snapshot; `None` for a dry run.
    pub snapshot: Option<SnapshotId>,
    /// The snapshot whose file metadata let unchanged files go unread.
    pub parent: Option<SnapshotId>,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// FIFOs and device nodes.
    pub specials: u64,
    /// Files met again through another hard link.
    pub hard_links: u64,
    pub skipped: u64,
    pub unreadable: u64,
    /// The first unreadable paths, with why.
    pub unreadable_paths: Vec<String>,
    pub excluded: u64,
    pub unchanged_files: u64,
    pub bytes_total: u64,
    pub bytes_read: u64,
    pub new_blobs: u64,
    /// Blobs of an interrupted backup's committed portions reused.
    pub resumed_blobs: u64,
    /// Portions a dry run would upload, and their bytes (one copy).
    pub new_portions: u64,
    pub upload: UploadStats,
    /// A dry run's estimate of what storing its portions costs a month, in
    /// micro-units (see [`crate::usage::monthly_cost_micros`]); `None` when
    /// no vendor price is known (and always for a real backup).
    pub estimated_monthly_cost_micros: Option<u64>,
}

/// What a backup gathers before it needs the key ([`Session::groundwork`]).
struct Groundwork {
    filter: Arc<Filter>,
    remaining: Arc<Remaining>,
    snapshots: Vec<SnapshotRecord>,
    journal: Journal,
    /// The blobs of the portions an interrupted backup committed.
    resumed: Index,
}

/// A dry run's sink: counts the portions and drops them.
#[derive(Default)]
struct Discard {
    bytes: u64,
}

impl PortionSink for Discard {
    type Error = std::convert::Infallible;
    fn put(
        &mut self,
        portion: Portion,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send {
        self.bytes += portion.bytes.len() as u64;
        std::future::ready(Ok(()))
    }
}

/// The pipeline's seam, wired to the uploader here, where the two meet:
/// neither `backup` nor `upload` knows the other.
impl PortionSink for Uploader {
    type Error = UploadError;
    fn put(
        &mut self,
        portion: Portion,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send {
        Uploader::put(self, portion)
    }
}

fn absolute_paths(paths: &[PathBuf]) -> Vec<String> {
    let mut out: Vec<String> = paths
        .iter()
        .map(|p| {
            std::path::absolute(p)
                .unwrap_or_else(|_| p.clone())
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    out.sort();
    out
}

impl Session {
    /// The union of the indexes of the tenant's snapshots: what need not
    /// be stored again. Starts from the dedup index cache fitted to the
    /// snapshot list and decodes only the manifests it does not cover;
    /// writes the cache again once that was several (not on a dry run).
    async fn dedup_index(
        &self,
        keys: &Arc<Keys>,
        snapshots: &[SnapshotRecord],
        dry_run: bool,
    ) -> Result<Index, SessionError> {
        let mut union = self.cached_union(keys).await;
        let dropped = union.fit_to(snapshots);
        let uncovered: Vec<SnapshotRecord> = snapshots
            .iter()
            .filter(|s| !union.covers.contains_key(&s.id))
            .cloned()
            .collect();
        let mut decoded = 0;
        self.visit_manifests(keys, &uncovered, |record, manifest| {
            match manifest {
                Ok(manifest) => {
                    union.index.extend(manifest.index);
                    union.covers.insert(record.id, record.manifest);
                    decoded += 1;
                }
                Err(e) => {
                    tracing::warn!(snapshot = %record.id, error = %e, "manifest unavailable; its blobs will not dedup")
                }
            }
            Ok(())
        })
        .await?;
        tracing::debug!(
            cached = union.covers.len() - decoded,
            decoded,
            dropped,
            blobs = union.index.len(),
            "dedup index"
        );
        if dry_run || decoded < index_cache::REWRITE_AFTER {
            return Ok(union.index);
        }
        let (keys, cache) = (keys.clone(), self.cache.clone());
        tokio::task::spawn_blocking(move || {
            let kept = union
                .seal(&keys)
                .map_err(|e| e.to_string())
                .and_then(|sealed| cache.put_index(&sealed).map_err(|e| e.to_string()));
            if let Err(error) = kept {
                tracing::warn!(%error, "dedup index cache not written");
            }
            union.index
        })
        .await
        .map_err(|e| SessionError::Backup(BackupError::Worker(e.to_string())))
    }

    /// The dedup index cache, or an empty union when there is none or it
    /// does not open.
    async fn cached_union(&self, keys: &Arc<Keys>) -> Union {
        let (keys, cache) = (keys.clone(), self.cache.clone());
        let opened = tokio::task::spawn_blocking(move || {
            cache.index().map(|sealed| Union::open(&keys, &sealed))
        })
        .await;
        match opened {
            Ok(Some(Ok(union))) => union,
            Ok(None) => Union::default(),
            Ok(Some(Err(error))) => {
                tracing::warn!(%error, "dedup index cache unusable; rebuilding it");
                Union::default()
            }
            Err(error) => {
                tracing::warn!(%error, "dedup index cache not read; rebuilding it");
                Union::default()
            }
        }
    }

    /// The blobs of portions an interrupted backup committed, that the
    /// coordinator still locates.
    async fn resumed_index(&self, journal: &Journal) -> Result<Index, SessionError> {
        let records = journal.read();
        if records.is_empty() {
            return Ok(Index::default());
        }
        let ids: Vec<_> = records
            .iter()
            .map(|r| offsite_proto::PortionId::from_bytes(r.portion))
            .collect();
        let located = self.coordinator.locate_portions(&ids).await?;
        let committed: Vec<_> = located.into_iter().map(|l| l.portion).collect();
        tracing::info!(
            recorded = ids.len(),
            committed = committed.len(),
            "resuming an interrupted backup"
        );
        Ok(resume::index_of(&records, &committed))
    }

    /// The newest snapshot of this host and these paths with a file metadata cache.
    fn parent(
        &self,
        snapshots: &[SnapshotRecord],
        paths: &[String],
    ) -> (Option<SnapshotId>, Parent) {
        let host = self.config.host_name();
        let newest = snapshots
            .iter()
            .rev()
            .filter(|s| s.host == host && absolute_paths_of(s) == paths)
            .find_map(|s| {
                let parent = filecache::load(&filecache::path_of(self.cache.dir(), s.id))?;
                Some((s.id, parent))
            });
        match newest {
            Some((id, parent)) => (Some(id), parent),
            None => (None, Parent::default()),
        }
    }

    /// What a backup gathers before it needs the key: the exclude rules,
    /// the size estimate (started; it runs on), the snapshot list and what
    /// an interrupted backup committed. (Not the parent's file metadata: the
    /// key derivation's 64 MiB and it would be resident at once.)
    async fn groundwork(
        &self,
        options: &BackupOptions,
        progress: &Progress,
    ) -> Result<Groundwork, SessionError> {
        let filter = Arc::new(Filter::new(&options.excludes)?);
        let remaining =
            Remaining::estimate(options.paths.clone(), filter.clone(), progress.clone());
        let snapshots = self.snapshots().await?;
        let journal = Journal::new(self.cache.dir());
        let resumed = self.resumed_index(&journal).await?;
        Ok(Groundwork {
            filter,
            remaining,
            snapshots,
            journal,
            resumed,
        })
    }

    /// Backs up `options.paths` as a new snapshot (or, dry, reports what it
    /// would). Until the key is derived, the command asks the coordinators
    /// for the snapshot list; the size estimate runs alongside the whole
    /// backup.
    pub async fn backup(
        &self,
        keys: Unlocking,
        options: BackupOptions,
    ) -> Result<BackupSummary, SessionError> {
        let record_paths = absolute_paths(&options.paths);
        let progress = self.progress("backup", "files", 0);
        let groundwork = self.groundwork(&options, &progress);
        let (keys, ground) = keys.alongside(groundwork).await?;
        let Groundwork {
            filter,
            remaining,
            snapshots,
            journal,
            resumed,
        } = ground;
        let mut known = self.dedup_index(&keys, &snapshots, options.dry_run).await?;
        let resumed_blobs = resumed.keys().filter(|id| !known.contains_key(id)).count() as u64;
        for (id, location) in resumed {
            known.entry(id).or_insert(location);
        }
        let (parent_id, parent) = self.parent(&snapshots, &record_paths);
        let snapshot = SnapshotId::random();
        let time_unix_ms = now_unix_ms();
        let files = if options.dry_run {
            None
        } else {
            filecache::Writer::create(self.cache.dir())
                .map_err(|e| tracing::warn!(error = %e, "file metadata cache not written"))
                .ok()
        };
        let plan = BackupPlan {
            paths: options.paths.clone(),
            keys,
            known: Arc::new(known),
            compression: options.compression.unwrap_or(self.config.compression),
            portion_bytes: self.config.portion_bytes,
            snapshot,
            time_unix_ms,
            remaining: remaining.clone(),
            filter,
            parent: Arc::new(parent),
            files,
            progress: progress.clone(),
        };
        let summary = |packed: &Packed, upload: UploadStats, snapshot: Option<SnapshotId>| {
            let s = packed.stats;
            BackupSummary {
                snapshot,
                parent: parent_id,
                files: s.files,
                dirs: s.dirs,
                symlinks: s.symlinks,
                specials: s.specials,
                hard_links: s.hard_links,
                skipped: s.skipped,
                unreadable: s.unreadable,
                unreadable_paths: packed.unreadable.clone(),
                excluded: s.excluded,
                unchanged_files: s.unchanged,
                bytes_total: s.bytes_total,
                bytes_read: s.bytes_read,
                new_blobs: s.new_blobs,
                resumed_blobs,
                new_portions: packed.new_portions,
                upload,
                estimated_monthly_cost_micros: None,
            }
        };
        let limits = self.config.price_limits().overridden_by(options.limits);
        if options.dry_run {
            let mut sink = Discard::default();
            let packed = pack(plan, &mut sink).await;
            progress.finish();
            let packed = packed?;
            let upload = UploadStats {
                bytes_uploaded: sink.bytes,
                ..UploadStats::default()
            };
            let mut dry = summary(&packed, upload, None);
            dry.estimated_monthly_cost_micros = self.monthly_cost(sink.bytes, limits).await;
            return Ok(dry);
        }
        let settings = UploadSettings {
            tenant: self.config.tenant.clone(),
            replication: self.config.replication as usize,
            piece_bytes: self.config.piece_bytes,
            checkpoint_bytes: self.config.checkpoint_bytes,
            limits,
            journal: Some(journal.clone()),
        };
        let mut uploader = Uploader::new(
            self.coordinator.clone(),
            self.pool.clone(),
            settings,
            remaining,
        );
        let packed = pack(plan, &mut uploader).await;
        progress.finish();
        let mut packed = match packed {
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
            tags: options.tags.clone(),
            manifest: packed.manifest_location,
            portions: packed.portions.clone(),
            logical_bytes: packed.stats.bytes_total,
            file_count: packed.stats.files,
        };
        let upload = uploader.finish(record.clone()).await?;
        journal.clear();
        self.after_commit(&mut packed, record, parent_id).await;
        Ok(summary(&packed, upload, Some(snapshot)))
    }

    /// What storing `bytes` (one copy) at the config's replication costs a
    /// month at the prices of the vendors the tenant's data is on and that
    /// are within `limits`; `None` when none is known (no data stored yet,
    /// or no coordinator answered).
    async fn monthly_cost(&self, bytes: u64, limits: PriceLimits) -> Option<u64> {
        match self.coordinator.usage().await {
            Ok(usage) => usage::monthly_cost_micros(
                &usage.statement.lines,
                bytes,
                self.config.replication,
                limits.storage,
            ),
            Err(e) => {
                tracing::warn!(error = %e, "no vendor prices for the dry run's cost estimate");
                None
            }
        }
    }

    /// Caches what a committed snapshot's next commands need.
    async fn after_commit(
        &self,
        packed: &mut Packed,
        record: SnapshotRecord,
        parent: Option<SnapshotId>,
    ) {
        let id = record.id;
        self.cache_manifest(id, &packed.sealed_manifest);
        if let Some(files) = packed.files.take() {
            match files.finish(&filecache::path_of(self.cache.dir(), id)) {
                Ok(()) => {
                    if let Some(parent) = parent {
                        let _ = std::fs::remove_file(filecache::path_of(self.cache.dir(), parent));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "file metadata cache not kept"),
            }
        }
        self.cached.committed(record);
        if let Err(e) = self.locations(id).await {
            tracing::warn!(error = %e, "final FAT of the new snapshot not cached");
        }
    }
}

fn absolute_paths_of(snapshot: &SnapshotRecord) -> Vec<String> {
    let mut paths = snapshot.paths.clone();
    paths.sort();
    paths
}
