//! Vendor liveness as the leader proposes it, in-process over gRPC: a vendor
//! that stops reporting becomes suspect, then down, and gets no new
//! reservations; it is up again as soon as it reports.

use std::time::{Duration, Instant};

mod common;

use common::{admin_as, fat_as, Registry};
use offsite_coordinator::{Coordinator, CoordinatorConfig};
use offsite_identity::Role;
use offsite_proto::pb::admin::admin_client::AdminClient;
use offsite_proto::pb::admin::MarketplaceStatusRequest;
use offsite_proto::pb::coordinator as pb;
use offsite_proto::pb::coordinator::fat_client::FatClient;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::{Code, Request};

const VENDORS: usize = 4;
const SILENT: &str = "vendor-3";

async fn report(registry: &mut Registry, id: &str) {
    registry
        .report_capacity(pb::CapacityReport {
            vendor_id: id.into(),
            offered_bytes: 1 << 20,
            stored_bytes: 0,
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn liveness_of(admin: &mut AdminClient<Channel>, id: &str) -> String {
    let status = admin
        .marketplace_status(MarketplaceStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let vendor = status.vendors.iter().find(|v| v.vendor_id == id).unwrap();
    vendor.liveness.clone()
}

/// Polls until `id`'s liveness is `wanted`, for at most `timeout`.
async fn wait_liveness(
    admin: &mut AdminClient<Channel>,
    id: &str,
    wanted: &str,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let now = liveness_of(admin, id).await;
        if now == wanted {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} is {now}, not {wanted}, after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn reserve(
    fat: &mut FatClient<Channel>,
    request: &str,
    replication: u32,
) -> Result<Vec<String>, tonic::Status> {
    let message = pb::ReserveRequest {
        request_id: request.into(),
        bytes: 1000,
        replication,
        ..Default::default()
    };
    let response = fat.reserve(Request::new(message)).await?.into_inner();
    Ok(response
        .candidates
        .into_iter()
        .filter_map(|c| c.vendor.map(|v| v.vendor_id))
        .collect())
}

#[tokio::test]
async fn a_silent_vendor_goes_suspect_then_down_and_comes_back_when_it_reports() {
    let dir = tempfile::tempdir().unwrap();
    let config = CoordinatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("fat"),
        suspect_after_secs: 1,
        down_after_secs: 3,
        sweep_interval_secs: 1,
        tls: common::coordinator_tls(dir.path(), "c1"),
        ..CoordinatorConfig::default()
    };
    let coordinator = Coordinator::start(config).await.unwrap();
    let url = coordinator.local_addr().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(coordinator.serve(async {
        let _ = stopped.await;
    }));

    let mut registry = Registry::new(url.clone());
    for i in 0..VENDORS {
        let request = pb::RegisterVendorRequest {
            vendor_id: format!("vendor-{i}"),
            address: format!("127.0.0.1:{}", 7100 + i),
            region: ["eu-west", "us-east", "ap-south", "eu-north"][i].into(),
            offered_bytes: 1 << 20,
            network_bytes_per_sec: 0,
            identity_key: common::vendor_key(&format!("vendor-{i}"))
                .public_key()
                .to_vec(),
            ..Default::default()
        };
        registry.register(request).await.unwrap();
    }
    // The others keep reporting; vendor-3 falls silent.
    let mut reporter = registry.clone();
    let reporting = tokio::spawn(async move {
        loop {
            for i in 0..VENDORS - 1 {
                report(&mut reporter, &format!("vendor-{i}")).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    let mut fat = fat_as(&url, "acme").await;
    // The marketplace status, asked with the same tenant's certificate.
    let mut admin = admin_as(&url, Role::Tenant, "acme").await;
    assert_eq!(liveness_of(&mut admin, SILENT).await, "up");
    wait_liveness(&mut admin, SILENT, "suspect", Duration::from_secs(10)).await;
    let chosen = reserve(&mut fat, "while-suspect", 3).await.unwrap();
    assert!(!chosen.iter().any(|v| v == SILENT), "{chosen:?}");
    wait_liveness(&mut admin, SILENT, "down", Duration::from_secs(10)).await;
    let err = reserve(&mut fat, "while-down", 4).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    for i in 0..VENDORS - 1 {
        assert_eq!(liveness_of(&mut admin, &format!("vendor-{i}")).await, "up");
    }

    // One report brings it back at once, and it is placed on again.
    report(&mut registry, SILENT).await;
    assert_eq!(liveness_of(&mut admin, SILENT).await, "up");
    let chosen = reserve(&mut fat, "after-report", 4).await.unwrap();
    assert!(chosen.iter().any(|v| v == SILENT), "{chosen:?}");

    reporting.abort();
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
