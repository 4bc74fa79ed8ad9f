//! Replacing a coordinator that lost its disk, one membership change at a
//! time, with the real `offsite-coordinator members` commands: the new
//! replica is added as a learner, catches up, is promoted, the lost one is
//! removed, and the group then survives losing another original member
//! because the new one votes.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use offsite_identity::{Role, TlsConfig};
use offsite_proto::pb::admin::GroupStatusResponse;
use offsite_tests::rpc::{self, Rpc, HARNESS_ADMIN};
use offsite_tests::tree::{self, TreeSpec};
use offsite_tests::{
    binary, describe, free_addr, run_bounded, wait_for, write_toml, CoordinatorConfig, Daemon,
    Devnet, DevnetOptions, MemberConfig, COORDINATOR,
};

fn group(rpc: &Rpc, addr: SocketAddr) -> anyhow::Result<GroupStatusResponse> {
    rpc::block_on(rpc.group_status(addr))?
}

/// `offsite-coordinator members --coordinator ADDR CHANGE...` as the admin.
fn members(coordinator: SocketAddr, admin: &TlsConfig, change: &[&str]) {
    let mut command = std::process::Command::new(binary(COORDINATOR).unwrap());
    command
        .args(["members", "--coordinator", &coordinator.to_string()])
        .arg("--ca")
        .arg(&admin.ca)
        .arg("--cert")
        .arg(&admin.cert)
        .arg("--key")
        .arg(&admin.key)
        .args(change);
    let output = run_bounded(command, Duration::from_secs(60)).unwrap();
    assert!(output.status.success(), "{change:?}: {}", describe(&output));
}

/// Starts coordinator `id` at `address` as a new, empty replica of the group
/// whose original members are `members`.
fn new_coordinator(
    devnet: &Devnet,
    dir: &Path,
    id: u64,
    address: SocketAddr,
    members: Vec<MemberConfig>,
) -> Daemon {
    let name = format!("coordinator-{id}");
    let options = devnet.options();
    let config = CoordinatorConfig {
        node_id: id,
        listen: address,
        data_dir: dir.join("data"),
        lease_secs: options.lease_secs,
        suspect_after_secs: options.suspect_after_secs,
        down_after_secs: options.down_after_secs,
        repair_after_secs: options.repair_after_secs,
        collect_expired_after_secs: options.collect_expired_after_secs,
        audits_per_vendor_per_hour: options.audits_per_vendor_per_hour,
        overprovision: 1.5,
        extra_vendors: 2,
        sweep_interval_secs: 1,
        fee_ppm: options.fee_ppm,
        initial_members: members,
        tls: devnet.rpc().tls(Role::Coordinator, &name).unwrap(),
    };
    let path = dir.join("coordinator.toml");
    write_toml(&path, &config).unwrap();
    let mut daemon = Daemon::new(
        name,
        binary(COORDINATOR).unwrap(),
        path,
        dir.join("log"),
        false,
    );
    daemon.start().unwrap();
    daemon
}

/// What the leader answers to an empty proposal and a read index, and what
/// `address` answers to adding a learner with a malformed name, from
/// coordinator certificate `name`: (call, code, message), `Ok` as code `Ok`.
fn refusals_to(
    harness: &Rpc,
    name: &str,
    leader: SocketAddr,
    address: SocketAddr,
) -> Vec<(&'static str, tonic::Code, String)> {
    use offsite_proto::pb::admin::admin_client::AdminClient;
    use offsite_proto::pb::admin::MemberRequest;
    use offsite_proto::pb::raft::raft_client::RaftClient;
    use offsite_proto::pb::raft::{RaftBytes, ReadIndexRequest};

    let credentials = harness.credentials(Role::Coordinator, name).unwrap();
    let answer = |r: Result<(), tonic::Status>| match r {
        Ok(()) => (tonic::Code::Ok, String::new()),
        Err(s) => (s.code(), s.message().to_string()),
    };
    rpc::block_on(async move {
        let to_leader = rpc::channel_as(&credentials, leader, Role::Coordinator)
            .await
            .unwrap();
        let mut raft = RaftClient::new(to_leader);
        let propose = raft.propose(RaftBytes { data: vec![] }).await.map(drop);
        let read = raft.read_index(ReadIndexRequest {}).await.map(drop);
        let to_other = rpc::channel_as(&credentials, address, Role::Coordinator)
            .await
            .unwrap();
        let add = AdminClient::new(to_other)
            .add_learner(MemberRequest {
                id: 9,
                // Past the membership check, the name is refused: a
                // member's call adds nothing to the group.
                address: "-not-a-name@127.0.0.1:1".into(),
            })
            .await
            .map(drop);
        let mut out = Vec::new();
        for (call, result) in [
            ("propose", propose),
            ("read index", read),
            ("add learner", add),
        ] {
            let (code, message) = answer(result);
            out.push((call, code, message));
        }
        out
    })
    .unwrap()
}

#[test]
fn a_replica_that_lost_its_disk_is_replaced_by_a_new_one_that_catches_up() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    tree::generate(&source, &TreeSpec::small()).unwrap();
    let mut devnet = Devnet::start(&tmp.path().join("devnet"), DevnetOptions::default()).unwrap();
    devnet.client_ok(["init"]).unwrap();
    devnet
        .client_ok(["backup", source.to_str().unwrap()])
        .unwrap();
    let addrs = devnet.coordinator_addrs();
    let originals: Vec<MemberConfig> = addrs
        .iter()
        .enumerate()
        .map(|(i, address)| MemberConfig {
            id: i as u64 + 1,
            address: *address,
            name: format!("coordinator-{}", i + 1),
        })
        .collect();

    // Coordinator 3 dies with its disk.
    devnet.kill_coordinator(2).unwrap();
    std::fs::remove_dir_all(devnet.dir().join("coordinator-3/data")).unwrap();

    let address = free_addr().unwrap();
    let _replacement = new_coordinator(
        &devnet,
        &tmp.path().join("coordinator-4"),
        4,
        address,
        originals,
    );
    let harness = devnet.rpc();
    let admin = harness.tls(Role::Admin, HARNESS_ADMIN).unwrap();
    members(
        addrs[0],
        &admin,
        &[
            "add-learner",
            "--id",
            "4",
            "--address",
            &address.to_string(),
            "--name",
            "coordinator-4",
        ],
    );
    wait_for("the learner to catch up", Duration::from_secs(60), || {
        let (leader, learner) = (group(&harness, addrs[0])?, group(&harness, address)?);
        Ok((learner.last_applied_index >= leader.last_applied_index
            && learner.fat_digest == leader.fat_digest)
            .then_some(()))
    })
    .unwrap();
    members(addrs[0], &admin, &["promote", "--id", "4"]);
    members(addrs[0], &admin, &["remove", "--id", "3"]);

    let running = [addrs[0], addrs[1], address];
    let view = wait_for(
        "the group of 1, 2 and 4 to agree",
        Duration::from_secs(60),
        || {
            let views: Vec<_> = running
                .iter()
                .map(|a| group(&harness, *a))
                .collect::<Result<_, _>>()?;
            let agreed = views.iter().all(|v| {
                v.fat_digest == views[0].fat_digest
                    && v.last_applied_index == views[0].last_applied_index
                    && v.leader_id != 0
                    && v.leader_id == views[0].leader_id
            });
            Ok(agreed.then(|| views[0].clone()))
        },
    )
    .unwrap();
    let mut ids: Vec<(u64, bool)> = view.members.iter().map(|m| (m.id, m.voter)).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![(1, true), (2, true), (4, true)], "{view:?}");
    let names: Vec<&str> = view.members.iter().map(|m| m.name.as_str()).collect();
    assert!(names.contains(&"coordinator-4"), "{view:?}");

    // Coordinator 3's certificate is still valid, but it is no member now:
    // the leader takes no proposal or read from it, and no coordinator lets
    // it add itself back. A member's certificate gets past the same check.
    let leader = running
        .iter()
        .copied()
        .find(|a| group(&harness, *a).is_ok_and(|g| g.node_id == view.leader_id))
        .unwrap();
    let removed = refusals_to(&harness, "coordinator-3", leader, address);
    for (call, code, message) in &removed {
        assert_eq!(*code, tonic::Code::PermissionDenied, "{call}: {message}");
        assert!(message.contains("not a member"), "{call}: {message}");
    }
    // A member's certificate gets past the check to what follows it: the
    // empty proposal is unreadable, the read index answers, and the learner
    // is refused for its malformed name (so nothing joins).
    let member = refusals_to(&harness, "coordinator-2", leader, address);
    let codes: Vec<(&str, tonic::Code)> = member.iter().map(|(c, code, _)| (*c, *code)).collect();
    assert_eq!(
        codes,
        vec![
            ("propose", tonic::Code::InvalidArgument),
            ("read index", tonic::Code::Ok),
            ("add learner", tonic::Code::InvalidArgument),
        ],
        "{member:?}"
    );

    // The new replica votes: with coordinator 1 gone too, 2 and 4 keep a
    // majority, and a backup and its restore still work.
    devnet.kill_coordinator(0).unwrap();
    std::fs::write(
        source.join("after-replacement.txt"),
        b"written after the replacement",
    )
    .unwrap();
    devnet
        .client_ok(["backup", source.to_str().unwrap()])
        .unwrap();
    devnet
        .restore_latest_matches(&source, &tmp.path().join("restored"))
        .unwrap();
}
