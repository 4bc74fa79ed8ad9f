//! `offsite-devnet` as a user runs it: `up --detach`, `status`, `down`, the
//! errors for a second `up` and a `down` with nothing up, and `demo`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use offsite_tests::{binary, describe, run_bounded, stop_pids, DevnetState, DEVNET, STOP_GRACE};

fn devnet(args: &[&str], dir: &Path) -> Output {
    let mut command = Command::new(binary(DEVNET).unwrap());
    command.args(args).arg("--dir").arg(dir);
    run_bounded(command, Duration::from_secs(240)).unwrap()
}

/// Stops whatever a detached devnet in the directory left running, so a
/// failing test leaves no process behind.
struct DownOnDrop(PathBuf);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        if let Ok(Some(state)) = DevnetState::load(&self.0) {
            let procs: Vec<_> = state
                .processes()
                .into_iter()
                .filter_map(|p| {
                    Some((
                        p.name.clone(),
                        p.pid?,
                        p.config.to_string_lossy().into_owned(),
                    ))
                })
                .collect();
            stop_pids(&procs, STOP_GRACE);
        }
    }
}

/// Pids of live processes whose command line mentions `dir`.
fn processes_under(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| offsite_tests::pid_is_ours(*pid, &needle))
        .collect()
}

/// Asserts that a command failed and its stderr says `why`.
fn assert_refused(output: &Output, why: &str) {
    assert!(!output.status.success(), "{}", describe(output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(why),
        "{}",
        describe(output)
    );
}

#[test]
fn up_detach_status_and_down() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("net");
    let _guard = DownOnDrop(dir.clone());

    let up = devnet(
        &["up", "--vendors", "2", "--nas-per-vendor", "1", "--detach"],
        &dir,
    );
    assert!(up.status.success(), "{}", describe(&up));
    let state = DevnetState::load(&dir)
        .unwrap()
        .expect("devnet.json after up --detach");
    // Three coordinators, two vendors, one NAS device each.
    assert_eq!(state.processes().len(), 3 + 2 + 2);
    assert!(state.processes().iter().all(|p| p.is_alive()), "{state:?}");
    assert!(dir.join("client.toml").is_file());
    let password = dir.join("client/password");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&password).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let status = devnet(&["status", "--json"], &dir);
    assert!(status.status.success(), "{}", describe(&status));
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let vendors = report["coordinator"]["vendors"].as_array().unwrap();
    assert_eq!(vendors.len(), 2, "{report:#}");
    assert!(vendors.iter().all(|v| v["liveness"] == "up"), "{report:#}");
    assert!(report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["alive"] == true));

    let again = devnet(&["up", "--detach"], &dir);
    assert_refused(&again, "already up");

    let down = devnet(&["down"], &dir);
    assert!(down.status.success(), "{}", describe(&down));
    assert!(
        state.processes().iter().all(|p| !p.is_alive()),
        "processes left after down"
    );
    assert!(!dir.join("devnet.json").exists());

    let twice = devnet(&["down"], &dir);
    assert_refused(&twice, "no devnet");

    // The stopped devnet's group knows its old ports: starting it again on
    // new ones is refused, and its data is left as it was.
    let restart = devnet(&["up", "--detach"], &dir);
    assert_refused(&restart, "devnet that was stopped");
    assert!(dir.join("coordinator-1/data").is_dir());
    assert_eq!(processes_under(&dir), Vec::<u32>::new());

    let nowhere = devnet(&["up", "--detach"], Path::new("/proc/offsite-devnet"));
    assert_refused(&nowhere, "/proc/offsite-devnet");
}

#[test]
fn demo_backs_up_restores_and_compares() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let _guard = DownOnDrop(dir.clone());
    let priced = [
        "demo",
        "--vendors",
        "3",
        "--nas-per-vendor",
        "1",
        "--vendor-prices",
        "1000000,2000000,3000000",
        "--fee-ppm",
        "50000",
    ];
    let demo = devnet(&priced, &dir);
    assert!(demo.status.success(), "{}", describe(&demo));
    let stdout = String::from_utf8_lossy(&demo.stdout);
    assert!(stdout.contains("byte for byte"), "{stdout}");
    assert!(
        stdout.contains("==> offsite usage") && stdout.contains("charge so far"),
        "demo shows the usage: {stdout}"
    );
    assert!(stdout.contains("fee 50000 ppm"), "{stdout}");
    assert!(
        !dir.join("devnet.json").exists(),
        "demo without --keep must stop the devnet"
    );
    assert_eq!(
        processes_under(&dir),
        Vec::<u32>::new(),
        "processes left after demo"
    );

    // A second demo in the same directory is refused before it does anything.
    let again = devnet(&["demo", "--vendors", "3", "--nas-per-vendor", "1"], &dir);
    assert_refused(&again, "devnet that was stopped");
    assert!(
        !String::from_utf8_lossy(&again.stdout).contains("generating"),
        "{}",
        describe(&again)
    );
}
