//! The coordinator group against real processes: losing the leader during a
//! backup, SIGKILL of all three, two of three down, a replica that missed
//! 500 operations, and twenty clients reserving at once.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use offsite_proto::pb::admin::GroupStatusResponse;
use offsite_proto::pb::admin::MarketplaceStatusResponse;
use offsite_proto::pb::coordinator::{ReleaseRequest, ReserveRequest};
use offsite_tests::rpc::{self, DEVNET_TENANT};
use offsite_tests::tree::{self, TreeSpec};
use offsite_tests::KillOnDrop;
use offsite_tests::{wait_for, Devnet, DevnetOptions};

fn group(addr: SocketAddr) -> anyhow::Result<GroupStatusResponse> {
    rpc::block_on(rpc::group_status(addr))?
}

/// The index of the coordinator every running one follows.
fn leader(devnet: &Devnet, running: &[usize]) -> usize {
    let addrs = devnet.coordinator_addrs();
    wait_for("one leader", Duration::from_secs(30), || {
        let views: Vec<_> = running
            .iter()
            .map(|i| group(addrs[*i]))
            .collect::<Result<_, _>>()?;
        let id = views[0].leader_id;
        let agreed = id != 0 && views.iter().all(|v| v.leader_id == id);
        Ok(agreed.then(|| (id - 1) as usize))
    })
    .unwrap()
}

/// Waits until the running replicas hold the same FAT at the same index.
fn converged(devnet: &Devnet, running: &[usize]) -> GroupStatusResponse {
    let addrs = devnet.coordinator_addrs();
    wait_for("the replicas to converge", Duration::from_secs(60), || {
        let views: Vec<_> = running
            .iter()
            .map(|i| group(addrs[*i]))
            .collect::<Result<_, _>>()?;
        let same = views.iter().all(|v| {
            v.fat_digest == views[0].fat_digest
                && v.last_applied_index == views[0].last_applied_index
        });
        Ok(same.then(|| views[0].clone()))
    })
    .unwrap()
}

/// Each NAS device's `cap_bytes` in the tests that check overbooking: the
/// vendors' offers can never exceed their devices' caps, whatever the disk.
const NAS_CAP_BYTES: u64 = 64 * 1024 * 1024;

/// No vendor holds more used + reserved bytes than its NAS devices can
/// store. (The status's `offered_bytes` is at least used + reserved by
/// construction, so comparing with it proves nothing; the caps are what the
/// vendor measured and reported.)
fn assert_never_overbooked(
    status: &MarketplaceStatusResponse,
    who: SocketAddr,
    options: &DevnetOptions,
) {
    let caps = NAS_CAP_BYTES * options.nas_per_vendor as u64;
    assert!(
        !status.vendors.is_empty(),
        "{who}: no vendors in {status:?}"
    );
    for v in &status.vendors {
        assert!(
            v.used_bytes + v.reserved_bytes <= caps,
            "{who}: {} holds {} used + {} reserved, more than its NAS devices' caps of {caps} bytes \
             (the status says {} offered)",
            v.vendor_id,
            v.used_bytes,
            v.reserved_bytes,
            v.offered_bytes
        );
    }
}

/// Kills all three coordinators at once (SIGKILL), starts them again from
/// their disks, and waits for a leader and converged replicas.
fn restart_every_coordinator(devnet: &mut Devnet) -> GroupStatusResponse {
    for i in 0..3 {
        devnet.kill_coordinator(i).unwrap();
    }
    for i in 0..3 {
        devnet.restart_coordinator(i).unwrap();
    }
    leader(devnet, &[0, 1, 2]);
    converged(devnet, &[0, 1, 2])
}

async fn reserve(addr: SocketAddr, request: String, bytes: u64) -> Result<String, tonic::Status> {
    let mut fat = rpc::fat(addr)
        .await
        .map_err(|e| tonic::Status::unavailable(format!("{e:#}")))?;
    let message = ReserveRequest {
        request_id: request,
        bytes,
        replication: 2,
        ..Default::default()
    };
    let request = rpc::as_tenant(message, DEVNET_TENANT)
        .map_err(|e| tonic::Status::internal(format!("{e:#}")))?;
    Ok(fat.reserve(request).await?.into_inner().reservation_id)
}

#[test]
fn killing_the_leader_during_a_backup_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    // Enough incompressible data (three portions) that the backup is still
    // uploading when the leader dies.
    let spec = TreeSpec {
        big_files: vec![40 * 1024 * 1024],
        ..TreeSpec::small()
    };
    tree::generate(&source, &spec).unwrap();
    let options = DevnetOptions {
        nas_cap_bytes: Some(NAS_CAP_BYTES),
        ..DevnetOptions::default()
    };
    let mut devnet = Devnet::start(&tmp.path().join("devnet"), options.clone()).unwrap();
    devnet.client_ok(["init"]).unwrap();
    let killed = leader(&devnet, &[0, 1, 2]);

    let mut backup = devnet
        .client_command(["backup".as_ref(), source.as_os_str()])
        .unwrap();
    backup.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut backup = KillOnDrop(backup.spawn().unwrap());
    // Kill the leader once the backup holds a reservation.
    wait_for("the backup to reserve", Duration::from_secs(60), || {
        if let Some(exit) = backup.try_wait()? {
            anyhow::bail!("the backup ended before it reserved: {exit}");
        }
        Ok((devnet.status()?.open_reservations > 0).then_some(()))
    })
    .unwrap();
    devnet.kill_coordinator(killed).unwrap();
    assert!(
        backup.try_wait().unwrap().is_none(),
        "the backup had finished when the leader was killed: make the tree larger"
    );

    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = backup.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the backup did not finish");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "the backup failed after the leader died: {status}"
    );
    let survivors: Vec<usize> = (0..3).filter(|i| *i != killed).collect();
    leader(&devnet, &survivors);

    devnet
        .restore_latest_matches(&source, &tmp.path().join("restore"))
        .unwrap();

    devnet.restart_coordinator(killed).unwrap();
    converged(&devnet, &[0, 1, 2]);
    for addr in devnet.coordinator_addrs() {
        let status = rpc::block_on(rpc::status(addr)).unwrap().unwrap();
        assert_eq!(status.snapshots, 1, "{addr}: {status:?}");
        assert_never_overbooked(&status, addr, &options);
    }
}

#[test]
fn a_replica_that_missed_500_operations_catches_up_and_sigkill_keeps_the_fat() {
    let tmp = tempfile::tempdir().unwrap();
    let mut devnet = Devnet::start(&tmp.path().join("devnet"), DevnetOptions::default()).unwrap();
    let addrs = devnet.coordinator_addrs();
    let first = leader(&devnet, &[0, 1, 2]);
    let lagging = (first + 1) % 3;
    devnet.kill_coordinator(lagging).unwrap();
    let live = addrs[(first + 2) % 3];
    rpc::block_on(async {
        let mut fat = rpc::fat(live).await.unwrap();
        for n in 0..250 {
            let id = reserve(live, format!("r-{n}"), 1000).await.unwrap();
            let release =
                rpc::as_tenant(ReleaseRequest { reservation_id: id }, DEVNET_TENANT).unwrap();
            fat.release(release).await.unwrap();
        }
    })
    .unwrap();
    devnet.restart_coordinator(lagging).unwrap();
    let caught_up = converged(&devnet, &[0, 1, 2]);
    assert!(caught_up.last_applied_index >= 500, "{caught_up:?}");

    let after = restart_every_coordinator(&mut devnet);
    assert!(after.last_applied_index >= caught_up.last_applied_index);
    let status = devnet.status().unwrap();
    assert_eq!(status.open_reservations, 0, "{status:?}");
    assert_eq!(status.vendors.len(), devnet.vendor_ids().len());
}

#[test]
fn with_two_of_three_down_writes_fail_fast_with_no_quorum() {
    let tmp = tempfile::tempdir().unwrap();
    let mut devnet = Devnet::start(&tmp.path().join("devnet"), DevnetOptions::default()).unwrap();
    let addrs = devnet.coordinator_addrs();
    let before = converged(&devnet, &[0, 1, 2]);
    devnet.kill_coordinator(1).unwrap();
    devnet.kill_coordinator(2).unwrap();
    let started = Instant::now();
    let err = rpc::block_on(reserve(addrs[0], "lost".into(), 1000))
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("no quorum: 1 of 3"),
        "{}",
        err.message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    let status = devnet.status().unwrap();
    assert_eq!(
        status.open_reservations, 0,
        "a write without a majority applied: {status:?}"
    );
    devnet.restart_coordinator(1).unwrap();
    devnet.restart_coordinator(2).unwrap();
    let after = converged(&devnet, &[0, 1, 2]);
    assert!(after.last_applied_index >= before.last_applied_index);
}

#[test]
fn twenty_clients_reserving_at_once_never_overbook_any_replica() {
    let tmp = tempfile::tempdir().unwrap();
    let options = DevnetOptions {
        nas_cap_bytes: Some(NAS_CAP_BYTES),
        ..DevnetOptions::default()
    };
    let devnet = Devnet::start(&tmp.path().join("devnet"), options.clone()).unwrap();
    let addrs = devnet.coordinator_addrs();
    let granted = rpc::block_on(async {
        let calls: Vec<_> = (0..20)
            .map(|n| tokio::spawn(reserve(addrs[n % 3], format!("many-{n}"), 40 * 1024 * 1024)))
            .collect();
        let mut granted = 0;
        for call in calls {
            match call.await.unwrap() {
                Ok(_) => granted += 1,
                Err(e) => assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}"),
            }
        }
        granted
    })
    .unwrap();
    assert!(granted >= 1);
    converged(&devnet, &[0, 1, 2]);
    for addr in addrs {
        let status = rpc::block_on(rpc::status(addr)).unwrap().unwrap();
        assert_never_overbooked(&status, addr, &options);
        assert_eq!(status.open_reservations, granted, "{addr}");
    }
}

#[test]
fn with_every_coordinator_restarted_a_committed_snapshot_still_restores() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    tree::generate(&source, &TreeSpec::small()).unwrap();
    let mut devnet = Devnet::start(&tmp.path().join("devnet"), DevnetOptions::default()).unwrap();
    devnet.client_ok(["init"]).unwrap();
    devnet
        .client_ok(["backup".as_ref(), source.as_os_str()])
        .unwrap();
    converged(&devnet, &[0, 1, 2]);

    // All three stop at once (SIGKILL) and start again from their disks.
    let after = restart_every_coordinator(&mut devnet);
    assert_eq!(after.members.len(), 3, "{after:?}");

    // The snapshot's final FAT is there, and the fetch grants the restarted
    // group signs verify at the vendors (which kept the group's keys from
    // before): the restore is byte for byte.
    devnet
        .restore_latest_matches(&source, &tmp.path().join("restore"))
        .unwrap();
}
