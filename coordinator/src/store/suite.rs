//! The tests every FAT store must pass, and the sled store's own
//! persistence tests (reopen, snapshot boundary, format version).

use offsite_proto::{
    Hash, PortionId, PortionPlacement, Receipt, RequestId, ReservationId, TenantId, VendorId,
    VendorRef,
};

use super::{FatStore, ProposeError, SledStore, StoreError};
use crate::fat::{Command, Commit, Fat, FatError, Hold, RegisterVendor, Release, Reserve};

const T0: u64 = 1_700_000_000_000;

fn register(v: &str, offered: u64) -> Command {
    Command::RegisterVendor(RegisterVendor {
        vendor: VendorRef {
            id: VendorId::new(v).unwrap(),
            address: format!("{v}.example:7100"),
        },
        region: "eu".into(),
        offered_bytes: offered,
        network_bytes_per_sec: 0,
        identity_key: vec![],
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
            receipts: vec![Receipt {
                vendor: VendorId::new(vendor).unwrap(),
                tenant,
                portion,
                hash,
                size: 7,
                signature: vec![],
            }],
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
        let before = store.applied_index().await;
        let expected = model.apply(command.clone());
        let got = store.propose(command).await;
        match (expected, got) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(a), Err(ProposeError::Refused(b))) => assert_eq!(a, b),
            (a, b) => panic!("model said {a:?}, store said {b:?}"),
        }
        assert_eq!(store.applied_index().await, before + 1);
    }
    let state = store.read(|fat| fat.clone()).await;
    assert_eq!(&state, model);
}

#[tokio::test]
async fn sled_store_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), 1000).unwrap();
    let mut model = Fat::default();
    applies_like_the_state_machine(&store, &mut model, script(0)).await;
    let refused = store.propose(commit(ReservationId::random(), "a")).await;
    assert!(matches!(
        refused,
        Err(ProposeError::Refused(FatError::NotFound(_)))
    ));
}

#[tokio::test]
async fn sled_store_reopens_with_the_same_state_across_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Fat::default();
    // 14 commands with a snapshot every 5: the reopen loads a snapshot and
    // replays the log after it.
    let store = SledStore::open(dir.path(), 5).unwrap();
    applies_like_the_state_machine(&store, &mut model, script(0)).await;
    let index = store.applied_index().await;
    assert_eq!(index, 14);
    drop(store);
    let raw = sled::open(dir.path()).unwrap();
    assert!(
        raw.open_tree("fat-log").unwrap().len() < 5,
        "the log was not truncated at the snapshot"
    );
    drop(raw);

    let store = SledStore::open(dir.path(), 5).unwrap();
    assert_eq!(store.applied_index().await, index);
    assert_eq!(store.read(|fat| fat.clone()).await, model);
    applies_like_the_state_machine(&store, &mut model, script(10)).await;
    drop(store);

    let store = SledStore::open(dir.path(), 1000).unwrap();
    assert_eq!(store.applied_index().await, 28);
    assert_eq!(store.read(|fat| fat.clone()).await, model);
}

#[tokio::test]
async fn sled_store_refuses_a_record_of_another_format_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), 1000).unwrap();
    store.propose(register("a", 1)).await.unwrap();
    drop(store);
    let raw = sled::open(dir.path()).unwrap();
    raw.open_tree("fat-log")
        .unwrap()
        .insert(2u64.to_be_bytes(), vec![99, 0])
        .unwrap();
    raw.flush().unwrap();
    drop(raw);
    let err = match SledStore::open(dir.path(), 1000) {
        Err(err) => err,
        Ok(_) => panic!("a record of format version 99 was accepted"),
    };
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("format version 99"), "{err}");
}
