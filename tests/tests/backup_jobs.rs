//! The commands real backup jobs need, through the real client against a
//! devnet: tags, excludes, `backup --dry-run`, `diff`, `find`, `forget` with a
//! retention policy, `check` (with `--read-data` finding a damaged copy), the
//! partial-success and no-quorum exit codes, answers from the cache when the
//! coordinator is down, and an interrupted backup resumed without sending
//! the portions it had committed again.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use offsite_tests::checks::{json_stdout, snapshot_ids, used_bytes};
use offsite_tests::tree::{self, TreeSpec};
use offsite_tests::{describe, stop_pids, wait_for, Devnet, DevnetOptions, KillOnDrop, STOP_GRACE};
use serde_json::Value;

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn json_ok(devnet: &Devnet, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    json_stdout(&devnet.client_ok(&all).unwrap()).unwrap()
}

fn run(devnet: &Devnet, args: &[&str]) -> Output {
    devnet.run_client(args).unwrap()
}

fn paths_of(listing: &Value) -> Vec<String> {
    listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect()
}

fn start(dir: &Path, options: DevnetOptions) -> Devnet {
    let devnet = Devnet::start(&dir.join("devnet"), options).unwrap();
    devnet.client_ok(["init"]).unwrap();
    devnet
}

#[test]
fn tags_excludes_dry_run_diff_and_find() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write(&src.join("keep/a.txt"), b"alpha");
    write(&src.join("keep/b.txt"), b"bravo");
    write(&src.join("keep/old.txt"), b"to be removed");
    write(&src.join("noise/debug.log"), b"log line");
    write(&src.join("cache/.nobackup"), b"");
    write(&src.join("cache/blob.bin"), &[7u8; 4096]);
    write(&src.join("build/out.o"), b"object");
    let excludes = tmp.path().join("excludes");
    std::fs::write(&excludes, "# objects\n*.o\n").unwrap();
    let devnet = start(tmp.path(), DevnetOptions::default());
    let src_arg = src.to_str().unwrap();
    let exclude_file = excludes.to_str().unwrap();
    let backup = |extra: &[&str]| {
        let mut args = vec![
            "backup",
            src_arg,
            "--exclude",
            "*.log",
            "--exclude-file",
            exclude_file,
        ];
        args.extend_from_slice(&["--exclude-if-present", ".nobackup"]);
        args.extend_from_slice(extra);
        json_ok(&devnet, &args)
    };

    let dry = backup(&["--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert!(dry["snapshot_id"].is_null(), "{dry:#}");
    assert_eq!(dry["bytes_uploaded"], 0);
    assert!(dry["would_upload_bytes"].as_u64().unwrap() > 0, "{dry:#}");
    assert_eq!(dry["files"], 3, "a, b and old: {dry:#}");
    let status = devnet.status().unwrap();
    assert_eq!(
        (status.snapshots, used_bytes(&status)),
        (0, 0),
        "a dry run stores nothing"
    );

    let first = backup(&["--tag", "daily,first"]);
    assert_eq!(first["files"], 3, "{first:#}");
    assert_eq!(
        first["excluded"], 3,
        "debug.log, cache/ and out.o: {first:#}"
    );
    let first_id = first["snapshot_id"].as_str().unwrap().to_string();
    let listing = json_ok(&devnet, &["ls", &first_id]);
    let paths = paths_of(&listing);
    assert!(paths.iter().any(|p| p.ends_with("keep/a.txt")), "{paths:?}");
    for gone in ["debug.log", "blob.bin", "out.o", "cache"] {
        assert!(
            !paths.iter().any(|p| p.ends_with(gone)),
            "{gone} in {paths:?}"
        );
    }

    write(&src.join("keep/a.txt"), b"alpha, changed");
    std::fs::remove_file(src.join("keep/old.txt")).unwrap();
    write(&src.join("keep/new.txt"), b"brand new");
    let second = backup(&["--tag", "daily"]);
    assert_eq!(
        second["unchanged_files"], 1,
        "b.txt is not read again: {second:#}"
    );
    assert_eq!(second["parent"].as_str(), Some(first_id.as_str()));
    let second_id = second["snapshot_id"].as_str().unwrap().to_string();

    let tagged = json_ok(&devnet, &["snapshots", "--tag", "first"]);
    assert_eq!(snapshot_ids(&tagged), vec![first_id.clone()]);
    assert_eq!(
        snapshot_ids(&json_ok(&devnet, &["snapshots", "--tag", "daily"])).len(),
        2
    );

    let diff = json_ok(&devnet, &["diff", &first_id, &second_id]);
    let changes: Vec<(String, String)> = diff["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let path = c["path"].as_str().unwrap();
            let name = path.rsplit('/').next().unwrap().to_string();
            (name, c["change"].as_str().unwrap().to_string())
        })
        .filter(|(name, _)| name.ends_with(".txt"))
        .collect();
    assert_eq!(
        changes,
        vec![
            ("a.txt".to_string(), "modified".to_string()),
            ("new.txt".to_string(), "added".to_string()),
            ("old.txt".to_string(), "removed".to_string()),
        ],
        "{diff:#}"
    );

    let found = json_ok(&devnet, &["find", "*.txt"]);
    let matches = found["matches"].as_array().unwrap();
    let in_snapshot = |id: &str| matches.iter().filter(|m| m["snapshot_id"] == id).count();
    assert_eq!(
        (in_snapshot(&first_id), in_snapshot(&second_id)),
        (3, 3),
        "{found:#}"
    );
    let new_only = json_ok(&devnet, &["find", "new.txt"]);
    assert_eq!(snapshot_ids(&new_only), vec![second_id.clone()]);
}

/// `backup --compression`: `max` seals the same text smaller than
/// `fastest` (dry runs, which seal but store nothing), a backup at `max`
/// restores byte for byte, and an unknown level is refused with the choices.
#[test]
fn compression_levels_trade_size_and_every_one_restores() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    // Text as a tree holds it: the client's own sources.
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("../client/src");
    let mut text_bytes = 0;
    for file in tree::files_under(&sources) {
        let bytes = std::fs::read(&file).unwrap();
        text_bytes += bytes.len();
        write(&src.join(file.strip_prefix(&sources).unwrap()), &bytes);
    }
    assert!(text_bytes > 200_000, "a corpus of {text_bytes} bytes");
    let devnet = start(tmp.path(), DevnetOptions::default());
    let src_arg = src.to_str().unwrap();

    let would_upload = |level: &str| {
        let dry = json_ok(
            &devnet,
            &["backup", src_arg, "--dry-run", "--compression", level],
        );
        dry["would_upload_bytes"].as_u64().unwrap()
    };
    let (fastest, auto, max) = (
        would_upload("fastest"),
        would_upload("auto"),
        would_upload("max"),
    );
    assert!(
        max < auto && auto < fastest && fastest < text_bytes as u64,
        "fastest {fastest}, auto {auto}, max {max} of {text_bytes} bytes"
    );

    let backup = json_ok(&devnet, &["backup", src_arg, "--compression", "max"]);
    let copies = u64::from(DevnetOptions::default().replication);
    assert_eq!(
        backup["bytes_uploaded"].as_u64().unwrap(),
        max * copies,
        "what the dry run at max would upload, once per copy: {backup:#}"
    );
    devnet
        .restore_latest_matches(&src, &tmp.path().join("restore"))
        .unwrap();

    let refused = run(&devnet, &["backup", src_arg, "--compression", "best"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{}", describe(&refused));
    assert!(
        stderr.contains("fastest") && stderr.contains("max"),
        "{stderr}"
    );
}

#[test]
fn forget_applies_the_policy_and_dry_run_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let devnet = start(tmp.path(), DevnetOptions::default());
    let mut ids = Vec::new();
    for (i, tag) in ["keep", "plain", "plain", "plain"].iter().enumerate() {
        write(&src.join("f.txt"), format!("version {i}").as_bytes());
        let out = json_ok(&devnet, &["backup", src.to_str().unwrap(), "--tag", tag]);
        ids.push(out["snapshot_id"].as_str().unwrap().to_string());
    }
    let dry = json_ok(
        &devnet,
        &[
            "forget",
            "--keep-last",
            "2",
            "--keep-tag",
            "keep",
            "--dry-run",
        ],
    );
    assert_eq!(
        snapshot_ids(&dry["remove"]),
        vec![ids[1].clone()],
        "{dry:#}"
    );
    assert_eq!(
        devnet.status().unwrap().snapshots,
        4,
        "a dry run forgets nothing"
    );

    let usage = run(&devnet, &["forget"]);
    assert_eq!(
        usage.status.code(),
        Some(2),
        "no rule is a usage error: {}",
        describe(&usage)
    );

    let done = json_ok(
        &devnet,
        &["forget", "--keep-last", "1", "--keep-tag", "keep"],
    );
    let mut removed = snapshot_ids(&done["remove"]);
    removed.sort();
    let mut expected = vec![ids[1].clone(), ids[2].clone()];
    expected.sort();
    assert_eq!(removed, expected, "{done:#}");
    let left = snapshot_ids(&json_ok(&devnet, &["snapshots"]));
    assert_eq!(left, vec![ids[0].clone(), ids[3].clone()]);
    assert_eq!(devnet.status().unwrap().snapshots, 2);

    let target = tmp.path().join("restore");
    devnet
        .client_ok([
            "restore",
            ids[0].as_str(),
            "--target",
            target.to_str().unwrap(),
        ])
        .unwrap();
    assert_eq!(
        std::fs::read(target.join("src/f.txt")).unwrap(),
        b"version 0"
    );
}

/// Flips one byte in the middle of every piece file under `dir`.
fn corrupt_pieces(dir: &Path) -> usize {
    let mut count = 0;
    for path in tree::files_under(dir) {
        if !path.components().any(|c| c.as_os_str() == "pieces") {
            continue;
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() - 10;
        bytes[at] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        count += 1;
    }
    count
}

#[test]
fn check_verifies_replication_and_read_data_finds_a_damaged_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    tree::generate(&src, &TreeSpec::small()).unwrap();
    let devnet = start(tmp.path(), DevnetOptions::default());
    devnet.client_ok(["backup", src.to_str().unwrap()]).unwrap();

    let quick = json_ok(&devnet, &["check"]);
    assert_eq!(quick["ok"], true, "{quick:#}");
    let portions = quick["portions"].as_u64().unwrap();
    assert!(portions >= 1 && quick["copies_read"] == 0, "{quick:#}");

    let full = json_ok(&devnet, &["check", "--read-data"]);
    assert_eq!(full["ok"], true, "{full:#}");
    assert_eq!(
        full["copies_read"].as_u64().unwrap(),
        portions * 3,
        "{full:#}"
    );
    assert!(full["blobs_verified"].as_u64().unwrap() > 0);
    let half = json_ok(&devnet, &["check", "--read-data-subset", "100%"]);
    assert_eq!(
        half["portions_read"].as_u64().unwrap(),
        portions,
        "{half:#}"
    );

    let damaged: usize = devnet
        .nas_data_dirs(0)
        .iter()
        .map(|d| corrupt_pieces(d))
        .sum();
    assert!(damaged > 0, "vendor 0 holds no piece to damage");
    let out = run(&devnet, &["--json", "check", "--read-data"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let report = json_stdout(&out).unwrap();
    assert_eq!(report["ok"], false);
    let vendor = devnet.vendor_ids()[0].clone();
    let problems = report["problems"].as_array().unwrap();
    assert!(!problems.is_empty());
    assert!(
        problems.iter().all(|p| p["vendor_id"] == vendor.as_str()),
        "only vendor 0's copies are damaged: {report:#}"
    );
    // The check reported them; each was confirmed by an audit, so the
    // copies are made again from the healthy holders and the FAT is whole
    // again (within a bound).
    let reported = report["reported_bad_copies"].as_array().unwrap();
    assert!(
        !reported.is_empty() && reported.iter().all(|r| r["vendor_id"] == vendor.as_str()),
        "{report:#}"
    );
    assert!(
        reported.iter().any(|r| r["verdict"] == "confirmed"),
        "{report:#}"
    );
    wait_for(
        "the damaged copies made again",
        Duration::from_secs(120),
        || {
            let out = run(&devnet, &["--json", "check"]);
            Ok((json_stdout(&out)?["ok"] == true).then_some(()))
        },
    )
    .unwrap();
}

#[test]
fn unreadable_files_give_partial_success_and_the_cache_answers_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write(&src.join("fine.txt"), b"readable");
    let locked = tmp.path().join("locked.txt");
    write(&locked, b"secret");
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o0)).unwrap();
    let unreadable: PathBuf = if std::fs::read(&locked).is_ok() {
        // Root reads any file; a process's own memory file fails with EIO at offset 0.
        PathBuf::from("/proc/self/mem")
    } else {
        locked
    };
    let devnet = start(tmp.path(), DevnetOptions::default());
    let out = run(
        &devnet,
        &[
            "--json",
            "backup",
            src.to_str().unwrap(),
            unreadable.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let summary = json_stdout(&out).unwrap();
    assert_eq!(summary["unreadable"], 1, "{summary:#}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not be read"));
    let id = summary["snapshot_id"].as_str().unwrap().to_string();

    let coordinators = devnet.state().coordinators;
    let pids: Vec<_> = coordinators
        .iter()
        .map(|c| {
            (
                c.name.clone(),
                c.pid.unwrap(),
                c.config.to_string_lossy().into(),
            )
        })
        .collect();
    stop_pids(&pids, STOP_GRACE);
    wait_for("the coordinators to stop", Duration::from_secs(30), || {
        Ok((!coordinators.iter().any(|c| c.is_alive())).then_some(()))
    })
    .unwrap();

    let cached = json_ok(&devnet, &["snapshots"]);
    assert_eq!(cached["from_cache"], true);
    assert_eq!(snapshot_ids(&cached), vec![id.clone()]);
    let listing = json_ok(&devnet, &["ls", &id]);
    assert_eq!(listing["from_cache"], true);
    assert!(paths_of(&listing).iter().any(|p| p.ends_with("fine.txt")));
    let human = run(&devnet, &["snapshots"]);
    assert!(String::from_utf8_lossy(&human.stderr).contains("local cache"));

    let offline = run(&devnet, &["backup", src.to_str().unwrap()]);
    assert_eq!(offline.status.code(), Some(5), "{}", describe(&offline));
}

#[test]
fn an_interrupted_backup_resumes_without_resending_committed_portions() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let spec = TreeSpec {
        seed: 11,
        big_files: vec![48 * 1024 * 1024, 48 * 1024 * 1024],
        small_files: 50,
        small_max: 4096,
        specials: false,
    };
    let summary = tree::generate(&src, &spec).unwrap();
    let options = DevnetOptions {
        portion_bytes: 2 * 1024 * 1024,
        ..DevnetOptions::default()
    };
    let devnet = start(tmp.path(), options);
    let config = devnet.client_config().to_path_buf();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\ncheckpoint_bytes = 4194304\n");
    std::fs::write(&config, text).unwrap();
    let journal = devnet.tenant_cache_dir().join("resume/journal");

    let mut command = devnet
        .client_command(["backup", src.to_str().unwrap()])
        .unwrap();
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = KillOnDrop(command.spawn().unwrap());
    let full = summary.bytes * 3;
    // Kill once rounds holding 40% of the tree are committed, well before the end.
    wait_for(
        "40% of the tree committed",
        Duration::from_secs(120),
        || {
            let committed = used_bytes(&devnet.status()?);
            anyhow::ensure!(
                child.try_wait()?.is_none(),
                "the backup finished before it could be interrupted"
            );
            Ok((committed >= full * 2 / 5 && journal.exists()).then_some(()))
        },
    )
    .unwrap();
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let before = used_bytes(&devnet.status().unwrap());
    assert_eq!(devnet.status().unwrap().snapshots, 0);
    assert!(
        before < summary.bytes * 3,
        "the kill came after the whole tree was stored"
    );

    let again = json_ok(&devnet, &["backup", src.to_str().unwrap()]);
    assert!(again["resumed_blobs"].as_u64().unwrap() > 0, "{again:#}");
    let uploaded = again["bytes_uploaded"].as_u64().unwrap();
    // Only what was not committed is sent: the committed copies plus the
    // re-run's copies come to one full backup (plus trees, the manifest and
    // the portions in flight when the client was killed).
    let slack = 16 * 1024 * 1024;
    assert!(
        before + uploaded <= full + slack,
        "committed {before} + re-sent {uploaded} exceeds a {full}-byte backup: committed portions were sent again"
    );
    assert!(
        !journal.exists(),
        "a committed snapshot clears the resume journal"
    );

    devnet
        .restore_latest_matches(&src, &tmp.path().join("restore"))
        .unwrap();
}

/// A backup asking for more copies than there are vendors is refused with
/// the documented exit code, naming how many vendors are needed and how
/// many there are, and saying each cause once.
#[test]
fn too_few_vendors_is_exit_5_with_the_counts_said_once() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), b"some bytes to back up").unwrap();
    let devnet = Devnet::start(&tmp.path().join("devnet"), DevnetOptions::default()).unwrap();
    devnet.client_ok(["init"]).unwrap();

    // Replication 5 on a marketplace of 4 vendors.
    let five = devnet
        .client_config_with(
            &tmp.path().join("client-r5.toml"),
            &[("replication", 5.into())],
        )
        .unwrap();
    let mut command = offsite_tests::client_command_with(&five, ["--json", "backup"]).unwrap();
    command.arg(&src);
    let out = offsite_tests::run_bounded(command, offsite_tests::CLIENT_TIMEOUT).unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
    let report = json_stdout(&out).unwrap();
    let message = report["error"].as_str().unwrap().to_string();
    assert_eq!(report["exit_code"], 5, "{report}");
    assert!(message.contains('5') && message.contains('4'), "{message}");
    // No part of the message is said twice.
    let parts: Vec<&str> = message.split(": ").collect();
    for (i, part) in parts.iter().enumerate() {
        assert!(
            part.len() < 12 || !parts[i + 1..].contains(part),
            "{part:?} is said twice in: {message}"
        );
    }
}
