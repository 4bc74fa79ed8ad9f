//! The tests every FAT store must pass, and the Raft store's own
//! persistence tests (reopen, snapshot boundary, format version).

use offsite_proto::{
    Hash, PortionId, PortionPlacement, Receipt, RequestId, ReservationId, TenantId, VendorId,
    VendorRef,
};

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{FatStore, ProposeError};
use crate::fat::{Command, Commit, Fat, FatError, Hold, RegisterVendor, Release, Reserve};
use crate::raft::{open_db, GroupSettings, RaftStore, LOCK_WAIT};

const T0: u64 = 1_700_000_000_000;

/// The identity key of test vendor `v` (derived from its name).
fn vendor_key(v: &str) -> offsite_proto::signing::VendorKey {
    offsite_proto::signing::VendorKey::from_secret(blake3::hash(v.as_bytes()).as_bytes())
}

fn signed(mut receipt: Receipt, reservation: &ReservationId) -> Receipt {
    vendor_key(receipt.vendor.as_str()).sign(&mut receipt, reservation);
    receipt
}

fn register(v: &str, offered: u64) -> Command {
    Command::RegisterVendor(RegisterVendor {
        vendor: VendorRef {
            id: VendorId::new(v).unwrap(),
            address: format!("{v}.example:7100"),
        },
        region: "eu".into(),
        offered_bytes: offered,
        network_bytes_per_sec: 0,
        identity_key: vendor_key(v).public_key().to_vec(),
        now_unix_ms: T0,
    })
}

fn reserve(n: u64, vendor: &str) -> (ReservationId, Command) {
    let id = ReservationId::from_bytes([n as u8; 16]);
    let command = Command::Reserve(Reserve {
        tenant: TenantId::new("acme").unwrap(),
        request: RequestId::new(format!("r{n}")).unwrap(),
        reservation: id,
        bytes: 10,
        replication: 1,
        holds: vec![Hold {
            vendor: VendorId::new(vendor).unwrap(),
            bytes: 10,
        }],
        now_unix_ms: T0,
        lease_expires_unix_ms: T0 + 60_000,
    });
    (id, command)
}

fn commit(id: ReservationId, vendor: &str) -> Command {
    let portion = PortionId::from_bytes(*id.as_bytes());
    let hash = Hash::of(id.as_bytes());
    let tenant = TenantId::new("acme").unwrap();
    Command::Commit(Commit {
        tenant: tenant.clone(),
        request: RequestId::new("c").unwrap(),
        reservation: id,
        portions: vec![PortionPlacement {
            portion,
            hash,
            size: 7,
            receipts: vec![signed(
                Receipt {
                    vendor: VendorId::new(vendor).unwrap(),
                    tenant,
                    portion,
                    hash,
                    size: 7,
                    signature: vec![],
                },
                &id,
            )],
        }],
        snapshot: None,
        now_unix_ms: T0 + 1,
    })
}

/// A deterministic mix of accepted and refused commands, starting at `n`.
fn script(n: u64) -> Vec<Command> {
    let mut commands = vec![register("a", 1000), register("b", 1000)];
    for i in n..n + 4 {
        let (id, r) = reserve(i, if i % 2 == 0 { "a" } else { "b" });
        commands.push(r);
        if i % 3 == 0 {
            commands.push(Command::Release(Release {
                tenant: TenantId::new("acme").unwrap(),
                reservation: id,
                now_unix_ms: T0,
            }));
        } else {
            commands.push(commit(id, if i % 2 == 0 { "a" } else { "b" }));
        }
        // Refused: a receipt from a vendor that is not a candidate.
        commands.push(commit(reserve(i + 100, "a").0, "b"));
    }
    commands
}

/// Applies `commands` through the store and to a plain FAT; both must agree
/// on every outcome and on the final state.
pub(crate) async fn applies_like_the_state_machine<S: FatStore>(
    store: &S,
    model: &mut Fat,
    commands: Vec<Command>,
) {
    for command in commands {
        let before = store.applied_index();
        let expected = model.apply(command.clone());
        let got = store.propose(command).await;
        // A refused command makes no log entry: the leader checks it first.
        let entries = match (expected, got) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a, b);
                1
            }
            (Err(a), Err(ProposeError::Refused(b))) => {
                assert_eq!(a, b);
                0
            }
            (a, b) => panic!("model said {a:?}, store said {b:?}"),
        };
        assert_eq!(store.applied_index(), before + entries);
    }
    let state = store.read(|fat| fat.clone()).await.unwrap();
    assert_eq!(&state, model);
    assert_eq!(store.read_local(|fat| fat.clone()), state);
}

/// Coordinator credentials from a throwaway CA (a group of one calls nobody).
fn test_credentials() -> offsite_identity::Credentials {
    let ca = offsite_identity::pki::CertificateAuthority::generate().expect("a test CA");
    let me = offsite_identity::PeerIdentity::new(offsite_identity::Role::Coordinator, "c1")
        .expect("a valid name");
    ca.credentials(&me).expect("test credentials")
}

fn settings(snapshot_every: u64) -> GroupSettings {
    GroupSettings {
        node_id: 1,
        heartbeat_ms: 50,
        election_timeout_min_ms: 150,
        election_timeout_max_ms: 300,
        write_timeout_ms: 5000,
        snapshot_every,
    }
}

/// A group of one in `dir`, initialised and leading.
async fn group_of_one(dir: &Path, snapshot_every: u64) -> RaftStore {
    let settings = settings(snapshot_every);
    let store = RaftStore::open(dir, &settings, test_credentials())
        .await
        .unwrap_or_else(|e| panic!("cannot open the store: {e}"));
    store
        .initialize(&BTreeMap::from([(1, "127.0.0.1:1".to_string())]))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.is_leader() {
        assert!(
            Instant::now() < deadline,
            "a group of one elected no leader"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Let the leader's first (blank) entry apply, so indexes count commands.
    store.read(|_| ()).await.unwrap();
    store
}

#[tokio::test]
async fn raft_store_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = group_of_one(dir.path(), 1000).await;
    let mut model = Fat::default();
    applies_like_the_state_machine(&store, &mut model, script(0)).await;
    let refused = store.propose(commit(ReservationId::random(), "a")).await;
    assert!(matches!(
        refused,
        Err(ProposeError::Refused(FatError::NotFound(_)))
    ));
    store.shutdown().await;
}

#[tokio::test]
async fn raft_store_reopens_with_the_same_state_across_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Fat::default();
    // A snapshot every 5 entries: the reopen loads a snapshot and replays
    // the log after it.
    let store = group_of_one(dir.path(), 5).await;
    applies_like_the_state_machine(&store, &mut model, script(0)).await;
    let index = store.applied_index();
    store.shutdown().await;
    drop(store);

    let store = group_of_one(dir.path(), 5).await;
    assert!(
        store.applied_index() >= index,
        "the log was not replayed: {} < {index}",
        store.applied_index()
    );
    assert_eq!(store.read(|fat| fat.clone()).await.unwrap(), model);
    assert!(
        store.group_status().snapshot_index >= 5,
        "no snapshot was taken"
    );
    applies_like_the_state_machine(&store, &mut model, script(10)).await;
    store.shutdown().await;
    drop(store);

    let store = group_of_one(dir.path(), 1000).await;
    assert_eq!(store.read(|fat| fat.clone()).await.unwrap(), model);
    store.shutdown().await;
}

#[tokio::test]
async fn raft_store_refuses_a_record_of_another_format_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = group_of_one(dir.path(), 1000).await;
    store.propose(register("a", 1)).await.unwrap();
    store.shutdown().await;
    drop(store);
    let raw = open_db(dir.path(), LOCK_WAIT)
        .unwrap_or_else(|e| panic!("cannot open the store's sled: {e}"));
    let log = raw.open_tree("raft-log").unwrap();
    let (last, _) = log.last().unwrap().unwrap();
    log.insert(last, vec![99, 0]).unwrap();
    raw.flush().unwrap();
    drop(log);
    drop(raw);
    let settings = settings(1000);
    let err = match RaftStore::open(dir.path(), &settings, test_credentials()).await {
        Err(err) => err.to_string(),
        Ok(store) => {
            store.shutdown().await;
            panic!("a log entry of format version 99 was accepted")
        }
    };
    assert!(err.contains("format version 99"), "{err}");
}
