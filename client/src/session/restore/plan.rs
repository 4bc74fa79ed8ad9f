//! Restore planning: walk a snapshot's trees from the root, list the
//! directories, files and symlinks to create, and for each portion which
//! blobs go to which (file, offset).
//!
//! Trees are content-addressed, so the same subtree may appear in many
//! places (every empty directory shares one); a tree that is its own
//! ancestor, though, would expand forever, and one repeated under itself
//! level after level would expand beyond any memory. Both are refused while
//! walking: a subtree met among its own ancestors, a nesting deeper than
//! [`Limits::depth`], more entries in all than [`Limits::entries`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::stream::{FuturesOrdered, StreamExt};
use tokio::sync::OnceCell;

use offsite_proto::{PortionId, PortionLocation};

use crate::format::blob::{open, BlobId, BlobKind};
use crate::format::keys::Keys;
use crate::format::manifest::Manifest;
use crate::format::portion::blob_at;
use crate::format::tree::{EntryKind, Tree};
use crate::market::fetch::PortionSource;
use crate::session::restore::RestoreError;

/// How far a restore expands a snapshot's trees before refusing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deepest directory nesting.
    pub depth: usize,
    /// Most entries (files, directories, symlinks) in the whole snapshot.
    /// The plan holds each in memory (about 200 bytes with its path).
    pub entries: u64,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        depth: 2048,
        entries: 20_000_000,
    };
}

/// A directory to create; metadata applied last, deepest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirPlan {
    pub path: PathBuf,
    pub mode: u32,
    pub mtime: (i64, u32),
    pub depth: usize,
}

/// A file to create at `size` and fill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePlan {
    pub path: PathBuf,
    pub size: u64,
    pub mode: u32,
    pub mtime: (i64, u32),
    /// blake3 over the file's chunk ids: equal digests, equal contents.
    pub digest: [u8; 32],
}

/// A symlink to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkPlan {
    pub path: PathBuf,
    pub target: Vec<u8>,
    pub mtime: (i64, u32),
}

/// One blob of a portion and where its plaintext goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobWrite {
    pub id: BlobId,
    pub offset: u64,
    pub length: u64,
    pub plain_len: u32,
    /// (index into `Plan::files`, offset in that file).
    pub targets: Vec<(usize, u64)>,
}

/// Everything a restore does, paths relative to the target.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub dirs: Vec<DirPlan>,
    pub files: Vec<FilePlan>,
    pub links: Vec<LinkPlan>,
    pub portions: BTreeMap<PortionId, Vec<BlobWrite>>,
    pub bytes: u64,
}

/// Trees fetched at once while planning.
const PARALLEL_TREES: usize = 16;
/// Whole portions kept while planning: trees are packed into metadata
/// portions, so a few of them usually hold every tree of a snapshot.
const CACHED_PORTIONS: usize = 4;

/// Tree blobs by portion: each portion holding a tree is fetched whole once
/// (its hash checked, best replica first) and the trees are cut from it; at
/// most [`CACHED_PORTIONS`] are kept, the oldest dropped first.
struct TreeReader<'a, S> {
    source: &'a S,
    keys: &'a Keys,
    manifest: &'a Manifest,
    locations: &'a HashMap<PortionId, PortionLocation>,
    portions: Mutex<PortionCache>,
}

type SharedPortion = Arc<OnceCell<Arc<Vec<u8>>>>;

#[derive(Default)]
struct PortionCache {
    cells: HashMap<PortionId, SharedPortion>,
    order: VecDeque<PortionId>,
}

/// Where a walk gets each tree: a snapshot's portions, or a test's map.
pub(crate) trait TreeSource: Sync {
    /// The tree whose blob is `id`, opened and checked.
    fn tree(&self, id: BlobId) -> impl Future<Output = Result<Tree, RestoreError>> + Send;
}

impl<S: PortionSource> TreeSource for TreeReader<'_, S> {
    async fn tree(&self, id: BlobId) -> Result<Tree, RestoreError> {
        self.fetch(id).await
    }
}

impl<S: PortionSource> TreeReader<'_, S> {
    /// The cell of `portion`, added (and the oldest dropped) when new.
    fn cell(&self, portion: PortionId) -> SharedPortion {
        let mut cache = self
            .portions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(cell) = cache.cells.get(&portion) {
            return cell.clone();
        }
        if cache.order.len() >= CACHED_PORTIONS {
            if let Some(oldest) = cache.order.pop_front() {
                cache.cells.remove(&oldest);
            }
        }
        let cell = SharedPortion::default();
        cache.cells.insert(portion, cell.clone());
        cache.order.push_back(portion);
        cell
    }

    /// Fetches and opens one tree blob.
    async fn fetch(&self, id: BlobId) -> Result<Tree, RestoreError> {
        let at = self
            .manifest
            .index
            .get(&id)
            .ok_or(RestoreError::NotInManifest(id))?;
        let location = self
            .locations
            .get(&at.portion)
            .ok_or(RestoreError::NoLocation(at.portion))?;
        let bytes = self
            .cell(at.portion)
            .get_or_try_init(|| async {
                self.source
                    .portion(location, Vec::new())
                    .await
                    .map(Arc::new)
            })
            .await?
            .clone();
        let sealed = blob_at(at.portion, &bytes, at.offset, at.length)?;
        let plain = open(self.keys, BlobKind::Tree, &id, sealed)?;
        Ok(Tree::decode(&plain)?)
    }
}

/// Walks the trees of `manifest` into a plan, fetching several trees at once.
/// The plan's order is the same on every run: trees are taken up in the order
/// they were asked for.
pub async fn plan<S: PortionSource>(
    source: &S,
    keys: &Keys,
    manifest: &Manifest,
    locations: &HashMap<PortionId, PortionLocation>,
) -> Result<Plan, RestoreError> {
    let reader = TreeReader {
        source,
        keys,
        manifest,
        locations,
        portions: Mutex::default(),
    };
    walk(&reader, manifest, Limits::DEFAULT).await
}

/// A tree on the way from the root, with its ancestors: a subtree found
/// among them is a cycle.
struct Ancestry {
    tree: BlobId,
    parent: Option<Arc<Ancestry>>,
}

impl Ancestry {
    fn contains(&self, id: BlobId) -> bool {
        let mut at = Some(self);
        while let Some(ancestry) = at {
            if ancestry.tree == id {
                return true;
            }
            at = ancestry.parent.as_deref();
        }
        false
    }
}

/// A directory whose tree is still to be read.
struct Pending {
    dir: PathBuf,
    depth: usize,
    ancestry: Arc<Ancestry>,
}

/// [`plan`] from any [`TreeSource`], within `limits`.
pub(crate) async fn walk<T: TreeSource>(
    trees: &T,
    manifest: &Manifest,
    limits: Limits,
) -> Result<Plan, RestoreError> {
    let mut plan = Plan::default();
    let mut slots: HashMap<(PortionId, BlobId), usize> = HashMap::new();
    let root = Ancestry {
        tree: manifest.root,
        parent: None,
    };
    let mut waiting = VecDeque::from([Pending {
        dir: PathBuf::new(),
        depth: 0,
        ancestry: Arc::new(root),
    }]);
    let mut fetching = FuturesOrdered::new();
    let mut entries = 0u64;
    loop {
        while fetching.len() < PARALLEL_TREES {
            let Some(pending) = waiting.pop_front() else {
                break;
            };
            fetching.push_back(async move { (trees.tree(pending.ancestry.tree).await, pending) });
        }
        let Some((
            tree,
            Pending {
                dir,
                depth,
                ancestry,
            },
        )) = fetching.next().await
        else {
            break;
        };
        let tree = tree?;
        entries = entries.saturating_add(tree.entries().len() as u64);
        if entries > limits.entries {
            return Err(RestoreError::TooManyEntries(limits.entries));
        }
        for entry in tree.entries() {
            let path = dir.join(OsStr::from_bytes(&entry.name));
            let mtime = (entry.mtime_secs, entry.mtime_nanos);
            match &entry.kind {
                EntryKind::Dir { subtree } => {
                    if depth + 1 > limits.depth {
                        return Err(RestoreError::TooDeep(limits.depth));
                    }
                    if ancestry.contains(*subtree) {
                        return Err(RestoreError::TreeCycle {
                            path,
                            tree: *subtree,
                        });
                    }
                    plan.dirs.push(DirPlan {
                        path: path.clone(),
                        mode: entry.mode,
                        mtime,
                        depth: depth + 1,
                    });
                    let ancestry = Arc::new(Ancestry {
                        tree: *subtree,
                        parent: Some(ancestry.clone()),
                    });
                    waiting.push_back(Pending {
                        dir: path,
                        depth: depth + 1,
                        ancestry,
                    });
                }
                EntryKind::Symlink { target } => plan.links.push(LinkPlan {
                    path,
                    target: target.clone(),
                    mtime,
                }),
                EntryKind::File { size, content } => {
                    let file = plan.files.len();
                    let mut digest = blake3::Hasher::new();
                    for chunk in content {
                        digest.update(&chunk.id.0);
                    }
                    plan.files.push(FilePlan {
                        path,
                        size: *size,
                        mode: entry.mode,
                        mtime,
                        digest: *digest.finalize().as_bytes(),
                    });
                    plan.bytes = plan.bytes.saturating_add(*size);
                    let mut offset = 0u64;
                    for chunk in content {
                        let at = manifest
                            .index
                            .get(&chunk.id)
                            .ok_or(RestoreError::NotInManifest(chunk.id))?;
                        let writes = plan.portions.entry(at.portion).or_default();
                        let slot = *slots.entry((at.portion, chunk.id)).or_insert_with(|| {
                            writes.push(BlobWrite {
                                id: chunk.id,
                                offset: at.offset,
                                length: at.length,
                                plain_len: chunk.len,
                                targets: Vec::new(),
                            });
                            writes.len() - 1
                        });
                        writes[slot].targets.push((file, offset));
                        offset += u64::from(chunk.len);
                    }
                }
            }
        }
    }
    Ok(plan)
}
