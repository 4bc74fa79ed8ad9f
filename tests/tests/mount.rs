//! `offsite mount` through the real client against a devnet, browsed with
//! ordinary tools: `ls` shows every snapshot by host and time, by tag and as
//! `latest`; `cmp` finds a mounted file equal to its source; SIGTERM
//! unmounts. Skipped, saying so, where FUSE is not available (no
//! `/dev/fuse`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use offsite_tests::tree::noise;
use offsite_tests::{Devnet, DevnetOptions, KillOnDrop};

/// Unmounts on drop, also when the test fails half-way.
struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        if is_mounted(self.0) {
            let _ = Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
}

fn is_mounted(at: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let at = at.display().to_string();
    mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(at.as_str()))
}

fn ls(dir: &Path) -> Vec<String> {
    let out = Command::new("ls").arg("-1").arg(dir).output().unwrap();
    assert!(out.status.success(), "ls {}: {out:?}", dir.display());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn every_snapshot_is_browsable_with_ordinary_tools() {
    if !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: FUSE is not available here (no /dev/fuse)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let devnet = Devnet::start(&tmp.path().join("devnet"), DevnetOptions::small()).unwrap();
    devnet.client_ok(["init"]).unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("docs")).unwrap();
    std::fs::write(src.join("big.bin"), noise("big", 9 << 20)).unwrap();
    std::fs::write(src.join("docs/readme.txt"), "hello\n").unwrap();
    std::os::unix::fs::symlink("docs/readme.txt", src.join("link")).unwrap();
    devnet
        .client_ok(["backup", "--tag", "nightly", src.to_str().unwrap()])
        .unwrap();

    let at = tmp.path().join("mnt");
    std::fs::create_dir_all(&at).unwrap();
    let _unmount = Unmount(&at);
    let mut command = devnet
        .client_command(["mount", at.to_str().unwrap()])
        .unwrap();
    command.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut mount = KillOnDrop(command.spawn().unwrap());
    let started = Instant::now();
    while !at.join("hosts").is_dir() {
        assert!(
            mount.try_wait().unwrap().is_none(),
            "the mount exited before it was ready"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not mounted in 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    assert_eq!(ls(&at), ["hosts", "latest", "tags"]);
    let host = at.join("hosts/devnet-host");
    let times = ls(&host);
    assert_eq!(times.len(), 1, "{times:?}");
    let snapshot = host.join(&times[0]);
    assert_eq!(ls(&snapshot), ["src"]);
    assert_eq!(ls(&snapshot.join("src")), ["big.bin", "docs", "link"]);
    let cmp = Command::new("cmp")
        .arg(src.join("big.bin"))
        .arg(snapshot.join("src/big.bin"))
        .status()
        .unwrap();
    assert!(cmp.success(), "cmp found the mounted file different");
    let cat = Command::new("cat")
        .arg(at.join("latest/devnet-host/src/docs/readme.txt"))
        .output()
        .unwrap();
    assert_eq!(cat.stdout, b"hello\n");
    assert_eq!(
        std::fs::read_link(snapshot.join("src/link")).unwrap(),
        Path::new("docs/readme.txt")
    );
    let tagged = ls(&at.join("tags/nightly"));
    assert_eq!(tagged, [format!("devnet-host-{}", times[0])]);
    assert!(at
        .join("tags/nightly")
        .join(&tagged[0])
        .join("src/big.bin")
        .is_file());

    // SIGTERM unmounts and the client exits cleanly.
    let sent = Command::new("kill")
        .arg("-TERM")
        .arg(mount.0.id().to_string())
        .status()
        .unwrap();
    assert!(sent.success());
    let stopped = Instant::now();
    let status = loop {
        if let Some(status) = mount.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(30),
            "no unmount in 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
    assert!(!is_mounted(&at), "still mounted after the client exited");
}
