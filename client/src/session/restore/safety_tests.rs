//! Restore safety: nothing is written outside the target, whatever the
//! target holds or the snapshot says: planted symlinks and hard links, a
//! symlink swapped in while the restore runs, hostile entry names, trees that
//! contain themselves or expand beyond bounds; and setuid, setgid and sticky
//! bits are dropped while owners are not restored.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use offsite_proto::{BlobLocation, PortionLocation, SnapshotId};

use super::plan::{walk, Limits, TreeSource};
use super::select::Selection;
use super::{restore, RestoreError, RestoreStats};
use crate::format::blob::{seal, BlobId, BlobKind};
use crate::format::keys::Keys;
use crate::format::manifest::{Index, Manifest};
use crate::format::portion::PortionBuilder;
use crate::format::tree::{Entry, EntryKind, Tree, TreeError};
use crate::market::fetch::{FetchError, PortionSource};
use crate::progress::Progress;
use crate::tests::{assert_same, backup, make_tree, Memory};

async fn restore_into(
    memory: &impl PortionSource,
    locations: &HashMap<offsite_proto::PortionId, PortionLocation>,
    keys: &Arc<Keys>,
    manifest: &Manifest,
    target: &Path,
) -> Result<RestoreStats, RestoreError> {
    let hidden = Progress::hidden();
    let options = super::RestoreOptions::default();
    restore(
        memory,
        keys.clone(),
        manifest,
        locations,
        target,
        &options,
        &hidden,
    )
    .await
}

/// Every path under `dir` (not following symlinks) with the length and
/// hash of its content or link target: what must not change outside.
fn listing(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut all = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            let meta = path.symlink_metadata().unwrap();
            let content = if meta.is_dir() {
                stack.push(path.clone());
                b"<dir>".to_vec()
            } else if meta.file_type().is_symlink() {
                std::fs::read_link(&path)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                std::fs::read(&path).unwrap()
            };
            let hash = blake3::hash(&content).to_hex();
            all.insert(
                path,
                format!("{} bytes, blake3 {}", content.len(), &hash[..16]),
            );
        }
    }
    all
}

/// A directory outside the target with a file in it, to aim links at.
fn outside(root: &Path) -> PathBuf {
    let outside = root.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"not to be overwritten").unwrap();
    outside
}

/// A used target with, where the snapshot has a directory, a symlink to a
/// directory outside; where it has files, a symlink and a hard link to
/// files outside. The restore replaces all three and writes nothing
/// outside.
#[tokio::test]
async fn planted_symlinks_and_hard_links_in_the_target_are_replaced_not_written_through() {
    let dir = tempfile::tempdir().unwrap();
    let top = make_tree(dir.path());
    let keys = Arc::new(Keys::from_data_key(&[21; 32]));
    let mut memory = Memory::default();
    let packed = backup(&keys, vec![top.clone()], Index::default(), &mut memory).await;
    let locations = memory.locations();
    let target = dir.path().join("restored");
    restore_into(&memory, &locations, &keys, &packed.manifest, &target)
        .await
        .unwrap();

    let outside = outside(dir.path());
    std::fs::write(outside.join("hard"), b"hard-linked from the target").unwrap();
    let restored = target.join("data");
    std::fs::remove_dir_all(restored.join("sub")).unwrap();
    std::os::unix::fs::symlink(&outside, restored.join("sub")).unwrap();
    std::fs::remove_file(restored.join("a.txt")).unwrap();
    std::os::unix::fs::symlink(outside.join("victim"), restored.join("a.txt")).unwrap();
    std::fs::remove_file(restored.join("big.bin")).unwrap();
    std::fs::hard_link(outside.join("hard"), restored.join("big.bin")).unwrap();
    let before = listing(&outside);

    restore_into(&memory, &locations, &keys, &packed.manifest, &target)
        .await
        .unwrap();
    assert_eq!(
        listing(&outside),
        before,
        "something outside the target changed"
    );
    assert_same(&top, &restored);

    // A directory where the snapshot has a file is refused, not emptied.
    std::fs::remove_file(restored.join("a.txt")).unwrap();
    std::fs::create_dir(restored.join("a.txt")).unwrap();
    std::fs::write(restored.join("a.txt/keep"), b"mine").unwrap();
    let err = restore_into(&memory, &locations, &keys, &packed.manifest, &target)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RestoreError::DirInTheWay(path) if path == &restored.join("a.txt")),
        "{err}"
    );
    assert_eq!(std::fs::read(restored.join("a.txt/keep")).unwrap(), b"mine");
}

/// Serves portions from memory; once the restore has made `data/sub` in
/// the target, swaps it for a symlink to a directory outside (as another
/// user who can write in the target could) before serving the next one.
struct SwapsInASymlink<'a> {
    memory: &'a Memory,
    target: PathBuf,
    outside: PathBuf,
    swapped: AtomicBool,
}

impl SwapsInASymlink<'_> {
    fn swap_once(&self) {
        // Portions of trees are fetched while planning, before the target exists.
        if !self.target.exists() || self.swapped.swap(true, Ordering::SeqCst) {
            return;
        }
        let sub = self.target.join("data/sub");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sub.is_dir() {
            assert!(Instant::now() < deadline, "the restore never made {sub:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::fs::rename(&sub, self.target.join("moved-away")).unwrap();
        std::os::unix::fs::symlink(&self.outside, &sub).unwrap();
    }
}

impl PortionSource for SwapsInASymlink<'_> {
    async fn portion(
        &self,
        location: &PortionLocation,
        bytes: Vec<u8>,
    ) -> Result<Vec<u8>, FetchError> {
        self.swap_once();
        self.memory.portion(location, bytes).await
    }

    async fn blob(
        &self,
        location: &PortionLocation,
        offset: u64,
        length: u64,
        check: &(dyn Fn(&[u8]) -> bool + Sync),
    ) -> Result<Vec<u8>, FetchError> {
        self.memory.blob(location, offset, length, check).await
    }
}

#[tokio::test]
async fn a_symlink_swapped_in_during_the_restore_is_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let top = make_tree(dir.path());
    let keys = Arc::new(Keys::from_data_key(&[22; 32]));
    let mut memory = Memory::default();
    let packed = backup(&keys, vec![top], Index::default(), &mut memory).await;
    let locations = memory.locations();
    let outside = outside(dir.path());
    let before = listing(&outside);
    let source = SwapsInASymlink {
        memory: &memory,
        target: dir.path().join("restored"),
        outside: outside.clone(),
        swapped: AtomicBool::new(false),
    };

    let err = restore_into(&source, &locations, &keys, &packed.manifest, &source.target)
        .await
        .unwrap_err();
    assert!(source.swapped.load(Ordering::SeqCst));
    assert_eq!(
        listing(&outside),
        before,
        "something outside the target changed"
    );
    assert!(
        matches!(&err, RestoreError::SymlinkInTheWay { path, .. } if path.starts_with(source.target.join("data/sub"))),
        "{err}"
    );
    assert!(err.to_string().contains("was not followed"), "{err}");
}

fn entry(name: &[u8], kind: EntryKind, mode: u32) -> Entry {
    Entry::plain(name.to_vec(), kind, mode, (1_700_000_000, 0))
}

fn empty_file() -> EntryKind {
    EntryKind::File {
        size: 0,
        content: vec![],
    }
}

/// A snapshot of `trees` sealed into one portion, the last tree its root;
/// a `Dir` entry names another tree by its position in `trees` through
/// `subtree: BlobId([position; 32])`, replaced here by the real id.
fn sealed_snapshot(keys: &Keys, trees: Vec<Vec<Entry>>) -> (Memory, Manifest) {
    let mut ids: Vec<BlobId> = Vec::new();
    let mut builder = PortionBuilder::new(64 * 1024 * 1024);
    let mut index = Index::default();
    for entries in trees {
        let entries = entries
            .into_iter()
            .map(|mut e| {
                if let EntryKind::Dir { subtree } = &mut e.kind {
                    *subtree = ids[subtree.0[0] as usize];
                }
                e
            })
            .collect();
        let plain = Tree::new(entries).encode();
        let id = BlobId::of(keys, &plain);
        let sealed = seal(keys, BlobKind::Tree, &id, &plain).unwrap();
        let (offset, length) = builder.add(id, &sealed);
        let portion = builder.id();
        index.insert(
            id,
            BlobLocation {
                portion,
                offset,
                length,
            },
        );
        ids.push(id);
    }
    let portion = builder.finish();
    let mut memory = Memory::default();
    memory.portions.insert(portion.id, portion);
    let manifest = Manifest {
        snapshot: SnapshotId::random(),
        root: *ids.last().unwrap(),
        time_unix_ms: 1,
        index,
    };
    (memory, manifest)
}

fn dir_of(position: u8) -> EntryKind {
    EntryKind::Dir {
        subtree: BlobId([position; 32]),
    }
}

/// Entry names that would leave the target, and a symlink and a directory
/// of one name (`a -> outside` then `a/passwd`), are refused when the tree
/// is read: nothing is created, in the target or outside.
#[tokio::test]
async fn hostile_entry_names_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let outside = outside(dir.path());
    let before = listing(&outside);
    let keys = Arc::new(Keys::from_data_key(&[23; 32]));
    let up = format!("../{}", outside.file_name().unwrap().to_string_lossy());
    let absolute = outside
        .join("planted")
        .into_os_string()
        .into_encoded_bytes();
    let through_link = || {
        let link = EntryKind::Symlink {
            target: outside.clone().into_os_string().into_encoded_bytes(),
        };
        vec![
            vec![entry(b"passwd", empty_file(), 0o644)],
            vec![entry(b"a", link, 0o777), entry(b"a", dir_of(0), 0o755)],
        ]
    };
    let names: Vec<Vec<u8>> = vec![
        b"..".to_vec(),
        b".".to_vec(),
        b"".to_vec(),
        b"a\0b".to_vec(),
        b"/".to_vec(),
        up.into_bytes(),
        absolute,
    ];
    let mut snapshots: Vec<Vec<Vec<Entry>>> = names
        .into_iter()
        .map(|name| vec![vec![entry(&name, empty_file(), 0o644)]])
        .collect();
    snapshots.push(through_link());
    for (n, trees) in snapshots.into_iter().enumerate() {
        let (memory, manifest) = sealed_snapshot(&keys, trees);
        let target = dir.path().join(format!("target-{n}"));
        let err = restore_into(&memory, &memory.locations(), &keys, &manifest, &target)
            .await
            .unwrap_err();
        assert!(
            matches!(err, RestoreError::Tree(TreeError::Entry { .. })),
            "snapshot {n}: {err}"
        );
        assert!(err.to_string().contains("corrupt"), "{err}");
        assert!(!target.exists(), "snapshot {n} made its target");
        assert_eq!(listing(&outside), before, "snapshot {n} wrote outside");
    }
}

/// Trees by id, whatever the ids say (content addressing makes a tree that
/// names itself infeasible to seal; this shows the walk refuses it anyway).
struct Trees(HashMap<BlobId, Tree>);

impl TreeSource for Trees {
    async fn tree(&self, id: BlobId) -> Result<Tree, RestoreError> {
        self.0
            .get(&id)
            .cloned()
            .ok_or(RestoreError::NotInManifest(id))
    }
}

fn manifest_of(root: BlobId) -> Manifest {
    Manifest {
        snapshot: SnapshotId::random(),
        root,
        time_unix_ms: 1,
        index: Index::default(),
    }
}

#[tokio::test]
async fn a_tree_that_contains_itself_is_refused() {
    let [root, child, shared] = [1u8, 2, 3].map(|n| BlobId([n; 32]));
    let dir = |subtree| EntryKind::Dir { subtree };
    let trees = |entries: Vec<(BlobId, Vec<Entry>)>| {
        Trees(
            entries
                .into_iter()
                .map(|(id, e)| (id, Tree::new(e)))
                .collect(),
        )
    };
    let itself = trees(vec![(root, vec![entry(b"me", dir(root), 0o755)])]);
    let through_a_child = trees(vec![
        (root, vec![entry(b"child", dir(child), 0o755)]),
        (child, vec![entry(b"back", dir(root), 0o755)]),
    ]);
    for (source, at) in [(itself, "me"), (through_a_child, "child/back")] {
        let err = walk(
            &source,
            &manifest_of(root),
            Limits::DEFAULT,
            &Selection::default(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, RestoreError::TreeCycle { path, tree } if path == Path::new(at) && *tree == root),
            "{err}"
        );
        assert!(err.to_string().contains("contains itself"), "{err}");
    }
    // One subtree in several places, none its own ancestor, is a plain snapshot.
    let shared_twice = trees(vec![
        (
            root,
            vec![
                entry(b"x", dir(shared), 0o755),
                entry(b"y", dir(child), 0o755),
            ],
        ),
        (child, vec![entry(b"z", dir(shared), 0o755)]),
        (shared, vec![entry(b"f", empty_file(), 0o644)]),
    ]);
    let plan = walk(
        &shared_twice,
        &manifest_of(root),
        Limits::DEFAULT,
        &Selection::default(),
    )
    .await
    .unwrap();
    assert_eq!((plan.dirs.len(), plan.files.len()), (3, 2));
}

/// A tree repeated under itself level after level: 8 directories each
/// naming the next tree, 6 levels, 8^6 entries if expanded. Refused at the
/// entry bound; a chain deeper than the depth bound is refused at that.
#[tokio::test]
async fn trees_that_expand_past_the_bounds_are_refused() {
    let ids: Vec<BlobId> = (0..=6u8).map(|n| BlobId([n; 32])).collect();
    let mut fan = HashMap::from([(ids[0], Tree::new(vec![entry(b"f", empty_file(), 0o644)]))]);
    for level in 1..=6 {
        let entries = (0..8u8)
            .map(|n| {
                let subtree = ids[level - 1];
                entry(&[b'd', b'0' + n], EntryKind::Dir { subtree }, 0o755)
            })
            .collect();
        fan.insert(ids[level], Tree::new(entries));
    }
    let limits = Limits {
        depth: 2048,
        entries: 10_000,
    };
    let err = walk(
        &Trees(fan),
        &manifest_of(ids[6]),
        limits,
        &Selection::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RestoreError::TooManyEntries(10_000)), "{err}");

    let keys = Keys::from_data_key(&[24; 32]);
    let (memory, manifest) = sealed_chain(&keys, Limits::DEFAULT.depth + 1);
    let err = super::plan(&memory, &keys, &manifest, &memory.locations())
        .await
        .unwrap_err();
    assert!(matches!(err, RestoreError::TooDeep(2048)), "{err}");
}

/// A sealed snapshot of directories nested `depth` deep.
fn sealed_chain(keys: &Keys, depth: usize) -> (Memory, Manifest) {
    let mut builder = PortionBuilder::new(64 * 1024 * 1024);
    let mut index = Index::default();
    let mut entries = vec![entry(b"bottom", empty_file(), 0o644)];
    let mut id = BlobId([0; 32]);
    for _ in 0..=depth {
        let plain = Tree::new(entries).encode();
        id = BlobId::of(keys, &plain);
        let sealed = seal(keys, BlobKind::Tree, &id, &plain).unwrap();
        let (offset, length) = builder.add(id, &sealed);
        let portion = builder.id();
        index.insert(
            id,
            BlobLocation {
                portion,
                offset,
                length,
            },
        );
        entries = vec![entry(b"d", EntryKind::Dir { subtree: id }, 0o755)];
    }
    let portion = builder.finish();
    let mut memory = Memory::default();
    memory.portions.insert(portion.id, portion);
    (
        memory,
        Manifest {
            snapshot: SnapshotId::random(),
            root: id,
            time_unix_ms: 1,
            index,
        },
    )
}

/// Owners are not restored, so setuid, setgid and sticky bits are dropped
/// (and counted); the other bits are kept.
#[tokio::test]
async fn setuid_setgid_and_sticky_bits_are_dropped_without_owners() {
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().join("special");
    std::fs::create_dir_all(top.join("shared")).unwrap();
    for (name, mode) in [("setuid", 0o4755), ("setgid", 0o2750), ("plain", 0o640)] {
        std::fs::write(top.join(name), name).unwrap();
        std::fs::set_permissions(top.join(name), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    std::fs::set_permissions(top.join("shared"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let mode = |path: PathBuf| path.symlink_metadata().unwrap().mode() & 0o7777;
    assert_eq!(
        mode(top.join("setuid")),
        0o4755,
        "the test could not set setuid"
    );
    let keys = Arc::new(Keys::from_data_key(&[25; 32]));
    let mut memory = Memory::default();
    let packed = backup(&keys, vec![top], Index::default(), &mut memory).await;
    let target = dir.path().join("restored");
    // Without owners (a restore by another user than root does the same).
    let options = super::RestoreOptions {
        no_owner: true,
        ..super::RestoreOptions::default()
    };
    let hidden = Progress::hidden();
    let locations = memory.locations();
    let stats = restore(
        &memory,
        keys.clone(),
        &packed.manifest,
        &locations,
        &target,
        &options,
        &hidden,
    )
    .await
    .unwrap();
    let restored = target.join("special");
    assert_eq!(mode(restored.join("setuid")), 0o755);
    assert_eq!(mode(restored.join("setgid")), 0o750);
    assert_eq!(mode(restored.join("plain")), 0o640);
    assert_eq!(mode(restored.join("shared")), 0o777);
    assert_eq!(stats.special_bits_dropped, 3);
}
