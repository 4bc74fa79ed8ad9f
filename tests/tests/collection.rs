//! Exact garbage collection on a running devnet (`--fast`: 30 s leases,
//! expired reservations collected 5 s later, vendors reconciling every 2 s
//! with a 3 s grace): a client killed mid-backup, and a vendor killed
//! mid-write together with a piece its device wrote but nobody recorded,
//! leave the piece bytes on every vendor's devices equal to what the FAT
//! says it holds, exactly; the committed snapshot still restores.

use std::ffi::OsString;
use std::fs::File;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use offsite_identity::Role;
use offsite_proto::pb::admin::MarketplaceStatusResponse;
use offsite_proto::Hash;
use offsite_tests::checks::json_stdout;
use offsite_tests::tree::{self, files_under, TreeSpec, PIECE_HEADER};
use offsite_tests::{wait_for, Devnet, DevnetOptions, KillOnDrop};
use offsite_vendor::{NasStore, NasTimeouts, PieceStore};

/// Bytes of piece data in the files of vendor `index`'s devices.
fn piece_bytes_on_disk(devnet: &Devnet, index: usize) -> u64 {
    devnet
        .nas_data_dirs(index)
        .iter()
        .flat_map(|dir| files_under(&dir.join("pieces")))
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len().saturating_sub(PIECE_HEADER))
        .sum()
}

/// Each vendor's (id, bytes on its devices, the FAT's used bytes, what its
/// local FAT reports holding).
fn holdings(devnet: &Devnet, status: &MarketplaceStatusResponse) -> Vec<(String, u64, u64, u64)> {
    devnet
        .vendor_ids()
        .iter()
        .enumerate()
        .map(|(index, id)| {
            let v = status.vendors.iter().find(|v| &v.vendor_id == id).unwrap();
            (
                id.clone(),
                piece_bytes_on_disk(devnet, index),
                v.used_bytes,
                v.stored_bytes,
            )
        })
        .collect()
}

/// Waits until every vendor's devices hold exactly what the FAT says.
fn wait_exact(devnet: &Devnet, what: &str) -> Vec<(String, u64, u64, u64)> {
    let mut last = Vec::new();
    let found = wait_for(what, Duration::from_secs(150), || {
        let status = devnet.status()?;
        last = holdings(devnet, &status);
        let exact = status.open_reservations == 0
            && last
                .iter()
                .all(|(_, disk, used, stored)| disk == used && used == stored);
        Ok(exact.then(|| last.clone()))
    });
    found.unwrap_or_else(|e| {
        panic!("{e:#}; last seen (vendor, on disk, FAT used, local FAT): {last:?}")
    })
}

/// A tree of one file of `big` bytes and `small` files of up to 10 kB: an
/// upload long enough to be caught under way.
fn large_tree(seed: u64, big: u64, small: usize) -> TreeSpec {
    TreeSpec {
        seed,
        big_files: vec![big],
        small_files: small,
        small_max: 10_000,
        specials: false,
    }
}

fn start(dir: &std::path::Path) -> Devnet {
    let options = DevnetOptions {
        vendors: 3,
        nas_per_vendor: 1,
        replication: 2,
        portion_bytes: 4 << 20,
        piece_bytes: 1 << 20,
        // No audits in the way: this test is about garbage.
        audits_per_vendor_per_hour: 0,
        ..DevnetOptions::default().fast()
    };
    Devnet::start(dir, options).unwrap()
}

/// A backup started in the background, its output in files.
fn backup_in_background(
    devnet: &Devnet,
    source: &std::path::Path,
    dir: &std::path::Path,
) -> KillOnDrop {
    let mut command = devnet
        .client_command([OsString::from("--json"), "backup".into(), source.into()])
        .unwrap();
    command
        .stdin(Stdio::null())
        .stdout(File::create(dir.join("backup.out")).unwrap())
        .stderr(File::create(dir.join("backup.err")).unwrap());
    KillOnDrop(command.spawn().unwrap())
}

/// Waits until the devices of some vendor hold more than the FAT says that
/// vendor holds (an upload under way), while `backup` still runs.
fn wait_for_uncommitted(devnet: &Devnet, backup: &mut KillOnDrop) -> usize {
    wait_for(
        "a vendor to hold uncommitted pieces",
        Duration::from_secs(120),
        || {
            if let Some(status) = backup.try_wait()? {
                anyhow::bail!(
                    "the backup ended ({status}) before any upload was seen; the tree is too small"
                );
            }
            let status = devnet.status()?;
            Ok(holdings(devnet, &status)
                .iter()
                .position(|(_, disk, used, _)| disk > used))
        },
    )
    .unwrap()
}

#[test]
fn a_client_killed_mid_backup_leaves_the_vendors_holding_exactly_the_fat() {
    let tmp = tempfile::tempdir().unwrap();
    let devnet = start(&tmp.path().join("devnet"));
    devnet.client_ok(["init"]).unwrap();
    let kept = tmp.path().join("kept");
    tree::generate(&kept, &TreeSpec::small()).unwrap();
    devnet
        .client_ok([OsString::from("backup"), kept.clone().into()])
        .unwrap();

    let big = tmp.path().join("big");
    tree::generate(&big, &large_tree(23, 96 << 20, 0)).unwrap();
    let mut backup = backup_in_background(&devnet, &big, tmp.path());
    wait_for_uncommitted(&devnet, &mut backup);
    backup.0.kill().unwrap();
    let _ = backup.0.wait();
    let during = devnet.status().unwrap();
    assert!(during.open_reservations >= 1, "{during:?}");
    let garbage: u64 = holdings(&devnet, &during)
        .iter()
        .map(|(_, disk, used, _)| disk.saturating_sub(*used))
        .sum();
    assert!(garbage > 0, "no uncommitted copy to collect: {during:?}");

    // Lease (30 s), collection (5 s), two reconciliations 3 s apart.
    let exact = wait_exact(
        &devnet,
        "the vendors to hold exactly the FAT after the lease",
    );
    assert!(exact.iter().any(|(_, disk, _, _)| *disk > 0), "{exact:?}");
    let out = devnet
        .run_client(["--json", "check", "--read-data"])
        .unwrap();
    let report = json_stdout(&out).unwrap();
    assert_eq!(report["ok"], true, "{report:#}");
    devnet
        .restore_latest_matches(&kept, &tmp.path().join("restored"))
        .unwrap();
}

#[test]
fn a_vendor_killed_mid_write_and_an_unrecorded_piece_leave_no_stray() {
    let tmp = tempfile::tempdir().unwrap();
    let mut devnet = start(&tmp.path().join("devnet"));
    devnet.client_ok(["init"]).unwrap();
    let source = tmp.path().join("source");
    tree::generate(&source, &large_tree(29, 64 << 20, 10)).unwrap();

    // A piece the device wrote that no local FAT record names, as a vendor
    // that crashed between its put and its record leaves behind.
    let vendor = devnet.vendor_ids()[0].clone();
    let credentials = devnet.rpc().credentials(Role::Vendor, &vendor).unwrap();
    let (address, name) = (devnet.nas_addr(0, 0).to_string(), format!("{vendor}-nas-1"));
    let device = move || {
        NasStore::connect_lazy(&address, &name, &credentials, NasTimeouts::default(), 0.0).unwrap()
    };
    let orphan = offsite_proto::PieceId::new("0rphan0000000000000000000000000").unwrap();
    let data = Bytes::from(vec![7u8; 300_000]);
    let put = async { device().put(&orphan, data.clone(), &Hash::of(&data)).await };
    offsite_tests::rpc::block_on(put).unwrap().unwrap();
    assert_eq!(piece_bytes_on_disk(&devnet, 0), 300_000);

    // The backup's first vendor to take pieces is killed mid-write and
    // started again.
    let mut backup = backup_in_background(&devnet, &source, tmp.path());
    let victim = wait_for_uncommitted(&devnet, &mut backup);
    devnet.kill_vendor(victim).unwrap();
    devnet.restart_vendor(victim).unwrap();
    let ended = wait_for("the backup to end", Duration::from_secs(300), || {
        backup.try_wait()
    })
    .unwrap();
    let log = std::fs::read_to_string(tmp.path().join("backup.err")).unwrap_or_default();
    assert!(
        ended.success(),
        "the backup failed after the vendor restarted:\n{log}"
    );

    let exact = wait_exact(&devnet, "no stray piece on any vendor");
    assert!(exact.iter().all(|(_, disk, _, _)| *disk > 0), "{exact:?}");
    let listed = offsite_tests::rpc::block_on(async { device().list(None, 10_000).await })
        .unwrap()
        .unwrap();
    assert!(
        !listed.contains(&orphan),
        "the unrecorded piece is still on the device"
    );
    let out = devnet
        .run_client(["--json", "check", "--read-data"])
        .unwrap();
    let report = json_stdout(&out).unwrap();
    assert_eq!(report["ok"], true, "{report:#}");
    devnet
        .restore_latest_matches(&source, &tmp.path().join("restored"))
        .unwrap();
}
