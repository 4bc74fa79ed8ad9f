//! Re-replication on a running devnet: a vendor down longer than
//! `repair_after_secs` has its copies made again on the other vendors, vendor
//! to vendor, so every copy the FAT names can be read while it stays down;
//! when it comes back it deletes the copies it no longer holds in the FAT.
//! A vendor whose stores shrink below what it holds moves its excess away.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use offsite_proto::pb::admin::MarketplaceStatusResponse;
use offsite_tests::checks::json_stdout;
use offsite_tests::tree::{self, files_under, TreeSpec};
use offsite_tests::{wait_for, Devnet, DevnetOptions};
use serde_json::Value;

fn used_of(status: &MarketplaceStatusResponse, vendor: &str) -> u64 {
    status
        .vendors
        .iter()
        .find(|v| v.vendor_id == vendor)
        .map_or(0, |v| v.used_bytes)
}

fn liveness_of(status: &MarketplaceStatusResponse, vendor: &str) -> String {
    status
        .vendors
        .iter()
        .find(|v| v.vendor_id == vendor)
        .map(|v| v.liveness.clone())
        .unwrap_or_default()
}

/// `check --read-data`: every copy of every portion the FAT names is
/// fetched from its vendor and verified.
fn check_reads_every_copy(devnet: &Devnet) -> anyhow::Result<(bool, Value)> {
    let out = devnet.run_client(["--json", "check", "--read-data"])?;
    let report = json_stdout(&out).unwrap_or(Value::Null);
    Ok((out.status.success() && report["ok"] == true, report))
}

/// A devnet started with `options` that has backed up a tree of `spec`;
/// the tree's path.
fn backed_up(tmp: &Path, spec: &TreeSpec, options: DevnetOptions) -> (PathBuf, Devnet) {
    let source = tmp.join("source");
    tree::generate(&source, spec).unwrap();
    let devnet = Devnet::start(&tmp.join("devnet"), options).unwrap();
    devnet.client_ok(["init"]).unwrap();
    devnet
        .client_ok([OsString::from("backup"), source.clone().into()])
        .unwrap();
    (source, devnet)
}

/// The vendor holding the most: its id, its index in the devnet, its used
/// bytes (more than 0).
fn busiest(devnet: &Devnet, status: &MarketplaceStatusResponse) -> (String, usize, u64) {
    let vendor = status.vendors.iter().max_by_key(|v| v.used_bytes).unwrap();
    assert!(
        vendor.used_bytes > 0,
        "no vendor holds anything: {status:?}"
    );
    let index = devnet
        .vendor_ids()
        .iter()
        .position(|id| *id == vendor.vendor_id)
        .unwrap();
    (vendor.vendor_id.clone(), index, vendor.used_bytes)
}

#[test]
fn a_vendor_down_too_long_has_its_copies_made_again_elsewhere() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = TreeSpec {
        seed: 31,
        big_files: vec![24 * 1024 * 1024, 9 * 1024 * 1024],
        small_files: 150,
        small_max: 4096,
        specials: true,
    };
    let options = DevnetOptions {
        suspect_after_secs: 2,
        down_after_secs: 4,
        repair_after_secs: 0,
        ..DevnetOptions::default()
    };
    let (source, mut devnet) = backed_up(tmp.path(), &spec, options);
    let (clean, report) = check_reads_every_copy(&devnet).unwrap();
    assert!(clean, "check failed before any fault: {report}");

    // The vendor holding the most goes away for good (as far as anyone knows).
    let before = devnet.status().unwrap();
    let (victim, index, victim_used) = busiest(&devnet, &before);
    let total_used: u64 = before.vendors.iter().map(|v| v.used_bytes).sum();
    devnet.kill_vendor(index).unwrap();

    // Once it is down its copies are made again on the others; until then
    // the check cannot read the copies it holds.
    let (clean, _) = check_reads_every_copy(&devnet).unwrap();
    assert!(!clean, "check read every copy with {victim} killed");
    let report = wait_for(
        "the victim's copies to be made again elsewhere",
        Duration::from_secs(180),
        || {
            let (clean, report) = check_reads_every_copy(&devnet)?;
            if !clean {
                std::thread::sleep(Duration::from_secs(2));
            }
            Ok(clean.then_some(report))
        },
    )
    .unwrap();
    assert!(
        report["copies_read"].as_u64().unwrap_or(0) >= 3 * report["portions"].as_u64().unwrap_or(1),
        "fewer than three copies of each portion were read: {report}"
    );
    let repaired = devnet.status().unwrap();
    assert_eq!(liveness_of(&repaired, &victim), "down");
    assert_eq!(repaired.open_repairs, 0);
    // The survivors now hold what the victim held; the victim's bytes stay
    // counted until it deletes its copies.
    let survivors: u64 = repaired
        .vendors
        .iter()
        .filter(|v| v.vendor_id != victim)
        .map(|v| v.used_bytes)
        .sum();
    assert_eq!(survivors, total_used, "{repaired:?}");
    assert_eq!(used_of(&repaired, &victim), victim_used);
    assert!(repaired.pending_deletions > 0);

    // Back again, it learns its copies were replaced and deletes them.
    devnet.restart_vendor(index).unwrap();
    devnet
        .wait_status(
            "the returned vendor to delete its replaced copies",
            Duration::from_secs(60),
            |s| s.pending_deletions == 0 && used_of(s, &victim) == 0,
        )
        .unwrap();
    let left: Vec<_> = devnet
        .nas_data_dirs(index)
        .iter()
        .flat_map(|dir| files_under(&dir.join("pieces")))
        .collect();
    assert!(left.is_empty(), "the returned vendor kept pieces: {left:?}");
    devnet
        .restore_latest_matches(&source, &tmp.path().join("restore"))
        .unwrap();
}

#[test]
fn a_vendor_whose_stores_shrink_moves_its_excess_to_other_vendors() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = TreeSpec {
        seed: 32,
        big_files: vec![40 * 1024 * 1024],
        small_files: 100,
        small_max: 4096,
        specials: false,
    };
    let options = DevnetOptions {
        repair_after_secs: 0,
        ..DevnetOptions::default()
    };
    let (source, mut devnet) = backed_up(tmp.path(), &spec, options);
    let before = devnet.status().unwrap();
    let total_used: u64 = before.vendors.iter().map(|v| v.used_bytes).sum();
    let (shrinking, index, held) = busiest(&devnet, &before);

    // The operator caps each of its NAS devices so that together they offer
    // half of what the vendor holds, and restarts them.
    let devices = devnet.nas_data_dirs(index);
    let cap = held / 2 / devices.len() as u64;
    for (nas, data_dir) in devices.iter().enumerate() {
        let path = data_dir.parent().unwrap().join("nas.toml");
        let config = std::fs::read_to_string(&path).unwrap();
        assert!(!config.contains("cap_bytes"), "{config}");
        std::fs::write(&path, format!("cap_bytes = {cap}\n{config}")).unwrap();
        devnet.stop_nas(index, nas).unwrap();
        devnet.restart_nas(index, nas).unwrap();
    }

    let after = devnet
        .wait_status(
            "the shrinking vendor's excess to move and its copies to be deleted",
            Duration::from_secs(120),
            |s| {
                let v = s.vendors.iter().find(|v| v.vendor_id == shrinking);
                v.is_some_and(|v| v.used_bytes <= v.offered_bytes && v.used_bytes < held)
                    && s.open_repairs == 0
                    && s.pending_deletions == 0
            },
        )
        .unwrap();
    assert_eq!(liveness_of(&after, &shrinking), "up");
    // Moved, not lost: every copy is still counted once, and readable.
    let total_after: u64 = after.vendors.iter().map(|v| v.used_bytes).sum();
    assert_eq!(total_after, total_used, "{after:?}");
    let (clean, report) = check_reads_every_copy(&devnet).unwrap();
    assert!(clean, "check after the move: {report}");
    devnet
        .restore_latest_matches(&source, &tmp.path().join("restore"))
        .unwrap();
}
