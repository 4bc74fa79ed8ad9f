//! Grants and receipts against real processes: a real vendor stores only
//! under a store grant the coordinator group signed for exactly that tenant,
//! vendor and reservation, and serves a portion only under its fetch grant;
//! the coordinator accepts a commit only with receipts signed by the
//! vendors' registered identity keys; and rotating the group's grant key
//! (`offsite-coordinator grant-key rotate`) keeps backups and restores
//! working, grants signed before the rotation included.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::Duration;

use offsite_identity::Role;
use offsite_proto::limits::FRAME_BYTES;
use offsite_proto::pb::common::{Grant, Receipt, VendorRef};
use offsite_proto::pb::coordinator::fat_client::FatClient;
use offsite_proto::pb::coordinator::{
    Candidate, CommitRequest, LocatePortionsRequest, PortionPlacement, ReserveRequest,
    ReserveResponse,
};
use offsite_proto::pb::vendor::vendor_client::VendorClient;
use offsite_proto::pb::vendor::{
    store_frame, FetchRequest, RoutingHeader, StoreFrame, StoreResponse,
};
use offsite_proto::signing::{GrantBody, GrantOp, GrantSubject, GroupKey, VendorKey};
use offsite_proto::{Hash, PortionId, ReservationId, TenantId, VendorId};
use offsite_tests::rpc::{self, channel_as, Rpc};
use offsite_tests::tree::{self, TreeSpec};
use offsite_tests::{describe, run_bounded, wait_for, Devnet, DevnetOptions};
use tonic::transport::Channel;
use tonic::Code;

const PIECE: u64 = 1024 * 1024;

/// One coordinator and two vendors, each with one NAS device.
fn devnet(dir: &std::path::Path, lease_secs: u64) -> Devnet {
    let options = DevnetOptions {
        coordinators: 1,
        vendors: 2,
        nas_per_vendor: 1,
        replication: 1,
        lease_secs,
        ..DevnetOptions::default()
    };
    Devnet::start(dir, options).unwrap()
}

async fn reserve(fat: &mut FatClient<Channel>, request: &str, bytes: u64) -> ReserveResponse {
    fat.reserve(ReserveRequest {
        request_id: request.into(),
        bytes,
        replication: 1,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

fn vendor_of(c: &Candidate) -> VendorRef {
    c.vendor.clone().unwrap()
}

/// A store header for `data` at `candidate` under `reservation`, carrying `grant`.
fn header(
    tenant: &str,
    reservation: &str,
    candidate: &Candidate,
    data: &[u8],
    grant: Option<Grant>,
) -> RoutingHeader {
    RoutingHeader {
        tenant_id: tenant.into(),
        portion_id: PortionId::random().to_string(),
        hash: Hash::of(data).to_vec(),
        size: data.len() as u64,
        route: vec![vendor_of(candidate)],
        piece_size: PIECE,
        grants: grant.into_iter().collect(),
        reservation_id: reservation.into(),
    }
}

/// The whole answer of a store: receipts and the route's failures.
async fn store_answer(
    client: &mut VendorClient<Channel>,
    header: RoutingHeader,
    data: &[u8],
) -> Result<StoreResponse, tonic::Status> {
    let mut frames = vec![StoreFrame {
        frame: Some(store_frame::Frame::Header(header)),
    }];
    frames.extend(data.chunks(FRAME_BYTES).map(|c| StoreFrame {
        frame: Some(store_frame::Frame::Data(c.to_vec().into())),
    }));
    client
        .store(tokio_stream::iter(frames))
        .await
        .map(tonic::Response::into_inner)
}

async fn store(
    client: &mut VendorClient<Channel>,
    header: RoutingHeader,
    data: &[u8],
) -> Result<Vec<Receipt>, tonic::Status> {
    store_answer(client, header, data).await.map(|r| r.receipts)
}

async fn vendor_as(rpc: &Rpc, tenant: &str, address: &str) -> VendorClient<Channel> {
    let credentials = rpc.credentials(Role::Tenant, tenant).unwrap();
    let addr: SocketAddr = address.parse().unwrap();
    VendorClient::new(channel_as(&credentials, addr, Role::Vendor).await.unwrap())
}

fn refused(result: Result<Vec<Receipt>, tonic::Status>, needle: &str) {
    let status = result.expect_err("the store was accepted");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains(needle),
        "{:?} lacks {needle:?}",
        status.message()
    );
}

/// The body a store grant of `candidate` in `reservation` would have.
fn store_body(tenant: &str, reservation: &ReserveResponse, c: &Candidate) -> GrantBody {
    GrantBody {
        op: GrantOp::Store,
        tenant: TenantId::new(tenant).unwrap(),
        vendor: VendorId::new(vendor_of(c).vendor_id).unwrap(),
        subject: GrantSubject::Reservation(
            ReservationId::parse(&reservation.reservation_id).unwrap(),
        ),
        max_bytes: c.reserved_bytes,
        expires_unix_ms: reservation.lease_expires_unix_ms,
        address: vendor_of(c).address,
    }
}

fn placement(data: &[u8], receipts: Vec<Receipt>) -> PortionPlacement {
    PortionPlacement {
        portion_id: receipts[0].portion_id.clone(),
        hash: Hash::of(data).to_vec(),
        size: data.len() as u64,
        receipts,
    }
}

#[test]
fn real_vendors_check_grants_and_the_coordinator_checks_receipts() {
    let tmp = tempfile::tempdir().unwrap();
    let devnet = devnet(&tmp.path().join("devnet"), 20);
    let rpc = devnet.rpc();
    let coordinator = devnet.coordinator_addr();
    let tenant = rpc::DEVNET_TENANT;
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    rpc::block_on(async move {
        let mut fat = rpc.fat(coordinator).await.unwrap();
        let r1 = reserve(&mut fat, "grants-1", 1_000_000).await;
        let r2 = reserve(&mut fat, "grants-2", 1_000_000).await;
        let (c1, c2) = (&r1.candidates[0], &r1.candidates[1]);
        let grant1 = c1.store_grant.clone().unwrap();
        let grant2 = c2.store_grant.clone().unwrap();
        let mut at_c1 = vendor_as(&rpc, tenant, &vendor_of(c1).address).await;

        // No grant, another vendor's, another reservation's, another
        // tenant's, a foreign key's: each refused by name.
        let h = |grant| header(tenant, &r1.reservation_id, c1, &data, grant);
        refused(store(&mut at_c1, h(None), &data).await, "no grant was sent");
        refused(
            store(&mut at_c1, h(Some(grant2)), &data).await,
            &format!("it is for vendor {}", vendor_of(c2).vendor_id),
        );
        let mut other_reservation = h(Some(grant1.clone()));
        other_reservation.reservation_id = r2.reservation_id.clone();
        refused(
            store(&mut at_c1, other_reservation, &data).await,
            "it is for Reservation",
        );
        let mut intruder_at_c1 = vendor_as(&rpc, "intruder", &vendor_of(c1).address).await;
        let theirs = header(
            "intruder",
            &r1.reservation_id,
            c1,
            &data,
            Some(grant1.clone()),
        );
        refused(
            store(&mut intruder_at_c1, theirs, &data).await,
            &format!("it is for tenant {tenant}"),
        );
        let foreign = GroupKey::from_secret(1, &[7; 32]).grant(&store_body(tenant, &r1, c1));
        refused(
            store(&mut at_c1, h(Some(foreign.into())), &data).await,
            "does not verify",
        );

        // The right grant stores; the receipt is the vendor's, signed.
        let receipts = store(&mut at_c1, h(Some(grant1.clone())), &data)
            .await
            .unwrap();
        let other_data: Vec<u8> = data.iter().rev().copied().collect();
        let other_receipts = store(
            &mut at_c1,
            header(tenant, &r1.reservation_id, c1, &other_data, Some(grant1)),
            &other_data,
        )
        .await
        .unwrap();

        // A forged receipt (flipped, or re-signed by another key) is
        // refused and the FAT is unchanged.
        let status_before = rpc.status(coordinator).await.unwrap();
        let mut flipped = receipts.clone();
        flipped[0].signature[5] ^= 0x10;
        let mut resigned = offsite_proto::Receipt::try_from(receipts[0].clone()).unwrap();
        let r1_id = offsite_proto::ReservationId::parse(&r1.reservation_id).unwrap();
        VendorKey::from_secret(&[9; 32]).sign(&mut resigned, &r1_id);
        let mut unsigned = receipts.clone();
        unsigned[0].signature.clear();
        for (why, forged, needle) in [
            ("flipped", flipped, "forged"),
            ("re-signed", vec![resigned.into()], "forged"),
            ("unsigned", unsigned, "not signed"),
        ] {
            let commit = CommitRequest {
                request_id: format!("commit-{why}"),
                reservation_id: r1.reservation_id.clone(),
                portions: vec![placement(&data, forged)],
                snapshot: None,
            };
            let status = fat.commit(commit).await.unwrap_err();
            assert_eq!(status.code(), Code::PermissionDenied, "{why}: {status:?}");
            assert!(
                status.message().contains(needle)
                    && status.message().contains(&vendor_of(c1).vendor_id),
                "{why}: {}",
                status.message()
            );
            let after = rpc.status(coordinator).await.unwrap();
            assert_eq!(after.vendors, status_before.vendors, "{why}");
            assert_eq!(after.portions, status_before.portions, "{why}");
        }
        // The genuine receipts answer r1 only: sent in a commit of r2 (whose
        // candidates include their vendor) they are refused.
        assert!(
            r2.candidates.iter().any(|c| vendor_of(c) == vendor_of(c1)),
            "both devnet vendors are candidates of every reservation"
        );
        let replayed = fat
            .commit(CommitRequest {
                request_id: "commit-replayed".into(),
                reservation_id: r2.reservation_id.clone(),
                portions: vec![placement(&data, receipts.clone())],
                snapshot: None,
            })
            .await
            .unwrap_err();
        assert_eq!(replayed.code(), Code::PermissionDenied, "{replayed:?}");
        assert!(
            replayed
                .message()
                .contains(&format!("does not answer {}", r2.reservation_id)),
            "{}",
            replayed.message()
        );

        // The genuine receipts commit.
        fat.commit(CommitRequest {
            request_id: "commit-good".into(),
            reservation_id: r1.reservation_id.clone(),
            portions: vec![
                placement(&data, receipts.clone()),
                placement(&other_data, other_receipts.clone()),
            ],
            snapshot: None,
        })
        .await
        .unwrap();

        // A fetch needs the grant of its own portion.
        let located = fat
            .locate_portions(LocatePortionsRequest {
                portion_ids: vec![
                    receipts[0].portion_id.clone(),
                    other_receipts[0].portion_id.clone(),
                ],
            })
            .await
            .unwrap()
            .into_inner();
        let grant_of = |portion: &str| {
            let l = located
                .portions
                .iter()
                .find(|l| l.portion_id == portion)
                .unwrap();
            l.fetch_grants[0].clone()
        };
        let fetch = |grant: Grant| FetchRequest {
            tenant_id: tenant.into(),
            portion_id: receipts[0].portion_id.clone(),
            offset: 0,
            length: 0,
            grant: Some(grant),
        };
        let wrong = at_c1
            .fetch(fetch(grant_of(&other_receipts[0].portion_id)))
            .await
            .unwrap_err();
        assert_eq!(wrong.code(), Code::PermissionDenied, "{wrong:?}");
        assert!(
            wrong.message().contains("it is for Portion"),
            "{}",
            wrong.message()
        );
        let mut stream = at_c1
            .fetch(fetch(grant_of(&receipts[0].portion_id)))
            .await
            .unwrap()
            .into_inner();
        let mut back = Vec::new();
        while let Some(frame) = stream.message().await.unwrap() {
            back.extend_from_slice(&frame.data);
        }
        assert_eq!(back, data);

        // Once the lease ran out (and the clock skew vendors allow), its
        // store grant has expired.
        let expires = r2.lease_expires_unix_ms;
        let c = &r2.candidates[0];
        let mut at_c = vendor_as(&rpc, tenant, &vendor_of(c).address).await;
        let late = header(tenant, &r2.reservation_id, c, &data, c.store_grant.clone());
        let now = offsite_proto::clock::now_unix_ms;
        while now() <= expires + offsite_proto::signing::GRANT_CLOCK_SKEW_MS + 200 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        refused(
            store(&mut at_c, late, &data).await,
            &format!("the grant expired at {expires}"),
        );
    })
    .unwrap();
}

/// `offsite-coordinator grant-key rotate` with the certificate of `role`/`name`.
fn rotate_as(devnet: &Devnet, role: Role, name: &str) -> std::process::Output {
    let mut command = devnet.coordinator_cli("grant-key", role, name).unwrap();
    command.arg("rotate");
    run_bounded(command, Duration::from_secs(60)).unwrap()
}

/// `offsite-coordinator grant-key rotate`, as the harness admin.
fn rotate(devnet: &Devnet) -> String {
    let output = rotate_as(devnet, Role::Admin, rpc::HARNESS_ADMIN);
    assert!(output.status.success(), "{}", describe(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_grant_key_rotation_keeps_backups_restores_and_earlier_grants_working() {
    let tmp = tempfile::tempdir().unwrap();
    let devnet = devnet(&tmp.path().join("devnet"), 120);
    let source = tmp.path().join("source");
    tree::generate(&source, &TreeSpec::small()).unwrap();
    devnet.client_ok(["init"]).unwrap();
    devnet
        .client_ok([OsString::from("backup"), source.clone().into()])
        .unwrap();

    // A reservation made before the rotation, used after it.
    let rpc = devnet.rpc();
    let coordinator = devnet.coordinator_addr();
    let before = rpc::block_on({
        let rpc = rpc.clone();
        async move {
            let mut fat = rpc.fat(coordinator).await.unwrap();
            reserve(&mut fat, "before-rotation", 1_000_000).await
        }
    })
    .unwrap();

    let printed = rotate(&devnet);
    assert!(
        printed.contains("grant key 2 signs from now on"),
        "{printed}"
    );
    // The second rotation keeps key 1 too (the FAT keeps the last three).
    let printed = rotate(&devnet);
    assert!(
        printed.contains("grant key 3 signs from now on"),
        "{printed}"
    );

    // Vendors learn the new key with their next report: a fresh grant works
    // at every candidate (so the backup below meets no vendor that has not
    // learned it yet).
    let data = vec![5u8; 100_000];
    wait_for(
        "every vendor to accept a grant of the new key",
        Duration::from_secs(30),
        || {
            let rpc = rpc.clone();
            let data = data.clone();
            rpc::block_on(async move {
                let mut fat = rpc.fat(coordinator).await?;
                let request = format!("after-{}", PortionId::random());
                let fresh = reserve(&mut fat, &request, 1_000_000).await;
                for c in &fresh.candidates {
                    let mut client =
                        vendor_as(&rpc, rpc::DEVNET_TENANT, &vendor_of(c).address).await;
                    let h = header(
                        rpc::DEVNET_TENANT,
                        &fresh.reservation_id,
                        c,
                        &data,
                        c.store_grant.clone(),
                    );
                    if store(&mut client, h, &data).await.is_err() {
                        return Ok::<_, anyhow::Error>(None);
                    }
                }
                Ok(Some(()))
            })?
        },
    )
    .unwrap();

    // The grant signed before the rotation still stores.
    rpc::block_on({
        let rpc = rpc.clone();
        async move {
            let c = &before.candidates[0];
            let mut client = vendor_as(&rpc, rpc::DEVNET_TENANT, &vendor_of(c).address).await;
            let h = header(
                rpc::DEVNET_TENANT,
                &before.reservation_id,
                c,
                &data,
                c.store_grant.clone(),
            );
            store(&mut client, h, &data).await.unwrap();
        }
    })
    .unwrap();

    // Backups and restores go on under the new key.
    std::fs::write(
        source.join("after-rotation.txt"),
        b"written after the rotation",
    )
    .unwrap();
    devnet
        .client_ok([OsString::from("backup"), source.clone().into()])
        .unwrap();
    devnet
        .restore_latest_matches(&source, &tmp.path().join("restore"))
        .unwrap();

    // The admin command needs an admin certificate: a tenant's is refused,
    // and so is a coordinator's, by the command itself.
    let output = rotate_as(&devnet, Role::Tenant, rpc::DEVNET_TENANT);
    assert!(!output.status.success(), "{}", describe(&output));
    let output = rotate_as(&devnet, Role::Coordinator, "coordinator-x");
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("needs an admin certificate"),
        "{}",
        describe(&output)
    );
}

/// A tenant cannot make a vendor dial an address of the tenant's choosing:
/// the next hop is dialled at the address its store grant names (the one it
/// registered), and a next hop without a valid grant is not dialled at all.
/// A listener the test owns stands in for what a scan would probe; it must
/// never be reached.
#[test]
fn a_route_cannot_aim_a_vendor_at_an_address_the_sender_chose() {
    let tmp = tempfile::tempdir().unwrap();
    let devnet = devnet(&tmp.path().join("devnet"), 20);
    let rpc = devnet.rpc();
    let coordinator = devnet.coordinator_addr();
    let tenant = rpc::DEVNET_TENANT;
    let bait = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    bait.set_nonblocking(true).unwrap();
    let bait_addr = bait.local_addr().unwrap().to_string();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
    let bait_for_route = bait_addr.clone();
    let (aimed, ungranted) = rpc::block_on(async move {
        let mut fat = rpc.fat(coordinator).await.unwrap();
        let r = reserve(&mut fat, "aim-1", 1_000_000).await;
        let (c1, c2) = (&r.candidates[0], &r.candidates[1]);
        let mut at_c1 = vendor_as(&rpc, tenant, &vendor_of(c1).address).await;
        let route = |grants: Vec<Grant>| {
            let mut h = header(tenant, &r.reservation_id, c1, &data, None);
            let mut aimed = vendor_of(c2);
            aimed.address = bait_for_route.clone();
            h.route.push(aimed);
            h.grants = grants;
            h
        };
        let g1 = c1.store_grant.clone().unwrap();
        let g2 = c2.store_grant.clone().unwrap();
        let aimed = store_answer(&mut at_c1, route(vec![g1.clone(), g2]), &data)
            .await
            .unwrap();
        // The second hop's grant is the first vendor's own: not valid there.
        let ungranted = store_answer(&mut at_c1, route(vec![g1.clone(), g1]), &data)
            .await
            .unwrap();
        (aimed, ungranted)
    })
    .unwrap();
    let holders: Vec<&str> = aimed
        .receipts
        .iter()
        .map(|r| r.vendor_id.as_str())
        .collect();
    assert_eq!(
        holders.len(),
        2,
        "both vendors store when the second is dialled at its registered address: {aimed:?}"
    );
    assert_eq!(ungranted.receipts.len(), 1, "{ungranted:?}");
    let failure = &ungranted.failures[0];
    assert!(
        failure.error.contains("not forwarded") && failure.error.contains("does not check"),
        "{failure:?}"
    );
    for answer in [&aimed, &ungranted] {
        for f in &answer.failures {
            assert!(
                !f.error.contains(&bait_addr),
                "the caller's address leaks: {f:?}"
            );
        }
    }
    match bait.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the vendor dialled the address the route named: {other:?}"),
    }
}
