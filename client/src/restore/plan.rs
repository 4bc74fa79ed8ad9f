//! Restore planning: walk a snapshot's trees from the root, list the
//! directories, files and symlinks to create, and for each portion which
//! blobs go to which (file, offset).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use offsite_proto::{PortionId, PortionLocation};

use crate::blob::{open, BlobId, BlobKind};
use crate::keys::Keys;
use crate::manifest::Manifest;
use crate::restore::source::PortionSource;
use crate::restore::RestoreError;
use crate::tree::{EntryKind, Tree};

/// Deepest directory nesting a restore follows (a guard against tree cycles).
const MAX_DEPTH: usize = 2048;

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

/// Fetches and opens one tree blob.
async fn fetch_tree<S: PortionSource>(
    source: &S,
    keys: &Keys,
    manifest: &Manifest,
    locations: &HashMap<PortionId, PortionLocation>,
    id: BlobId,
) -> Result<Tree, RestoreError> {
    let at = manifest
        .index
        .get(&id)
        .ok_or(RestoreError::NotInManifest(id))?;
    let location = locations
        .get(&at.portion)
        .ok_or(RestoreError::NoLocation(at.portion))?;
    let check = |bytes: &[u8]| open(keys, BlobKind::Tree, &id, bytes).is_ok();
    let sealed = source.blob(location, at.offset, at.length, &check).await?;
    let plain = open(keys, BlobKind::Tree, &id, &sealed)?;
    Ok(Tree::decode(&plain)?)
}

/// Walks the trees of `manifest` into a plan.
pub async fn plan<S: PortionSource>(
    source: &S,
    keys: &Keys,
    manifest: &Manifest,
    locations: &HashMap<PortionId, PortionLocation>,
) -> Result<Plan, RestoreError> {
    let mut plan = Plan::default();
    let mut slots: HashMap<(PortionId, BlobId), usize> = HashMap::new();
    let mut stack = vec![(manifest.root, PathBuf::new(), 0usize)];
    while let Some((tree_id, dir, depth)) = stack.pop() {
        if depth > MAX_DEPTH {
            return Err(RestoreError::TooDeep(MAX_DEPTH));
        }
        let tree = fetch_tree(source, keys, manifest, locations, tree_id).await?;
        for entry in tree.entries() {
            let path = dir.join(OsStr::from_bytes(&entry.name));
            let mtime = (entry.mtime_secs, entry.mtime_nanos);
            match &entry.kind {
                EntryKind::Dir { subtree } => {
                    plan.dirs.push(DirPlan {
                        path: path.clone(),
                        mode: entry.mode,
                        mtime,
                        depth: depth + 1,
                    });
                    stack.push((*subtree, path, depth + 1));
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
                    plan.bytes += size;
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
