//! Restoring a snapshot: open its manifest, plan from its trees, fetch the
//! portions a few at a time, the most work first (best replica first,
//! falling back) while the directories are made, write each blob at its
//! offsets (a file gets its permissions and mtime with its last write), then
//! symlinks and directories. Nothing is written through a symlink: every
//! entry is reached from the target's handle without following one (see
//! `beneath`), and a snapshot whose trees contain themselves, nest too deep
//! or name too many entries is refused before anything is written. Memory holds a few portions at a time: each
//! portion job fetches into, and decrypts within, buffers the job before it
//! left behind.

mod beneath;
pub mod dump;
pub(crate) mod pieces;
pub(crate) mod plan;
#[cfg(test)]
mod safety_tests;
pub mod select;
#[cfg(test)]
mod select_tests;
mod write;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use futures::stream::{self, StreamExt, TryStreamExt};
use offsite_proto::{PortionId, PortionLocation, SnapshotRecord};

use crate::format::blob::{open, BlobError, BlobId, BlobKind};
use crate::format::keys::Keys;
use crate::format::manifest::{Manifest, ManifestError};
use crate::format::portion::PortionError;
use crate::format::tree::TreeError;
use crate::market::fetch::{FetchError, PortionSource};
use crate::progress::Progress;
pub use plan::{plan, plan_selected, Plan};
pub use select::{SelectError, Selection};

/// Portions fetched at once (spread over their vendors by the source). Each
/// job keeps a portion buffer and a plaintext buffer; on the 2-core
/// benchmark machine three kept the cores as busy as four did, with 20-25 MB
/// less resident.
const PARALLEL_PORTIONS: usize = 3;

/// Why a restore stopped; each names the thing and what to do.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("restore target {0} is a file; name a directory")]
    TargetIsFile(PathBuf),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Portion(#[from] PortionError),
    #[error("blob {0} is not in the snapshot's manifest; the snapshot is damaged")]
    NotInManifest(BlobId),
    #[error("the coordinator gave no location for portion {0}; the snapshot's FAT is incomplete")]
    NoLocation(PortionId),
    #[error("chunk {0} does not have the length its tree records; the snapshot is damaged")]
    ChunkLength(BlobId),
    #[error("the snapshot's trees nest deeper than {0} levels; the snapshot is damaged or hostile and is refused")]
    TooDeep(usize),
    #[error(
        "the snapshot's tree {tree} at {path} contains itself (a directory that is its own \
         ancestor); the snapshot is damaged or hostile and is refused"
    )]
    TreeCycle { path: PathBuf, tree: BlobId },
    #[error(
        "the snapshot's trees name more than {0} entries (a subtree repeated over and over?); \
         the snapshot is damaged or hostile and is refused"
    )]
    TooManyEntries(u64),
    #[error(
        "cannot {what} {path}: a symlink is in the way and was not followed (nothing outside \
         the target is written); something changed the target during the restore: restore \
         into a new directory that only you can write"
    )]
    SymlinkInTheWay { path: PathBuf, what: &'static str },
    #[error(
        "{0} is not the file this restore created (no longer a regular file, or it has another \
         hard link); something changed the target during the restore: restore into a new \
         directory that only you can write"
    )]
    NotOurFile(PathBuf),
    #[error(
        "{0} is a directory where the snapshot has a file or symlink; move it away (the \
         restore does not delete directories) or restore into a new directory"
    )]
    DirInTheWay(PathBuf),
    #[error("cannot {what} {path}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("the snapshot has no {0}; run `offsite ls SNAPSHOT` to see its paths")]
    NotInSnapshot(PathBuf),
    #[error(transparent)]
    Select(#[from] SelectError),
    #[error("a restore worker failed: {0}")]
    Worker(String),
}

/// What a restore did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// FIFOs and device nodes made.
    pub specials: u64,
    /// Files made as hard links to another file of the restore.
    pub hard_links: u64,
    pub bytes_written: u64,
    pub portions_fetched: u64,
    /// Extended attributes the restoring user may not set or the target's
    /// filesystem does not keep.
    pub xattrs_skipped: u64,
    /// Device nodes not made (not root).
    pub specials_skipped: u64,
    /// Files and directories whose setuid, setgid or sticky bit was dropped.
    pub special_bits_dropped: u64,
    /// Files and symlinks left as they were (`--overwrite`).
    pub skipped: u64,
    /// Entries removed because the snapshot does not have them (`--delete`).
    pub deleted: u64,
}

/// What a restore does with a file or symlink already in the target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Overwrite {
    /// Replace it.
    #[default]
    Always,
    /// Leave a regular file of the same size and mtime (or a symlink to the
    /// same target); replace anything else.
    IfChanged,
    /// Leave anything there.
    Never,
}

impl std::str::FromStr for Overwrite {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(Overwrite::Always),
            "if-changed" => Ok(Overwrite::IfChanged),
            "never" => Ok(Overwrite::Never),
            other => Err(format!(
                "--overwrite {other:?} is not one of always, if-changed, never"
            )),
        }
    }
}

/// What part of the snapshot to restore, and how to meet what the target
/// already holds.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    pub selection: Selection,
    /// Restore the recorded ids rather than map the names (`--numeric-owner`).
    pub numeric_owner: bool,
    /// Leave owners to the restoring user even as root, as a restore by
    /// another user does (`--no-owner`).
    pub no_owner: bool,
    pub overwrite: Overwrite,
    /// Remove what the target holds and the selection does not (entries the
    /// patterns leave out are kept).
    pub delete: bool,
}

/// Refuses a target that exists and is not a directory.
pub fn check_target(target: &Path) -> Result<(), RestoreError> {
    match std::fs::metadata(target) {
        Ok(meta) if !meta.is_dir() => Err(RestoreError::TargetIsFile(target.to_path_buf())),
        _ => Ok(()),
    }
}

/// Fetches and opens a snapshot's manifest; returns it with its sealed bytes.
pub async fn fetch_manifest<S: PortionSource>(
    source: &S,
    keys: &Keys,
    record: &SnapshotRecord,
    location: &PortionLocation,
) -> Result<(Manifest, Vec<u8>), RestoreError> {
    let at = record.manifest;
    let id = BlobId::manifest(keys, record.id);
    let check = |bytes: &[u8]| open(keys, BlobKind::Manifest, &id, bytes).is_ok();
    let sealed = source.blob(location, at.offset, at.length, &check).await?;
    let manifest = open_manifest(keys, record, &sealed)?;
    Ok((manifest, sealed))
}

/// Opens a sealed manifest (fetched or cached) of `record`.
pub fn open_manifest(
    keys: &Keys,
    record: &SnapshotRecord,
    sealed: &[u8],
) -> Result<Manifest, RestoreError> {
    let id = BlobId::manifest(keys, record.id);
    let plain = open(keys, BlobKind::Manifest, &id, sealed)?;
    Ok(Manifest::decode(&plain, record.id)?)
}

/// Restores `manifest` (the part `options` selects) into `target` with
/// portions from `source`.
pub async fn restore<S: PortionSource>(
    source: &S,
    keys: Arc<Keys>,
    manifest: &Manifest,
    locations: &HashMap<PortionId, PortionLocation>,
    target: &Path,
    options: &RestoreOptions,
    progress: &Progress,
) -> Result<RestoreStats, RestoreError> {
    check_target(target)?;
    let mut plan = plan_selected(source, &keys, manifest, locations, &options.selection).await?;
    plan.defer_hard_links();
    let (target, fresh) = {
        let target = target.to_path_buf();
        blocking(move || write::open_target(&target)).await?
    };
    let skipped = if fresh {
        Vec::new()
    } else {
        write::skip_existing(&target, &mut plan, options.overwrite)?
    };
    plan.resolve_owners(owners_to_restore(options));
    let special_bits_dropped = warn_of_special_bits(&plan);
    progress.set_total(plan.bytes);
    let remaining = Arc::new(write::Remaining::new(&plan));
    let plan = Arc::new(plan);
    let target = Arc::new(target);
    // The directories are made while the first portions are fetched; no
    // portion is written before they are.
    let (prepared, ready) = tokio::sync::watch::channel(false);
    let prepare = {
        let (plan, target) = (plan.clone(), target.clone());
        async move {
            blocking(move || write::prepare(&target, &plan, fresh)).await?;
            prepared.send_replace(true);
            Ok::<(), RestoreError>(())
        }
    };
    let jobs = jobs_by_work(&plan);
    let scratches = ScratchPool::default();
    let apply = stream::iter(jobs)
        .map(|portion| {
            let (plan, target, keys) = (plan.clone(), target.clone(), keys.clone());
            let remaining = remaining.clone();
            let scratches = &scratches;
            let mut ready = ready.clone();
            async move {
                let location = locations
                    .get(&portion)
                    .ok_or(RestoreError::NoLocation(portion))?;
                let mut scratch = scratches.take();
                scratch.portion = source
                    .portion(location, std::mem::take(&mut scratch.portion))
                    .await?;
                ready.wait_for(|ready| *ready).await.map_err(|_| {
                    RestoreError::Worker("the target's directories were not made".into())
                })?;
                let (written, scratch) = blocking(move || {
                    let writes = plan.portions.get(&portion).map_or(&[][..], Vec::as_slice);
                    let files = &plan.files;
                    let written = write::apply_portion(
                        &target,
                        &keys,
                        files,
                        &remaining,
                        portion,
                        &mut scratch,
                        writes,
                    )?;
                    Ok((written, scratch))
                })
                .await?;
                scratches.give(scratch);
                progress.add_bytes(written);
                progress.add_files(1);
                Ok::<u64, RestoreError>(written)
            }
        })
        .buffer_unordered(PARALLEL_PORTIONS)
        .try_collect::<Vec<u64>>();
    // Both run to their end: making directories is not cancelled half-way
    // by a failed fetch, and its error is the one reported.
    let (prepared, written) = tokio::join!(prepare, apply);
    prepared?;
    let written = written?;
    // Before the directories get their mtimes, which deleting would change.
    let deleted = if options.delete && plan.single_entry {
        tracing::warn!(
            "--delete applies to a directory restored; one file was, so nothing is deleted"
        );
        0
    } else if options.delete && !fresh {
        let (plan, target) = (plan.clone(), target.clone());
        let selection = options.selection.clone();
        let skipped: std::collections::HashSet<PathBuf> = skipped.iter().cloned().collect();
        blocking(move || {
            let keep = |rel: &Path| skipped.contains(rel) || !selection.covers(rel);
            write::delete_extra(&target, &plan, &keep)
        })
        .await?
    } else {
        0
    };
    {
        let (plan, target, remaining) = (plan.clone(), target.clone(), remaining.clone());
        blocking(move || write::finish(&target, &plan, &remaining)).await?;
    }
    Ok(RestoreStats {
        files: plan.files.len() as u64,
        dirs: plan.dirs.len() as u64,
        symlinks: plan.links.len() as u64,
        specials: plan.specials.len() as u64,
        hard_links: plan.hard_links.len() as u64,
        bytes_written: written.iter().sum(),
        portions_fetched: written.len() as u64,
        xattrs_skipped: remaining.xattrs_skipped.load(Ordering::Relaxed),
        specials_skipped: remaining.specials_skipped.load(Ordering::Relaxed),
        special_bits_dropped,
        skipped: skipped.len() as u64,
        deleted,
    })
}

/// Owners are restored only by root (others cannot give files away).
fn owners_to_restore(options: &RestoreOptions) -> plan::Owners {
    let root = rustix::process::geteuid().is_root();
    match (root && !options.no_owner, options.numeric_owner) {
        (false, _) => plan::Owners::Skip,
        (true, true) => plan::Owners::Numeric,
        (true, false) => plan::Owners::ByName,
    }
}

/// Counts the entries whose setuid, setgid or sticky bit the restore drops
/// (their owner is not restored) and says so once.
fn warn_of_special_bits(plan: &Plan) -> u64 {
    let modes = plan.files.iter().map(|f| (f.mode, f.owner.as_ref()));
    let dropped = modes
        .chain(plan.dirs.iter().map(|d| (d.mode, d.owner.as_ref())))
        .filter(|&(mode, owner)| write::loses_special_bits(mode, owner))
        .count() as u64;
    if dropped > 0 {
        tracing::warn!(
            entries = dropped,
            "{dropped} files and directories are restored without their setuid, setgid or \
             sticky bits: their owners are not restored (run as root for that), and those bits \
             without the owner would grant the restoring user's rights"
        );
    }
    dropped
}

/// Bytes-equivalent of writing one blob into one file, beyond its bytes:
/// opening (often creating) the file and, for the last write, its metadata.
const WRITE_COST: u64 = 16 * 1024;

/// The portions to fetch, the most work first: the jobs left at the end are
/// then the short ones, and one core does not apply a large portion alone
/// while the other waits.
fn jobs_by_work(plan: &Plan) -> Vec<PortionId> {
    let mut jobs: Vec<(u64, PortionId)> = plan
        .portions
        .iter()
        .map(|(portion, writes)| {
            let work = writes
                .iter()
                .map(|w| (u64::from(w.plain_len) + WRITE_COST) * w.targets.len() as u64)
                .sum();
            (work, *portion)
        })
        .collect();
    jobs.sort_by_key(|&(work, portion)| (std::cmp::Reverse(work), portion));
    jobs.into_iter().map(|(_, portion)| portion).collect()
}

/// The scratch buffers of finished portion jobs, for the next ones: at most
/// one per job running at once.
#[derive(Default)]
struct ScratchPool(Mutex<Vec<write::Scratch>>);

impl ScratchPool {
    fn take(&self) -> write::Scratch {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_default()
    }

    fn give(&self, scratch: write::Scratch) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(scratch);
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RestoreError> + Send + 'static,
) -> Result<T, RestoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RestoreError::Worker(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writes(blobs: &[(u32, usize)]) -> Vec<plan::BlobWrite> {
        blobs
            .iter()
            .map(|&(plain_len, targets)| plan::BlobWrite {
                id: BlobId([0; 32]),
                offset: 0,
                length: 0,
                plain_len,
                targets: (0..targets).map(|file| (file, 0)).collect(),
            })
            .collect()
    }

    /// Large portions first. Files count as well as bytes: 500 small files
    /// (500 KB) are more work than one file of 2 MB.
    #[test]
    fn the_most_work_is_fetched_first() {
        let [one_file, large, many_files, empty] =
            [0u8, 1, 2, 3].map(|n| PortionId::from_bytes([n; 16]));
        let mut plan = Plan::default();
        plan.portions.insert(one_file, writes(&[(2_000_000, 1)]));
        plan.portions
            .insert(large, writes(&[(8_000_000, 1), (4_000_000, 2)]));
        plan.portions.insert(many_files, writes(&[(1_000, 500)]));
        plan.portions.insert(empty, Vec::new());
        assert_eq!(
            jobs_by_work(&plan),
            vec![large, many_files, one_file, empty]
        );
    }
}
