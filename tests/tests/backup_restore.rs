//! Backup and restore through the real client against a devnet: a restore is
//! byte-identical with every attribute kept, the snapshot and its files are
//! listed, and a second backup of an unchanged tree uploads almost nothing.

use std::ffi::OsString;
use std::path::Path;

use offsite_tests::checks::{json_stdout, snapshot_ids, strings_in, used_bytes, values_named};
use offsite_tests::tree::{self, TreeSpec};
use offsite_tests::{Devnet, DevnetOptions};

fn backup_args(source: &Path) -> Vec<OsString> {
    vec!["backup".into(), source.into()]
}

fn restore_args(target: &Path) -> Vec<OsString> {
    vec![
        "restore".into(),
        "latest".into(),
        "--target".into(),
        target.into(),
    ]
}

#[test]
fn restore_is_byte_identical_with_every_attribute() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    let summary = tree::generate(&source, &TreeSpec::full()).unwrap();
    let devnet = Devnet::start(&tmp.path().join("devnet"), DevnetOptions::default()).unwrap();

    devnet.client_ok(["init"]).unwrap();
    devnet.client_ok(backup_args(&source)).unwrap();

    let snapshots = json_stdout(&devnet.client_ok(["--json", "snapshots"]).unwrap()).unwrap();
    let ids = snapshot_ids(&snapshots);
    assert_eq!(ids.len(), 1, "one snapshot expected in {snapshots:#}");
    assert!(
        strings_in(&snapshots).iter().any(|s| s.contains("source")),
        "the snapshot's paths should name the source: {snapshots:#}"
    );
    let file_counts = values_named(&snapshots, &["file_count"]);
    assert_eq!(
        file_counts,
        [&serde_json::json!(summary.files)],
        "{snapshots:#}"
    );
    let status = devnet.status().unwrap();
    assert_eq!(status.snapshots, 1);
    assert!(
        used_bytes(&status) >= summary.bytes,
        "the coordinator counts {} bytes used for a {}-byte tree",
        used_bytes(&status),
        summary.bytes
    );

    let listing = json_stdout(&devnet.client_ok(["--json", "ls", &ids[0]]).unwrap()).unwrap();
    let names = strings_in(&listing);
    for expected in [
        "big-0.bin",
        "file-00000.dat",
        "file-02999.dat",
        "bottom.txt",
        "naïve café — 日本語.txt",
        "script.sh",
        "dangling",
        "empty-dir",
    ] {
        assert!(
            names.iter().any(|n| n.ends_with(expected)),
            "`ls --json` does not list {expected}"
        );
    }

    let entry = |suffix: &str| {
        listing["entries"]
            .as_array()
            .and_then(|all| {
                all.iter()
                    .find(|e| e["path"].as_str().is_some_and(|p| p.ends_with(suffix)))
            })
            .unwrap_or_else(|| panic!("no entry ending in {suffix}"))
            .clone()
    };
    assert_eq!(entry("perms/script.sh")["mode"], 0o755);
    assert_eq!(entry("perms/secret")["mode"], 0o600);
    assert_eq!(entry("links/dangling")["kind"], "symlink");
    assert_eq!(entry("big/big-0.bin")["size"], 50 * 1024 * 1024);
    assert_eq!(entry("deep/level-1")["kind"], "dir");

    let target = tmp.path().join("restore");
    devnet.client_ok(restore_args(&target)).unwrap();
    tree::compare(&source, &tree::restored_root(&target, &source)).unwrap();
}

#[test]
fn a_second_backup_of_an_unchanged_tree_uploads_almost_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    let spec = TreeSpec {
        seed: 3,
        big_files: vec![16 * 1024 * 1024, 8 * 1024 * 1024],
        small_files: 300,
        small_max: 4096,
        specials: true,
    };
    let summary = tree::generate(&source, &spec).unwrap();
    let devnet = Devnet::start(&tmp.path().join("devnet"), DevnetOptions::default()).unwrap();
    devnet.client_ok(["init"]).unwrap();

    let mut args: Vec<OsString> = vec!["--json".into()];
    args.extend(backup_args(&source));
    devnet.client_ok(&args).unwrap();
    let first = used_bytes(&devnet.status().unwrap());
    assert!(
        first >= summary.bytes,
        "{first} bytes used for a {}-byte tree",
        summary.bytes
    );

    let again = json_stdout(&devnet.client_ok(&args).unwrap()).unwrap();
    let second = used_bytes(&devnet.status().unwrap());
    assert!(
        second - first < first / 100,
        "the second backup of an unchanged tree grew the used bytes from {first} to {second}"
    );
    for uploaded in values_named(&again, &["uploaded_bytes", "bytes_uploaded"]) {
        let uploaded = uploaded.as_u64().unwrap();
        assert!(
            uploaded < summary.bytes / 100,
            "the second backup uploaded {uploaded} bytes of a {}-byte tree",
            summary.bytes
        );
    }

    let snapshots = json_stdout(&devnet.client_ok(["--json", "snapshots"]).unwrap()).unwrap();
    assert_eq!(snapshot_ids(&snapshots).len(), 2, "{snapshots:#}");
}
