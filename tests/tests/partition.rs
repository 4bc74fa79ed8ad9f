//! A network partition of the coordinator group, with real processes in
//! network namespaces: the leader is cut off from the other two. The old
//! leader commits nothing more, the majority elects a new leader and keeps
//! serving; after the partition heals, the old leader follows and holds the
//! majority's FAT. And in a devnet whose every process has a namespace of
//! its own: a coordinator cut off from everything makes no vendor suspect,
//! since the vendors that reported to it fail over to another in time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use offsite_identity::Role;
use offsite_proto::pb::admin::GroupStatusResponse;
use offsite_proto::pb::coordinator::vendor_registry_client::VendorRegistryClient;
use offsite_proto::pb::coordinator::RegisterVendorRequest;
use offsite_tests::netns::{GroupTimings, NetnsGroup};
use offsite_tests::{rpc, wait_for, Devnet, DevnetOptions};

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

/// How long a coordinator stays isolated: past the devnet's
/// `suspect_after_secs` (10 s) with room to spare.
const ISOLATION: Duration = Duration::from_secs(15);

/// Isolates coordinator `isolated` (0-based) for [`ISOLATION`] and asks
/// coordinator `witness` for the marketplace status about once a second
/// meanwhile, asserting that it shows every vendor up; and that no leader
/// changed a vendor's liveness meanwhile (its log says so), which catches a
/// vendor suspect for less than a second between two polls. Then heals.
fn isolate_and_watch(devnet: &mut Devnet, isolated: usize, witness: usize) {
    let rpc = devnet.rpc();
    let runtime = rpc::runtime().unwrap();
    let witness_addr = devnet.coordinator_addrs()[witness];
    let leader = group(witness_addr).map(|g| g.leader_id).unwrap_or(0);
    let (name, seen_by) = (
        format!("coordinator-{}", isolated + 1),
        format!("coordinator-{}", witness + 1),
    );
    let changes_before = liveness_changes(devnet).len();
    devnet.isolate_coordinator(isolated).unwrap();
    let begun = Instant::now();
    let (mut asked, mut answered) = (0, 0);
    while begun.elapsed() < ISOLATION {
        asked += 1;
        let status = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), rpc.status(witness_addr)).await
        });
        if let Ok(Ok(status)) = status {
            answered += 1;
            let not_up = offsite_tests::checks::vendors_not_up(&status);
            assert!(
                not_up.is_empty(),
                "{:.1} s into {name}'s isolation (the leader before it: coordinator-{leader}), \
                 {seen_by} shows {not_up:?} (suspect after {} s)",
                begun.elapsed().as_secs_f64(),
                devnet.options().suspect_after_secs
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!(
        "{seen_by} answered {answered} of {asked} status calls during {name}'s isolation \
         (the leader before it: coordinator-{leader}); every vendor stayed up"
    );
    let changes = liveness_changes(devnet);
    assert!(
        changes.len() == changes_before,
        "during {name}'s isolation (the leader before it: coordinator-{leader}) a leader \
         changed vendors' liveness (suspect after {} s):\n{}",
        devnet.options().suspect_after_secs,
        changes[changes_before..].join("\n")
    );
    // A witness that never answered would prove nothing.
    assert!(
        answered * 2 > asked,
        "{seen_by} answered {answered} of {asked} status calls during {name}'s isolation"
    );
    devnet.heal_partitions().unwrap();
    devnet.wait_ready(Duration::from_secs(60)).unwrap();
}

/// Every liveness change the coordinators' leaders logged so far, oldest
/// first per coordinator.
fn liveness_changes(devnet: &Devnet) -> Vec<String> {
    let state = devnet.state();
    state
        .coordinators
        .iter()
        .flat_map(|c| {
            let log = std::fs::read_to_string(&c.log).unwrap_or_default();
            log.lines()
                .filter(|l| l.contains("liveness changed"))
                .map(|l| format!("{}: {l}", c.name))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Each time the coordinator cut off is the one every vendor reports to:
/// coordinator-1 first (first in every vendor's list, so every vendor
/// registered with it), then coordinator-2 (where they went next). The
/// leader is whichever won the elections; the first time it is usually
/// coordinator-1 itself, the second time either.
#[test]
fn isolating_a_coordinator_makes_no_vendor_suspect() {
    let tmp = tempfile::tempdir().unwrap();
    let options = DevnetOptions {
        coordinator_namespaces: true,
        vendor_namespaces: true,
        ..DevnetOptions::default()
    };
    let mut devnet = Devnet::start(&tmp.path().join("devnet"), options).unwrap();
    isolate_and_watch(&mut devnet, 0, 1);
    isolate_and_watch(&mut devnet, 1, 2);
}
