//! Restore safety through the real client against a devnet: a restore into
//! a target where symlinks (and a hard link) planted by someone else point
//! outside writes nothing outside, replaces what was planted, and restores
//! the snapshot byte for byte.

use std::ffi::OsStr;
use std::os::unix::fs::symlink;
use std::path::Path;

use offsite_tests::tree::{self, TreeSpec};
use offsite_tests::{Devnet, DevnetOptions};

fn restore(devnet: &Devnet, target: &Path) {
    let args = ["restore", "latest", "--target"].map(OsStr::new);
    devnet
        .client_ok(args.into_iter().chain([target.as_os_str()]))
        .unwrap();
}

#[test]
fn a_restore_never_writes_through_symlinks_planted_in_its_target() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    tree::generate(&source, &TreeSpec::small()).unwrap();
    let devnet = Devnet::start(&tmp.path().join("devnet"), DevnetOptions::default()).unwrap();
    devnet.client_ok(["init"]).unwrap();
    devnet
        .client_ok([OsStr::new("backup"), source.as_os_str()])
        .unwrap();

    // Outside the targets: a directory with files named as the snapshot's.
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(outside.join("perms")).unwrap();
    std::fs::write(outside.join("victim"), b"must stay").unwrap();
    std::fs::write(outside.join("perms/script.sh"), b"must stay too").unwrap();
    std::fs::write(outside.join("hard"), b"hard-linked from a target").unwrap();
    let before = tree::listing(&outside).unwrap();

    // The snapshot's top directory itself is a symlink out.
    let whole = tmp.path().join("target-whole");
    std::fs::create_dir_all(&whole).unwrap();
    symlink(&outside, whole.join("source")).unwrap();
    restore(&devnet, &whole);
    assert_eq!(
        tree::listing(&outside).unwrap(),
        before,
        "the restore wrote outside its target"
    );
    assert!(whole.join("source").symlink_metadata().unwrap().is_dir());
    tree::compare(&source, &whole.join("source")).unwrap();

    // Deeper: directories and files of the snapshot planted as symlinks
    // and a hard link to files outside.
    let deeper = tmp.path().join("target-deeper");
    let top = deeper.join("source");
    std::fs::create_dir_all(top.join("perms")).unwrap();
    std::fs::create_dir_all(top.join("small/a0/b0")).unwrap();
    symlink(&outside, top.join("deep")).unwrap();
    symlink(&outside, top.join("links")).unwrap();
    symlink(outside.join("victim"), top.join("perms/script.sh")).unwrap();
    std::fs::hard_link(outside.join("hard"), top.join("small/a0/b0/file-00000.dat")).unwrap();
    restore(&devnet, &deeper);
    assert_eq!(
        tree::listing(&outside).unwrap(),
        before,
        "the restore wrote outside its target"
    );
    tree::compare(&source, &top).unwrap();
}
