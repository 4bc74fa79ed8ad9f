//! Vendors leaving and shrinking on a running devnet, driven with
//! `offsite-vendor` the way an operator would: a graceful exit
//! (`exit --wait`) leaves the vendor holding nothing the FAT needs, every
//! snapshot restores with it stopped, its status says so and `--purge`
//! deletes its data; burst relief (`relieve --bytes N`) frees at least N
//! bytes of its stores while `repair_after_secs` is an hour; a drained
//! store (`drain = true`) empties into the vendor's other store and is then
//! removed in place (`kind = "removed"`), and restores still work.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use offsite_proto::pb::admin::{MarketplaceStatusResponse, VendorStatus};
use offsite_tests::checks::json_stdout;
use offsite_tests::tree::{self, files_under, TreeSpec};
use offsite_tests::{wait_for, Devnet, DevnetOptions};
use serde_json::Value;

/// Four vendors with two NAS devices each, R = 2, and repairs of vendors
/// that are down or short only after an hour: what moves here moves
/// because it was asked.
fn options() -> DevnetOptions {
    DevnetOptions {
        vendors: 4,
        nas_per_vendor: 2,
        ..DevnetOptions::small()
    }
}

fn backed_up(tmp: &Path, seed: u64) -> (PathBuf, Devnet) {
    let source = tmp.join("source");
    let spec = TreeSpec {
        seed,
        big_files: vec![9 << 20, 6 << 20],
        small_files: 60,
        small_max: 8192,
        specials: false,
    };
    tree::generate(&source, &spec).unwrap();
    let devnet = Devnet::start(&tmp.join("devnet"), options()).unwrap();
    devnet.client_ok(["init"]).unwrap();
    devnet
        .client_ok([OsString::from("backup"), source.clone().into()])
        .unwrap();
    (source, devnet)
}

fn vendor<'a>(status: &'a MarketplaceStatusResponse, id: &str) -> &'a VendorStatus {
    status.vendors.iter().find(|v| v.vendor_id == id).unwrap()
}

/// The vendor holding the most: its id and index.
fn busiest(devnet: &Devnet) -> (String, usize, u64) {
    let status = devnet.status().unwrap();
    let v = status.vendors.iter().max_by_key(|v| v.used_bytes).unwrap();
    assert!(v.used_bytes > 0, "{status:?}");
    let index = devnet
        .vendor_ids()
        .iter()
        .position(|id| *id == v.vendor_id)
        .unwrap();
    (v.vendor_id.clone(), index, v.used_bytes)
}

/// Runs `offsite-vendor SUB ... --json` for vendor `index`; its JSON and
/// whether it succeeded.
fn vendor_json(devnet: &Devnet, index: usize, sub: &str, args: &[&str]) -> (bool, Value, String) {
    let mut all: Vec<&str> = args.to_vec();
    all.push("--json");
    let out = devnet.run_vendor_cli(index, sub, &all).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = json_stdout(&out).unwrap_or(Value::Null);
    (out.status.success(), json, stderr)
}

/// Bytes of piece files on vendor `index`'s NAS devices.
fn piece_bytes(devnet: &Devnet, index: usize) -> u64 {
    devnet
        .nas_data_dirs(index)
        .iter()
        .flat_map(|d| files_under(&d.join("pieces")))
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

fn check_read_data(devnet: &Devnet) -> Value {
    let out = devnet
        .run_client(["--json", "check", "--read-data"])
        .unwrap();
    let report = json_stdout(&out).unwrap_or(Value::Null);
    assert!(
        out.status.success() && report["ok"] == true,
        "check --read-data: {report}"
    );
    report
}

#[test]
fn a_graceful_exit_leaves_the_vendor_holding_nothing_the_fat_needs() {
    let tmp = tempfile::tempdir().unwrap();
    let (source, mut devnet) = backed_up(tmp.path(), 41);
    let (leaving, index, _) = busiest(&devnet);

    // Nothing may be purged before the exit completed.
    let (ok, _, stderr) = vendor_json(&devnet, index, "exit", &["--purge"]);
    assert!(
        !ok && stderr.contains("has not completed its exit"),
        "{stderr}"
    );

    let statement_file = tmp.path().join("exit-statement.json");
    let statement_arg = statement_file.to_str().unwrap();
    let (ok, done, stderr) = vendor_json(
        &devnet,
        index,
        "exit",
        &[
            "--wait",
            "--timeout-secs",
            "240",
            "--statement-out",
            statement_arg,
        ],
    );
    assert!(ok, "exit --wait failed: {stderr}");
    assert_eq!(done["exit_state"], "exited", "{done}");
    assert_eq!(done["statement"]["vendor_id"], leaving.as_str(), "{done}");
    let saved: Value = serde_json::from_slice(&std::fs::read(&statement_file).unwrap()).unwrap();
    assert_eq!(saved["vendor_id"], leaving.as_str());
    assert!(saved["signature_hex"]
        .as_str()
        .is_some_and(|s| s.len() == 128));

    // The vendor's own status and the coordinator's say so.
    let (ok, status, stderr) = vendor_json(&devnet, index, "status", &[]);
    assert!(ok, "{stderr}");
    assert_eq!(status["exit_state"], "exited", "{status}");
    assert_eq!(status["portions"], 0, "{status}");
    assert_eq!(status["exit"]["portions_left"], 0, "{status}");
    let group = devnet.status().unwrap();
    let v = vendor(&group, &leaving);
    let exit = v.exit.as_ref().expect("the coordinator shows the exit");
    assert!(exit.completed_unix_ms > 0, "{v:?}");
    assert_eq!(
        (exit.portions_left, exit.bytes_left, v.used_bytes),
        (0, 0, 0)
    );
    assert_eq!(group.open_repairs, 0);

    // A completed exit cannot be cancelled.
    let (ok, _, stderr) = vendor_json(&devnet, index, "exit", &["--cancel"]);
    assert!(!ok && stderr.contains("cannot be cancelled"), "{stderr}");

    // Stopped, it is not missed: every snapshot restores, every copy reads.
    devnet.stop_vendor(index).unwrap();
    devnet
        .restore_latest_matches(&source, &tmp.path().join("restore"))
        .unwrap();
    check_read_data(&devnet);

    // Now its data may go.
    let (ok, purged, stderr) = vendor_json(&devnet, index, "exit", &["--purge"]);
    assert!(ok, "purge failed: {stderr}");
    assert!(!devnet.vendor_data_dir(index).join("local-fat").exists());
    assert!(devnet
        .vendor_data_dir(index)
        .join("exit-statement.json")
        .exists());
    assert_eq!(piece_bytes(&devnet, index), 0, "{purged}");
}

#[test]
fn burst_relief_frees_the_asked_bytes_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (source, devnet) = backed_up(tmp.path(), 42);
    let (relieved, index, held) = busiest(&devnet);
    let on_disk = piece_bytes(&devnet, index);

    // Bounded: not more than it holds.
    let too_much = (held * 2).to_string();
    let (ok, _, stderr) = vendor_json(&devnet, index, "relieve", &["--bytes", &too_much]);
    assert!(!ok && stderr.contains("ask for 1 to"), "{stderr}");

    let asked = held / 2;
    let (ok, started, stderr) =
        vendor_json(&devnet, index, "relieve", &["--bytes", &asked.to_string()]);
    assert!(ok, "relieve failed: {stderr}");
    assert_eq!(started["relief_state"], "relieving", "{started}");
    // repair_after_secs is an hour: only the urgent relief moves anything.
    let done = wait_for("the relief to be done", Duration::from_secs(120), || {
        let (ok, status, _) = vendor_json(&devnet, index, "status", &[]);
        if !(ok && status["relief_state"] == "relieved") {
            std::thread::sleep(Duration::from_millis(500));
            return Ok(None);
        }
        Ok(Some(status))
    })
    .unwrap();
    assert_eq!(done["relief"]["bytes_left"], 0, "{done}");
    let freed = on_disk.saturating_sub(piece_bytes(&devnet, index));
    assert!(freed >= asked, "asked {asked} bytes, {freed} freed on disk");
    let group = devnet.status().unwrap();
    assert!(vendor(&group, &relieved).used_bytes <= held - asked);
    devnet
        .restore_latest_matches(&source, &tmp.path().join("restore"))
        .unwrap();
    check_read_data(&devnet);
}

/// The `offsite-vendor stores --json` list of vendor `index`.
fn stores_of(devnet: &Devnet, index: usize) -> Vec<Value> {
    let (ok, json, stderr) = vendor_json(devnet, index, "stores", &[]);
    assert!(ok, "stores failed: {stderr}");
    json["stores"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_drained_store_empties_into_the_others_and_is_removed_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let (source, mut devnet) = backed_up(tmp.path(), 43);
    let (_, index, _) = busiest(&devnet);
    let before = stores_of(&devnet, index);
    assert_eq!(before.len(), 2, "{before:?}");
    let total: u64 = before.iter().map(|s| s["pieces"].as_u64().unwrap()).sum();
    assert!(before[0]["pieces"].as_u64().unwrap() > 0, "{before:?}");
    assert!(before.iter().all(|s| s["state"] == "serving"));

    // The operator drains the first store and restarts the agent.
    let config_path = devnet.vendor_config(index).to_path_buf();
    let config = std::fs::read_to_string(&config_path).unwrap();
    let first_nas = format!("name = \"{}-nas-1\"", devnet.vendor_ids()[index]);
    assert!(config.contains(&first_nas), "{config}");
    let drained = config.replacen(&first_nas, &format!("{first_nas}\ndrain = true"), 1);
    std::fs::write(&config_path, &drained).unwrap();
    devnet.stop_vendor(index).unwrap();
    devnet.restart_vendor(index).unwrap();

    let after = wait_for(
        "the drained store to empty",
        Duration::from_secs(120),
        || {
            let stores = stores_of(&devnet, index);
            let empty = stores[0]["pieces"] == 0 && stores[0]["state"] == "draining";
            if !empty {
                std::thread::sleep(Duration::from_millis(500));
            }
            Ok(empty.then_some(stores))
        },
    )
    .unwrap();
    assert_eq!(after[1]["pieces"].as_u64().unwrap(), total, "{after:?}");
    check_read_data(&devnet);

    // Then it is removed in place: the second store keeps its index.
    let removed = drained.replacen(
        &format!(
            "kind = \"nas\"\naddress = \"{}\"\n{first_nas}\ndrain = true",
            devnet.nas_addr(index, 0)
        ),
        "kind = \"removed\"",
        1,
    );
    assert!(removed.contains("kind = \"removed\""), "{removed}");
    std::fs::write(&config_path, &removed).unwrap();
    devnet.stop_vendor(index).unwrap();
    devnet.restart_vendor(index).unwrap();
    let last = stores_of(&devnet, index);
    assert_eq!(last[0]["state"], "removed", "{last:?}");
    assert_eq!(last[1]["pieces"].as_u64().unwrap(), total, "{last:?}");
    devnet
        .restore_latest_matches(&source, &tmp.path().join("restore"))
        .unwrap();
}
