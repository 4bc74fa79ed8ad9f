//! The real coordinator, in-process on 127.0.0.1:0, driven through the
//! generated gRPC clients.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

mod common;

use common::{admin_as, fat_as, Registry};
use offsite_coordinator::{Coordinator, CoordinatorConfig};
use offsite_identity::Role;
use offsite_proto::pb::admin as pba;
use offsite_proto::pb::common as pbc;
use offsite_proto::pb::coordinator as pb;
use offsite_proto::pb::coordinator::fat_client::FatClient;
use offsite_proto::{Hash, PortionId, SnapshotId};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Request};

struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), offsite_coordinator::CoordinatorError>>,
    _dir: tempfile::TempDir,
}

async fn start(lease_secs: u64) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let config = CoordinatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("fat"),
        lease_secs,
        sweep_interval_secs: 1,
        tls: common::coordinator_tls(dir.path(), "c1"),
        ..CoordinatorConfig::default()
    };
    let coordinator = Coordinator::start(config).await.unwrap();
    let addr = coordinator.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(coordinator.serve(async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        stop,
        task,
        _dir: dir,
    }
}

impl Running {
    /// A client of tenant `acme`.
    async fn fat(&self) -> FatClient<Channel> {
        fat_as(&self.addr.to_string(), "acme").await
    }

    async fn fat_as(&self, tenant: &str) -> FatClient<Channel> {
        fat_as(&self.addr.to_string(), tenant).await
    }

    /// The marketplace status, asked as tenant `acme` (any certificate of
    /// the marketplace may ask).
    async fn status(&self) -> pba::MarketplaceStatusResponse {
        admin_as(&self.addr.to_string(), Role::Tenant, "acme")
            .await
            .marketplace_status(pba::MarketplaceStatusRequest {})
            .await
            .unwrap()
            .into_inner()
    }

    async fn registry(&self) -> Registry {
        Registry::new(self.addr.to_string())
    }

    async fn shutdown(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

/// Registers `count` vendors over three regions, each offering `offered`.
async fn vendors(running: &Running, count: usize, offered: u64) {
    let mut registry = running.registry().await;
    for i in 0..count {
        registry
            .register(pb::RegisterVendorRequest {
                vendor_id: format!("vendor-{i}"),
                address: format!("127.0.0.1:{}", 7100 + i),
                region: ["eu-west", "us-east", "ap-south"][i % 3].into(),
                offered_bytes: offered,
                network_bytes_per_sec: 0,
                identity_key: common::vendor_key(&format!("vendor-{i}"))
                    .public_key()
                    .to_vec(),
                ..Default::default()
            })
            .await
            .unwrap();
        registry
            .report_capacity(pb::CapacityReport {
                vendor_id: format!("vendor-{i}"),
                offered_bytes: offered,
                stored_bytes: 0,
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

async fn reserve(
    fat: &mut FatClient<Channel>,
    request: &str,
    bytes: u64,
    r: u32,
) -> Result<pb::ReserveResponse, tonic::Status> {
    fat.reserve(Request::new(pb::ReserveRequest {
        request_id: request.into(),
        bytes,
        replication: r,
        ..Default::default()
    }))
    .await
    .map(|r| r.into_inner())
}

/// A portion stored on `vendors` under `reservation`, with their receipts.
fn portion(tenant: &str, size: u64, vendors: &[&str], reservation: &str) -> pb::PortionPlacement {
    let id = PortionId::random();
    let hash = Hash::of(id.as_bytes()).to_vec();
    pb::PortionPlacement {
        portion_id: id.to_string(),
        hash: hash.clone(),
        size,
        receipts: vendors
            .iter()
            .map(|v| {
                common::signed(
                    pbc::Receipt {
                        vendor_id: (*v).into(),
                        tenant_id: tenant.into(),
                        portion_id: id.to_string(),
                        hash: hash.clone(),
                        size,
                        signature: vec![],
                    },
                    reservation,
                )
            })
            .collect(),
    }
}

fn candidate_ids(reservation: &pb::ReserveResponse) -> Vec<String> {
    reservation
        .candidates
        .iter()
        .map(|c| c.vendor.as_ref().unwrap().vendor_id.clone())
        .collect()
}

#[tokio::test]
async fn a_backup_is_reserved_committed_listed_read_and_forgotten() {
    let running = start(600).await;
    vendors(&running, 5, 1 << 20).await;
    let mut fat = running.fat().await;

    let reservation = reserve(&mut fat, "backup-1", 1000, 2).await.unwrap();
    let ids = candidate_ids(&reservation);
    assert_eq!(ids.len(), 4, "R + 2 candidates");
    let again = reserve(&mut fat, "backup-1", 1000, 2).await.unwrap();
    assert_eq!(again.reservation_id, reservation.reservation_id);

    let p1 = portion(
        "acme",
        600,
        &[&ids[0], &ids[1]],
        &reservation.reservation_id,
    );
    let p2 = portion(
        "acme",
        400,
        &[&ids[2], &ids[3]],
        &reservation.reservation_id,
    );
    let snapshot_id = SnapshotId::random().to_string();
    let record = pb::SnapshotRecord {
        snapshot_id: snapshot_id.clone(),
        host: "laptop".into(),
        time_unix_ms: 1_700_000_000_000,
        paths: vec!["/home".into()],
        tags: vec!["nightly".into()],
        manifest: Some(pb::BlobLocation {
            portion_id: p2.portion_id.clone(),
            offset: 0,
            length: 100,
        }),
        portion_ids: vec![p1.portion_id.clone(), p2.portion_id.clone()],
        logical_bytes: 5000,
        file_count: 3,
    };
    let committed = fat
        .commit(Request::new(pb::CommitRequest {
            request_id: "commit-1".into(),
            reservation_id: reservation.reservation_id.clone(),
            portions: vec![p1.clone(), p2.clone()],
            snapshot: Some(record.clone()),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(committed.committed_bytes, 2000);
    let after = running.status().await;
    assert_eq!(
        after.vendors.iter().map(|v| v.used_bytes).sum::<u64>(),
        2000
    );
    assert_eq!(
        after.vendors.iter().map(|v| v.reserved_bytes).sum::<u64>(),
        0
    );
    assert_eq!(
        (after.portions, after.snapshots, after.open_reservations),
        (2, 1, 0)
    );

    let list = fat
        .list_snapshots(Request::new(pb::ListSnapshotsRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.snapshots, vec![record.clone()]);
    let got = fat
        .get_snapshot(Request::new(pb::GetSnapshotRequest {
            snapshot_id: snapshot_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.snapshot, Some(record));
    assert_eq!(got.portions.len(), 2);
    let holders: Vec<_> = got.portions[0]
        .vendors
        .iter()
        .map(|v| v.vendor_id.clone())
        .collect();
    assert_eq!(holders, [ids[0].clone(), ids[1].clone()]);
    let located = fat
        .locate_portions(Request::new(pb::LocatePortionsRequest {
            portion_ids: vec![p2.portion_id.clone()],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(located.portions[0].size, 400);

    // Tenant B sees and changes nothing of tenant A's.
    let mut globex = running.fat_as("globex").await;
    let theirs = globex
        .get_snapshot(Request::new(pb::GetSnapshotRequest {
            snapshot_id: snapshot_id.clone(),
        }))
        .await;
    assert_eq!(theirs.unwrap_err().code(), Code::NotFound);
    let theirs = globex
        .forget(Request::new(pb::ForgetRequest {
            snapshot_id: snapshot_id.clone(),
        }))
        .await;
    assert_eq!(theirs.unwrap_err().code(), Code::NotFound);
    let theirs = globex
        .list_snapshots(Request::new(pb::ListSnapshotsRequest {}))
        .await
        .unwrap();
    assert!(theirs.into_inner().snapshots.is_empty());
    let theirs = globex
        .locate_portions(Request::new(pb::LocatePortionsRequest {
            portion_ids: vec![p2.portion_id.clone()],
        }))
        .await
        .unwrap();
    assert!(theirs.into_inner().portions.is_empty());

    fat.forget(Request::new(pb::ForgetRequest { snapshot_id }))
        .await
        .unwrap();
    let list = fat
        .list_snapshots(Request::new(pb::ListSnapshotsRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(list.snapshots.is_empty());
    running.shutdown().await;
}

#[tokio::test]
async fn a_receipt_from_outside_the_reservation_is_refused_and_changes_nothing() {
    let running = start(600).await;
    vendors(&running, 6, 1 << 20).await;
    let mut fat = running.fat().await;
    let reservation = reserve(&mut fat, "r-1", 500, 1).await.unwrap();
    let ids = candidate_ids(&reservation);
    assert_eq!(ids.len(), 3);
    let outsider = (0..6)
        .map(|i| format!("vendor-{i}"))
        .find(|v| !ids.contains(v))
        .unwrap();
    let before = running.status().await;

    let bad = fat
        .commit(Request::new(pb::CommitRequest {
            request_id: "c-1".into(),
            reservation_id: reservation.reservation_id.clone(),
            portions: vec![portion(
                "acme",
                100,
                &[&outsider],
                &reservation.reservation_id,
            )],
            snapshot: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains(&outsider), "{}", bad.message());
    let after = running.status().await;
    assert_eq!(after.vendors, before.vendors);
    assert_eq!(after.open_reservations, 1);

    // Tenant calls need a tenant certificate; a vendor's is refused.
    let channel = common::channel_as(&running.addr.to_string(), Role::Vendor, "vendor-0").await;
    let not_a_tenant = FatClient::new(channel)
        .list_snapshots(pb::ListSnapshotsRequest {})
        .await
        .unwrap_err();
    assert_eq!(not_a_tenant.code(), Code::PermissionDenied);
    let good = fat
        .commit(Request::new(pb::CommitRequest {
            request_id: "c-1".into(),
            reservation_id: reservation.reservation_id.clone(),
            portions: vec![portion(
                "acme",
                100,
                &[&ids[0]],
                &reservation.reservation_id,
            )],
            snapshot: None,
        }))
        .await
        .unwrap();
    assert_eq!(good.into_inner().committed_bytes, 100);
    running.shutdown().await;
}

#[tokio::test]
async fn reserving_more_than_is_free_is_resource_exhausted() {
    let running = start(600).await;
    vendors(&running, 3, 1000).await;
    let mut fat = running.fat().await;
    let err = reserve(&mut fat, "big", 2000, 2).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("3000 bytes are free"),
        "{}",
        err.message()
    );
    let bad = reserve(&mut fat, "zero", 10, 0).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(running.status().await.open_reservations, 0);
    running.shutdown().await;
}

#[tokio::test]
async fn a_reservation_whose_lease_ran_out_is_released() {
    let running = start(1).await;
    vendors(&running, 3, 1 << 20).await;
    let mut fat = running.fat().await;
    reserve(&mut fat, "r-1", 1000, 2).await.unwrap();
    let reserved = |s: &pba::MarketplaceStatusResponse| {
        s.vendors.iter().map(|v| v.reserved_bytes).sum::<u64>()
    };
    assert!(reserved(&running.status().await) >= 2000);

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = running.status().await;
        if reserved(&now) == 0 && now.open_reservations == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lease was not released: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.shutdown().await;
}

#[tokio::test]
async fn concurrent_reserves_never_overbook_a_vendor() {
    let running = start(600).await;
    vendors(&running, 4, 10_000).await;
    let mut calls = Vec::new();
    for i in 0..12 {
        let mut fat = running.fat().await;
        calls.push(tokio::spawn(async move {
            reserve(&mut fat, &format!("r-{i}"), 3000, 2).await
        }));
    }
    let mut granted = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => granted += 1,
            Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
        }
    }
    let now = running.status().await;
    assert!(
        granted >= 1 && now.open_reservations == granted,
        "{granted} granted: {now:?}"
    );
    for v in &now.vendors {
        assert!(v.reserved_bytes + v.used_bytes <= v.offered_bytes, "{v:?}");
    }
    running.shutdown().await;
}

/// The group's grant keys, as a vendor learns them at registration.
async fn grant_verifier(running: &Running) -> offsite_proto::signing::GrantVerifier {
    let answer = running
        .registry()
        .await
        .register(pb::RegisterVendorRequest {
            vendor_id: "vendor-0".into(),
            address: "127.0.0.1:7100".into(),
            region: "eu-west".into(),
            offered_bytes: 1 << 20,
            network_bytes_per_sec: 0,
            identity_key: common::vendor_key("vendor-0").public_key().to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<(u32, Vec<u8>)> = answer
        .grant_keys
        .into_iter()
        .map(|k| (k.key_id, k.public_key))
        .collect();
    assert!(!keys.is_empty(), "registration answered no grant keys");
    offsite_proto::signing::GrantVerifier::new(&keys).unwrap()
}

#[tokio::test]
async fn reservations_and_locations_carry_grants_and_forged_receipts_are_refused() {
    use offsite_proto::signing::{Expected, GrantOp, GrantSubject};
    use offsite_proto::{Grant, ReservationId, TenantId, VendorId};

    let running = start(600).await;
    vendors(&running, 3, 1 << 20).await;
    let verifier = grant_verifier(&running).await;
    let mut fat = running.fat().await;
    let reservation = reserve(&mut fat, "r-1", 500, 1).await.unwrap();
    let id = ReservationId::parse(&reservation.reservation_id).unwrap();
    let acme = TenantId::new("acme").unwrap();
    let now = reservation.lease_expires_unix_ms - 1;
    for c in &reservation.candidates {
        let vendor = VendorId::new(c.vendor.clone().unwrap().vendor_id).unwrap();
        let grant = Grant::try_from(c.store_grant.clone().unwrap()).unwrap();
        let expected = Expected {
            op: GrantOp::Store,
            tenant: &acme,
            vendor: &vendor,
            subject: GrantSubject::Reservation(id),
            bytes: c.reserved_bytes,
        };
        let body = verifier.check(&grant, &expected, now).unwrap();
        assert_eq!(body.expires_unix_ms, reservation.lease_expires_unix_ms);
        assert_eq!(body.max_bytes, c.reserved_bytes);
    }

    // A forged receipt (signature flipped, or signed by another key) is
    // refused by name and changes nothing.
    let ids = candidate_ids(&reservation);
    let before = running.status().await;
    let mut flipped = portion("acme", 100, &[&ids[0]], &reservation.reservation_id);
    flipped.receipts[0].signature[0] ^= 1;
    let mut resigned = portion("acme", 100, &[&ids[0]], &reservation.reservation_id);
    let mut receipt = offsite_proto::Receipt::try_from(resigned.receipts[0].clone()).unwrap();
    common::vendor_key("mallory").sign(&mut receipt, &id);
    resigned.receipts[0] = receipt.into();
    for forged in [flipped, resigned] {
        let refused = fat
            .commit(Request::new(pb::CommitRequest {
                request_id: "c-1".into(),
                reservation_id: reservation.reservation_id.clone(),
                portions: vec![forged],
                snapshot: None,
            }))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(
            refused.message().contains("forged") && refused.message().contains(&ids[0]),
            "{}",
            refused.message()
        );
        let after = running.status().await;
        assert_eq!(after.vendors, before.vendors);
        assert_eq!((after.portions, after.open_reservations), (0, 1));
    }

    // A committed portion is located with one fetch grant per vendor.
    let p = portion("acme", 100, &[&ids[0]], &reservation.reservation_id);
    fat.commit(Request::new(pb::CommitRequest {
        request_id: "c-2".into(),
        reservation_id: reservation.reservation_id,
        portions: vec![p.clone()],
        snapshot: None,
    }))
    .await
    .unwrap();
    let located = fat
        .locate_portions(Request::new(pb::LocatePortionsRequest {
            portion_ids: vec![p.portion_id.clone()],
        }))
        .await
        .unwrap()
        .into_inner();
    let location = &located.portions[0];
    assert_eq!(location.fetch_grants.len(), location.vendors.len());
    let vendor = VendorId::new(ids[0].clone()).unwrap();
    let grant = Grant::try_from(location.fetch_grants[0].clone()).unwrap();
    let expected = Expected {
        op: GrantOp::Fetch,
        tenant: &acme,
        vendor: &vendor,
        subject: GrantSubject::Portion(PortionId::parse(&p.portion_id).unwrap()),
        bytes: 100,
    };
    verifier.check(&grant, &expected, now).unwrap();
    running.shutdown().await;
}

#[tokio::test]
async fn a_report_with_too_many_copy_results_is_refused_and_a_malformed_one_is_dropped() {
    let running = start(600).await;
    vendors(&running, 3, 1000).await;
    let mut registry = running.registry().await;
    let before = running.status().await;
    let result = |error: &str| pb::CopyResult {
        repair_id: offsite_proto::ReservationId::random().to_string(),
        receipt: None,
        error: error.into(),
    };
    let err = registry
        .report_capacity(pb::CapacityReport {
            vendor_id: "vendor-0".into(),
            offered_bytes: 10,
            stored_bytes: 0,
            copied: vec![result("disk full"); 65],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("more than 64"), "{}", err.message());
    // The refused report did not lower vendor-0's offer.
    let after = running.status().await;
    assert_eq!(after.vendors, before.vendors);
    // A malformed result, and one for a repair nobody opened, are dropped;
    // the report itself counts.
    let answer = registry
        .report_capacity(pb::CapacityReport {
            vendor_id: "vendor-0".into(),
            offered_bytes: 900,
            stored_bytes: 0,
            copied: vec![result(""), result("target refused")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(answer.copy.is_empty());
    let after = running.status().await;
    assert_eq!(after.open_repairs, 0);
    let vendor_0 = after
        .vendors
        .iter()
        .find(|v| v.vendor_id == "vendor-0")
        .unwrap();
    assert_eq!(vendor_0.offered_bytes, 900);
    running.shutdown().await;
}
