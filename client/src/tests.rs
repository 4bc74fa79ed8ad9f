//! Backup-then-restore through memory: real portions built by the backup
//! half, restored by the writing half through the `PortionSource` seam.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use offsite_proto::{PortionId, PortionLocation, SnapshotId};
use rand::{RngCore, SeedableRng};

use crate::estimate::Remaining;
use crate::format::keys::Keys;
use crate::format::manifest::Index;
use crate::format::portion::Portion;
use crate::market::fetch::{verify_portion, FetchError, PortionSource};
use crate::session::backup::pipeline::{pack, BackupPlan, Packed, PortionSink};
use crate::session::restore::{self, RestoreError};

/// Portions kept in memory: the sink of a backup and the source of a restore.
#[derive(Default)]
pub(crate) struct Memory {
    pub(crate) portions: HashMap<PortionId, Portion>,
    puts: usize,
    /// Whole-portion fetches served.
    fetches: std::sync::atomic::AtomicUsize,
}

impl PortionSink for Memory {
    type Error = std::convert::Infallible;
    fn put(
        &mut self,
        portion: Portion,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send {
        self.puts += 1;
        self.portions.insert(portion.id, portion);
        std::future::ready(Ok(()))
    }
}

impl Memory {
    pub(crate) fn locations(&self) -> HashMap<PortionId, PortionLocation> {
        self.portions
            .values()
            .map(|p| {
                let location = PortionLocation {
                    portion: p.id,
                    hash: p.hash,
                    size: p.bytes.len() as u64,
                    vendors: vec![],
                    fetch_grants: vec![],
                };
                (p.id, location)
            })
            .collect()
    }

    fn missing(location: &PortionLocation) -> FetchError {
        FetchError {
            portion: location.portion,
            tried: 0,
            errors: "not in memory".into(),
        }
    }
}

impl PortionSource for Memory {
    async fn portion(
        &self,
        location: &PortionLocation,
        mut bytes: Vec<u8>,
    ) -> Result<Vec<u8>, FetchError> {
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stored = self
            .portions
            .get(&location.portion)
            .ok_or_else(|| Self::missing(location))?;
        bytes.clear();
        bytes.extend_from_slice(&stored.bytes);
        verify_portion(location, &bytes).map_err(|errors| FetchError {
            portion: location.portion,
            tried: 1,
            errors,
        })?;
        Ok(bytes)
    }

    async fn blob(
        &self,
        location: &PortionLocation,
        offset: u64,
        length: u64,
        check: &(dyn Fn(&[u8]) -> bool + Sync),
    ) -> Result<Vec<u8>, FetchError> {
        let portion = self
            .portions
            .get(&location.portion)
            .ok_or_else(|| Self::missing(location))?;
        let bytes = portion
            .bytes
            .get(offset as usize..(offset + length) as usize)
            .unwrap_or(&[]);
        if !check(bytes) {
            return Err(Self::missing(location));
        }
        Ok(bytes.to_vec())
    }
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

/// A tree with a large file, duplicates, an empty file, a non-UTF-8 name,
/// symlinks (one dangling), odd modes and a socket (skipped).
pub(crate) fn make_tree(root: &Path) -> PathBuf {
    let top = root.join("data");
    let sub = top.join("sub");
    std::fs::create_dir_all(sub.join("deeper")).unwrap();
    std::fs::write(top.join("a.txt"), b"hello offsite\n").unwrap();
    std::fs::write(top.join("big.bin"), random(3 * 1024 * 1024 + 17, 1)).unwrap();
    std::fs::write(sub.join("big-copy.bin"), random(3 * 1024 * 1024 + 17, 1)).unwrap();
    std::fs::write(top.join("empty"), b"").unwrap();
    std::fs::write(sub.join(OsStr::from_bytes(b"caf\xe9")), b"latin-1 name").unwrap();
    std::os::unix::fs::symlink("a.txt", top.join("link")).unwrap();
    std::os::unix::fs::symlink(OsStr::from_bytes(b"nowhere/\xff"), sub.join("dangling")).unwrap();
    std::fs::set_permissions(top.join("a.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(sub.join("deeper"), std::fs::Permissions::from_mode(0o750)).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(top.join("socket")).unwrap();
    filetime::set_file_mtime(
        top.join("empty"),
        filetime::FileTime::from_unix_time(1_500_000_000, 42),
    )
    .unwrap();
    top
}

pub(crate) async fn backup(
    keys: &Arc<Keys>,
    paths: Vec<PathBuf>,
    known: Index,
    sink: &mut Memory,
) -> Packed {
    let plan = BackupPlan {
        paths,
        keys: keys.clone(),
        known: Arc::new(known),
        compression: crate::format::blob::Compression::Auto,
        portion_bytes: crate::config::MIN_PORTION_BYTES,
        snapshot: SnapshotId::random(),
        time_unix_ms: 1,
        remaining: Remaining::known(0),
        filter: Arc::new(crate::filter::Filter::default()),
        parent: Arc::new(crate::local::filecache::Parent::default()),
        files: None,
        progress: crate::progress::Progress::hidden(),
    };
    pack(plan, sink).await.unwrap()
}

/// Compares two trees entry by entry: kind, content, mode, mtime, link target.
pub(crate) fn assert_same(a: &Path, b: &Path) {
    let (ma, mb) = (a.symlink_metadata().unwrap(), b.symlink_metadata().unwrap());
    assert_eq!(ma.file_type(), mb.file_type(), "{}", b.display());
    if ma.file_type().is_symlink() {
        assert_eq!(
            std::fs::read_link(a).unwrap(),
            std::fs::read_link(b).unwrap()
        );
        return;
    }
    assert_eq!(ma.mode() & 0o7777, mb.mode() & 0o7777, "{}", b.display());
    assert_eq!(
        (ma.mtime(), ma.mtime_nsec()),
        (mb.mtime(), mb.mtime_nsec()),
        "{}",
        b.display()
    );
    if ma.is_file() {
        assert_eq!(
            std::fs::read(a).unwrap(),
            std::fs::read(b).unwrap(),
            "{}",
            b.display()
        );
    }
    if ma.is_dir() {
        let names = |p: &Path| {
            let mut n: Vec<_> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap())
                .filter(|e| !e.file_type().unwrap().is_socket())
                .map(|e| e.file_name())
                .collect();
            n.sort();
            n
        };
        let (na, nb) = (names(a), names(b));
        assert_eq!(na, nb, "{}", b.display());
        for name in na {
            assert_same(&a.join(&name), &b.join(&name));
        }
    }
}

use std::os::unix::fs::FileTypeExt;

#[tokio::test]
async fn backup_then_restore_rebuilds_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let top = make_tree(dir.path());
    let keys = Arc::new(Keys::from_data_key(&[3; 32]));
    let mut memory = Memory::default();
    let packed = backup(&keys, vec![top.clone()], Index::default(), &mut memory).await;

    assert_eq!(packed.stats.files, 5);
    assert_eq!(packed.stats.dirs, 3);
    assert_eq!(packed.stats.symlinks, 2);
    assert_eq!(packed.stats.skipped, 1, "the socket");
    assert!(memory.puts >= 3, "1 MiB portions: {} puts", memory.puts);
    let mut all: Vec<PortionId> = memory.portions.keys().copied().collect();
    all.sort();
    assert_eq!(packed.portions, all);

    let target = dir.path().join("restored");
    let locations = memory.locations();
    let stats = restore::restore(
        &memory,
        keys.clone(),
        &packed.manifest,
        &locations,
        &target,
        &restore::RestoreOptions::default(),
        &crate::progress::Progress::hidden(),
    )
    .await
    .unwrap();
    assert_eq!(stats.files, 5);
    assert_same(&top, &target.join("data"));
}

#[tokio::test]
async fn restore_finishes_read_only_files_and_rewrites_a_used_target() {
    let dir = tempfile::tempdir().unwrap();
    let top = make_tree(dir.path());
    // Read-only and spread over several portions: its mode may only be set
    // once its last chunk is written, whichever portion comes last.
    std::fs::set_permissions(top.join("big.bin"), std::fs::Permissions::from_mode(0o444)).unwrap();
    let keys = Arc::new(Keys::from_data_key(&[5; 32]));
    let mut memory = Memory::default();
    let packed = backup(&keys, vec![top.clone()], Index::default(), &mut memory).await;
    assert!(memory.puts >= 3);
    let locations = memory.locations();
    let target = dir.path().join("restored");
    let hidden = crate::progress::Progress::hidden();
    let options = restore::RestoreOptions::default();
    let restore_once = || {
        restore::restore(
            &memory,
            keys.clone(),
            &packed.manifest,
            &locations,
            &target,
            &options,
            &hidden,
        )
    };
    restore_once().await.unwrap();
    assert_same(&top, &target.join("data"));

    // A second restore into the same, since changed, target: longer stale
    // files are cut to the snapshot's content, a file where a link goes is
    // replaced, and modes and mtimes are set again.
    let restored = target.join("data");
    std::fs::write(restored.join("a.txt"), vec![b'x'; 100_000]).unwrap();
    std::fs::write(restored.join("empty"), b"stale").unwrap();
    std::fs::remove_file(restored.join("link")).unwrap();
    std::fs::write(restored.join("link"), b"not a link").unwrap();
    filetime::set_file_mtime(restored.join("big.bin"), filetime::FileTime::zero()).unwrap();
    restore_once().await.unwrap();
    assert_same(&top, &restored);
}

#[test]
fn the_size_estimate_leaves_out_what_the_walk_leaves_out() {
    let dir = tempfile::tempdir().unwrap();
    let top = make_tree(dir.path());
    let everything =
        crate::estimate::estimate_bytes(std::slice::from_ref(&top), &Default::default());
    // 3 MiB + 17 twice, the 14-byte a.txt and the 12-byte latin-1 name.
    assert_eq!(everything, 2 * (3 * 1024 * 1024 + 17) + 14 + 12);
    std::fs::write(top.join("sub/.nobackup"), b"").unwrap();
    let filter = crate::filter::Filter::new(&crate::filter::ExcludeOptions {
        patterns: vec!["a.txt".into()],
        if_present: vec![".nobackup".into()],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        crate::estimate::estimate_bytes(&[top], &filter),
        3 * 1024 * 1024 + 17,
        "sub/ holds the marker and a.txt is excluded: only big.bin is left"
    );
}

#[tokio::test]
async fn identical_content_is_stored_once_and_a_second_backup_uploads_only_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let top = make_tree(dir.path());
    let keys = Arc::new(Keys::from_data_key(&[4; 32]));
    let mut first = Memory::default();
    let packed = backup(&keys, vec![top.clone()], Index::default(), &mut first).await;
    let stored: u64 = first.portions.values().map(|p| p.bytes.len() as u64).sum();
    assert!(
        stored < 4 * 1024 * 1024,
        "big.bin and its copy share chunks: {stored} bytes stored"
    );

    let mut second = Memory::default();
    let again = backup(&keys, vec![top], packed.manifest.index.clone(), &mut second).await;
    assert_eq!(again.stats.new_blobs, 0);
    assert_eq!(second.puts, 1, "only the manifest's portion");
    assert_eq!(again.manifest.root, packed.manifest.root);
    assert!(again.portions.contains(&again.manifest_location.portion));
    assert!(
        again.portions.len() > 1,
        "the old portions are still needed"
    );
}

#[tokio::test]
async fn the_plan_sends_each_blob_to_every_place_it_belongs() {
    let dir = tempfile::tempdir().unwrap();
    let top = make_tree(dir.path());
    let keys = Arc::new(Keys::from_data_key(&[5; 32]));
    let mut memory = Memory::default();
    let packed = backup(&keys, vec![top], Index::default(), &mut memory).await;
    let plan = restore::plan(&memory, &keys, &packed.manifest, &memory.locations())
        .await
        .unwrap();

    let file = |name: &str| {
        plan.files
            .iter()
            .position(|f| f.path == Path::new(name))
            .unwrap()
    };
    let (big, copy) = (file("data/big.bin"), file("data/sub/big-copy.bin"));
    assert_eq!(plan.files[big].size, 3 * 1024 * 1024 + 17);
    let writes: Vec<_> = plan.portions.values().flatten().collect();
    let to = |f: usize| {
        writes
            .iter()
            .filter(|w| w.targets.iter().any(|t| t.0 == f))
            .count()
    };
    assert!(to(big) >= 2, "a 3 MiB file has several chunks");
    for w in writes
        .iter()
        .filter(|w| w.targets.iter().any(|t| t.0 == big))
    {
        let (_, at) = w.targets.iter().find(|t| t.0 == big).unwrap();
        assert!(
            w.targets.contains(&(copy, *at)),
            "the copy gets the same chunk at the same offset"
        );
    }
    assert!(plan
        .files
        .iter()
        .any(|f| f.path.as_os_str().as_bytes() == b"data/sub/caf\xe9"));
    assert_eq!(
        plan.dirs
            .iter()
            .find(|d| d.path == Path::new("data/sub/deeper"))
            .unwrap()
            .depth,
        3
    );
    assert_eq!(plan.links.len(), 2);
}

#[tokio::test]
async fn trees_are_packed_apart_so_planning_fetches_only_metadata_portions() {
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().join("many");
    for i in 0..300 {
        let sub = top.join(format!("d{i:03}")).join("inner");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("f"), random(20_000, i)).unwrap();
    }
    std::fs::write(top.join("big.bin"), random(3 * 1024 * 1024, 7)).unwrap();
    let keys = Arc::new(Keys::from_data_key(&[6; 32]));
    let mut memory = Memory::default();
    let packed = backup(&keys, vec![top], Index::default(), &mut memory).await;
    assert!(
        memory.portions.len() >= 4,
        "{} portions",
        memory.portions.len()
    );

    let plan = restore::plan(&memory, &keys, &packed.manifest, &memory.locations())
        .await
        .unwrap();
    assert_eq!(plan.dirs.len(), 1 + 600);
    assert_eq!(plan.files.len(), 301);
    let fetched = memory.fetches.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        fetched, 1,
        "601 trees (and the manifest) share one metadata portion; data portions are not read"
    );
    let data_portions: std::collections::BTreeSet<_> = plan.portions.keys().collect();
    assert!(
        !data_portions.contains(&packed.manifest_location.portion),
        "file data never shares a portion with the trees and the manifest"
    );
}

#[tokio::test]
async fn a_file_target_and_a_damaged_portion_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let top = make_tree(dir.path());
    let keys = Arc::new(Keys::from_data_key(&[6; 32]));
    let mut memory = Memory::default();
    let packed = backup(
        &keys,
        vec![top.join("a.txt")],
        Index::default(),
        &mut memory,
    )
    .await;
    let locations = memory.locations();

    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let err = restore::restore(
        &memory,
        keys.clone(),
        &packed.manifest,
        &locations,
        &file,
        &restore::RestoreOptions::default(),
        &crate::progress::Progress::hidden(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RestoreError::TargetIsFile(_)));
    assert_eq!(
        err.to_string(),
        format!(
            "restore target {} is a file; name a directory",
            file.display()
        )
    );

    for portion in memory.portions.values_mut() {
        let mut bytes = portion.bytes.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        portion.bytes = bytes.into();
    }
    let target = dir.path().join("out");
    assert!(restore::restore(
        &memory,
        keys,
        &packed.manifest,
        &locations,
        &target,
        &restore::RestoreOptions::default(),
        &crate::progress::Progress::hidden()
    )
    .await
    .is_err());
}
