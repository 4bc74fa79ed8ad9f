//! A reservation that is never committed is released when its lease runs out:
//! made over gRPC with the generated `Fat` client, watched through `Status`.

use std::ffi::OsString;
use std::fs::File;
use std::process::Stdio;
use std::time::{Duration, Instant};

use offsite_proto::pb::coordinator::ReserveRequest;
use offsite_tests::checks::reserved_bytes;
use offsite_tests::{rpc, wait_for, Devnet, DevnetOptions, KillOnDrop};

#[test]
fn an_uncommitted_reservation_is_released_after_its_lease() {
    let tmp = tempfile::tempdir().unwrap();
    let options = DevnetOptions {
        nas_per_vendor: 1,
        lease_secs: 2,
        ..DevnetOptions::default()
    };
    let devnet = Devnet::start(tmp.path(), options).unwrap();
    let before = devnet.status().unwrap();
    assert_eq!(reserved_bytes(&before), 0);

    let coordinator = devnet.coordinator_addr();
    let asked = 8 * 1024 * 1024;
    let reserved = rpc::block_on(async move {
        let request = ReserveRequest {
            request_id: "lease-test-1".into(),
            bytes: asked,
            replication: 2,
            ..Default::default()
        };
        let mut fat = rpc::fat(coordinator).await?;
        anyhow::Ok(
            fat.reserve(rpc::as_tenant(request, rpc::DEVNET_TENANT)?)
                .await?
                .into_inner(),
        )
    })
    .unwrap()
    .unwrap();
    let made = Instant::now();
    let held: u64 = reserved.candidates.iter().map(|c| c.reserved_bytes).sum();
    assert!(reserved.candidates.len() >= 2, "{reserved:?}");
    assert!(
        held >= 2 * asked,
        "the reservation holds {held} bytes for {asked} at R=2"
    );

    let during = devnet.status().unwrap();
    if made.elapsed() < Duration::from_millis(1500) {
        assert_eq!(during.open_reservations, 1, "{during:?}");
        assert_eq!(reserved_bytes(&during), held, "{during:?}");
    }

    let after = devnet
        .wait_status("the lease to run out", Duration::from_secs(30), |s| {
            reserved_bytes(s) == 0 && s.open_reservations == 0
        })
        .unwrap();
    assert!(
        made.elapsed() >= Duration::from_secs(1),
        "released before its lease ran out"
    );
    for vendor in &after.vendors {
        assert_eq!(vendor.used_bytes, 0, "nothing was committed: {vendor:?}");
        assert!(vendor.used_bytes + vendor.reserved_bytes <= vendor.offered_bytes);
    }
}

/// With a lease far shorter than the upload, the client renews it while the
/// portions are on their way: the backup saves a snapshot that restores byte
/// for byte, and nothing stays reserved.
#[test]
fn a_lease_that_runs_out_during_an_upload_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    let spec = offsite_tests::tree::TreeSpec {
        big_files: vec![40 * 1024 * 1024],
        ..offsite_tests::tree::TreeSpec::small()
    };
    offsite_tests::tree::generate(&source, &spec).unwrap();
    let options = DevnetOptions {
        lease_secs: 1,
        ..DevnetOptions::default()
    };
    let devnet = Devnet::start(&tmp.path().join("devnet"), options).unwrap();
    devnet.client_ok(["init"]).unwrap();
    let out = devnet
        .client_ok(["--json".as_ref(), "backup".as_ref(), source.as_os_str()])
        .unwrap();
    let report = offsite_tests::checks::json_stdout(&out).unwrap();
    assert!(report["reservations"].as_u64() >= Some(1), "{report}");
    devnet
        .restore_latest_matches(&source, &tmp.path().join("restore"))
        .unwrap();
    devnet
        .wait_status("every lease to run out", Duration::from_secs(30), |s| {
            reserved_bytes(s) == 0 && s.open_reservations == 0
        })
        .unwrap();
}

/// A vendor of the open reservation killed and started again while the
/// backup streams to it: it comes back knowing nothing of the grants it
/// honoured, the backup still saves every portion with R copies, and the
/// snapshot restores byte for byte.
#[test]
fn a_vendor_restarted_during_a_reservation_loses_nothing() {
    const MIB: u64 = 1024 * 1024;
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    let spec = offsite_tests::tree::TreeSpec {
        big_files: vec![64 * MIB, 48 * MIB, 40 * MIB],
        ..offsite_tests::tree::TreeSpec::small()
    };
    offsite_tests::tree::generate(&source, &spec).unwrap();
    let mut devnet = Devnet::start(&tmp.path().join("devnet"), DevnetOptions::default()).unwrap();
    devnet.client_ok(["init"]).unwrap();

    let mut command = devnet
        .client_command([
            OsString::from("--json"),
            "backup".into(),
            source.clone().into(),
        ])
        .unwrap();
    let out_path = tmp.path().join("backup.out");
    let err_path = tmp.path().join("backup.err");
    command
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap());
    let mut backup = KillOnDrop(command.spawn().unwrap());
    let victim = wait_for("a vendor to hold pieces", Duration::from_secs(120), || {
        if let Some(status) = backup.try_wait()? {
            anyhow::bail!("the backup ended ({status}) before any vendor held a piece");
        }
        Ok((0..devnet.vendor_ids().len()).find(|v| {
            devnet
                .nas_data_dirs(*v)
                .iter()
                .any(|dir| !offsite_tests::tree::files_under(&dir.join("pieces")).is_empty())
        }))
    })
    .unwrap();
    let during = devnet.status().unwrap();
    assert!(
        backup.try_wait().unwrap().is_none() && during.open_reservations >= 1,
        "the backup finished before the vendor could be restarted; the tree is too small"
    );
    devnet.kill_vendor(victim).unwrap();
    devnet.restart_vendor(victim).unwrap();

    let status = wait_for("the backup to finish", Duration::from_secs(400), || {
        backup.try_wait()
    })
    .unwrap();
    let log = || {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            std::fs::read_to_string(&out_path).unwrap_or_default(),
            std::fs::read_to_string(&err_path).unwrap_or_default()
        )
    };
    assert!(
        status.success(),
        "the backup failed after vendor-{} restarted:\n{}",
        victim + 1,
        log()
    );
    let out = devnet.run_client(["--json", "check"]).unwrap();
    let report = offsite_tests::checks::json_stdout(&out).unwrap();
    assert!(
        out.status.success() && report["ok"] == true,
        "check after the backup: {report}"
    );
    devnet
        .restore_latest_matches(&source, &tmp.path().join("restore"))
        .unwrap();
    let after = devnet
        .wait_status("the reservations to close", Duration::from_secs(30), |s| {
            s.open_reservations == 0 && reserved_bytes(s) == 0
        })
        .unwrap();
    for vendor in &after.vendors {
        assert!(
            vendor.used_bytes <= vendor.offered_bytes,
            "overbooked: {vendor:?}"
        );
    }
}
