//! Eight clients of one tenant, each its own host with its own cache, back
//! up at the same time onto the same vendors; each then restores its own
//! snapshot byte for byte.

use std::path::{Path, PathBuf};
use std::process::Command;

use offsite_tests::checks::json_stdout;
use offsite_tests::tree::{self, TreeSpec};
use offsite_tests::{client_command_with, run_bounded, Devnet, DevnetOptions, CLIENT_TIMEOUT};

const CLIENTS: usize = 8;

/// The devnet's client config with another `host` and `cache_dir`.
fn config_for(devnet: &Devnet, dir: &Path, n: usize) -> PathBuf {
    let cache = dir
        .join(format!("cache-{n}"))
        .to_string_lossy()
        .into_owned();
    devnet
        .client_config_with(
            &dir.join(format!("client-{n}.toml")),
            &[
                ("host", format!("host-{n}").into()),
                ("cache_dir", cache.into()),
            ],
        )
        .unwrap()
}

fn client(config: &Path, args: &[&std::ffi::OsStr]) -> Command {
    let mut command = client_command_with(config, ["--json"]).unwrap();
    command.args(args);
    command
}

#[test]
fn eight_clients_backing_up_at_once_each_restore_their_own_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let devnet = Devnet::start(&tmp.path().join("devnet"), DevnetOptions::default()).unwrap();
    devnet.client_ok(["init"]).unwrap();

    let clients: Vec<(PathBuf, PathBuf)> = (0..CLIENTS)
        .map(|n| {
            let source = tmp.path().join(format!("source-{n}"));
            let spec = TreeSpec {
                seed: 100 + n as u64,
                big_files: vec![3 * 1024 * 1024 + n as u64 * 4096],
                small_files: 40,
                small_max: 4096,
                specials: n == 0,
            };
            tree::generate(&source, &spec).unwrap();
            (config_for(&devnet, tmp.path(), n), source)
        })
        .collect();

    // All eight at once.
    let backups: Vec<_> = clients
        .iter()
        .map(|(config, source)| {
            let command = client(config, &["backup".as_ref(), source.as_os_str()]);
            std::thread::spawn(move || run_bounded(command, CLIENT_TIMEOUT))
        })
        .collect();
    let snapshots: Vec<String> = backups
        .into_iter()
        .enumerate()
        .map(|(n, backup)| {
            let out = backup.join().unwrap().unwrap();
            let report = json_stdout(&out).unwrap_or_default();
            assert!(
                out.status.success(),
                "client {n}'s backup failed: {report}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            report["snapshot_id"].as_str().unwrap().to_string()
        })
        .collect();
    let distinct: std::collections::HashSet<_> = snapshots.iter().collect();
    assert_eq!(distinct.len(), CLIENTS, "{snapshots:?}");

    // Each restores its own snapshot, and gets its own tree.
    for (n, ((config, source), snapshot)) in clients.iter().zip(&snapshots).enumerate() {
        let target = tmp.path().join(format!("restore-{n}"));
        let out = run_bounded(
            client(
                config,
                &[
                    "restore".as_ref(),
                    snapshot.as_ref(),
                    "--target".as_ref(),
                    target.as_os_str(),
                ],
            ),
            CLIENT_TIMEOUT,
        )
        .unwrap();
        assert!(
            out.status.success(),
            "client {n}'s restore failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tree::compare(source, &tree::restored_root(&target, source)).unwrap();
    }
}
