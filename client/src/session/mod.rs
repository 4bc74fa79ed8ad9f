//! The commands: one CLI invocation's view of the marketplace, the
//! coordinator group, the vendors and the cache wired together for each
//! command. The snapshot list and each snapshot's final FAT come through a
//! [`CachedCoordinator`], so when no coordinator answers they come from the
//! cache, and [`Session::offline`] says so.

pub(crate) mod backup;
mod browse;
mod check;
pub(crate) mod forget;
pub mod hosts;
pub mod mount;
mod prune;
mod repack;
pub(crate) mod restore;

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use offsite_proto::{PortionId, PortionLocation, SnapshotId, SnapshotRecord};

use crate::config::ClientConfig;
use crate::filter::FilterError;
use crate::format::keys::{
    install_key_file, passphrase, read_key_file, unlock_key_file, KeyError, Keys,
};
use crate::format::manifest::Manifest;
use crate::local::cache::Cache;
use crate::market::cached::{CachedCoordinator, CachedError};
use crate::market::connect::{load_credentials, CredentialsError};
use crate::market::coordinator::{Coordinator, CoordinatorError};
use crate::market::fetch::VendorSource;
use crate::market::upload::UploadError;
use crate::market::vendor::VendorPool;
use crate::progress::Progress;
use backup::pipeline::BackupError;
use restore::dump::{Archive, DumpStats};
use restore::{
    fetch_manifest, open_manifest, Plan, RestoreError, RestoreOptions, RestoreStats, Selection,
};

pub use backup::BackupOptions;
pub use browse::entries;
pub use check::CheckOptions;
pub use prune::{PruneOptions, DEFAULT_REPACK_BELOW};

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
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error("no snapshot matches {0:?}; run `offsite snapshots` to see them")]
    NoSnapshot(String),
    #[error("{0:?} matches several snapshots; give more of the id")]
    Ambiguous(String),
    #[error(
        "the coordinator has no location for portion {0} of the snapshot; its FAT is incomplete"
    )]
    NoLocation(offsite_proto::PortionId),
    #[error("no coordinator answered and the final FAT of snapshot {0} is not cached; retry when the coordinators are reachable")]
    NotCached(SnapshotId),
    #[error("forget needs at least one --keep-* rule; see `offsite forget --help`")]
    EmptyPolicy,
    #[error("{0}")]
    Invalid(String),
    #[error("the thread unlocking the key file failed: {0}; this is a bug, please report it")]
    Unlock(String),
}

impl SessionError {
    /// True when the coordinator group could not be reached (no quorum).
    pub fn is_unreachable(&self) -> bool {
        match self {
            SessionError::Coordinator(e) => is_unreachable(e),
            SessionError::Upload(e) => upload_unreachable(e),
            SessionError::NotCached(_) => true,
            _ => false,
        }
    }
}

impl From<CachedError> for SessionError {
    fn from(e: CachedError) -> Self {
        match e {
            CachedError::Coordinator(e) => SessionError::Coordinator(e),
            CachedError::NotCached(id) => SessionError::NotCached(id),
        }
    }
}

impl SessionError {
    /// True when the marketplace has no room for new copies: too little free
    /// space, too few vendors with room, or a limit of the tenant's reached.
    pub fn is_out_of_room(&self) -> bool {
        let refused = |e: &CoordinatorError| e.is_capacity() || e.is_too_few_vendors();
        match self {
            SessionError::Coordinator(e) | SessionError::Upload(UploadError::Coordinator(e)) => {
                refused(e)
            }
            SessionError::Upload(
                UploadError::TooFewVendors { .. } | UploadError::NoRoom { .. },
            ) => true,
            _ => false,
        }
    }
}

/// No coordinator answered, or too few vendors to place R copies (the
/// "no quorum" exit code covers both).
fn is_unreachable(e: &CoordinatorError) -> bool {
    matches!(e, CoordinatorError::Unreachable { .. }) || e.is_too_few_vendors()
}

fn upload_unreachable(e: &UploadError) -> bool {
    match e {
        UploadError::Coordinator(e) => is_unreachable(e),
        UploadError::TooFewVendors { .. } => true,
        _ => false,
    }
}

/// True when `error` (any cause in a chain) means no quorum: no coordinator
/// answered, or too few vendors to place R copies.
pub fn is_no_quorum(error: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(e) = error.downcast_ref::<SessionError>() {
        return e.is_unreachable();
    }
    if let Some(e) = error.downcast_ref::<UploadError>() {
        return upload_unreachable(e);
    }
    error
        .downcast_ref::<CoordinatorError>()
        .is_some_and(is_unreachable)
}

/// The CLI's connection to everything.
pub struct Session {
    config: ClientConfig,
    coordinator: Arc<Coordinator>,
    pool: VendorPool,
    cache: Cache,
    /// The snapshot list and final FATs, from the cache when no coordinator
    /// answers.
    cached: CachedCoordinator,
    /// Show progress bars (on a terminal).
    show_progress: bool,
}

impl Session {
    /// Loads the tenant's certificate ([tls] in the config); every
    /// connection presents it.
    pub fn new(config: ClientConfig) -> Result<Self, CredentialsError> {
        let credentials = load_credentials(&config)?;
        let coordinator = Arc::new(Coordinator::new(
            config.coordinators.clone(),
            credentials.clone(),
        ));
        let cache = Cache::new(config.tenant_cache_dir());
        Ok(Self {
            cached: CachedCoordinator::new(coordinator.clone(), cache.clone()),
            coordinator,
            pool: VendorPool::new(credentials).with_stall_timeout(std::time::Duration::from_secs(
                config.vendor_stall_timeout_secs,
            )),
            cache,
            config,
            show_progress: true,
        })
    }

    /// Turns progress bars off (for `--json`).
    pub fn quiet(mut self) -> Self {
        self.show_progress = false;
        self
    }

    /// True when some answer came from the cache because no coordinator answered.
    pub fn offline(&self) -> bool {
        self.cached.answered_from_cache()
    }

    fn progress(&self, verb: &str, noun: &'static str, total: u64) -> Progress {
        Progress::new(verb, noun, total, self.show_progress)
    }

    /// Unlocks the key file with the passphrase.
    pub fn unlock(&self) -> Result<Arc<Keys>, KeyError> {
        let pass = passphrase(self.config.password_file.as_deref())?;
        Ok(Arc::new(unlock_key_file(&self.config.key_file, &pass)?))
    }

    /// Reads the passphrase now (a prompt, if any, comes first) and unlocks
    /// the key file on a blocking thread: the key derivation takes a quarter
    /// of a second by design, which a command can spend on the coordinators
    /// and vendors meanwhile.
    pub fn unlock_in_background(&self) -> Result<Unlocking, KeyError> {
        let pass = passphrase(self.config.password_file.as_deref())?;
        let path = self.config.key_file.clone();
        Ok(Unlocking(tokio::task::spawn_blocking(move || {
            unlock_key_file(&path, &pass).map(Arc::new)
        })))
    }

    /// Makes sure the key file is here. When it is missing (a new machine),
    /// the copy kept at the coordinator group is fetched and written, once
    /// the passphrase is shown to unlock it; true when it was. When there is
    /// no copy to fetch (or no coordinator answers, or no passphrase is set)
    /// nothing happens, and a command that needs the key says what is missing.
    pub async fn fetch_key_file_if_missing(&self) -> Result<bool, SessionError> {
        let path = &self.config.key_file;
        if path.exists() {
            return Ok(false);
        }
        let Ok(pass) = passphrase(self.config.password_file.as_deref()) else {
            return Ok(false);
        };
        let key_file = match self.coordinator.get_key_file().await {
            Ok(Some(key_file)) => key_file,
            Ok(None) => return Ok(false),
            Err(e) => {
                tracing::warn!(error = %e, "no key file here, and its copy could not be fetched");
                return Ok(false);
            }
        };
        install_key_file(path, &key_file, &pass)?;
        tracing::info!(path = %path.display(), "key file fetched from the coordinator group");
        Ok(true)
    }

    /// Keeps the key file at the coordinator group (it is only as secret as
    /// the passphrase: the data key inside is wrapped under it).
    pub async fn upload_key_file(&self) -> Result<(), SessionError> {
        self.upload_key_bytes(read_key_file(&self.config.key_file)?)
            .await
    }

    /// Keeps `key_file` (the key file's bytes) at the coordinator group.
    pub async fn upload_key_bytes(&self, key_file: Vec<u8>) -> Result<(), SessionError> {
        self.coordinator.put_key_file(key_file).await?;
        Ok(())
    }

    /// What the tenant has stored, fetched and been charged in the open
    /// billing period, per vendor and per host.
    pub async fn usage(&self) -> Result<crate::usage::UsageReport, SessionError> {
        Ok(self.coordinator.usage().await?.into())
    }

    /// The tenant's snapshots, oldest first; cached, and the cached list is
    /// used when no coordinator answers.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotRecord>, SessionError> {
        Ok(self.cached.list_snapshots().await?)
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

    /// A snapshot's final FAT, from the coordinator (and cached) or, when no
    /// coordinator answers, from the cache.
    async fn locations(&self, id: SnapshotId) -> Result<Vec<PortionLocation>, SessionError> {
        Ok(self.cached.locations(id).await?)
    }

    /// A snapshot's manifest (cached or fetched), its portion locations and a source.
    async fn open_snapshot(
        &self,
        keys: &Keys,
        record: &SnapshotRecord,
    ) -> Result<(Manifest, HashMap<PortionId, PortionLocation>, VendorSource), SessionError> {
        let locations = self.locations(record.id).await?;
        self.open_located(keys, record, locations).await
    }

    /// [`Self::open_snapshot`] with the snapshot's final FAT already in hand.
    async fn open_located(
        &self,
        keys: &Keys,
        record: &SnapshotRecord,
        locations: Vec<PortionLocation>,
    ) -> Result<(Manifest, HashMap<PortionId, PortionLocation>, VendorSource), SessionError> {
        let (locations, source) = self.probe_located(locations).await;
        let manifest = self.manifest(keys, record, &locations, &source).await?;
        Ok((manifest, locations, source))
    }

    /// A snapshot's final FAT by portion, and a source ranked by probing
    /// the vendors that hold it.
    async fn probe_located(
        &self,
        locations: Vec<PortionLocation>,
    ) -> (HashMap<PortionId, PortionLocation>, VendorSource) {
        let source =
            VendorSource::probe(self.pool.clone(), self.config.tenant.clone(), &locations).await;
        let locations = locations.into_iter().map(|l| (l.portion, l)).collect();
        (locations, source)
    }

    /// A snapshot's manifest: cached, or else fetched and cached.
    async fn manifest(
        &self,
        keys: &Keys,
        record: &SnapshotRecord,
        locations: &HashMap<PortionId, PortionLocation>,
        source: &VendorSource,
    ) -> Result<Manifest, SessionError> {
        if let Some(manifest) = self.cached_manifest(keys, record) {
            return Ok(manifest);
        }
        let at = locations
            .get(&record.manifest.portion)
            .ok_or(SessionError::NoLocation(record.manifest.portion))?;
        let (manifest, sealed) = fetch_manifest(source, keys, record, at).await?;
        self.cache_manifest(record.id, &sealed);
        Ok(manifest)
    }

    /// Calls `visit` with the manifest of each of `snapshots`: from the cache,
    /// or else fetched and cached. The missing ones are located in one call
    /// and fetched after one probe of their vendors. A manifest that could
    /// not be had is visited as its error; `visit` decides whether that stops
    /// everything. Only one manifest is in memory at a time.
    async fn visit_manifests(
        &self,
        keys: &Keys,
        snapshots: &[SnapshotRecord],
        mut visit: impl FnMut(
            &SnapshotRecord,
            Result<Manifest, SessionError>,
        ) -> Result<(), SessionError>,
    ) -> Result<(), SessionError> {
        let mut missing = Vec::new();
        for record in snapshots {
            match self.cached_manifest(keys, record) {
                Some(manifest) => visit(record, Ok(manifest))?,
                None => missing.push(record),
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let mut portions: Vec<_> = missing.iter().map(|r| r.manifest.portion).collect();
        // Manifests are packed together: several often share a portion.
        portions.sort();
        portions.dedup();
        let locations = self.coordinator.locate_portions(&portions).await?;
        let source =
            VendorSource::probe(self.pool.clone(), self.config.tenant.clone(), &locations).await;
        let locations: HashMap<_, _> = locations.iter().map(|l| (l.portion, l)).collect();
        for record in missing {
            let portion = record.manifest.portion;
            let Some(at) = locations.get(&portion) else {
                visit(record, Err(SessionError::NoLocation(portion)))?;
                continue;
            };
            let fetched = fetch_manifest(&source, keys, record, at).await;
            let manifest = fetched.map(|(manifest, sealed)| {
                self.cache_manifest(record.id, &sealed);
                manifest
            });
            visit(record, manifest.map_err(SessionError::from))?;
        }
        Ok(())
    }

    /// The cached manifest of a snapshot, unless it names a portion the
    /// record does not: then it is from before a repack rewrote the
    /// snapshot (on another host, say), and is fetched again.
    fn cached_manifest(&self, keys: &Keys, record: &SnapshotRecord) -> Option<Manifest> {
        let sealed = self.cache.manifest(record.id)?;
        match open_manifest(keys, record, &sealed) {
            Ok(manifest) if !fits_record(&manifest, record) => {
                tracing::info!(snapshot = %record.id, "cached manifest is from before a repack; fetching it");
                None
            }
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

    /// Everything a snapshot holds, as a restore plan.
    pub async fn list(
        &self,
        keys: &Keys,
        spec: &str,
    ) -> Result<(SnapshotRecord, Plan), SessionError> {
        let record = self.resolve(spec).await?;
        let plan = self.listing(keys, &record).await?;
        Ok((record, plan))
    }

    /// A snapshot's listing (its plan without portions): cached, or else
    /// read from its trees and cached (see [`crate::local::listing`]).
    pub(crate) async fn listing(
        &self,
        keys: &Keys,
        record: &SnapshotRecord,
    ) -> Result<Plan, SessionError> {
        use crate::local::listing::{open_listing, seal_listing};
        if let Some(sealed) = self.cache.listing(record.id) {
            match open_listing(keys, record.id, &sealed) {
                Ok(plan) => return Ok(plan),
                Err(e) => {
                    tracing::warn!(snapshot = %record.id, error = %e, "cached listing unusable; reading the trees")
                }
            }
        }
        let (plan, _, _) = self.open_plan(keys, record).await?;
        match seal_listing(keys, record.id, &plan) {
            Some(sealed) => {
                if let Err(e) = self.cache.put_listing(record.id, &sealed) {
                    tracing::warn!(error = %e, "listing not cached");
                }
            }
            None => tracing::info!(snapshot = %record.id, "listing too large to cache"),
        }
        Ok(plan)
    }

    /// A snapshot's whole plan, with what reading its files needs.
    pub(crate) async fn open_plan(
        &self,
        keys: &Keys,
        record: &SnapshotRecord,
    ) -> Result<(Plan, HashMap<PortionId, PortionLocation>, VendorSource), SessionError> {
        let (manifest, locations, source) = self.open_snapshot(keys, record).await?;
        let plan = restore::plan(&source, keys, &manifest, &locations).await?;
        Ok((plan, locations, source))
    }

    /// The snapshot `spec` (`SNAPSHOT[:PATH]`) names, the part of it that
    /// PATH and the patterns select, its final FAT and the probed source:
    /// what a restore and a dump start from.
    async fn locate_selection(
        &self,
        spec: &str,
        include: &[String],
        exclude: &[String],
    ) -> Result<
        (
            SnapshotRecord,
            Selection,
            HashMap<PortionId, PortionLocation>,
            VendorSource,
        ),
        SessionError,
    > {
        let (snapshot, path) = split_spec(spec);
        let record = self.resolve(snapshot).await?;
        let selection =
            Selection::new(path, &record.paths, include, exclude).map_err(RestoreError::from)?;
        let locations = self.locations(record.id).await?;
        let (locations, source) = self.probe_located(locations).await;
        Ok((record, selection, locations, source))
    }

    /// Restores a snapshot, or the part of it `spec` (`SNAPSHOT[:PATH]`) and
    /// `how` select, into `target`.
    pub async fn restore(
        &self,
        keys: Unlocking,
        spec: &str,
        target: &Path,
        how: &RestoreRequest,
    ) -> Result<(SnapshotRecord, RestoreStats), SessionError> {
        let located = async {
            restore::check_target(target)?;
            self.locate_selection(spec, &how.include, &how.exclude)
                .await
        };
        let (keys, (record, selection, locations, source)) = keys.alongside(located).await?;
        let manifest = self.manifest(&keys, &record, &locations, &source).await?;
        let progress = self.progress("restore", "portions", record.logical_bytes);
        let options = RestoreOptions {
            selection,
            numeric_owner: how.numeric_owner,
            no_owner: how.no_owner,
            overwrite: how.overwrite,
            delete: how.delete,
        };
        let result = restore::restore(
            &source, keys, &manifest, &locations, target, &options, &progress,
        )
        .await;
        progress.finish();
        Ok((record, result?))
    }
}

impl Session {
    /// Writes the part of a snapshot `spec` (`SNAPSHOT:PATH`) names to
    /// `out`: one file as it is, or as a tar or zip stream with `archive`
    /// (a directory is a tar stream unless another is asked for).
    pub async fn dump(
        &self,
        keys: Unlocking,
        spec: &str,
        archive: Option<Archive>,
        out: Box<dyn std::io::Write + Send>,
    ) -> Result<(SnapshotRecord, DumpStats), SessionError> {
        let located = self.locate_selection(spec, &[], &[]);
        let (keys, (record, selection, locations, source)) = keys.alongside(located).await?;
        let manifest = self.manifest(&keys, &record, &locations, &source).await?;
        let plan =
            restore::plan_selected(&source, &keys, &manifest, &locations, &selection).await?;
        let archive = archive.or((!plan.single_entry).then_some(Archive::Tar));
        let stats = restore::dump::dump(&source, keys, plan, &locations, archive, out).await?;
        Ok((record, stats))
    }
}

/// How a restore selects and overwrites, as the command line gives it.
#[derive(Debug, Clone, Default)]
pub struct RestoreRequest {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// Restore owners by their recorded ids, not their names.
    pub numeric_owner: bool,
    /// Leave owners to the restoring user even as root.
    pub no_owner: bool,
    pub overwrite: restore::Overwrite,
    pub delete: bool,
}

/// `SNAPSHOT[:PATH]` as the snapshot and the path (empty: all of it).
pub fn split_spec(spec: &str) -> (&str, &str) {
    spec.split_once(':').unwrap_or((spec, ""))
}

/// A key file being unlocked on a blocking thread
/// ([`Session::unlock_in_background`]).
pub struct Unlocking(tokio::task::JoinHandle<Result<Arc<Keys>, KeyError>>);

impl Unlocking {
    /// Runs `work` while the key is derived and returns both. A wrong
    /// passphrase is the answer as soon as it is known, and it wins over
    /// whatever `work` failed with, as if the key had been unlocked first.
    pub async fn alongside<T>(
        self,
        work: impl Future<Output = Result<T, SessionError>>,
    ) -> Result<(Arc<Keys>, T), SessionError> {
        let keys = async {
            match self.0.await {
                Ok(unlocked) => Ok(unlocked?),
                Err(join) => Err(SessionError::Unlock(join.to_string())),
            }
        };
        let (mut keys, mut work) = (std::pin::pin!(keys), std::pin::pin!(work));
        tokio::select! {
            unlocked = &mut keys => {
                let keys = unlocked?;
                Ok((keys, work.await?))
            }
            done = &mut work => {
                let keys = keys.await?;
                Ok((keys, done?))
            }
        }
    }
}

/// True when every portion the manifest's index names is one the record
/// names.
fn fits_record(manifest: &Manifest, record: &SnapshotRecord) -> bool {
    let named: std::collections::HashSet<&PortionId> = record
        .portions
        .iter()
        .chain([&record.manifest.portion])
        .collect();
    manifest.index.values().all(|l| named.contains(&l.portion))
}

/// True when `snapshot` carries every tag of `tags`.
pub fn has_tags(snapshot: &SnapshotRecord, tags: &[String]) -> bool {
    tags.iter().all(|t| snapshot.tags.contains(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    fn unlocking(result: Result<Keys, KeyError>, delay: Duration) -> Unlocking {
        Unlocking(tokio::task::spawn_blocking(move || {
            std::thread::sleep(delay);
            result.map(Arc::new)
        }))
    }

    fn wrong() -> Result<Keys, KeyError> {
        Err(KeyError::WrongPassphrase(PathBuf::from("key.json")))
    }

    fn is_wrong_passphrase(result: Result<(Arc<Keys>, ()), SessionError>) -> bool {
        matches!(result, Err(SessionError::Key(KeyError::WrongPassphrase(_))))
    }

    /// The work runs while the key is derived; a wrong passphrase is the
    /// error whichever finishes first, as if unlocking had come first.
    #[tokio::test]
    async fn a_wrong_passphrase_wins_over_what_the_work_did() {
        let failing = async { Err::<(), _>(SessionError::NoSnapshot("latest".into())) };
        let slow_key = unlocking(wrong(), Duration::from_millis(50));
        assert!(is_wrong_passphrase(slow_key.alongside(failing).await));

        let never = std::future::pending::<Result<(), SessionError>>();
        let quick_key = unlocking(wrong(), Duration::ZERO);
        let answer = tokio::time::timeout(Duration::from_secs(10), quick_key.alongside(never));
        assert!(is_wrong_passphrase(answer.await.expect("not kept waiting")));

        let good = unlocking(Ok(Keys::from_data_key(&[7; 32])), Duration::from_millis(50));
        let failing = async { Err::<(), _>(SessionError::NoSnapshot("latest".into())) };
        assert!(matches!(
            good.alongside(failing).await,
            Err(SessionError::NoSnapshot(_))
        ));

        let good = unlocking(Ok(Keys::from_data_key(&[7; 32])), Duration::ZERO);
        let (_, answer) = good.alongside(async { Ok(42) }).await.unwrap();
        assert_eq!(answer, 42);
    }
}
