//! Restoring part of a snapshot, and restoring over a target that already
//! holds something: real portions from a backup of a test tree, kept in
//! memory.

use std::path::Path;
use std::sync::Arc;

use super::{restore, Overwrite, RestoreError, RestoreOptions, RestoreStats, Selection};
use crate::format::keys::Keys;
use crate::format::manifest::Index;
use crate::progress::Progress;
use crate::session::backup::pipeline::Packed;
use crate::tests::{assert_same, backup, make_tree, Memory};

struct Backed {
    _dir: tempfile::TempDir,
    top: std::path::PathBuf,
    out: std::path::PathBuf,
    keys: Arc<Keys>,
    memory: Memory,
    packed: Packed,
}

async fn backed_up() -> Backed {
    let dir = tempfile::tempdir().unwrap();
    let top = make_tree(dir.path());
    let keys = Arc::new(Keys::from_data_key(&[9; 32]));
    let mut memory = Memory::default();
    let packed = backup(&keys, vec![top.clone()], Index::default(), &mut memory).await;
    let out = dir.path().join("out");
    Backed {
        _dir: dir,
        top,
        out,
        keys,
        memory,
        packed,
    }
}

impl Backed {
    fn selection(&self, path: &str, include: &[&str], exclude: &[&str]) -> Selection {
        let strings = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let backed_up = [self.top.display().to_string()];
        Selection::new(path, &backed_up, &strings(include), &strings(exclude)).unwrap()
    }

    async fn restore(
        &self,
        target: &Path,
        options: RestoreOptions,
    ) -> Result<RestoreStats, RestoreError> {
        let locations = self.memory.locations();
        let keys = self.keys.clone();
        let manifest = &self.packed.manifest;
        let hidden = Progress::hidden();
        restore(
            &self.memory,
            keys,
            manifest,
            &locations,
            target,
            &options,
            &hidden,
        )
        .await
    }

    async fn restore_selected(&self, target: &Path, selection: Selection) -> RestoreStats {
        let options = RestoreOptions {
            selection,
            ..RestoreOptions::default()
        };
        self.restore(target, options).await.unwrap()
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_subtree_restores_alone_and_fetches_only_its_portions() {
    let b = backed_up().await;
    let all = b
        .restore_selected(&b.out.join("all"), Selection::default())
        .await;

    // A directory lands as the target itself.
    let sub = b.out.join("sub");
    let stats = b
        .restore_selected(&sub, b.selection("data/sub", &[], &[]))
        .await;
    assert_eq!((stats.files, stats.dirs, stats.symlinks), (2, 1, 1));
    assert_eq!(
        names(&sub),
        ["big-copy.bin", "caf\u{fffd}", "dangling", "deeper"]
    );
    for name in ["big-copy.bin", "deeper", "dangling"] {
        assert_same(&b.top.join("sub").join(name), &sub.join(name));
    }
    assert!(
        stats.portions_fetched < all.portions_fetched,
        "{stats:?} {all:?}"
    );

    // One file, by its path as ls shows it or as it was backed up: only the
    // portion that holds it is fetched.
    let by_ls = b.out.join("one");
    let stats = b
        .restore_selected(&by_ls, b.selection("data/a.txt", &[], &[]))
        .await;
    assert_eq!((stats.files, stats.dirs, stats.portions_fetched), (1, 0, 1));
    assert_same(&b.top.join("a.txt"), &by_ls.join("a.txt"));
    assert_eq!(names(&by_ls), ["a.txt"]);
    let absolute = b.top.join("a.txt").display().to_string();
    let by_path = b.out.join("one-abs");
    let stats = b
        .restore_selected(&by_path, b.selection(&absolute, &[], &[]))
        .await;
    assert_eq!((stats.files, stats.portions_fetched), (1, 1));
    assert_same(&b.top.join("a.txt"), &by_path.join("a.txt"));

    // A path the snapshot does not have is refused, naming it.
    let options = RestoreOptions {
        selection: b.selection("data/nothing/here", &[], &[]),
        ..RestoreOptions::default()
    };
    let err = b.restore(&b.out.join("none"), options).await.unwrap_err();
    assert!(err.to_string().contains("data/nothing/here"), "{err}");
}

#[tokio::test]
async fn includes_and_excludes_narrow_the_restore() {
    let b = backed_up().await;
    let txt = b.out.join("txt");
    let stats = b
        .restore_selected(&txt, b.selection("", &["*.txt"], &[]))
        .await;
    assert_eq!((stats.files, stats.symlinks), (1, 0));
    // Only the directory on the way to what was taken is made.
    assert_eq!(names(&txt), ["data"]);
    assert_eq!(names(&txt.join("data")), ["a.txt"]);

    // An included directory brings all it holds; an excluded one nothing.
    let deeper = b.out.join("with-sub");
    let stats = b
        .restore_selected(&deeper, b.selection("", &["data/sub"], &["*.bin"]))
        .await;
    assert_eq!((stats.files, stats.symlinks), (1, 1));
    assert_eq!(
        names(&deeper.join("data/sub")),
        ["caf\u{fffd}", "dangling", "deeper"]
    );
    let without = b.out.join("without-sub");
    b.restore_selected(&without, b.selection("data", &[], &["sub"]))
        .await;
    assert_eq!(names(&without), ["a.txt", "big.bin", "empty", "link"]);
}

#[tokio::test]
async fn overwrite_and_delete_meet_what_the_target_holds() {
    let b = backed_up().await;
    let target = b.out.join("t");
    let first = b.restore(&target, RestoreOptions::default()).await.unwrap();
    let with = |overwrite, delete| RestoreOptions {
        overwrite,
        delete,
        ..RestoreOptions::default()
    };

    // Unchanged files are left, and nothing is fetched for them.
    let again = b
        .restore(&target, with(Overwrite::IfChanged, false))
        .await
        .unwrap();
    assert_eq!(again.skipped, first.files + first.symlinks);
    assert_eq!(again.portions_fetched, 0);

    // A changed file is replaced; with `never` it is left as it is.
    let a = target.join("data/a.txt");
    std::fs::write(&a, b"changed").unwrap();
    let never = b
        .restore(&target, with(Overwrite::Never, false))
        .await
        .unwrap();
    assert_eq!(never.portions_fetched, 0);
    assert_eq!(std::fs::read(&a).unwrap(), b"changed");
    let changed = b
        .restore(&target, with(Overwrite::IfChanged, false))
        .await
        .unwrap();
    assert_eq!((changed.files, changed.portions_fetched), (1, 1));
    assert_same(&b.top.join("a.txt"), &a);

    // --delete removes what the snapshot does not have, and only that.
    std::fs::write(target.join("data/extra.txt"), b"x").unwrap();
    std::fs::create_dir_all(target.join("data/sub/new/deep")).unwrap();
    std::fs::write(target.join("data/sub/new/deep/f"), b"y").unwrap();
    std::os::unix::fs::symlink(b.top.as_path(), target.join("data/sub/new/out")).unwrap();
    let deleted = b
        .restore(&target, with(Overwrite::IfChanged, true))
        .await
        .unwrap();
    assert_eq!(deleted.deleted, 5, "{deleted:?}");
    assert!(b.top.join("a.txt").exists(), "a symlink was followed");
    assert_same(&b.top, &target.join("data"));

    // Entries the patterns leave out are kept.
    std::fs::write(target.join("data/keep.log"), b"x").unwrap();
    let options = RestoreOptions {
        selection: b.selection("", &[], &["*.log"]),
        ..with(Overwrite::IfChanged, true)
    };
    let kept = b.restore(&target, options).await.unwrap();
    assert_eq!(kept.deleted, 0);
    assert!(target.join("data/keep.log").exists());
}

/// The plan of `path` and a dump of it, read back.
async fn dumped(b: &Backed, path: &str, archive: Option<super::dump::Archive>) -> Vec<u8> {
    let locations = b.memory.locations();
    let selection = b.selection(path, &[], &[]);
    let plan = super::plan_selected(
        &b.memory,
        &b.keys,
        &b.packed.manifest,
        &locations,
        &selection,
    )
    .await
    .unwrap();
    let mut spool = tempfile::tempfile().unwrap();
    let out = Box::new(spool.try_clone().unwrap());
    super::dump::dump(&b.memory, b.keys.clone(), plan, &locations, archive, out)
        .await
        .unwrap();
    use std::io::{Read, Seek};
    spool.rewind().unwrap();
    let mut bytes = Vec::new();
    spool.read_to_end(&mut bytes).unwrap();
    bytes
}

#[tokio::test]
async fn a_dump_is_the_file_or_an_archive_that_extracts_to_the_tree() {
    let b = backed_up().await;
    let file = dumped(&b, "data/big.bin", None).await;
    assert_eq!(file, std::fs::read(b.top.join("big.bin")).unwrap());

    let tar = dumped(&b, "data", Some(super::dump::Archive::Tar)).await;
    let untarred = b.out.join("untarred");
    tar::Archive::new(tar.as_slice()).unpack(&untarred).unwrap();
    for name in [
        "a.txt",
        "big.bin",
        "empty",
        "link",
        "sub/big-copy.bin",
        "sub/dangling",
    ] {
        let (from, to) = (b.top.join(name), untarred.join(name));
        assert_eq!(
            std::fs::symlink_metadata(&from).unwrap().file_type(),
            std::fs::symlink_metadata(&to).unwrap().file_type(),
            "{name}"
        );
        if from.is_file() && !from.is_symlink() {
            assert_eq!(
                std::fs::read(&from).unwrap(),
                std::fs::read(&to).unwrap(),
                "{name}"
            );
        }
    }
    assert_eq!(names(&untarred.join("sub")).len(), 4);

    let zip = dumped(&b, "data/sub", Some(super::dump::Archive::Zip)).await;
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
    let mut copy = Vec::new();
    std::io::Read::read_to_end(&mut zip.by_name("big-copy.bin").unwrap(), &mut copy).unwrap();
    assert_eq!(copy, std::fs::read(b.top.join("sub/big-copy.bin")).unwrap());
    assert!(zip.by_name("deeper/").is_ok());
}

/// As root, owners and groups come back, and setuid with them; a snapshot
/// restored by another user would drop the setuid bit instead.
#[tokio::test]
async fn owners_and_their_setuid_bits_come_back_as_root() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: restoring owners needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().join("owned");
    std::fs::create_dir_all(top.join("d")).unwrap();
    std::fs::write(top.join("tool"), b"#!/bin/true\n").unwrap();
    std::os::unix::fs::symlink("tool", top.join("link")).unwrap();
    for path in [top.join("tool"), top.join("d")] {
        std::os::unix::fs::chown(&path, Some(1234), Some(2345)).unwrap();
    }
    std::os::unix::fs::lchown(top.join("link"), Some(1234), Some(2345)).unwrap();
    std::fs::set_permissions(top.join("tool"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    let keys = Arc::new(Keys::from_data_key(&[4; 32]));
    let mut memory = Memory::default();
    let packed = backup(&keys, vec![top.clone()], Index::default(), &mut memory).await;
    let target = dir.path().join("out");
    let locations = memory.locations();
    let hidden = Progress::hidden();
    for numeric_owner in [false, true] {
        let options = RestoreOptions {
            numeric_owner,
            ..RestoreOptions::default()
        };
        let into = target.join(numeric_owner.to_string());
        let stats = restore(
            &memory,
            keys.clone(),
            &packed.manifest,
            &locations,
            &into,
            &options,
            &hidden,
        )
        .await
        .unwrap();
        assert_eq!(stats.special_bits_dropped, 0);
        let restored = into.join("owned");
        for name in ["tool", "d", "link"] {
            let meta = std::fs::symlink_metadata(restored.join(name)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (1234, 2345), "{name}");
        }
        let mode = std::fs::metadata(restored.join("tool")).unwrap().mode();
        assert_eq!(mode & 0o7777, 0o4755);
    }
}

/// A cached listing's subtree is what planning that subtree gives, so
/// `history` finds the same versions with or without the cache.
#[tokio::test]
async fn a_listing_subtree_is_the_selected_plan() {
    let b = backed_up().await;
    let locations = b.memory.locations();
    let (keys, manifest) = (&b.keys, &b.packed.manifest);
    let whole = super::plan(&b.memory, keys, manifest, &locations)
        .await
        .unwrap();
    for path in [
        "data",
        "data/sub",
        "data/big.bin",
        "data/link",
        "data/sub/deeper",
    ] {
        let selection = b.selection(path, &[], &[]);
        let mut selected = super::plan_selected(&b.memory, keys, manifest, &locations, &selection)
            .await
            .unwrap();
        selected.portions.clear();
        let from_listing = whole.subtree(&selection.subtree).unwrap();
        assert_eq!(from_listing, selected, "{path}");
    }
    let missing = b.selection("data/nothing-here", &[], &[]);
    assert!(whole.subtree(&missing.subtree).is_none());
}
