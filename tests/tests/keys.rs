//! The tenant's key file against a devnet: `offsite key passwd` re-wraps the
//! data key, so the snapshots taken before restore with the new passphrase,
//! the old one is refused with the wrong-passphrase exit code, and a refused
//! change changes nothing; and the copy kept at the coordinator group lets a
//! new machine restore with only the passphrase and the tenant certificate.

use std::process::Output;

use offsite_tests::checks::json_stdout;
use offsite_tests::tree::{compare, restored_root};
use offsite_tests::{binary, describe, run_bounded, Devnet, DevnetOptions, CLIENT, CLIENT_TIMEOUT};

const WRONG_PASSPHRASE: i32 = 4;

#[test]
fn a_changed_passphrase_unlocks_old_snapshots_and_the_old_one_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("a.txt"), b"before the passphrase changed").unwrap();
    std::fs::write(src.join("sub/b.bin"), vec![3u8; 200_000]).unwrap();
    let devnet = Devnet::start(&tmp.path().join("devnet"), DevnetOptions::default()).unwrap();
    devnet.client_ok(["init"]).unwrap();
    devnet.client_ok(["backup", src.to_str().unwrap()]).unwrap();
    let key_file = devnet.dir().join("client/key.json");
    let key_before = std::fs::read(&key_file).unwrap();

    let new_pass = tmp.path().join("new-pass");
    std::fs::write(&new_pass, "a much better passphrase\n").unwrap();
    let new_pass_arg = new_pass.to_str().unwrap();

    // A wrong current passphrase: refused, nothing written.
    let mut wrong = devnet
        .client_command(["key", "passwd", "--new-password-file", new_pass_arg])
        .unwrap();
    wrong.env("OFFSITE_PASSWORD", "not the passphrase");
    let out = run_bounded(wrong, CLIENT_TIMEOUT).unwrap();
    assert_eq!(
        out.status.code(),
        Some(WRONG_PASSPHRASE),
        "{}",
        describe(&out)
    );
    assert_eq!(std::fs::read(&key_file).unwrap(), key_before);

    // No new passphrase anywhere: a clear error, nothing written.
    let out = devnet.run_client(["key", "passwd"]).unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no new passphrase"),
        "{}",
        describe(&out)
    );
    assert_eq!(std::fs::read(&key_file).unwrap(), key_before);

    let out = devnet
        .client_ok([
            "--json",
            "key",
            "passwd",
            "--new-password-file",
            new_pass_arg,
        ])
        .unwrap();
    let doc = json_stdout(&out).unwrap();
    assert_eq!(doc["changed"], true, "{doc:#}");
    assert_ne!(std::fs::read(&key_file).unwrap(), key_before);

    // The config's password_file still holds the old passphrase.
    let out = devnet.run_client(["ls", "latest"]).unwrap();
    assert_eq!(
        out.status.code(),
        Some(WRONG_PASSPHRASE),
        "{}",
        describe(&out)
    );

    let target = tmp.path().join("restored");
    let mut restore = devnet
        .client_command(["restore", "latest", "--target", target.to_str().unwrap()])
        .unwrap();
    restore.env("OFFSITE_PASSWORD_FILE", &new_pass);
    let out = run_bounded(restore, CLIENT_TIMEOUT).unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    compare(&src, &restored_root(&target, &src)).unwrap();
}

/// The devnet's client config with its own key file and cache, as on a new
/// machine that has only the tenant certificate and the passphrase.
fn new_machine(devnet: &Devnet, dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(devnet.client_config()).unwrap();
    let quote = |p: std::path::PathBuf| toml::Value::String(p.display().to_string()).to_string();
    let moved: Vec<String> = text
        .lines()
        .map(|line| {
            if line.starts_with("key_file") {
                format!("key_file = {}", quote(dir.join("key.json")))
            } else if line.starts_with("cache_dir") {
                format!("cache_dir = {}", quote(dir.join("cache")))
            } else {
                line.to_string()
            }
        })
        .collect();
    let path = dir.join("client.toml");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(&path, moved.join("\n") + "\n").unwrap();
    path
}

fn client_with(config: &std::path::Path, args: &[&str], password_file: &std::path::Path) -> Output {
    let mut command = std::process::Command::new(binary(CLIENT).unwrap());
    for var in [
        "OFFSITE_PASSWORD",
        "OFFSITE_NEW_PASSWORD",
        "OFFSITE_NEW_PASSWORD_FILE",
    ] {
        command.env_remove(var);
    }
    command
        .env("OFFSITE_PASSWORD_FILE", password_file)
        .arg("--config")
        .arg(config)
        .args(args);
    run_bounded(command, CLIENT_TIMEOUT).unwrap()
}

#[test]
fn a_new_machine_restores_with_only_the_passphrase_and_the_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("ledger.csv"), b"2026-11-28,offsite,42\n").unwrap();
    let devnet = Devnet::start(&tmp.path().join("devnet"), DevnetOptions::default()).unwrap();
    let init = json_stdout(&devnet.client_ok(["--json", "init"]).unwrap()).unwrap();
    assert_eq!(init["uploaded"], true, "{init:#}");
    devnet.client_ok(["backup", src.to_str().unwrap()]).unwrap();
    let old_pass = devnet.dir().join("client/password");

    // A new machine: the key file comes from the coordinator group.
    let fresh = tmp.path().join("new-machine");
    let config = new_machine(&devnet, &fresh);
    let target = tmp.path().join("restored");
    let out = client_with(
        &config,
        &["restore", "latest", "--target", target.to_str().unwrap()],
        &old_pass,
    );
    assert!(out.status.success(), "{}", describe(&out));
    compare(&src, &restored_root(&target, &src)).unwrap();
    assert!(fresh.join("key.json").exists());

    // After `key passwd` on the first machine, the coordinator's copy follows:
    // a third machine needs the new passphrase, and the old one is refused
    // without a key file being written.
    let new_pass = tmp.path().join("new-pass");
    std::fs::write(&new_pass, "rotated passphrase\n").unwrap();
    let out = devnet
        .client_ok([
            "--json",
            "key",
            "passwd",
            "--new-password-file",
            new_pass.to_str().unwrap(),
        ])
        .unwrap();
    assert_eq!(json_stdout(&out).unwrap()["uploaded"], true);
    let third = tmp.path().join("third-machine");
    let config = new_machine(&devnet, &third);
    let out = client_with(&config, &["ls", "latest"], &old_pass);
    assert_eq!(
        out.status.code(),
        Some(WRONG_PASSPHRASE),
        "{}",
        describe(&out)
    );
    assert!(!third.join("key.json").exists());
    let out = client_with(&config, &["ls", "latest"], &new_pass);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ledger.csv"));
}
