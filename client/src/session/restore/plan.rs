//! Restore planning: walk a snapshot's trees from the root, list the
//! directories, files, symlinks and special files to create, and for each
//! portion which blobs go to which (file, offset).
//!
//! Trees are content-addressed, so the same subtree may appear in many
//! places (every empty directory shares one); a tree that is its own
//! ancestor, though, would expand forever, and one repeated under itself
//! level after level would expand beyond any memory. Both are refused while
//! walking: a subtree met among its own ancestors, a nesting deeper than
//! [`Limits::depth`], more entries in all than [`Limits::entries`].

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::stream::{FuturesOrdered, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use offsite_proto::{PortionId, PortionLocation};

use crate::format::blob::{open, BlobId, BlobKind};
use crate::format::keys::Keys;
use crate::format::manifest::Manifest;
use crate::format::portion::blob_at;
use crate::format::tree::{EntryKind, Owner, Tree, Xattr};
use crate::market::fetch::PortionSource;
use crate::session::restore::select::Selection;
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirPlan {
    #[serde(with = "crate::local::listing::path_bytes")]
    pub path: PathBuf,
    pub mode: u32,
    pub mtime: (i64, u32),
    pub depth: usize,
    pub owner: Option<Owner>,
    pub xattrs: Vec<Xattr>,
}

/// A file to create at `size` and fill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePlan {
    #[serde(with = "crate::local::listing::path_bytes")]
    pub path: PathBuf,
    pub size: u64,
    pub mode: u32,
    pub mtime: (i64, u32),
    /// blake3 over the file's chunk ids: equal digests, equal contents.
    pub digest: [u8; 32],
    pub owner: Option<Owner>,
    pub xattrs: Vec<Xattr>,
    /// Leave zero blocks unwritten, as holes.
    pub sparse: bool,
    /// Shared by the files that were hard links to one another.
    pub link_group: Option<u64>,
}

/// A FIFO or device node to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialPlan {
    #[serde(with = "crate::local::listing::path_bytes")]
    pub path: PathBuf,
    /// [`EntryKind::Fifo`] or [`EntryKind::Device`].
    pub kind: EntryKind,
    pub mode: u32,
    pub mtime: (i64, u32),
    pub owner: Option<Owner>,
    pub xattrs: Vec<Xattr>,
}

/// A file made as a hard link to a file the restore writes (or, with
/// `--overwrite`, left as it was).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HardLinkPlan {
    pub path: PathBuf,
    pub to: PathBuf,
}

/// A symlink to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkPlan {
    #[serde(with = "crate::local::listing::path_bytes")]
    pub path: PathBuf,
    pub target: Vec<u8>,
    pub mtime: (i64, u32),
    pub owner: Option<Owner>,
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
    pub specials: Vec<SpecialPlan>,
    /// Filled by [`Plan::defer_hard_links`]; until then every link of a
    /// file is in `files`.
    pub hard_links: Vec<HardLinkPlan>,
    pub portions: BTreeMap<PortionId, Vec<BlobWrite>>,
    pub bytes: u64,
    /// One file or symlink was selected, so the target is not a directory
    /// of the snapshot.
    pub single_entry: bool,
}

/// Whose ids a restore gives its entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Owners {
    /// Leave them to the restoring user (not root, or asked not to).
    #[default]
    Skip,
    /// The recorded user and group names mapped to this host's ids (the
    /// recorded id where a name is unknown here).
    ByName,
    /// The recorded ids as they are (`--numeric-owner`).
    Numeric,
}

impl Plan {
    /// Turns every recorded owner into the ids to give it here, or drops it
    /// with [`Owners::Skip`] (then no entry gets an owner, and setuid and
    /// setgid bits are dropped).
    pub fn resolve_owners(&mut self, owners: Owners) {
        let accounts = crate::accounts::Accounts::local();
        let resolve = |owner: &mut Option<Owner>| {
            *owner = match (owners, owner.take()) {
                (Owners::Skip, _) | (_, None) => None,
                (Owners::Numeric, Some(o)) => Some(o),
                (Owners::ByName, Some(o)) => Some(Owner {
                    uid: accounts.uid_for(o.user.as_deref(), o.uid),
                    gid: accounts.gid_for(o.group.as_deref(), o.gid),
                    ..o
                }),
            }
        };
        self.dirs.iter_mut().for_each(|d| resolve(&mut d.owner));
        self.files.iter_mut().for_each(|f| resolve(&mut f.owner));
        self.links.iter_mut().for_each(|l| resolve(&mut l.owner));
        self.specials.iter_mut().for_each(|s| resolve(&mut s.owner));
    }

    /// The part of a whole snapshot's plan (its listing: no portions) under
    /// `components`, shaped as [`plan_selected`] shapes it: entries of a
    /// directory relative to it, or one file, symlink or special file by
    /// its name. `None` when the snapshot has nothing there.
    pub fn subtree(&self, components: &[Vec<u8>]) -> Option<Plan> {
        if components.is_empty() {
            return Some(self.listed_copy());
        }
        let at: PathBuf = components.iter().map(|c| OsStr::from_bytes(c)).collect();
        let name = PathBuf::from(at.file_name()?);
        let mut out = Plan::default();
        if let Some(f) = self.files.iter().find(|f| f.path == at) {
            out.files.push(FilePlan {
                path: name,
                ..f.clone()
            });
        } else if let Some(l) = self.links.iter().find(|l| l.path == at) {
            out.links.push(LinkPlan {
                path: name,
                ..l.clone()
            });
        } else if let Some(sp) = self.specials.iter().find(|sp| sp.path == at) {
            out.specials.push(SpecialPlan {
                path: name,
                ..sp.clone()
            });
        }
        if !(out.files.is_empty() && out.links.is_empty() && out.specials.is_empty()) {
            out.single_entry = true;
            out.bytes = out.files.iter().map(|f| f.size).sum();
            return Some(out);
        }
        let inside = |path: &Path| -> Option<PathBuf> {
            path.strip_prefix(&at)
                .ok()
                .filter(|rel| !rel.as_os_str().is_empty())
                .map(Path::to_path_buf)
        };
        let is_dir = self.dirs.iter().any(|d| d.path == at);
        for d in &self.dirs {
            if let Some(path) = inside(&d.path) {
                out.dirs.push(DirPlan { path, ..d.clone() });
            }
        }
        for f in &self.files {
            if let Some(path) = inside(&f.path) {
                out.files.push(FilePlan { path, ..f.clone() });
            }
        }
        for l in &self.links {
            if let Some(path) = inside(&l.path) {
                out.links.push(LinkPlan { path, ..l.clone() });
            }
        }
        for sp in &self.specials {
            if let Some(path) = inside(&sp.path) {
                out.specials.push(SpecialPlan { path, ..sp.clone() });
            }
        }
        out.bytes = out
            .files
            .iter()
            .map(|f| f.size)
            .fold(0, u64::saturating_add);
        is_dir.then_some(out)
    }

    /// A copy of the entries, without the portions.
    fn listed_copy(&self) -> Plan {
        Plan {
            dirs: self.dirs.clone(),
            files: self.files.clone(),
            links: self.links.clone(),
            specials: self.specials.clone(),
            bytes: self.bytes,
            single_entry: self.single_entry,
            ..Plan::default()
        }
    }

    /// Keeps in `files` the first file of each link group and moves the
    /// others to `hard_links`, to be linked to it rather than written.
    pub fn defer_hard_links(&mut self) {
        let mut first: HashMap<u64, PathBuf> = HashMap::new();
        let mut links = Vec::new();
        self.retain_files(|file| {
            let Some(group) = file.link_group else {
                return true;
            };
            match first.get(&group) {
                Some(to) => {
                    links.push(HardLinkPlan {
                        path: file.path.clone(),
                        to: to.clone(),
                    });
                    false
                }
                None => {
                    first.insert(group, file.path.clone());
                    true
                }
            }
        });
        self.hard_links = links;
    }

    /// Keeps the files `keep` answers true for, and only the portions and
    /// blobs those files still need.
    pub fn retain_files(&mut self, mut keep: impl FnMut(&FilePlan) -> bool) {
        let mut renumbered = vec![None; self.files.len()];
        let mut kept = Vec::with_capacity(self.files.len());
        for (index, file) in std::mem::take(&mut self.files).into_iter().enumerate() {
            if keep(&file) {
                renumbered[index] = Some(kept.len());
                kept.push(file);
            }
        }
        self.files = kept;
        self.bytes = self
            .files
            .iter()
            .map(|f| f.size)
            .fold(0, u64::saturating_add);
        for writes in self.portions.values_mut() {
            for write in writes.iter_mut() {
                write.targets.retain_mut(|(file, _)| {
                    match renumbered.get(*file).copied().flatten() {
                        Some(new) => {
                            *file = new;
                            true
                        }
                        None => false,
                    }
                });
            }
            writes.retain(|w| !w.targets.is_empty());
        }
        self.portions.retain(|_, writes| !writes.is_empty());
    }
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
    plan_selected(source, keys, manifest, locations, &Selection::default()).await
}

/// [`plan`] of the part of the snapshot `selection` takes: only the trees
/// on the way to it and in it are read, and only the portions of the files
/// it takes are in the plan.
pub async fn plan_selected<S: PortionSource>(
    source: &S,
    keys: &Keys,
    manifest: &Manifest,
    locations: &HashMap<PortionId, PortionLocation>,
    selection: &Selection,
) -> Result<Plan, RestoreError> {
    let reader = TreeReader {
        source,
        keys,
        manifest,
        locations,
        portions: Mutex::default(),
    };
    walk(&reader, manifest, Limits::DEFAULT, selection).await
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
    /// Where its entries go, relative to the target.
    dir: PathBuf,
    /// Its path from the snapshot's root, as patterns see it.
    full: PathBuf,
    depth: usize,
    ancestry: Arc<Ancestry>,
    /// How many names of the selection's subtree lead here; fewer than all
    /// while still on the way to it.
    matched: usize,
    /// An include matched it or a directory above it.
    included: bool,
}

/// One entry met by the walk, on its way into the plan.
struct Met<'a> {
    path: PathBuf,
    full: PathBuf,
    entry: &'a crate::format::tree::Entry,
}

/// The plan as it is built, with what the walk needs besides.
#[derive(Default)]
struct Building {
    plan: Plan,
    slots: HashMap<(PortionId, BlobId), usize>,
    /// Per `plan.dirs`: whether an include took it itself.
    dir_included: Vec<bool>,
}

/// [`plan`] from any [`TreeSource`], within `limits`, of what `selection`
/// takes.
pub(crate) async fn walk<T: TreeSource>(
    trees: &T,
    manifest: &Manifest,
    limits: Limits,
    selection: &Selection,
) -> Result<Plan, RestoreError> {
    let mut building = Building::default();
    let root = Ancestry {
        tree: manifest.root,
        parent: None,
    };
    let mut waiting = VecDeque::from([Pending {
        dir: PathBuf::new(),
        full: PathBuf::new(),
        depth: 0,
        ancestry: Arc::new(root),
        matched: 0,
        included: !selection.has_includes(),
    }]);
    let mut fetching = FuturesOrdered::new();
    let mut entries = 0u64;
    let wanted = selection.subtree.len();
    loop {
        while fetching.len() < PARALLEL_TREES {
            let Some(pending) = waiting.pop_front() else {
                break;
            };
            fetching.push_back(async move { (trees.tree(pending.ancestry.tree).await, pending) });
        }
        let Some((tree, pending)) = fetching.next().await else {
            break;
        };
        let tree = tree?;
        entries = entries.saturating_add(tree.entries().len() as u64);
        if entries > limits.entries {
            return Err(RestoreError::TooManyEntries(limits.entries));
        }
        if pending.matched < wanted {
            // On the way to the subtree: only the entry named next counts.
            let name = &selection.subtree[pending.matched];
            let not_there = || RestoreError::NotInSnapshot(selection.subtree_display());
            let entry = tree
                .entries()
                .iter()
                .find(|e| &e.name == name)
                .ok_or_else(not_there)?;
            let full = pending.full.join(OsStr::from_bytes(&entry.name));
            let included = pending.included || selection.includes(&full);
            let last = pending.matched + 1 == wanted;
            match &entry.kind {
                EntryKind::Dir { subtree } => {
                    let next = step_into(*subtree, &pending, &full, limits)?;
                    waiting.push_back(Pending {
                        dir: PathBuf::new(),
                        full,
                        matched: pending.matched + 1,
                        included,
                        ..next
                    });
                }
                _ if last => {
                    let path = PathBuf::from(OsStr::from_bytes(&entry.name));
                    let met = Met { path, full, entry };
                    building.plan.single_entry = true;
                    if !selection.excludes(&met.full) && included {
                        take(&mut building, manifest, met)?;
                    }
                }
                _ => return Err(not_there()),
            }
            continue;
        }
        for entry in tree.entries() {
            let name = OsStr::from_bytes(&entry.name);
            let full = pending.full.join(name);
            if selection.excludes(&full) {
                continue;
            }
            let included = pending.included || selection.includes(&full);
            let path = pending.dir.join(name);
            if let EntryKind::Dir { subtree } = &entry.kind {
                let next = step_into(*subtree, &pending, &full, limits)?;
                building.plan.dirs.push(DirPlan {
                    path: path.clone(),
                    mode: entry.mode,
                    mtime: (entry.mtime_secs, entry.mtime_nanos),
                    depth: next.depth,
                    owner: entry.owner.clone(),
                    xattrs: entry.xattrs.clone(),
                });
                building.dir_included.push(included);
                waiting.push_back(Pending {
                    dir: path,
                    full,
                    matched: wanted,
                    included,
                    ..next
                });
            } else if included {
                let met = Met { path, full, entry };
                take(&mut building, manifest, met)?;
            }
        }
    }
    if selection.has_includes() {
        keep_dirs_that_hold_something(&mut building);
    }
    Ok(building.plan)
}

/// The walk one level down into `subtree` (its `dir`, `full`, `matched` and
/// `included` for the caller to set), refused when it nests too deep or is
/// its own ancestor.
fn step_into(
    subtree: BlobId,
    pending: &Pending,
    full: &Path,
    limits: Limits,
) -> Result<Pending, RestoreError> {
    if pending.depth + 1 > limits.depth {
        return Err(RestoreError::TooDeep(limits.depth));
    }
    if pending.ancestry.contains(subtree) {
        return Err(RestoreError::TreeCycle {
            path: full.to_path_buf(),
            tree: subtree,
        });
    }
    Ok(Pending {
        dir: PathBuf::new(),
        full: PathBuf::new(),
        depth: pending.depth + 1,
        ancestry: Arc::new(Ancestry {
            tree: subtree,
            parent: Some(pending.ancestry.clone()),
        }),
        matched: 0,
        included: false,
    })
}

/// Adds a file or symlink to the plan (a directory is added by the walk).
fn take(building: &mut Building, manifest: &Manifest, met: Met<'_>) -> Result<(), RestoreError> {
    let Met { path, entry, .. } = met;
    let plan = &mut building.plan;
    let mtime = (entry.mtime_secs, entry.mtime_nanos);
    match &entry.kind {
        EntryKind::Dir { .. } => {}
        EntryKind::Symlink { target } => plan.links.push(LinkPlan {
            path,
            target: target.clone(),
            mtime,
            owner: entry.owner.clone(),
        }),
        EntryKind::Fifo | EntryKind::Device { .. } => plan.specials.push(SpecialPlan {
            path,
            kind: entry.kind.clone(),
            mode: entry.mode,
            mtime,
            owner: entry.owner.clone(),
            xattrs: entry.xattrs.clone(),
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
                owner: entry.owner.clone(),
                xattrs: entry.xattrs.clone(),
                sparse: entry.sparse,
                link_group: entry.link_group,
            });
            plan.bytes = plan.bytes.saturating_add(*size);
            let mut offset = 0u64;
            for chunk in content {
                let at = manifest
                    .index
                    .get(&chunk.id)
                    .ok_or(RestoreError::NotInManifest(chunk.id))?;
                let writes = plan.portions.entry(at.portion).or_default();
                let slot = *building
                    .slots
                    .entry((at.portion, chunk.id))
                    .or_insert_with(|| {
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
    Ok(())
}

/// With includes, a directory is made only when an include took it or it
/// holds something taken.
fn keep_dirs_that_hold_something(building: &mut Building) {
    let plan = &mut building.plan;
    let mut needed: HashSet<PathBuf> = HashSet::new();
    let taken = plan.files.iter().map(|f| &f.path);
    let taken = taken.chain(plan.links.iter().map(|l| &l.path));
    let taken = taken.chain(plan.specials.iter().map(|s| &s.path));
    let taken = taken.chain(
        plan.dirs
            .iter()
            .zip(&building.dir_included)
            .filter(|(_, included)| **included)
            .map(|(d, _)| &d.path),
    );
    for path in taken {
        let mut at = Some(path.as_path());
        while let Some(dir) = at {
            if !needed.insert(dir.to_path_buf()) {
                break;
            }
            at = dir.parent();
        }
    }
    plan.dirs.retain(|d| needed.contains(&d.path));
}
