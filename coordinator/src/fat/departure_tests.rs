//! Unit tests of graceful exits and burst relief in the FAT: no placement
//! or repair target on a departing vendor, every copy (or the asked bytes)
//! moving, relief ahead of ordinary repairs, the copy count never falling,
//! completion only once nothing needs the vendor, and cancelling.

use offsite_proto::{CopyResult, PortionId, ReservationId, VendorRef};

use super::deletion_tests::committed;
use super::proptests::check_invariants;
use super::repair_tests::{down, finish, receipt_of};
use super::tests::{commit, placement, refused, register, reserve, reserved, tid, vid, T0};
use super::*;

const POLICY: RepairPolicy = RepairPolicy {
    replace_after_ms: 3_600_000,
};

/// a, b, c hold acme's three portions (100, 40, 60 bytes); d and e (empty,
/// other regions) have room.
fn market_of_five() -> (Fat, Vec<PortionId>) {
    let mut fat = super::tests::market();
    let ids = committed(&mut fat, "acme", &[100, 40, 60], 1);
    register(&mut fat, "d", "sa", 1000, T0).unwrap();
    register(&mut fat, "e", "af", 1000, T0).unwrap();
    (fat, ids)
}

fn depart(fat: &mut Fat, d: Departure) -> Result<Outcome, FatError> {
    fat.apply(Command::Departure(d))
}

fn start_exit(fat: &mut Fat, v: &str, now: u64) {
    depart(
        fat,
        Departure::StartExit {
            vendor: vid(v),
            now_unix_ms: now,
        },
    )
    .unwrap();
}

fn settle(fat: &mut Fat, now: u64) -> Settled {
    match depart(fat, Departure::Settle { now_unix_ms: now }).unwrap() {
        Outcome::Settled(s) => s,
        other => panic!("{other:?}"),
    }
}

/// Every vendor reports, acknowledging the deletions it was asked for.
fn everyone_reports(fat: &mut Fat, now: u64) {
    let vendors: Vec<VendorId> = fat.vendors.keys().cloned().collect();
    for v in vendors {
        let offered = fat.vendors[&v].reported_offered;
        let deleted = fat.deletions_for(&v);
        fat.apply(Command::ReportCapacity(ReportCapacity {
            vendor: v,
            offered_bytes: offered,
            stored_bytes: 0,
            deleted,
            now_unix_ms: now,
        }))
        .unwrap();
    }
}

fn min_copies(fat: &Fat) -> usize {
    fat.portions
        .values()
        .flat_map(|h| h.values())
        .map(|r| r.vendors.len())
        .min()
        .unwrap_or(0)
}

/// Plans the due repairs and finishes each with its target's receipt, the
/// way the sources would; checks the copy count and the invariants after
/// every step. Returns the repairs opened, in plan order.
fn repair_round(fat: &mut Fat, now: u64) -> Vec<PlannedRepair> {
    let repairs = fat.repairs_due(now, &POLICY, ReservationId::random);
    if repairs.is_empty() {
        return repairs;
    }
    fat.apply(Command::PlanRepairs(PlanRepairs {
        repairs: repairs.clone(),
        now_unix_ms: now,
    }))
    .unwrap();
    check_invariants(fat).unwrap();
    for r in &repairs {
        let ok = CopyResult {
            repair: r.id,
            outcome: Ok(receipt_of(fat, r.target.as_str(), r)),
        };
        assert_eq!(finish(fat, r.source.as_str(), vec![ok]), (1, 0));
        check_invariants(fat).unwrap();
        assert!(min_copies(fat) >= 3, "a portion fell below 3 copies");
    }
    repairs
}

fn holds(fat: &Fat, v: &str) -> usize {
    fat.portions
        .values()
        .flat_map(|h| h.values())
        .filter(|r| r.vendors.contains(&vid(v)))
        .count()
}

#[test]
fn an_exiting_vendor_gets_no_placement_and_is_no_repair_target() {
    let (mut fat, _) = market_of_five();
    start_exit(&mut fat, "d", T0 + 10);
    assert!(fat.vendors_with_room().iter().all(|v| v.vendor != vid("d")));
    // A reservation naming it is refused.
    let err = refused(
        &mut fat,
        Command::Reserve(reserve(
            "acme",
            "r-exit",
            10,
            3,
            &[("a", 10), ("b", 10), ("d", 10)],
        )),
    );
    assert!(matches!(err, FatError::NotEnoughCapacity { .. }), "{err:?}");
    // c goes down for good: its copies go to e only, never to d.
    down(&mut fat, "c", T0 + 20);
    let later = T0 + 20 + POLICY.replace_after_ms;
    let repairs = fat.repairs_due(later, &POLICY, ReservationId::random);
    assert_eq!(repairs.len(), 3, "{repairs:?}");
    assert!(repairs.iter().all(|r| r.target == vid("e")), "{repairs:?}");
    // A plan aimed at d is refused.
    let mut aimed = repairs[0].clone();
    aimed.target = vid("d");
    let err = refused(
        &mut fat,
        Command::PlanRepairs(PlanRepairs {
            repairs: vec![aimed],
            now_unix_ms: later,
        }),
    );
    assert!(err.to_string().contains("not exiting"), "{err}");
}

#[test]
fn an_exit_moves_every_copy_and_completes_only_when_nothing_needs_the_vendor() {
    let (mut fat, ids) = market_of_five();
    let now = T0 + 100;
    start_exit(&mut fat, "c", now);
    let exit = fat.departure_status(&vid("c")).exit.unwrap();
    assert_eq!((exit.portions_at_start, exit.bytes_at_start), (3, 200));
    assert_eq!((exit.portions_left, exit.bytes_left), (3, 200));
    // At once, not after replace_after.
    assert!(settle(&mut fat, now).exits.is_empty());
    let repairs = repair_round(&mut fat, now + 1);
    assert_eq!(repairs.len(), 3, "{repairs:?}");
    assert!(repairs.iter().all(|r| r.replaces == vid("c")));
    assert_eq!(holds(&fat, "c"), 0);
    // Replaced, but it has not deleted its copies yet: not complete.
    assert!(!fat.settle_due());
    assert!(settle(&mut fat, now + 2).exits.is_empty());
    let exit = fat.departure_status(&vid("c")).exit.unwrap();
    assert_eq!((exit.portions_left, exit.deletions_left), (0, 3));
    assert_eq!(exit.completed_unix_ms, None);
    everyone_reports(&mut fat, now + 3);
    assert!(fat.settle_due());
    assert_eq!(settle(&mut fat, now + 4).exits, vec![vid("c")]);
    let exit = fat.departure_status(&vid("c")).exit.unwrap();
    assert_eq!(exit.completed_unix_ms, Some(now + 4));
    assert_eq!(fat.vendors[&vid("c")].used, 0);
    for id in ids {
        assert_eq!(fat.portions[&tid("acme")][&id].vendors.len(), 3);
    }
    // Final: no cancel, no second registration under the id.
    let err = refused(
        &mut fat,
        Command::Departure(Departure::CancelExit {
            vendor: vid("c"),
            now_unix_ms: now + 5,
        }),
    );
    assert!(err.to_string().contains("cannot be cancelled"), "{err}");
    let before = fat.clone();
    let err = register(&mut fat, "c", "ap", 1000, now + 6).unwrap_err();
    assert!(err.to_string().contains("cannot register again"), "{err}");
    assert_eq!(fat, before);
    assert!(fat
        .check(&Command::RegisterVendor(RegisterVendor {
            vendor: VendorRef {
                id: vid("c"),
                address: "c.example:7100".into()
            },
            region: "ap".into(),
            offered_bytes: 1,
            network_bytes_per_sec: 0,
            identity_key: super::tests::vendor_key("c").public_key().to_vec(),
            now_unix_ms: now + 6,
        }))
        .is_err());
}

#[test]
fn an_exit_waits_for_a_commit_that_lands_on_the_vendor_after_it_started() {
    let (mut fat, _) = market_of_five();
    // A reservation made before the exit still commits onto it after.
    let id = reserved(
        &mut fat,
        reserve("acme", "r-late", 30, 3, &[("a", 30), ("b", 30), ("c", 30)]),
    );
    start_exit(&mut fat, "b", T0 + 10);
    repair_round(&mut fat, T0 + 11);
    everyone_reports(&mut fat, T0 + 12);
    assert_eq!(holds(&fat, "b"), 0);
    fat.apply(commit(
        "acme",
        id,
        vec![placement("acme", 30, &["a", "b", "c"])],
        None,
    ))
    .unwrap();
    assert_eq!(holds(&fat, "b"), 1);
    assert!(
        settle(&mut fat, T0 + 13).exits.is_empty(),
        "completed while it held a portion"
    );
    repair_round(&mut fat, T0 + 14);
    everyone_reports(&mut fat, T0 + 15);
    assert_eq!(holds(&fat, "b"), 0);
    assert_eq!(settle(&mut fat, T0 + 16).exits, vec![vid("b")]);
}

#[test]
fn a_cancelled_exit_returns_the_vendor_to_normal() {
    let (mut fat, _) = market_of_five();
    start_exit(&mut fat, "d", T0 + 10);
    assert!(!fat.takes_new_data(&vid("d")));
    let err = refused(
        &mut fat,
        Command::Departure(Departure::CancelExit {
            vendor: vid("e"),
            now_unix_ms: T0 + 11,
        }),
    );
    assert!(matches!(err, FatError::NotFound(_)), "{err:?}");
    depart(
        &mut fat,
        Departure::CancelExit {
            vendor: vid("d"),
            now_unix_ms: T0 + 12,
        },
    )
    .unwrap();
    assert!(fat.takes_new_data(&vid("d")));
    assert!(fat.vendors_with_room().iter().any(|v| v.vendor == vid("d")));
    assert_eq!(fat.departure_status(&vid("d")), DepartureStatus::default());
    assert!(fat
        .repairs_due(T0 + 13, &POLICY, ReservationId::random)
        .is_empty());
}

#[test]
fn relief_sheds_the_asked_bytes_ahead_of_ordinary_repairs() {
    let (mut fat, _) = market_of_five();
    // Bounded: at most what it holds, and not nothing.
    for bytes in [0, 201] {
        let err = refused(
            &mut fat,
            Command::Departure(Departure::Relieve {
                vendor: vid("b"),
                bytes,
                now_unix_ms: T0 + 1,
            }),
        );
        assert!(err.to_string().contains("ask for 1 to 200 bytes"), "{err}");
    }
    // a is down long enough to be repaired; b asks for 50 bytes now.
    down(&mut fat, "a", T0 + 1);
    let now = T0 + 1 + POLICY.replace_after_ms;
    depart(
        &mut fat,
        Departure::Relieve {
            vendor: vid("b"),
            bytes: 50,
            now_unix_ms: now,
        },
    )
    .unwrap();
    assert!(!fat.takes_new_data(&vid("b")));
    let repairs = fat.repairs_due(now, &POLICY, ReservationId::random);
    // b's relief comes first, then a's ordinary repairs; b sheds enough
    // for 50 bytes, not everything.
    let size = |r: &PlannedRepair| fat.portions[&r.tenant][&r.portion].size;
    let from_b = repairs.iter().take_while(|r| r.replaces == vid("b"));
    let (n, shed) = from_b.fold((0, 0), |(n, b), r| (n + 1, b + size(r)));
    assert!((1..3).contains(&n) && shed >= 50, "{repairs:?}");
    assert!(
        repairs[n..].iter().all(|r| r.replaces == vid("a")),
        "{repairs:?}"
    );
    let relief = fat.departure_status(&vid("b")).relief.unwrap();
    assert_eq!(
        (relief.asked_bytes, relief.goal_bytes, relief.bytes_left),
        (50, 150, 50)
    );
    // Only the relief, with no room for ordinary repairs, goes first too.
    repair_round(&mut fat, now);
    assert!(fat.committed_on(&vid("b")) <= 150);
    assert!(
        settle(&mut fat, now + 1).reliefs.is_empty(),
        "not deleted yet"
    );
    everyone_reports(&mut fat, now + 2);
    assert_eq!(settle(&mut fat, now + 3).reliefs, vec![vid("b")]);
    let relief = fat.departure_status(&vid("b")).relief.unwrap();
    assert_eq!((relief.done_unix_ms, relief.bytes_left), (Some(now + 3), 0));
    assert!(fat.vendors[&vid("b")].used <= 150);
    assert!(fat.takes_new_data(&vid("b")));
}

#[test]
fn relief_goes_first_even_when_repairs_fill_every_slot() {
    let mut fat = super::tests::market();
    let sizes = vec![10u64; MAX_OPEN_REPAIRS + 10];
    committed(&mut fat, "acme", &sizes, 0);
    register(&mut fat, "d", "sa", 100_000, T0).unwrap();
    register(&mut fat, "z", "af", 100_000, T0).unwrap();
    down(&mut fat, "a", T0 + 1);
    let now = T0 + 1 + POLICY.replace_after_ms;
    depart(
        &mut fat,
        Departure::Relieve {
            vendor: vid("c"),
            bytes: 30,
            now_unix_ms: now,
        },
    )
    .unwrap();
    let repairs = fat.repairs_due(now, &POLICY, ReservationId::random);
    assert_eq!(repairs.len(), MAX_OPEN_REPAIRS);
    let from_c = repairs
        .iter()
        .take_while(|r| r.replaces == vid("c"))
        .count();
    assert_eq!(from_c, 3, "relief's 3 copies first: {repairs:?}");
}
