//! A network partition of the coordinator group, with real processes in
//! network namespaces: the leader is cut off from the other two. The old
//! leader commits nothing more, the majority elects a new leader and keeps
//! serving; after the partition heals, the old leader follows and holds the
//! majority's FAT.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use offsite_identity::Role;
use offsite_proto::pb::admin::GroupStatusResponse;
use offsite_proto::pb::coordinator::vendor_registry_client::VendorRegistryClient;
use offsite_proto::pb::coordinator::RegisterVendorRequest;
use offsite_tests::netns::{GroupTimings, NetnsGroup};
use offsite_tests::{rpc, wait_for};

fn group(addr: SocketAddr) -> anyhow::Result<GroupStatusResponse> {
    rpc::block_on(rpc::group_status(addr))?
}

/// Registers vendor `id` through the coordinator at `addr` (a write of the
/// FAT through the Raft log).
fn register(addr: SocketAddr, id: &str) -> Result<(), tonic::Status> {
    let request = RegisterVendorRequest {
        vendor_id: id.into(),
        address: "192.0.2.10:7100".into(),
        region: "eu".into(),
        offered_bytes: 1 << 30,
        network_bytes_per_sec: 0,
        identity_key: offsite_proto::signing::VendorKey::from_secret(&[5; 32])
            .public_key()
            .to_vec(),
        ..Default::default()
    };
    let vendor = rpc::marketplace_of(addr)
        .and_then(|rpc| rpc.credentials(Role::Vendor, id))
        .map_err(|e| tonic::Status::internal(format!("{e:#}")))?;
    let call = async move {
        let channel = rpc::channel_as(&vendor, addr, Role::Coordinator)
            .await
            .map_err(|e| tonic::Status::unavailable(format!("{e:#}")))?;
        VendorRegistryClient::new(channel).register(request).await
    };
    rpc::block_on(call)
        .map_err(|e| tonic::Status::internal(format!("{e:#}")))?
        .map(|_| ())
}

/// The vendors the replica at `addr` holds, by its own (local) view.
fn vendors(addr: SocketAddr) -> Vec<String> {
    let status = rpc::block_on(rpc::status(addr)).unwrap().unwrap();
    status.vendors.into_iter().map(|v| v.vendor_id).collect()
}

/// The index of the replica every one of `replicas` follows, once that is
/// one of `replicas` itself.
fn agreed_leader(addrs: &[SocketAddr], replicas: &[usize], timeout: Duration) -> usize {
    wait_for("one leader among the replicas", timeout, || {
        let views: Vec<_> = replicas
            .iter()
            .map(|i| group(addrs[*i]))
            .collect::<Result<_, _>>()?;
        let id = views[0].leader_id;
        let agreed = id != 0 && views.iter().all(|v| v.leader_id == id);
        let own = replicas.iter().any(|i| *i as u64 + 1 == id);
        Ok((agreed && own).then(|| (id - 1) as usize))
    })
    .unwrap()
}

/// Waits until `replicas` hold the same FAT at the same applied index.
fn converged(addrs: &[SocketAddr], replicas: &[usize]) -> GroupStatusResponse {
    wait_for("the replicas to converge", Duration::from_secs(20), || {
        let views: Vec<_> = replicas
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

#[test]
fn a_partitioned_leader_commits_nothing_and_follows_after_healing() {
    let tmp = tempfile::tempdir().unwrap();
    let timings = GroupTimings::default();
    let mut net = NetnsGroup::start(tmp.path(), timings).unwrap();
    let addrs = net.addrs().to_vec();
    let all = [0, 1, 2];

    let old = agreed_leader(&addrs, &all, Duration::from_secs(30));
    wait_for("a first write", Duration::from_secs(10), || {
        Ok(register(addrs[old], "vendor-before").ok())
    })
    .unwrap();
    converged(&addrs, &all);

    net.isolate(old).unwrap();
    let before = group(addrs[old]).unwrap();
    let majority: Vec<usize> = all.into_iter().filter(|i| *i != old).collect();

    // The majority elects one of its own, in a newer term.
    let new = agreed_leader(&addrs, &majority, Duration::from_secs(15));
    assert!(group(addrs[new]).unwrap().term > before.term);

    // ... and keeps serving, through its leader and its follower.
    for (i, id) in [(new, "vendor-during-1"), (majority[0], "vendor-during-2")] {
        wait_for("a write on the majority", Duration::from_secs(10), || {
            Ok(register(addrs[i], id).ok())
        })
        .unwrap();
    }

    // A write sent to the old leader fails within bounded time: no quorum.
    let asked = Instant::now();
    let err = register(addrs[old], "vendor-lost").unwrap_err();
    let took = asked.elapsed();
    assert!(
        took < Duration::from_millis(timings.write_timeout_ms) + Duration::from_secs(5),
        "the cut-off leader took {took:?} to refuse a write"
    );
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");

    // The old leader applied nothing of the majority's.
    let cut_off = group(addrs[old]).unwrap();
    let majority_view = converged(&addrs, &majority);
    assert_eq!(cut_off.last_applied_index, before.last_applied_index);
    assert_eq!(cut_off.fat_digest, before.fat_digest);
    assert_ne!(cut_off.fat_digest, majority_view.fat_digest);
    assert!(majority_view.last_applied_index > before.last_applied_index);
    let held = vendors(addrs[old]);
    assert!(
        !held.iter().any(|v| v.starts_with("vendor-during")),
        "{held:?}"
    );

    // Heal: the old leader follows the new one and holds the majority's FAT.
    net.heal().unwrap();
    wait_for("the old leader to follow", Duration::from_secs(20), || {
        let view = group(addrs[old])?;
        Ok((view.role == "follower" && view.leader_id == new as u64 + 1).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e:#}\nold leader log:\n{}", net.log_tail(old, 30)));
    let healed = converged(&addrs, &all);
    assert!(healed.last_applied_index >= majority_view.last_applied_index);
    let held = vendors(addrs[old]);
    for id in ["vendor-before", "vendor-during-1", "vendor-during-2"] {
        assert!(held.iter().any(|v| v == id), "{id} missing: {held:?}");
    }
    assert!(
        !held.iter().any(|v| v == "vendor-lost"),
        "the uncommitted write survived: {held:?}"
    );
}
