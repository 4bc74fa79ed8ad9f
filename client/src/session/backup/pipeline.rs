//! A backup's pipeline: walk, read, chunk and hash (own thread) -> dedup
//! check -> compress and encrypt (in batches of small blobs, on the blocking
//! pool, one per core) -> pack into
//! portions -> hand each portion to a sink (the uploader, which keeps several
//! in flight to different vendors), with bounded queues between the stages so
//! memory stays flat however large the tree. Trees and the manifest are packed
//! apart from file data; the manifest last, into the last metadata portion.

use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use offsite_proto::{BlobLocation, PortionId, SnapshotId};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use super::walk;
use crate::estimate::Remaining;
use crate::filter::Filter;
use crate::format::blob::{seal, seal_with, BlobError, BlobId, BlobKind, BlobMap, Compression};
use crate::format::keys::Keys;
use crate::format::manifest::{Index, Manifest};
use crate::format::portion::{Portion, SplitPacker};
use crate::local::filecache::{self, Parent};
use crate::progress::Progress;
pub use walk::{WalkError, WalkStats};

/// Batches of blobs waiting between the walk and the sealers.
const CHANNEL_BATCHES: usize = 4;
/// The walker recurses once per directory level.
const WALK_STACK_BYTES: usize = 64 * 1024 * 1024;

/// Where finished portions go: the uploader (wired in by the backup command,
/// `session::backup`), or memory in tests.
pub trait PortionSink {
    type Error: std::error::Error + Send + Sync + 'static;
    fn put(
        &mut self,
        portion: Portion,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send;
}

/// Why a backup stopped.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Walk(#[from] WalkError),
    #[error(transparent)]
    Seal(#[from] BlobError),
    #[error("storing a portion failed: {0}")]
    Sink(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("blob {0} is needed but was neither packed nor in the dedup index; this is a bug, please report it")]
    Lost(BlobId),
    #[error("a backup worker failed: {0}")]
    Worker(String),
}

/// What to back up and how.
pub struct BackupPlan {
    pub paths: Vec<PathBuf>,
    pub keys: Arc<Keys>,
    /// The dedup index: blobs the tenant's snapshots already hold.
    pub known: Arc<Index>,
    pub compression: Compression,
    pub portion_bytes: u64,
    pub snapshot: SnapshotId,
    pub time_unix_ms: u64,
    /// Bytes still to read; the walk counts it down.
    pub remaining: Arc<Remaining>,
    pub filter: Arc<Filter>,
    /// The parent snapshot's file metadata: unchanged files are not read.
    pub parent: Arc<Parent>,
    /// Where this backup's file metadata cache is written, if anywhere.
    pub files: Option<filecache::Writer>,
    pub progress: Progress,
}

/// The packed snapshot, every portion handed to the sink.
#[derive(Debug)]
pub struct Packed {
    /// The manifest itself (the tests restore from it).
    #[cfg_attr(not(test), allow(dead_code))]
    pub manifest: Manifest,
    /// The manifest's sealed blob (for the cache) and where it went.
    pub sealed_manifest: Vec<u8>,
    pub manifest_location: BlobLocation,
    /// Every portion the snapshot needs, new and old.
    pub portions: Vec<PortionId>,
    pub stats: WalkStats,
    pub new_portions: u64,
    /// This backup's file metadata cache, to keep once committed.
    pub files: Option<filecache::Writer>,
    /// The first unreadable paths, with why.
    pub unreadable: Vec<String>,
}

/// Groups sealed blobs into portions (data apart from metadata), remembering
/// where each went.
struct Packer {
    split: SplitPacker,
    locations: BlobMap<BlobLocation>,
}

impl Packer {
    fn new(target: u64) -> Self {
        Self {
            split: SplitPacker::new(target),
            locations: BlobMap::default(),
        }
    }

    /// Adds a blob; returns the portion it closed, if any.
    fn add(&mut self, kind: BlobKind, id: BlobId, sealed: &[u8]) -> Option<Portion> {
        let (location, closed) = self.split.add(kind, id, sealed);
        self.locations.insert(id, location);
        closed
    }
}

/// Runs the pipeline, handing each portion to `sink`; see the module docs.
pub async fn pack<S: PortionSink>(
    mut plan: BackupPlan,
    sink: &mut S,
) -> Result<Packed, BackupError> {
    let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
    let walked = spawn_walk(&mut plan, tx)?;
    let (keys, compression) = (plan.keys.clone(), plan.compression);
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 8);
    let mut sealed = ReceiverStream::new(rx)
        .map(|batch: Vec<walk::NewBlob>| {
            let keys = keys.clone();
            tokio::task::spawn_blocking(move || {
                batch
                    .into_iter()
                    .map(|blob| {
                        seal_with(&keys, blob.kind, &blob.id, &blob.plaintext, compression)
                            .map(|s| (blob.kind, blob.id, s))
                    })
                    .collect::<Result<Vec<(BlobKind, BlobId, Vec<u8>)>, _>>()
            })
        })
        .buffered(workers);
    let mut packer = Packer::new(plan.portion_bytes);
    while let Some(joined) = sealed.next().await {
        let batch = joined.map_err(|e| BackupError::Worker(e.to_string()))??;
        for (kind, id, bytes) in batch {
            if let Some(portion) = packer.add(kind, id, &bytes) {
                sink.put(portion)
                    .await
                    .map_err(|e| BackupError::Sink(Box::new(e)))?;
            }
        }
    }
    drop(sealed);
    let walked = walked
        .await
        .map_err(|_| BackupError::Worker("the walk thread ended without a result".into()))??;
    finish(plan, walked, packer, sink).await
}

fn spawn_walk(
    plan: &mut BackupPlan,
    tx: mpsc::Sender<Vec<walk::NewBlob>>,
) -> Result<oneshot::Receiver<Result<walk::Walked, WalkError>>, BackupError> {
    let (done_tx, done_rx) = oneshot::channel();
    let (paths, keys, known, remaining) = (
        plan.paths.clone(),
        plan.keys.clone(),
        plan.known.clone(),
        plan.remaining.clone(),
    );
    let (filter, parent, progress) = (
        plan.filter.clone(),
        plan.parent.clone(),
        plan.progress.clone(),
    );
    let files = plan.files.take();
    std::thread::Builder::new()
        .name("offsite-walk".into())
        .stack_size(WALK_STACK_BYTES)
        .spawn(move || {
            let walker = walk::Walker {
                keys: &keys,
                known: &known,
                tx,
                remaining: &remaining,
                filter: &filter,
                parent: &parent,
                files,
                progress: &progress,
            };
            let _ = done_tx.send(walker.walk(&paths));
        })
        .map_err(|e| BackupError::Worker(e.to_string()))?;
    Ok(done_rx)
}

/// Writes the manifest into the last metadata portion and hands over the
/// portions still open.
async fn finish<S: PortionSink>(
    plan: BackupPlan,
    walked: walk::Walked,
    mut packer: Packer,
    sink: &mut S,
) -> Result<Packed, BackupError> {
    let mut index = Index::with_capacity_and_hasher(walked.needed.len(), Default::default());
    for id in walked.needed {
        let location = packer
            .locations
            .get(&id)
            .or_else(|| plan.known.get(&id))
            .ok_or(BackupError::Lost(id))?;
        index.insert(id, *location);
    }
    let manifest = Manifest {
        snapshot: plan.snapshot,
        root: walked.root,
        time_unix_ms: plan.time_unix_ms,
        index,
    };
    let keys = plan.keys.clone();
    let plaintext = manifest.encode();
    let manifest_id = BlobId::manifest(&keys, plan.snapshot);
    let sealed_manifest = tokio::task::spawn_blocking(move || {
        seal(&keys, BlobKind::Manifest, &manifest_id, &plaintext)
    })
    .await
    .map_err(|e| BackupError::Worker(e.to_string()))??;
    if let Some(portion) = packer.add(BlobKind::Manifest, manifest_id, &sealed_manifest) {
        sink.put(portion)
            .await
            .map_err(|e| BackupError::Sink(Box::new(e)))?;
    }
    let manifest_location = *packer
        .locations
        .get(&manifest_id)
        .ok_or(BackupError::Lost(manifest_id))?;
    for portion in packer.split.take_rest() {
        sink.put(portion)
            .await
            .map_err(|e| BackupError::Sink(Box::new(e)))?;
    }
    let portions = manifest.portions(manifest_location.portion);
    Ok(Packed {
        manifest,
        sealed_manifest,
        manifest_location,
        portions,
        stats: walked.stats,
        new_portions: packer.split.finished,
        files: walked.files,
        unreadable: walked.unreadable,
    })
}
