//! Restoring part of a snapshot through the real client against a devnet:
//! one file of a snapshot of many portions restores fetching only the
//! portions that hold it; a subtree with includes and excludes restores
//! alone; a restore over a changed target with `--overwrite if-changed
//! --delete` fetches only what changed and leaves the target equal to the
//! snapshot; `dump` writes one file as it is and a directory as a tar stream
//! that the system's `tar` extracts to the same tree.
//!
//! `OFFSITE_PARTIAL_RESTORE_MB` sets the size of the snapshot (default 48;
//! the 1 GB case is `OFFSITE_PARTIAL_RESTORE_MB=1024`).

use std::path::Path;
use std::process::{Command, Stdio};

use offsite_tests::checks::json_stdout;
use offsite_tests::tree::{self, noise};
use offsite_tests::{describe, Devnet, DevnetOptions};
use serde_json::Value;

const FILE_MB: usize = 8;

fn json_ok(devnet: &Devnet, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    json_stdout(&devnet.client_ok(&all).unwrap()).unwrap()
}

fn snapshot_mb() -> usize {
    std::env::var("OFFSITE_PARTIAL_RESTORE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
        .max(2 * FILE_MB)
}

#[test]
fn one_file_or_one_folder_comes_back_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let options = DevnetOptions {
        vendors: 3,
        nas_per_vendor: 1,
        replication: 2,
        portion_bytes: 4 * 1024 * 1024,
        ..DevnetOptions::default()
    };
    let devnet = Devnet::start(&tmp.path().join("devnet"), options).unwrap();
    devnet.client_ok(["init"]).unwrap();
    let src = tmp.path().join("src");
    let files = snapshot_mb() / FILE_MB;
    std::fs::create_dir_all(src.join("etc/nginx")).unwrap();
    for i in 0..files {
        std::fs::write(
            src.join(format!("big-{i}.bin")),
            noise(&format!("big {i}"), FILE_MB << 20),
        )
        .unwrap();
    }
    std::fs::write(src.join("etc/nginx/site.conf"), "server {}\n").unwrap();
    std::fs::write(src.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    std::fs::write(src.join("etc/secret.key"), "hush\n").unwrap();
    let src_arg = src.to_str().unwrap();
    let backup = json_ok(&devnet, &["backup", src_arg]);
    let id = backup["snapshot_id"].as_str().unwrap().to_string();

    // The whole snapshot, for comparison.
    let whole = tmp.path().join("whole");
    let all = json_ok(
        &devnet,
        &["restore", &id, "--target", whole.to_str().unwrap()],
    );
    let all_portions = all["portions_fetched"].as_u64().unwrap();
    assert!(all_portions >= (files * FILE_MB / 4) as u64, "{all:#}");

    // One file, by its path as ls shows it: only its portions.
    let one = tmp.path().join("one");
    let spec = format!("{id}:src/big-1.bin");
    let single = json_ok(
        &devnet,
        &["restore", &spec, "--target", one.to_str().unwrap()],
    );
    assert_eq!(single["files"], 1, "{single:#}");
    let fetched = single["portions_fetched"].as_u64().unwrap();
    assert!(
        fetched <= (FILE_MB / 4 + 1) as u64 && fetched < all_portions,
        "{fetched} of {all_portions} portions for one {FILE_MB} MB file"
    );
    assert_eq!(
        tree::hash_file(&one.join("big-1.bin")).unwrap(),
        tree::hash_file(&src.join("big-1.bin")).unwrap()
    );

    // A folder by the absolute path backed up, narrowed by patterns.
    let etc = tmp.path().join("etc");
    let spec = format!("{id}:{}", src.join("etc").display());
    let narrowed = json_ok(
        &devnet,
        &[
            "restore",
            &spec,
            "--target",
            etc.to_str().unwrap(),
            "--include",
            "*.conf",
            "--include",
            "hosts",
            "--exclude",
            "secret*",
        ],
    );
    assert_eq!(narrowed["files"], 2, "{narrowed:#}");
    assert!(etc.join("nginx/site.conf").is_file() && etc.join("hosts").is_file());
    assert!(!etc.join("secret.key").exists());

    // Over a changed target: only what changed is fetched, and the target
    // ends up equal to the snapshot.
    let restored = tree::restored_root(&whole, &src);
    std::fs::write(restored.join("etc/hosts"), "changed\n").unwrap();
    std::fs::write(restored.join("stray.txt"), "not in the snapshot\n").unwrap();
    let again = json_ok(
        &devnet,
        &[
            "restore",
            &id,
            "--target",
            whole.to_str().unwrap(),
            "--overwrite",
            "if-changed",
            "--delete",
        ],
    );
    assert_eq!(again["files"], 1, "only the changed file: {again:#}");
    assert_eq!(again["deleted"], 1, "{again:#}");
    assert!(
        again["portions_fetched"].as_u64().unwrap() <= 1,
        "{again:#}"
    );
    tree::compare(&src, &restored).unwrap();

    // dump: one file as it is; a folder as a tar stream.
    let dumped = devnet
        .run_client(["dump", &format!("{id}:src/etc/hosts")])
        .unwrap();
    assert!(dumped.status.success(), "{}", describe(&dumped));
    assert_eq!(dumped.stdout, b"127.0.0.1 localhost\n");
    let tarred = devnet.run_client(["dump", &format!("{id}:src")]).unwrap();
    assert!(tarred.status.success(), "{}", describe(&tarred));
    let untarred = tmp.path().join("untarred");
    untar(&tarred.stdout, &untarred);
    tree::compare(&src, &untarred).unwrap();
}

/// Extracts a tar stream with the system's `tar`.
fn untar(stream: &[u8], into: &Path) {
    use std::io::Write;
    std::fs::create_dir_all(into).unwrap();
    let mut tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(into)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    tar.stdin.take().unwrap().write_all(stream).unwrap();
    assert!(tar.wait().unwrap().success(), "tar failed");
}
