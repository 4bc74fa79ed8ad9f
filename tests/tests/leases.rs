//! A reservation that is never committed is released when its lease runs out:
//! made over gRPC with the generated `Fat` client, watched through `Status`.

use std::time::{Duration, Instant};

use offsite_proto::pb::coordinator::ReserveRequest;
use offsite_tests::checks::reserved_bytes;
use offsite_tests::{rpc, Devnet, DevnetOptions};

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

/// With a lease far shorter than one portion's upload, reservations run out
/// while their portions are on the way: the backup still saves a snapshot
/// that restores byte for byte, and nothing stays reserved.
///
/// Fails today (2026-12-01): the commit of a round whose lease ran out is
/// refused ("reservation ... was released; ask for a new reservation") and
/// the backup fails, though every copy is stored and receipted. Run it with
/// `--ignored` while fixing that (hardening issue).
#[test]
#[ignore = "a round whose lease ran out is not committed yet (hardening issue)"]
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
