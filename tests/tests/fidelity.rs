//! Full fidelity through the real client against a devnet: a tree with
//! owners and groups, setuid, extended attributes, POSIX ACLs (access and
//! default), hard links, a sparse file, a FIFO, character and block device
//! nodes and nanosecond times on files and directories restores identical,
//! compared with `stat` and the extended attributes as the kernel lists
//! them (an ACL is the `system.posix_acl_*` attribute `getfacl` decodes).
//! `ls` shows what was kept, `diff` sees an attribute change, and a `dump
//! --archive tar` extracts with the system's `tar` to the same links,
//! owners and special files. Needs root (owners, devices, `trusted.`
//! attributes); skipped, saying so, otherwise.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use offsite_tests::checks::json_stdout;
use offsite_tests::tree::noise;
use offsite_tests::{Devnet, DevnetOptions};
use serde_json::Value;

const UID: u32 = 1234;
const GID: u32 = 2345;
const SPARSE_LEN: u64 = 64 << 20;

/// An ACL as the kernel stores it in `system.posix_acl_*` (version 2, then
/// tag, permissions and id per entry): owner rw, user 1000 rw, group r,
/// mask rw, other r.
fn acl() -> Vec<u8> {
    let mut bytes = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 6u16, u32::MAX),
        (0x02, 6, 1000),
        (0x04, 4, u32::MAX),
        (0x10, 6, u32::MAX),
        (0x20, 4, u32::MAX),
    ] {
        bytes.extend(tag.to_le_bytes());
        bytes.extend(perm.to_le_bytes());
        bytes.extend(id.to_le_bytes());
    }
    bytes
}

fn chown(path: &Path) {
    std::os::unix::fs::lchown(path, Some(UID), Some(GID)).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Builds the tree under `src`; its times are set last, deepest first.
fn build(src: &Path) {
    for dir in ["etc", "shared", "links/sub", "dev"] {
        std::fs::create_dir_all(src.join(dir)).unwrap();
    }
    let conf = src.join("etc/owned.conf");
    std::fs::write(&conf, "listen 80\n").unwrap();
    chown(&conf);
    chmod(&conf, 0o640);
    xattr::set(&conf, "user.comment", b"kept").unwrap();
    xattr::set(&conf, "trusted.offsite", b"\0\xffbinary").unwrap();
    let tool = src.join("etc/tool");
    std::fs::write(&tool, "#!/bin/true\n").unwrap();
    chown(&tool);
    chmod(&tool, 0o4755);
    let with_acl = src.join("etc/acl.txt");
    std::fs::write(&with_acl, "shared with 1000\n").unwrap();
    xattr::set(&with_acl, "system.posix_acl_access", &acl()).unwrap();
    let shared = src.join("shared");
    xattr::set(&shared, "system.posix_acl_access", &acl()).unwrap();
    xattr::set(&shared, "system.posix_acl_default", &acl()).unwrap();
    xattr::set(&shared, "user.dirnote", b"a directory's note").unwrap();
    chown(&shared);

    let first = src.join("links/a");
    std::fs::write(&first, noise("linked", 300_000)).unwrap();
    std::fs::hard_link(&first, src.join("links/sub/b")).unwrap();
    std::fs::hard_link(&first, src.join("links/c")).unwrap();
    std::fs::write(src.join("links/alone"), noise("linked", 300_000)).unwrap();

    let sparse = std::fs::File::create(src.join("sparse.img")).unwrap();
    sparse.set_len(SPARSE_LEN).unwrap();
    use std::os::unix::fs::FileExt;
    sparse
        .write_all_at(&noise("island", 5000), 1 << 20)
        .unwrap();
    sparse.write_all_at(b"end of data", 40 << 20).unwrap();
    drop(sparse);

    let pipe = src.join("dev/pipe");
    mknod(&pipe, SFlag::S_IFIFO, Mode::from_bits_truncate(0o620), 0).unwrap();
    chown(&pipe);
    let null = src.join("dev/null");
    mknod(
        &null,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        makedev(1, 3),
    )
    .unwrap();
    let disk = src.join("dev/disk");
    let disk_dev = makedev(7, 300);
    mknod(
        &disk,
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(0o660),
        disk_dev,
    )
    .unwrap();
    chown(&disk);
    xattr::set(&disk, "trusted.device", b"loop").unwrap();
    std::os::unix::fs::symlink("etc/owned.conf", src.join("conf-link")).unwrap();
    chown(&src.join("conf-link"));

    let mut paths = every_path(src);
    paths.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, path) in paths.iter().enumerate() {
        let at =
            filetime::FileTime::from_unix_time(1_700_000_000 + i as i64, 123_456_789 + i as u32);
        filetime::set_symlink_file_times(path, at, at).unwrap();
    }
}

/// Every path under `root` (not `root` itself), not following symlinks.
fn every_path(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.symlink_metadata().unwrap().is_dir() {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out.sort();
    out
}

fn xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut all: Vec<(String, Vec<u8>)> = xattr::list(path)
        .unwrap()
        .map(|name| {
            let value = xattr::get(path, &name).unwrap().unwrap_or_default();
            (name.to_string_lossy().into_owned(), value)
        })
        .collect();
    all.sort();
    all
}

/// What `compare` checks, for `what` of the tree: each entry's type,
/// mode, owner, mtime (ns), device number, size, content, extended
/// attributes, and which entries share an inode.
fn compare(original: &Path, restored: &Path, what: &str, times: bool) {
    let (a, b) = (every_path(original), every_path(restored));
    let rel = |root: &Path, all: &[PathBuf]| -> Vec<PathBuf> {
        all.iter()
            .map(|p| p.strip_prefix(root).unwrap().to_path_buf())
            .collect()
    };
    assert_eq!(rel(original, &a), rel(restored, &b), "{what}: the paths");
    let mut inodes: HashMap<u64, u64> = HashMap::new();
    for (from, to) in a.iter().zip(&b) {
        let (ma, mb) = (
            from.symlink_metadata().unwrap(),
            to.symlink_metadata().unwrap(),
        );
        let name = format!("{what}: {}", to.display());
        assert_eq!(ma.file_type(), mb.file_type(), "{name}");
        assert_eq!((ma.uid(), ma.gid()), (mb.uid(), mb.gid()), "{name}: owner");
        if !ma.file_type().is_symlink() {
            assert_eq!(ma.mode(), mb.mode(), "{name}: mode");
            assert_eq!(xattrs(from), xattrs(to), "{name}: extended attributes");
        }
        if times {
            assert_eq!(
                (ma.mtime(), ma.mtime_nsec()),
                (mb.mtime(), mb.mtime_nsec()),
                "{name}: mtime"
            );
        }
        if ma.file_type().is_block_device() || ma.file_type().is_char_device() {
            assert_eq!(ma.rdev(), mb.rdev(), "{name}: device number");
        }
        if ma.is_file() {
            assert_eq!(ma.len(), mb.len(), "{name}: size");
            assert_eq!(
                std::fs::read(from).unwrap(),
                std::fs::read(to).unwrap(),
                "{name}"
            );
            assert_eq!(ma.nlink(), mb.nlink(), "{name}: links");
            // The same original inode always maps to the same restored one.
            let mapped = *inodes.entry(ma.ino()).or_insert(mb.ino());
            assert_eq!(mapped, mb.ino(), "{name}: a hard link restored apart");
        }
    }
    let distinct: std::collections::HashSet<u64> = inodes.values().copied().collect();
    assert_eq!(
        distinct.len(),
        inodes.len(),
        "{what}: files merged that were apart"
    );
}

fn json_ok(devnet: &Devnet, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    json_stdout(&devnet.client_ok(&all).unwrap()).unwrap()
}

#[test]
fn every_kind_of_entry_restores_identical() {
    // The owner of /proc/self is the effective user.
    let uid = std::fs::metadata("/proc/self").map(|m| m.uid());
    if uid.ok() != Some(0) {
        eprintln!("skipped: owners, device nodes and trusted attributes need root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let devnet = Devnet::start(&tmp.path().join("devnet"), DevnetOptions::small()).unwrap();
    devnet.client_ok(["init"]).unwrap();
    let src = tmp.path().join("src");
    build(&src);
    let backup = json_ok(&devnet, &["backup", src.to_str().unwrap()]);
    let id = backup["snapshot_id"].as_str().unwrap().to_string();
    assert_eq!(backup["hard_links"], 2, "{backup:#}");
    assert_eq!(backup["specials"], 3, "{backup:#}");

    let out = tmp.path().join("out");
    let restored = json_ok(
        &devnet,
        &["restore", &id, "--target", out.to_str().unwrap()],
    );
    assert_eq!(restored["hard_links"], 2, "{restored:#}");
    assert_eq!(restored["specials"], 3, "{restored:#}");
    assert_eq!(restored["xattrs_skipped"], 0, "{restored:#}");
    compare(&src, &out.join("src"), "restore", true);
    // Restored again over itself, everything is found as it is: nothing
    // is fetched or remade, and the tree stays identical.
    let again = json_ok(
        &devnet,
        &[
            "restore",
            &id,
            "--target",
            out.to_str().unwrap(),
            "--overwrite",
            "if-changed",
        ],
    );
    assert_eq!(again["portions_fetched"], 0, "{again:#}");
    assert_eq!(
        (again["hard_links"].as_u64(), again["specials"].as_u64()),
        (Some(0), Some(0)),
        "{again:#}"
    );
    compare(&src, &out.join("src"), "restore over itself", true);
    // Holes stay holes: two islands of data in 64 MiB.
    let blocks = out
        .join("src/sparse.img")
        .symlink_metadata()
        .unwrap()
        .blocks();
    assert!(blocks * 512 <= 64 << 10, "{blocks} blocks allocated");

    // ls shows what was kept.
    let listed = json_ok(&devnet, &["ls", &id]);
    let entry = |path: &str| -> Value {
        listed["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["path"] == path)
            .cloned()
            .unwrap_or_else(|| panic!("{path} not listed: {listed:#}"))
    };
    assert_eq!(entry("src/links/c")["hard_link_to"], "src/links/a");
    assert_eq!(entry("src/links/a")["hard_link_to"], Value::Null);
    assert_eq!(entry("src/sparse.img")["sparse"], true);
    assert_eq!(entry("src/dev/disk")["kind"], "blockdev");
    assert_eq!(entry("src/dev/disk")["rdev"], makedev(7, 300));
    assert_eq!(entry("src/dev/pipe")["kind"], "fifo");
    let acl_names = entry("src/shared")["xattrs"].clone();
    assert_eq!(
        acl_names,
        serde_json::json!([
            "system.posix_acl_access",
            "system.posix_acl_default",
            "user.dirnote"
        ])
    );
    assert_eq!(entry("src/etc/tool")["uid"], UID);

    // One changed attribute is a change diff sees.
    xattr::set(src.join("etc/owned.conf"), "user.comment", b"changed").unwrap();
    let second = json_ok(&devnet, &["backup", src.to_str().unwrap()]);
    let second = second["snapshot_id"].as_str().unwrap().to_string();
    let diff = json_ok(&devnet, &["diff", &id, &second]);
    let changes = diff["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{diff:#}");
    assert_eq!(changes[0]["path"], "src/etc/owned.conf");
    assert_eq!(changes[0]["what"], serde_json::json!(["xattrs"]));

    // A tar of the tree extracts to the same links, owners and special
    // files (tar keeps times to the second only).
    let tar = devnet
        .client_ok(["dump", &format!("{id}:src"), "--archive", "tar"])
        .unwrap();
    let untarred = tmp.path().join("untarred");
    std::fs::create_dir_all(&untarred).unwrap();
    let tar_file = tmp.path().join("src.tar");
    std::fs::write(&tar_file, &tar.stdout).unwrap();
    let status = Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"])
        .arg(&tar_file)
        .arg("-C")
        .arg(&untarred)
        .status()
        .unwrap();
    assert!(status.success());
    xattr::set(src.join("etc/owned.conf"), "user.comment", b"kept").unwrap();
    compare(&src, &untarred, "tar", false);
}
