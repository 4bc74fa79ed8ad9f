//! The real coordinator, in-process on 127.0.0.1:0, driven through the
//! generated gRPC clients.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use offsite_coordinator::{Coordinator, CoordinatorConfig};
use offsite_proto::pb::common as pbc;
use offsite_proto::pb::coordinator as pb;
use offsite_proto::pb::coordinator::fat_client::FatClient;
use offsite_proto::pb::coordinator::vendor_registry_client::VendorRegistryClient;
use offsite_proto::{Hash, PortionId, SnapshotId, TENANT_METADATA_KEY};
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
    async fn fat(&self) -> FatClient<Channel> {
        FatClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    async fn registry(&self) -> VendorRegistryClient<Channel> {
        VendorRegistryClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    async fn shutdown(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

fn as_tenant<T>(tenant: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(TENANT_METADATA_KEY, tenant.parse().unwrap());
    request
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
                identity_key: vec![],
            })
            .await
            .unwrap();
        registry
            .report_capacity(pb::CapacityReport {
                vendor_id: format!("vendor-{i}"),
                offered_bytes: offered,
                stored_bytes: 0,
            })
            .await
            .unwrap();
    }
}

async fn reserve(
    fat: &mut FatClient<Channel>,
    tenant: &str,
    request: &str,
    bytes: u64,
    r: u32,
) -> Result<pb::ReserveResponse, tonic::Status> {
    fat.reserve(as_tenant(
        tenant,
        pb::ReserveRequest {
            request_id: request.into(),
            bytes,
            replication: r,
        },
    ))
    .await
    .map(|r| r.into_inner())
}

/// A portion stored on `vendors`, with their receipts.
fn portion(tenant: &str, size: u64, vendors: &[&str]) -> pb::PortionPlacement {
    let id = PortionId::random();
    let hash = Hash::of(id.as_bytes()).to_vec();
    pb::PortionPlacement {
        portion_id: id.to_string(),
        hash: hash.clone(),
        size,
        receipts: vendors
            .iter()
            .map(|v| pbc::Receipt {
                vendor_id: (*v).into(),
                tenant_id: tenant.into(),
                portion_id: id.to_string(),
                hash: hash.clone(),
                size,
                signature: vec![],
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

async fn status(fat: &mut FatClient<Channel>) -> pb::StatusResponse {
    fat.status(pb::StatusRequest {}).await.unwrap().into_inner()
}

#[tokio::test]
async fn a_backup_is_reserved_committed_listed_read_and_forgotten() {
    let running = start(600).await;
    vendors(&running, 5, 1 << 20).await;
    let mut fat = running.fat().await;

    let reservation = reserve(&mut fat, "acme", "backup-1", 1000, 2)
        .await
        .unwrap();
    let ids = candidate_ids(&reservation);
    assert_eq!(ids.len(), 4, "R + 2 candidates");
    let again = reserve(&mut fat, "acme", "backup-1", 1000, 2)
        .await
        .unwrap();
    assert_eq!(again.reservation_id, reservation.reservation_id);

    let p1 = portion("acme", 600, &[&ids[0], &ids[1]]);
    let p2 = portion("acme", 400, &[&ids[2], &ids[3]]);
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
        .commit(as_tenant(
            "acme",
            pb::CommitRequest {
                request_id: "commit-1".into(),
                reservation_id: reservation.reservation_id.clone(),
                portions: vec![p1.clone(), p2.clone()],
                snapshot: Some(record.clone()),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(committed.committed_bytes, 2000);
    let after = status(&mut fat).await;
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
        .list_snapshots(as_tenant("acme", pb::ListSnapshotsRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.snapshots, vec![record.clone()]);
    let got = fat
        .get_snapshot(as_tenant(
            "acme",
            pb::GetSnapshotRequest {
                snapshot_id: snapshot_id.clone(),
            },
        ))
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
        .locate_portions(as_tenant(
            "acme",
            pb::LocatePortionsRequest {
                portion_ids: vec![p2.portion_id.clone()],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(located.portions[0].size, 400);

    // Tenant B sees and changes nothing of tenant A's.
    let theirs = fat
        .get_snapshot(as_tenant(
            "globex",
            pb::GetSnapshotRequest {
                snapshot_id: snapshot_id.clone(),
            },
        ))
        .await;
    assert_eq!(theirs.unwrap_err().code(), Code::NotFound);
    let theirs = fat
        .forget(as_tenant(
            "globex",
            pb::ForgetRequest {
                snapshot_id: snapshot_id.clone(),
            },
        ))
        .await;
    assert_eq!(theirs.unwrap_err().code(), Code::NotFound);
    let theirs = fat
        .list_snapshots(as_tenant("globex", pb::ListSnapshotsRequest {}))
        .await
        .unwrap();
    assert!(theirs.into_inner().snapshots.is_empty());
    let theirs = fat
        .locate_portions(as_tenant(
            "globex",
            pb::LocatePortionsRequest {
                portion_ids: vec![p2.portion_id.clone()],
            },
        ))
        .await
        .unwrap();
    assert!(theirs.into_inner().portions.is_empty());

    fat.forget(as_tenant("acme", pb::ForgetRequest { snapshot_id }))
        .await
        .unwrap();
    let list = fat
        .list_snapshots(as_tenant("acme", pb::ListSnapshotsRequest {}))
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
    let reservation = reserve(&mut fat, "acme", "r-1", 500, 1).await.unwrap();
    let ids = candidate_ids(&reservation);
    assert_eq!(ids.len(), 3);
    let outsider = (0..6)
        .map(|i| format!("vendor-{i}"))
        .find(|v| !ids.contains(v))
        .unwrap();
    let before = status(&mut fat).await;

    let bad = fat
        .commit(as_tenant(
            "acme",
            pb::CommitRequest {
                request_id: "c-1".into(),
                reservation_id: reservation.reservation_id.clone(),
                portions: vec![portion("acme", 100, &[&outsider])],
                snapshot: None,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains(&outsider), "{}", bad.message());
    let after = status(&mut fat).await;
    assert_eq!(after.vendors, before.vendors);
    assert_eq!(after.open_reservations, 1);

    let missing_tenant = fat
        .list_snapshots(pb::ListSnapshotsRequest {})
        .await
        .unwrap_err();
    assert_eq!(missing_tenant.code(), Code::Unauthenticated);
    let good = fat
        .commit(as_tenant(
            "acme",
            pb::CommitRequest {
                request_id: "c-1".into(),
                reservation_id: reservation.reservation_id,
                portions: vec![portion("acme", 100, &[&ids[0]])],
                snapshot: None,
            },
        ))
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
    let err = reserve(&mut fat, "acme", "big", 2000, 2).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("3000 bytes are free"),
        "{}",
        err.message()
    );
    let bad = reserve(&mut fat, "acme", "zero", 10, 0).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(status(&mut fat).await.open_reservations, 0);
    running.shutdown().await;
}

#[tokio::test]
async fn a_reservation_whose_lease_ran_out_is_released() {
    let running = start(1).await;
    vendors(&running, 3, 1 << 20).await;
    let mut fat = running.fat().await;
    reserve(&mut fat, "acme", "r-1", 1000, 2).await.unwrap();
    let reserved = |s: &pb::StatusResponse| s.vendors.iter().map(|v| v.reserved_bytes).sum::<u64>();
    assert!(reserved(&status(&mut fat).await) >= 2000);

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = status(&mut fat).await;
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
            reserve(&mut fat, "acme", &format!("r-{i}"), 3000, 2).await
        }));
    }
    let mut granted = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => granted += 1,
            Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
        }
    }
    let mut fat = running.fat().await;
    let now = status(&mut fat).await;
    assert!(
        granted >= 1 && now.open_reservations == granted,
        "{granted} granted: {now:?}"
    );
    for v in &now.vendors {
        assert!(v.reserved_bytes + v.used_bytes <= v.offered_bytes, "{v:?}");
    }
    running.shutdown().await;
}
