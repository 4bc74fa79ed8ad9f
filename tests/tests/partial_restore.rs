//! Restoring part of a snapshot through the real client against a devnet:
//! one file of a snapshot of many portions restores fetching only the
//! portions that hold it; a subtree with includes and excludes restores
//! alone; a restore over a changed target with `--overwrite if-changed
//! --delete` fetches only what changed and leaves the target equal to the
//! snapshot; `dump` writes one file as it is and a directory as a tar stream
//! that the system's `tar` extracts to the same tree. Two hosts of one
//! tenant: the same content from both is stored once, and `hosts`,
//! `snapshots --host/--path`, `history`, `dups` and `find`'s filters see
//! across them, and answer from the local cache with the marketplace down.
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

/// [`DevnetOptions::small`], the tenant initialised.
fn small_devnet() -> (tempfile::TempDir, Devnet) {
    let tmp = tempfile::tempdir().unwrap();
    let devnet = Devnet::start(&tmp.path().join("devnet"), DevnetOptions::small()).unwrap();
    devnet.client_ok(["init"]).unwrap();
    (tmp, devnet)
}

#[test]
fn one_file_or_one_folder_comes_back_alone() {
    let (tmp, devnet) = small_devnet();
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

/// The view across hosts: two hosts of one tenant, `hosts`, `snapshots
/// --host/--path`, `history`, `dups` and `find`'s filters.
#[test]
fn hosts_history_and_find_see_across_hosts() {
    let (tmp, mut devnet) = small_devnet();
    let web = tmp.path().join("web");
    std::fs::create_dir_all(web.join("etc")).unwrap();
    std::fs::write(web.join("etc/stable.conf"), "same\n").unwrap();
    std::fs::write(web.join("notes.txt"), "first\n").unwrap();
    std::fs::write(web.join("big.bin"), noise("big", 2 << 20)).unwrap();
    let web_arg = web.to_str().unwrap();
    let first = json_ok(&devnet, &["backup", web_arg]);
    std::fs::write(web.join("notes.txt"), "second, longer\n").unwrap();
    let second = json_ok(&devnet, &["backup", web_arg]);

    // Another host of the same tenant.
    let db_config = devnet
        .client_config_with(&tmp.path().join("db.toml"), &[("host", "db".into())])
        .unwrap();
    let db = tmp.path().join("db");
    std::fs::create_dir_all(&db).unwrap();
    std::fs::write(db.join("dump.txt"), "rows\n").unwrap();
    std::fs::write(db.join("copy.bin"), noise("big", 2 << 20)).unwrap();
    let mut backup_db =
        offsite_tests::client_command_with(&db_config, ["--json", "backup", db.to_str().unwrap()])
            .unwrap();
    backup_db.stdin(Stdio::null());
    let done = offsite_tests::run_bounded(backup_db, offsite_tests::CLIENT_TIMEOUT).unwrap();
    assert!(done.status.success(), "{}", describe(&done));
    // The same content from another host is stored once.
    let db_backup = json_stdout(&done).unwrap();
    assert!(
        db_backup["bytes_uploaded"].as_u64().unwrap() < 1 << 20,
        "{db_backup:#}"
    );

    // dups sees it under both hosts.
    let dups = json_ok(&devnet, &["dups"]);
    let top = &dups["duplicates"][0];
    assert_eq!(top["size"], 2 << 20, "{dups:#}");
    let places: Vec<String> = top["places"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}:{}",
                p["host"].as_str().unwrap(),
                p["path"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        places,
        ["db:db/copy.bin", "devnet-host:web/big.bin"],
        "{dups:#}"
    );
    assert!(dups["bytes_saved"].as_u64().unwrap() >= 2 << 20);

    let hosts = json_ok(&devnet, &["hosts"]);
    let listed: Vec<(String, u64)> = hosts["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["host"].as_str().unwrap().to_string(),
                h["snapshots"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [("db".to_string(), 1), ("devnet-host".to_string(), 2)],
        "{hosts:#}"
    );
    assert_eq!(
        hosts["hosts"][1]["latest_snapshot_id"],
        second["snapshot_id"]
    );
    assert!(
        hosts["hosts"][1]["since_last_backup_secs"]
            .as_u64()
            .unwrap()
            < 600
    );

    let count = |v: &Value| v["snapshots"].as_array().unwrap().len();
    assert_eq!(count(&json_ok(&devnet, &["snapshots", "--host", "db"])), 1);
    let etc = web.join("etc").display().to_string();
    assert_eq!(count(&json_ok(&devnet, &["snapshots", "--path", &etc])), 2);

    // A changed file has two versions, an unchanged one one in both.
    let changed = json_ok(
        &devnet,
        &["history", "web/notes.txt", "--host", "devnet-host"],
    );
    let versions = changed["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{changed:#}");
    assert_eq!(versions[0]["snapshots"][0], first["snapshot_id"]);
    assert_eq!(versions[1]["size"], 15);
    let absolute = web.join("etc/stable.conf").display().to_string();
    let same = json_ok(&devnet, &["history", &absolute]);
    let versions = same["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 1, "{same:#}");
    assert_eq!(versions[0]["snapshots"].as_array().unwrap().len(), 2);
    let folder = json_ok(&devnet, &["history", "web"]);
    assert_eq!(
        folder["versions"].as_array().unwrap().len(),
        2,
        "{folder:#}"
    );

    // find by host, size and time.
    let paths = |v: Value| -> Vec<String> {
        let mut p: Vec<String> = v["matches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["path"].as_str().unwrap().to_string())
            .collect();
        p.sort();
        p.dedup();
        p
    };
    assert_eq!(
        paths(json_ok(&devnet, &["find", "*.txt", "--host", "db"])),
        ["db/dump.txt"]
    );
    assert_eq!(
        paths(json_ok(&devnet, &["find", "*", "--size", "+1M"])),
        ["db/copy.bin", "web/big.bin"]
    );
    assert!(paths(json_ok(&devnet, &["find", "*", "--older", "1970-01-02"])).is_empty());
    assert_eq!(
        paths(json_ok(&devnet, &["find", "notes.txt", "--newer", "1d"])),
        ["web/notes.txt"]
    );
    let dups_online = json_ok(&devnet, &["dups"]);

    // With the whole marketplace down, the same answers come from the
    // local cache (snapshot list and listings), saying so.
    devnet.stop_all();
    let offline = |args: &[&str]| -> Value {
        let answer = json_ok(&devnet, args);
        assert_eq!(answer["from_cache"], true, "{args:?}: {answer:#}");
        answer
    };
    assert_eq!(offline(&["hosts"])["hosts"].as_array().unwrap().len(), 2);
    let changed = offline(&["history", "web/notes.txt", "--host", "devnet-host"]);
    assert_eq!(changed["versions"].as_array().unwrap().len(), 2);
    assert_eq!(
        paths(offline(&["find", "*", "--size", "+1M"])),
        ["db/copy.bin", "web/big.bin"]
    );
    let dups_offline = offline(&["dups"]);
    assert_eq!(dups_offline["duplicates"], dups_online["duplicates"]);
    let first_id = first["snapshot_id"].as_str().unwrap();
    assert!(!offline(&["ls", first_id])["entries"]
        .as_array()
        .unwrap()
        .is_empty());
}
