//! Three coordinators in-process on 127.0.0.1 ports, over real gRPC: an
//! election, replication, follower forwarding, snapshot catch-up, restart
//! from disk and the "no quorum" error.

use std::path::PathBuf;
use std::time::{Duration, Instant};

mod common;

use common::{admin_as, fat_as, Registry};
use offsite_coordinator::raft::{GroupStatus, RaftStore};
use offsite_coordinator::{Coordinator, CoordinatorConfig, MemberConfig};
use offsite_identity::Role;
use offsite_proto::pb::admin::admin_client::AdminClient;
use offsite_proto::pb::admin::MarketplaceStatusRequest;
use offsite_proto::pb::coordinator as pb;
use offsite_proto::pb::coordinator::fat_client::FatClient;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Request};

struct Node {
    id: u64,
    address: String,
    dir: PathBuf,
    running: Option<(oneshot::Sender<()>, JoinHandle<()>, RaftStore)>,
}

struct Group {
    nodes: Vec<Node>,
    members: Vec<MemberConfig>,
    snapshot_every: u64,
    _root: tempfile::TempDir,
}

impl Group {
    async fn start(snapshot_every: u64) -> Group {
        let root = tempfile::tempdir().unwrap();
        let mut listeners = Vec::new();
        let mut nodes = Vec::new();
        for id in 1..=3u64 {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap().to_string();
            nodes.push(Node {
                id,
                address,
                dir: root.path().join(format!("c{id}")),
                running: None,
            });
            listeners.push(listener);
        }
        let members = nodes
            .iter()
            .map(|n| MemberConfig {
                id: n.id,
                address: n.address.clone(),
                name: Some(format!("c{}", n.id)),
            })
            .collect();
        let mut group = Group {
            nodes,
            members,
            snapshot_every,
            _root: root,
        };
        for (i, listener) in listeners.into_iter().enumerate() {
            group.run(i, listener).await;
        }
        group
    }

    fn config(&self, i: usize) -> CoordinatorConfig {
        CoordinatorConfig {
            node_id: self.nodes[i].id,
            listen: self.nodes[i].address.parse().unwrap(),
            data_dir: self.nodes[i].dir.clone(),
            initial_members: self.members.clone(),
            heartbeat_ms: 50,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            write_timeout_ms: 2000,
            snapshot_every: self.snapshot_every,
            tls: common::coordinator_tls(
                &self.nodes[i].dir.with_extension("tls"),
                &format!("c{}", self.nodes[i].id),
            ),
            ..CoordinatorConfig::default()
        }
    }

    async fn run(&mut self, i: usize, listener: TcpListener) {
        let coordinator = Coordinator::start_on(self.config(i), listener)
            .await
            .unwrap();
        let store = coordinator.store();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            coordinator
                .serve(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        self.nodes[i].running = Some((stop, task, store));
    }

    async fn stop(&mut self, i: usize) {
        if let Some((stop, task, _)) = self.nodes[i].running.take() {
            let _ = stop.send(());
            task.await.unwrap();
        }
    }

    async fn restart(&mut self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(&self.nodes[i].address).await {
                Ok(listener) => break listener,
                Err(e) => assert!(Instant::now() < deadline, "cannot bind again: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.run(i, listener).await;
    }

    fn status(&self, i: usize) -> GroupStatus {
        self.nodes[i].running.as_ref().unwrap().2.group_status()
    }

    fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].running.is_some())
            .collect()
    }

    /// Waits until the running nodes agree on one leader; returns its index.
    async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let leaders: Vec<_> = self
                .running()
                .into_iter()
                .filter(|i| self.status(*i).role == "leader")
                .collect();
            if let [one] = leaders.as_slice() {
                let id = self.nodes[*one].id;
                if self
                    .running()
                    .iter()
                    .all(|i| self.status(*i).leader.as_ref().map(|l| l.0) == Some(id))
                {
                    return *one;
                }
            }
            assert!(Instant::now() < deadline, "no single leader elected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every running replica holds the same FAT at the same index.
    async fn converged(&self) -> GroupStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let all: Vec<_> = self.running().into_iter().map(|i| self.status(i)).collect();
            let first = &all[0];
            if all.iter().all(|s| {
                s.fat_digest == first.fat_digest && s.last_applied_index == first.last_applied_index
            }) && first.last_applied_index >= first.last_log_index
            {
                return first.clone();
            }
            assert!(
                Instant::now() < deadline,
                "replicas did not converge: {all:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A client of tenant `acme`.
    async fn fat(&self, i: usize) -> FatClient<Channel> {
        fat_as(&self.nodes[i].address, "acme").await
    }

    /// An `Admin` client with tenant `acme`'s certificate (enough for the
    /// marketplace status).
    async fn admin(&self, i: usize) -> AdminClient<Channel> {
        admin_as(&self.nodes[i].address, Role::Tenant, "acme").await
    }

    async fn registry(&self, i: usize) -> Registry {
        Registry::new(self.nodes[i].address.clone())
    }

    async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i).await;
        }
    }
}

async fn register(registry: &mut Registry, n: usize) -> Result<(), tonic::Status> {
    for i in 0..n {
        registry
            .register(pb::RegisterVendorRequest {
                vendor_id: format!("vendor-{i}"),
                address: format!("127.0.0.1:{}", 7100 + i),
                region: ["eu", "us", "ap"][i % 3].into(),
                offered_bytes: 1 << 30,
                network_bytes_per_sec: 0,
                identity_key: common::vendor_key(&format!("vendor-{i}"))
                    .public_key()
                    .to_vec(),
                ..Default::default()
            })
            .await?;
    }
    Ok(())
}

async fn reserve(
    fat: &mut FatClient<Channel>,
    request: &str,
) -> Result<pb::ReserveResponse, tonic::Status> {
    fat.reserve(Request::new(pb::ReserveRequest {
        request_id: request.into(),
        bytes: 1000,
        replication: 2,
        ..Default::default()
    }))
    .await
    .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_elect_replicate_and_forward() {
    let group = Group::start(1000).await;
    let leader = group.leader().await;
    let follower = (leader + 1) % 3;
    let status = group.status(follower);
    assert_eq!(status.members.len(), 3);
    assert!(status.members.iter().all(|m| m.voter));

    // Writes and linearizable reads sent to a follower are forwarded.
    register(&mut group.registry(follower).await, 4)
        .await
        .unwrap();
    let mut fat = group.fat(follower).await;
    let first = reserve(&mut fat, "r-1").await.unwrap();
    let again = reserve(&mut group.fat(leader).await, "r-1").await.unwrap();
    assert_eq!(
        first.reservation_id, again.reservation_id,
        "a retried reserve applies once"
    );
    let listed = fat
        .list_snapshots(Request::new(pb::ListSnapshotsRequest {}))
        .await
        .unwrap();
    assert!(listed.into_inner().snapshots.is_empty());

    let converged = group.converged().await;
    for i in 0..3 {
        let vendors = group
            .admin(i)
            .await
            .marketplace_status(MarketplaceStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(vendors.vendors.len(), 4);
        assert_eq!(vendors.open_reservations, 1);
        assert!(vendors.applied_index >= converged.last_applied_index);
    }
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_catches_up_from_a_snapshot_and_all_restart_from_disk() {
    let mut group = Group::start(20).await;
    let leader = group.leader().await;
    let lagging = (leader + 1) % 3;
    group.stop(lagging).await;
    let mut registry = group.registry(leader).await;
    for round in 0..15 {
        register(&mut registry, 5).await.unwrap();
        reserve(&mut group.fat(leader).await, &format!("r-{round}"))
            .await
            .unwrap();
    }
    group.restart(lagging).await;
    let converged = group.converged().await;
    let caught_up = group.status(lagging);
    assert!(
        caught_up.snapshot_index > 0,
        "the lagging replica got no snapshot: {caught_up:?}"
    );
    assert!(converged.last_applied_index >= 90);

    // A store grant handed out before the restart, and the grant keys.
    let granted = reserve(&mut group.fat(leader).await, "before-restart")
        .await
        .unwrap();
    let keys_before = grant_keys(&mut group.registry(leader).await).await;
    let converged = group.converged().await;

    // Every replica stops; all restart from their disks with the same FAT.
    for i in 0..3 {
        group.stop(i).await;
    }
    for i in 0..3 {
        group.restart(i).await;
    }
    let leader = group.leader().await;
    let after = group.converged().await;
    assert_eq!(after.fat_digest, converged.fat_digest);

    // The grant keys survived: the same keys, the old grant still verifies
    // under them, and the reservation it was issued for is still open.
    let keys_after = grant_keys(&mut group.registry(leader).await).await;
    assert_eq!(
        keys_after, keys_before,
        "the grant keys changed across the restart"
    );
    let verifier = offsite_proto::signing::GrantVerifier::new(&keys_after).unwrap();
    let grant = granted.candidates[0].store_grant.clone().unwrap();
    let grant = offsite_proto::Grant::try_from(grant).unwrap();
    verifier
        .open(&grant, offsite_proto::clock::now_unix_ms())
        .expect("a grant from before the restart verifies under the keys after it");
    let vendors = group
        .admin(leader)
        .await
        .marketplace_status(MarketplaceStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(vendors.open_reservations >= 1, "{vendors:?}");
    group.shutdown().await;
}

/// The group's grant keys, as a registration answers them: (key id, public key).
async fn grant_keys(registry: &mut Registry) -> Vec<(u32, Vec<u8>)> {
    let answer = registry
        .register(pb::RegisterVendorRequest {
            vendor_id: "vendor-0".into(),
            address: "127.0.0.1:7100".into(),
            region: "eu".into(),
            offered_bytes: 1 << 30,
            network_bytes_per_sec: 0,
            identity_key: common::vendor_key("vendor-0").public_key().to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!answer.grant_keys.is_empty(), "no grant keys");
    answer
        .grant_keys
        .into_iter()
        .map(|k| (k.key_id, k.public_key))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_of_three_down_writes_fail_with_no_quorum_in_bounded_time() {
    let mut group = Group::start(1000).await;
    let leader = group.leader().await;
    register(&mut group.registry(leader).await, 3)
        .await
        .unwrap();
    let before = group.converged().await;
    let survivor = (leader + 1) % 3;
    for i in 0..3 {
        if i != survivor {
            group.stop(i).await;
        }
    }
    let started = Instant::now();
    let err = reserve(&mut group.fat(survivor).await, "lost")
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("no quorum: 1 of 3"),
        "{}",
        err.message()
    );
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert_eq!(
        group.status(survivor).fat_digest,
        before.fat_digest,
        "a write without a majority changed the FAT"
    );
    for i in 0..3 {
        if i != survivor {
            group.restart(i).await;
        }
    }
    group.leader().await;
    group.converged().await;
    group.shutdown().await;
}

/// A portion of `tenant` stored on `vendors`, with their signed receipts.
fn signed_portion(tenant: &str, vendors: &[String], reservation: &str) -> pb::PortionPlacement {
    let id = offsite_proto::PortionId::random();
    let hash = offsite_proto::Hash::of(id.as_bytes()).to_vec();
    let receipt = |vendor: &String| {
        common::signed(
            offsite_proto::pb::common::Receipt {
                vendor_id: vendor.clone(),
                tenant_id: tenant.into(),
                portion_id: id.to_string(),
                hash: hash.clone(),
                size: 100,
                signature: vec![],
            },
            reservation,
        )
    };
    pb::PortionPlacement {
        portion_id: id.to_string(),
        hash: hash.clone(),
        size: 100,
        receipts: vendors.iter().map(receipt).collect(),
    }
}

/// A commit of `portions` portions naming a reservation that does not
/// exist, each receipt carrying a 4 KiB signature blob (about 4.3 KB a
/// portion on the wire).
fn hostile_commit(portions: usize) -> pb::CommitRequest {
    let placement = |_| {
        let id = offsite_proto::PortionId::random().to_string();
        pb::PortionPlacement {
            portion_id: id.clone(),
            hash: vec![7; 32],
            size: 100,
            receipts: vec![offsite_proto::pb::common::Receipt {
                vendor_id: "vendor-0".into(),
                tenant_id: "mallory".into(),
                portion_id: id,
                hash: vec![7; 32],
                size: 100,
                signature: vec![9; 4096],
            }],
        }
    };
    pb::CommitRequest {
        request_id: "c-hostile".into(),
        reservation_id: offsite_proto::ReservationId::random().to_string(),
        portions: (0..portions).map(placement).collect(),
        snapshot: None,
    }
}

/// Tenant `acme` reserves and commits one portion through `fat`.
async fn backup_once(fat: &mut FatClient<Channel>, request: &str) {
    let reservation = reserve(fat, request).await.unwrap();
    let vendors: Vec<String> = reservation
        .candidates
        .iter()
        .take(2)
        .map(|c| c.vendor.as_ref().unwrap().vendor_id.clone())
        .collect();
    fat.commit(Request::new(pb::CommitRequest {
        request_id: format!("c-{request}"),
        portions: vec![signed_portion(
            "acme",
            &vendors,
            &reservation.reservation_id,
        )],
        reservation_id: reservation.reservation_id,
        snapshot: None,
    }))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversize_commits_and_locates_are_refused_without_stalling_the_group() {
    let group = Group::start(1000).await;
    let leader = group.leader().await;
    let follower = (leader + 1) % 3;
    register(&mut group.registry(leader).await, 4)
        .await
        .unwrap();
    let mut acme = group.fat(follower).await;
    backup_once(&mut acme, "before").await;
    let before = group.status(leader);
    let bound = Duration::from_secs(10);

    // Another tenant backs up all the while.
    let mut during = group.fat(leader).await;
    let honest = tokio::spawn(async move {
        for round in 0..5 {
            backup_once(&mut during, &format!("during-{round}")).await;
        }
    });

    let mut mallory = fat_as(&group.nodes[follower].address, "mallory").await;
    // About 40 MB: refused before it is read (the Fat service decodes at
    // most limits::MAX_TENANT_REQUEST_BYTES).
    let started = Instant::now();
    let refused = mallory.commit(hostile_commit(9_500)).await.unwrap_err();
    assert!(
        started.elapsed() < bound,
        "answered after {:?}",
        started.elapsed()
    );
    assert_ne!(refused.code(), Code::Unavailable, "{refused:?}");
    // About 3 MB: decoded, but more than one log entry may hold.
    let started = Instant::now();
    let refused = mallory.commit(hostile_commit(700)).await.unwrap_err();
    assert!(
        started.elapsed() < bound,
        "answered after {:?}",
        started.elapsed()
    );
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains(&format!(
            "more than the {} bytes",
            offsite_proto::limits::MAX_COMMAND_BYTES
        )),
        "{}",
        refused.message()
    );
    // About 400 KB naming no reservation: refused by the leader's check,
    // with no log entry.
    let entries = group.status(leader).last_log_index;
    let refused = mallory.commit(hostile_commit(90)).await.unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    assert_eq!(
        group.status(leader).last_log_index,
        entries,
        "a refused commit made a log entry"
    );

    // 100 000 copies of one id: more than one locate may name; 10 000 of
    // them: looked up (and granted) once.
    let id = offsite_proto::PortionId::random().to_string();
    let started = Instant::now();
    let refused = mallory
        .locate_portions(Request::new(pb::LocatePortionsRequest {
            portion_ids: vec![id.clone(); 100_000],
        }))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < bound,
        "answered after {:?}",
        started.elapsed()
    );
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let located = mallory
        .locate_portions(Request::new(pb::LocatePortionsRequest {
            portion_ids: vec![id; offsite_proto::limits::MAX_LOCATE_PER_CALL],
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(located.portions.is_empty());

    tokio::time::timeout(Duration::from_secs(30), honest)
        .await
        .expect("the other tenant's backups stalled")
        .unwrap();
    backup_once(&mut acme, "after").await;
    let after = group.status(leader);
    assert_eq!(after.role, "leader");
    assert_eq!(after.term, before.term, "the group held an election");
    group.converged().await;
    group.shutdown().await;
}
