//! Trust through the real wire, against real processes: every connection is
//! mutual TLS with certificates of the marketplace CA. Plaintext and foreign
//! certificates are refused by the coordinator, a vendor and a NAS device;
//! each certificate's role limits what it may call; a NAS device serves its
//! own vendor only; and tenant B, holding a valid certificate of its own,
//! can neither see nor touch tenant A's snapshots and portions.

use std::ffi::OsString;
use std::net::SocketAddr;

use offsite_identity::pki::CertificateAuthority;
use offsite_identity::{Credentials, PeerIdentity, Role, TlsConfig};
use offsite_proto::pb::admin::admin_client::AdminClient;
use offsite_proto::pb::admin::{GroupStatusRequest, MarketplaceStatusRequest};
use offsite_proto::pb::common::{Receipt, VendorRef};
use offsite_proto::pb::coordinator::fat_client::FatClient;
use offsite_proto::pb::coordinator::vendor_registry_client::VendorRegistryClient;
use offsite_proto::pb::coordinator::{
    BlobLocation, CapacityReport, CommitRequest, ForgetRequest, GetSnapshotRequest,
    ListPortionsRequest, ListSnapshotsRequest, LocatePortionsRequest, PortionPlacement,
    RegisterVendorRequest, ReleaseRequest, ReserveRequest, SnapshotRecord,
};
use offsite_proto::pb::nas::nas_client::NasClient;
use offsite_proto::pb::nas::CapacityRequest;
use offsite_proto::pb::raft::raft_client::RaftClient;
use offsite_proto::pb::raft::RaftBytes;
use offsite_proto::pb::vendor::vendor_client::VendorClient;
use offsite_proto::pb::vendor::{
    store_frame, DeleteRequest, FetchRequest, ProbeRequest, RoutingHeader, StoreFrame,
};
use offsite_proto::{PortionId, ReservationId, SnapshotId};
use offsite_tests::rpc::{self, channel_as, plaintext_channel, Rpc};
use offsite_tests::tree::{self, TreeSpec};
use offsite_tests::{binary, describe, run_bounded, Devnet, DevnetOptions, COORDINATOR};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

/// The second tenant of the isolation test.
const INTRUDER: &str = "intruder";

/// One coordinator, one vendor with one NAS device: enough to knock on
/// every kind of door.
fn small_devnet(dir: &std::path::Path) -> Devnet {
    let options = DevnetOptions {
        coordinators: 1,
        vendors: 1,
        nas_per_vendor: 1,
        replication: 1,
        ..DevnetOptions::default()
    };
    Devnet::start(dir, options).unwrap()
}

/// A call that must fail in the transport (no TLS handshake, or one the
/// server refused), before any service saw it: the connection fails, or the
/// call ends with a transport-level status. A status a service answers with
/// (PermissionDenied, Unauthenticated, NotFound, ...) or a served call fails
/// the test. Returns what happened, for the log.
fn refused<T>(result: anyhow::Result<Result<T, tonic::Status>>) -> String {
    let status = match result {
        Err(e) => return format!("connection refused: {e:#}"),
        Ok(Err(status)) => status,
        Ok(Ok(_)) => panic!("the call was served"),
    };
    let seen = format!("{:?}: {}", status.code(), status.message());
    let in_transport = match status.code() {
        Code::Cancelled | Code::Unavailable => true,
        Code::Internal | Code::Unknown => {
            let message = status.message();
            message.contains("h2 protocol error") || message.contains("transport error")
        }
        _ => false,
    };
    assert!(
        in_transport,
        "refused by a service, not in the transport: {seen}"
    );
    seen
}

fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Code {
    result.expect_err("the call was served").code()
}

/// A channel presenting a certificate of `foreign`'s CA while trusting
/// ours (so only the server can be the one refusing).
async fn foreign_channel(
    ours: &Rpc,
    foreign: &CertificateAuthority,
    addr: SocketAddr,
    server: Role,
) -> anyhow::Result<Channel> {
    let who = PeerIdentity::new(Role::Tenant, rpc::DEVNET_TENANT).map_err(anyhow::Error::msg)?;
    let issued = foreign.issue(&who, &[], 1)?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ours.ca().cert_pem()))
        .identity(Identity::from_pem(&issued.cert_pem, &issued.key_pem))
        .domain_name(server.dns_name());
    Ok(Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect()
        .await?)
}

#[test]
fn plaintext_and_foreign_certificates_are_refused_by_coordinator_vendor_and_nas() {
    let tmp = tempfile::tempdir().unwrap();
    let devnet = small_devnet(&tmp.path().join("devnet"));
    let ours = devnet.rpc();
    let foreign = CertificateAuthority::generate().unwrap();
    let (coordinator, vendor, nas) = (
        devnet.coordinator_addr(),
        devnet.vendor_addr(0),
        devnet.nas_addr(0, 0),
    );
    rpc::block_on(async {
        // Plaintext: no TLS handshake, no answer.
        let plain = refused(
            async {
                let channel = plaintext_channel(coordinator).await?;
                Ok(AdminClient::new(channel)
                    .marketplace_status(MarketplaceStatusRequest {})
                    .await)
            }
            .await,
        );
        println!("plaintext to the coordinator: {plain}");
        let plain = refused(
            async {
                let channel = plaintext_channel(vendor).await?;
                let probe = ProbeRequest {
                    payload: b"x".to_vec(),
                };
                Ok(VendorClient::new(channel).probe(probe).await)
            }
            .await,
        );
        println!("plaintext to the vendor: {plain}");
        let plain = refused(
            async {
                let channel = plaintext_channel(nas).await?;
                Ok(NasClient::new(channel).capacity(CapacityRequest {}).await)
            }
            .await,
        );
        println!("plaintext to the NAS device: {plain}");

        // A certificate of another CA, even naming the devnet tenant.
        let theirs = refused(
            async {
                let channel =
                    foreign_channel(&ours, &foreign, coordinator, Role::Coordinator).await?;
                let request = ListSnapshotsRequest {};
                Ok(FatClient::new(channel).list_snapshots(request).await)
            }
            .await,
        );
        println!("foreign certificate at the coordinator: {theirs}");
        let theirs = refused(
            async {
                let channel = foreign_channel(&ours, &foreign, vendor, Role::Vendor).await?;
                let probe = ProbeRequest {
                    payload: b"x".to_vec(),
                };
                Ok(VendorClient::new(channel).probe(probe).await)
            }
            .await,
        );
        println!("foreign certificate at the vendor: {theirs}");
        let theirs = refused(
            async {
                let channel = foreign_channel(&ours, &foreign, nas, Role::Nas).await?;
                Ok(NasClient::new(channel).capacity(CapacityRequest {}).await)
            }
            .await,
        );
        println!("foreign certificate at the NAS device: {theirs}");

        // And a client does not accept a server outside its CA either.
        let outsider = foreign
            .credentials(&PeerIdentity::new(Role::Tenant, rpc::DEVNET_TENANT).unwrap())
            .unwrap();
        assert!(channel_as(&outsider, coordinator, Role::Coordinator)
            .await
            .is_err());
    })
    .unwrap();
    // The devnet's own certificates still work.
    devnet.status().unwrap();
}

/// `offsite-coordinator status` presenting `tls`.
fn status_cli(coordinator: SocketAddr, tls: &TlsConfig) -> std::process::Output {
    let mut command = std::process::Command::new(binary(COORDINATOR).unwrap());
    command
        .args(["status", "--coordinator", &coordinator.to_string(), "--ca"])
        .arg(&tls.ca)
        .arg("--cert")
        .arg(&tls.cert)
        .arg("--key")
        .arg(&tls.key);
    run_bounded(command, std::time::Duration::from_secs(60)).unwrap()
}

#[test]
fn each_certificate_may_make_only_the_calls_of_its_role() {
    let tmp = tempfile::tempdir().unwrap();
    let devnet = small_devnet(&tmp.path().join("devnet"));
    let rpc = devnet.rpc();
    let coordinator = devnet.coordinator_addr();

    // The admin CLI runs with an admin certificate, and not with a tenant's.
    let admin = rpc.tls(Role::Admin, rpc::HARNESS_ADMIN).unwrap();
    let output = status_cli(coordinator, &admin);
    assert!(output.status.success(), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("vendor-1"));
    let tenant_files = rpc.tls(Role::Tenant, rpc::DEVNET_TENANT).unwrap();
    let output = status_cli(coordinator, &tenant_files);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("admin certificate"),
        "{}",
        describe(&output)
    );

    let nas = devnet.nas_addr(0, 0);
    let vendor_1 = rpc.credentials(Role::Vendor, "vendor-1").unwrap();
    let vendor_2 = rpc.credentials(Role::Vendor, "vendor-2").unwrap();
    let tenant = rpc.tenant().clone();
    let register = |id: &str| RegisterVendorRequest {
        vendor_id: id.into(),
        address: "127.0.0.1:1".into(),
        region: "eu-west".into(),
        offered_bytes: 1 << 20,
        network_bytes_per_sec: 0,
        identity_key: vec![],
        ..Default::default()
    };
    rpc::block_on(async move {
        let as_role = |credentials: Credentials, server: Role, addr: SocketAddr| async move {
            channel_as(&credentials, addr, server).await.unwrap()
        };

        // A vendor certificate calling tenant RPCs.
        let mut fat =
            FatClient::new(as_role(vendor_1.clone(), Role::Coordinator, coordinator).await);
        let denied = fat.list_snapshots(ListSnapshotsRequest {}).await;
        assert_eq!(code(denied), Code::PermissionDenied);
        let reserve = ReserveRequest {
            request_id: "r-1".into(),
            bytes: 1000,
            replication: 1,
            ..Default::default()
        };
        assert_eq!(code(fat.reserve(reserve).await), Code::PermissionDenied);

        // A tenant certificate calling vendor registration and Raft.
        let channel = as_role(tenant.clone(), Role::Coordinator, coordinator).await;
        let mut registry = VendorRegistryClient::new(channel.clone());
        let denied = registry.register(register("vendor-1")).await.unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
        assert!(denied.message().contains("vendor"), "{}", denied.message());
        let report = CapacityReport {
            vendor_id: "vendor-1".into(),
            offered_bytes: 1,
            stored_bytes: 0,
            ..Default::default()
        };
        assert_eq!(
            code(registry.report_capacity(report).await),
            Code::PermissionDenied
        );
        let mut raft = RaftClient::new(channel.clone());
        let bytes = RaftBytes { data: vec![0] };
        assert_eq!(code(raft.vote(bytes.clone()).await), Code::PermissionDenied);
        assert_eq!(
            code(raft.append_entries(bytes).await),
            Code::PermissionDenied
        );
        let mut admin = AdminClient::new(channel);
        assert_eq!(
            code(admin.group_status(GroupStatusRequest {}).await),
            Code::PermissionDenied
        );

        // A vendor speaks only for itself.
        let channel = as_role(vendor_2.clone(), Role::Coordinator, coordinator).await;
        let mut registry = VendorRegistryClient::new(channel.clone());
        let denied = registry.register(register("vendor-1")).await.unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
        assert!(
            denied.message().contains("vendor-1"),
            "{}",
            denied.message()
        );
        // ... and it is no coordinator.
        let mut raft = RaftClient::new(channel);
        let bytes = RaftBytes { data: vec![0] };
        assert_eq!(code(raft.vote(bytes).await), Code::PermissionDenied);

        // The admin certificate may read the group, not vote in it.
        let channel = as_role(rpc.admin().clone(), Role::Coordinator, coordinator).await;
        let mut admin = AdminClient::new(channel.clone());
        admin.group_status(GroupStatusRequest {}).await.unwrap();
        let mut raft = RaftClient::new(channel);
        let bytes = RaftBytes { data: vec![0] };
        assert_eq!(code(raft.vote(bytes).await), Code::PermissionDenied);

        // A NAS device serves its own vendor only.
        let mut own = NasClient::new(as_role(vendor_1, Role::Nas, nas).await);
        own.capacity(CapacityRequest {}).await.unwrap();
        let mut other = NasClient::new(as_role(vendor_2, Role::Nas, nas).await);
        let denied = other.capacity(CapacityRequest {}).await.unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
        assert!(
            denied.message().contains("vendor-1"),
            "{}",
            denied.message()
        );
        let mut tenant_at_nas = NasClient::new(as_role(tenant, Role::Nas, nas).await);
        assert_eq!(
            code(tenant_at_nas.capacity(CapacityRequest {}).await),
            Code::PermissionDenied
        );
    })
    .unwrap();
}

/// Tenant A's (the devnet tenant's) snapshot as its own client sees it.
struct Theirs {
    snapshot: SnapshotRecord,
    portion: String,
    holder: SocketAddr,
}

fn tenant_a_backs_up(devnet: &Devnet, source: &std::path::Path) -> Theirs {
    devnet.client_ok(["init"]).unwrap();
    devnet
        .client_ok([OsString::from("backup"), source.into()])
        .unwrap();
    let coordinator = devnet.coordinator_addr();
    let rpc = devnet.rpc();
    rpc::block_on(async move {
        let mut fat = rpc.fat(coordinator).await.unwrap();
        let list = fat
            .list_snapshots(ListSnapshotsRequest {})
            .await
            .unwrap()
            .into_inner();
        let snapshot = list.snapshots.into_iter().next().expect("A's snapshot");
        let portion = snapshot.portion_ids[0].clone();
        let located = fat
            .locate_portions(LocatePortionsRequest {
                portion_ids: vec![portion.clone()],
            })
            .await
            .unwrap()
            .into_inner();
        let holder = located.portions[0].vendors[0].address.parse().unwrap();
        Theirs {
            snapshot,
            portion,
            holder,
        }
    })
    .unwrap()
}

#[test]
fn tenant_b_cannot_list_get_locate_forget_commit_fetch_or_delete_tenant_a_data() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    let spec = TreeSpec {
        big_files: vec![300 * 1024],
        small_files: 5,
        ..TreeSpec::small()
    };
    tree::generate(&source, &spec).unwrap();
    let options = DevnetOptions {
        coordinators: 1,
        vendors: 3,
        nas_per_vendor: 1,
        replication: 2,
        ..DevnetOptions::default()
    };
    let devnet = Devnet::start(&tmp.path().join("devnet"), options).unwrap();
    let theirs = tenant_a_backs_up(&devnet, &source);
    let rpc = devnet.rpc();
    let intruder = rpc.credentials(Role::Tenant, INTRUDER).unwrap();
    let coordinator = devnet.coordinator_addr();
    let snapshot_id = theirs.snapshot.snapshot_id.clone();
    let tenant_a = rpc.clone();
    rpc::block_on(async move {
        let channel = channel_as(&intruder, coordinator, Role::Coordinator)
            .await
            .unwrap();
        let mut b = FatClient::new(channel);

        // list
        let listed = b.list_snapshots(ListSnapshotsRequest {}).await.unwrap();
        assert!(
            listed.into_inner().snapshots.is_empty(),
            "B listed A's snapshots"
        );
        let portions = ListPortionsRequest {
            after_portion_id: String::new(),
            limit: 100,
        };
        let listed = b.list_portions(portions).await.unwrap();
        assert!(
            listed.into_inner().portions.is_empty(),
            "B listed A's portions"
        );
        // get
        let get = GetSnapshotRequest {
            snapshot_id: snapshot_id.clone(),
        };
        assert_eq!(code(b.get_snapshot(get).await), Code::NotFound);
        // locate
        let locate = LocatePortionsRequest {
            portion_ids: theirs.snapshot.portion_ids.clone(),
        };
        let located = b.locate_portions(locate).await.unwrap().into_inner();
        assert!(
            located.portions.is_empty(),
            "B located A's portions: {located:?}"
        );
        // forget
        let forget = ForgetRequest {
            snapshot_id: snapshot_id.clone(),
        };
        assert_eq!(code(b.forget(forget).await), Code::NotFound);

        // commit into A's reservation
        let mut a = tenant_a.fat(coordinator).await.unwrap();
        let reservation = a
            .reserve(ReserveRequest {
                request_id: "a-open".into(),
                bytes: 1000,
                replication: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let candidate = reservation.candidates[0].vendor.clone().unwrap();
        let portion = PortionId::random().to_string();
        let hash = vec![7u8; 32];
        let placement = PortionPlacement {
            portion_id: portion.clone(),
            hash: hash.clone(),
            size: 100,
            receipts: vec![Receipt {
                vendor_id: candidate.vendor_id.clone(),
                tenant_id: INTRUDER.into(),
                portion_id: portion,
                hash,
                size: 100,
                signature: vec![],
            }],
        };
        let into_theirs = CommitRequest {
            request_id: "b-commit".into(),
            reservation_id: reservation.reservation_id.clone(),
            portions: vec![placement],
            snapshot: None,
        };
        let refused = b.commit(into_theirs).await.unwrap_err();
        assert!(
            matches!(refused.code(), Code::NotFound | Code::PermissionDenied),
            "{refused:?}"
        );
        // ... and A's reservation is still A's to release.
        let release = ReleaseRequest {
            reservation_id: reservation.reservation_id,
        };
        a.release(release).await.unwrap();

        // commit a snapshot of B's naming A's portions
        let own = b
            .reserve(ReserveRequest {
                request_id: "b-own".into(),
                bytes: 1000,
                replication: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let stolen = SnapshotRecord {
            snapshot_id: SnapshotId::random().to_string(),
            host: "intruder-host".into(),
            time_unix_ms: 1,
            paths: vec!["/".into()],
            tags: vec![],
            manifest: theirs.snapshot.manifest.clone().or(Some(BlobLocation {
                portion_id: theirs.portion.clone(),
                offset: 0,
                length: 1,
            })),
            portion_ids: theirs.snapshot.portion_ids.clone(),
            logical_bytes: 1,
            file_count: 1,
        };
        let steal = CommitRequest {
            request_id: "b-steal".into(),
            reservation_id: own.reservation_id,
            portions: vec![],
            snapshot: Some(stolen),
        };
        let refused = b.commit(steal).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(
            refused
                .message()
                .contains("not a committed portion of tenant intruder"),
            "{}",
            refused.message()
        );
        assert!(
            b.list_snapshots(ListSnapshotsRequest {})
                .await
                .unwrap()
                .into_inner()
                .snapshots
                .is_empty(),
            "B got a snapshot of A's portions"
        );

        // At the vendor holding A's portion: fetch and delete.
        let channel = channel_as(&intruder, theirs.holder, Role::Vendor)
            .await
            .unwrap();
        let mut vendor = VendorClient::new(channel);
        let fetch = |tenant: &str| FetchRequest {
            tenant_id: tenant.into(),
            portion_id: theirs.portion.clone(),
            offset: 0,
            length: 0,
            grant: None,
        };
        let denied = vendor.fetch(fetch(rpc::DEVNET_TENANT)).await.unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
        let mut as_self = vendor.fetch(fetch(INTRUDER)).await.map(|r| r.into_inner());
        let not_held = match &mut as_self {
            Ok(stream) => stream.message().await.unwrap_err().code(),
            Err(status) => status.code(),
        };
        // B holds no fetch grant for it (the coordinator signs grants only
        // for a tenant's own portions), and B holds no such portion.
        assert!(
            matches!(not_held, Code::PermissionDenied | Code::NotFound),
            "{not_held:?}"
        );
        let delete = DeleteRequest {
            tenant_id: rpc::DEVNET_TENANT.into(),
            portion_id: theirs.portion.clone(),
            grant: None,
        };
        assert_eq!(code(vendor.delete(delete).await), Code::PermissionDenied);
        // A store under A's name.
        let header = RoutingHeader {
            tenant_id: rpc::DEVNET_TENANT.into(),
            portion_id: PortionId::random().to_string(),
            hash: vec![0; 32],
            size: 1,
            route: vec![VendorRef {
                vendor_id: located_id(&tenant_a, coordinator, &theirs.portion).await,
                address: theirs.holder.to_string(),
            }],
            piece_size: 5 * 1024 * 1024,
            grants: vec![],
            reservation_id: ReservationId::random().to_string(),
        };
        let frames = vec![StoreFrame {
            frame: Some(store_frame::Frame::Header(header)),
        }];
        let denied = vendor.store(tokio_stream::iter(frames)).await.unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    })
    .unwrap();

    // A's backup is whole: A still lists and restores it.
    devnet
        .restore_latest_matches(&source, &tmp.path().join("restore"))
        .unwrap();
}

/// The id of the first vendor holding `portion`, as tenant A locates it.
async fn located_id(a: &Rpc, coordinator: SocketAddr, portion: &str) -> String {
    let mut fat = a.fat(coordinator).await.unwrap();
    let located = fat
        .locate_portions(LocatePortionsRequest {
            portion_ids: vec![portion.to_string()],
        })
        .await
        .unwrap()
        .into_inner();
    located.portions[0].vendors[0].vendor_id.clone()
}
