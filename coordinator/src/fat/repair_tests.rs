//! Unit tests of re-replication in the FAT: which repairs are due, opening
//! them, finishing them with the target's receipt, failures, expiry, and
//! the accounting after each step.

use offsite_proto::{CopyResult, PortionDeletion, PortionId, PortionPlacement, ReservationId};

use super::deletion_tests::committed;
use super::proptests::check_invariants;
use super::tests::{held, market, refused, register, signed_receipt, tid, vid, T0};
use super::*;

const POLICY: RepairPolicy = RepairPolicy {
    replace_after_ms: 5_000,
};

/// a, b, c (holding acme's portions) and d (empty, region "sa").
fn market_of_four() -> (Fat, Vec<PortionId>) {
    let mut fat = market();
    let ids = committed(&mut fat, "acme", &[100, 40], 2);
    register(&mut fat, "d", "sa", 1000, T0).unwrap();
    (fat, ids)
}

pub(super) fn down(fat: &mut Fat, v: &str, at: u64) {
    let seen = fat.vendors[&vid(v)].last_report_unix_ms;
    fat.apply(Command::UpdateLiveness(UpdateLiveness {
        changes: vec![LivenessChange {
            vendor: vid(v),
            liveness: Liveness::Down,
            seen_report_unix_ms: seen,
        }],
        now_unix_ms: at,
    }))
    .unwrap();
}

fn due(fat: &Fat, now: u64) -> Vec<PlannedRepair> {
    fat.repairs_due(now, &POLICY, ReservationId::random)
}

fn plan(fat: &mut Fat, repairs: Vec<PlannedRepair>, now: u64) {
    fat.apply(Command::PlanRepairs(PlanRepairs {
        repairs,
        now_unix_ms: now,
    }))
    .unwrap();
}

/// The receipt `vendor` signs for the repaired portion.
pub(super) fn receipt_of(
    fat: &Fat,
    vendor: &str,
    repair: &PlannedRepair,
) -> offsite_proto::Receipt {
    let record = &fat.portions[&repair.tenant][&repair.portion];
    let p = PortionPlacement {
        portion: repair.portion,
        hash: record.hash,
        size: record.size,
        receipts: vec![],
    };
    signed_receipt(vendor, repair.tenant.as_str(), &p)
}

pub(super) fn finish(fat: &mut Fat, source: &str, results: Vec<CopyResult>) -> (u64, usize) {
    match fat
        .apply(Command::FinishRepairs(FinishRepairs {
            source: vid(source),
            results,
        }))
        .unwrap()
    {
        Outcome::RepairsFinished { placed, failed } => (placed, failed.len()),
        other => panic!("{other:?}"),
    }
}

fn vendors_of(fat: &Fat, portion: PortionId) -> Vec<String> {
    fat.portions[&tid("acme")][&portion]
        .vendors
        .iter()
        .map(|v| v.to_string())
        .collect()
}

#[test]
fn a_vendor_down_long_enough_has_its_copies_made_again_on_another_vendor() {
    let (mut fat, ids) = market_of_four();
    down(&mut fat, "c", T0 + 1_000);
    assert!(
        due(&fat, T0 + 2_000).is_empty(),
        "repaired before replace_after"
    );

    let repairs = due(&fat, T0 + 7_000);
    assert_eq!(repairs.len(), 2, "{repairs:?}");
    for r in &repairs {
        assert_eq!(
            (r.source.as_str(), r.target.as_str(), r.replaces.as_str()),
            ("a", "d", "c")
        );
    }
    plan(&mut fat, repairs.clone(), T0 + 7_000);
    check_invariants(&fat).unwrap();
    assert_eq!(held(&fat, "d"), (0, 140, 1000));
    assert!(
        due(&fat, T0 + 8_000).is_empty(),
        "a portion got a second repair"
    );
    let orders = fat.copies_for(&vid("a"), 10);
    assert_eq!(orders.len(), 2);
    assert_eq!(orders[0].target.address, "d.example:7100");
    assert!(fat.copies_for(&vid("b"), 10).is_empty());

    // Another vendor cannot finish a's repairs.
    let first = &repairs[0];
    let ok = CopyResult {
        repair: first.id,
        outcome: Ok(receipt_of(&fat, "d", first)),
    };
    assert_eq!(finish(&mut fat, "b", vec![ok.clone()]), (0, 0));
    assert_eq!(fat.open_repairs(), 2);

    // The target's receipt: d replaces c, and c must delete its copy.
    assert_eq!(finish(&mut fat, "a", vec![ok.clone()]), (1, 0));
    check_invariants(&fat).unwrap();
    let size = fat.portions[&tid("acme")][&first.portion].size;
    let mut now_on = vendors_of(&fat, first.portion);
    now_on.sort();
    assert_eq!(now_on, ["a", "b", "d"]);
    assert_eq!(held(&fat, "d").0, size);
    assert_eq!(
        fat.deletions_for(&vid("c")),
        vec![PortionDeletion {
            tenant: tid("acme"),
            portion: first.portion
        }]
    );
    // A repeated report changes nothing.
    let before = fat.clone();
    assert_eq!(finish(&mut fat, "a", vec![ok]), (0, 0));
    assert_eq!(fat, before);
    assert!(ids.contains(&first.portion));
}

#[test]
fn a_failed_or_forged_copy_frees_the_target_and_is_planned_again() {
    let (mut fat, _) = market_of_four();
    down(&mut fat, "c", T0);
    let repairs = due(&fat, T0 + 5_000);
    plan(&mut fat, repairs.clone(), T0 + 5_000);
    let forged = CopyResult {
        repair: repairs[0].id,
        // Signed by b, not by the target d.
        outcome: Ok(receipt_of(&fat, "b", &repairs[0])),
    };
    let failed = CopyResult {
        repair: repairs[1].id,
        outcome: Err("target d refused the grant".into()),
    };
    assert_eq!(finish(&mut fat, "a", vec![forged, failed]), (0, 2));
    check_invariants(&fat).unwrap();
    assert!(fat.deletions_for(&vid("c")).is_empty());
    // d may hold the copies all the same: it is asked to delete them, and
    // is no target for them until it has.
    assert_eq!(held(&fat, "d"), (140, 0, 1000));
    let owed = fat.deletions_for(&vid("d"));
    assert_eq!(owed.len(), 2);
    assert!(due(&fat, T0 + 6_000).is_empty());
    fat.apply(Command::ReportCapacity(ReportCapacity {
        vendor: vid("d"),
        offered_bytes: 1000,
        stored_bytes: 0,
        deleted: owed,
        now_unix_ms: T0 + 6_000,
    }))
    .unwrap();
    assert_eq!(held(&fat, "d"), (0, 0, 1000));
    // The next try takes another source (b instead of a).
    let again = due(&fat, T0 + 6_000);
    assert_eq!(again.len(), 2);
    for r in &again {
        assert_eq!((r.source.as_str(), r.target.as_str()), ("b", "d"));
    }
    check_invariants(&fat).unwrap();
}

#[test]
fn an_expired_repair_frees_the_target() {
    let (mut fat, _) = market_of_four();
    down(&mut fat, "c", T0);
    let repairs = due(&fat, T0 + 5_000);
    plan(&mut fat, repairs.clone(), T0 + 5_000);
    let end = T0 + 5_000 + REPAIR_LEASE_MS;
    assert!(!fat.has_expired_leases(end - 1));
    assert!(fat.has_expired_leases(end));
    let released = match fat
        .apply(Command::ExpireLeases { now_unix_ms: end })
        .unwrap()
    {
        Outcome::LeasesExpired { released } => released,
        other => panic!("{other:?}"),
    };
    assert_eq!(released.len(), 2);
    assert_eq!(fat.open_repairs(), 0);
    // A late copy may have landed: d is asked to delete it.
    assert_eq!(held(&fat, "d"), (140, 0, 1000));
    assert_eq!(fat.deletions_for(&vid("d")).len(), 2);
    check_invariants(&fat).unwrap();
}

#[test]
fn a_copy_of_a_portion_released_meanwhile_is_deleted_at_the_target() {
    let mut fat = market();
    let ids = committed(&mut fat, "acme", &[100], 0);
    register(&mut fat, "d", "sa", 1000, T0).unwrap();
    down(&mut fat, "c", T0);
    let repairs = due(&fat, T0 + 5_000);
    plan(&mut fat, repairs.clone(), T0 + 5_000);
    let receipt = receipt_of(&fat, "d", &repairs[0]);
    fat.apply(Command::ReleasePortions(ReleasePortions {
        tenant: tid("acme"),
        portions: ids.clone(),
    }))
    .unwrap();
    let ok = CopyResult {
        repair: repairs[0].id,
        outcome: Ok(receipt),
    };
    assert_eq!(finish(&mut fat, "a", vec![ok]), (1, 0));
    check_invariants(&fat).unwrap();
    assert_eq!(held(&fat, "d"), (100, 0, 1000));
    assert_eq!(fat.deletions_for(&vid("d")).len(), 1);
}

#[test]
fn a_vendor_offering_less_than_it_holds_for_long_sheds_only_the_excess() {
    let (mut fat, _) = market_of_four();
    // a holds 140 and now offers 100: 40 bytes must move.
    fat.apply(Command::ReportCapacity(ReportCapacity {
        vendor: vid("a"),
        offered_bytes: 100,
        stored_bytes: 140,
        deleted: vec![],
        now_unix_ms: T0 + 1,
    }))
    .unwrap();
    assert!(due(&fat, T0 + 2).is_empty(), "moved before replace_after");
    // A store back within the time (a restart) moves nothing.
    let mut back = fat.clone();
    back.apply(Command::ReportCapacity(ReportCapacity {
        vendor: vid("a"),
        offered_bytes: 1000,
        stored_bytes: 140,
        deleted: vec![],
        now_unix_ms: T0 + 3_000,
    }))
    .unwrap();
    assert!(due(&back, T0 + 6_000).is_empty());
    let repairs = due(&fat, T0 + 5_001);
    assert_eq!(repairs.len(), 1, "{repairs:?}");
    let r = &repairs[0];
    assert_eq!(r.replaces.as_str(), "a");
    assert_ne!(r.source.as_str(), "a", "another holder sends, sparing a");
    assert_eq!(r.target.as_str(), "d");
    plan(&mut fat, repairs.clone(), T0 + 5_001);
    // The excess is on its way: nothing more is due.
    assert!(due(&fat, T0 + 5_002).is_empty());
    check_invariants(&fat).unwrap();
    // Placed, a's copy is owed for deletion: still counted in its `used`, but
    // no longer held, so no more moves.
    let ok = CopyResult {
        repair: r.id,
        outcome: Ok(receipt_of(&fat, "d", r)),
    };
    let source = r.source.to_string();
    assert_eq!(finish(&mut fat, &source, vec![ok]), (1, 0));
    assert_eq!(held(&fat, "a").0, 140);
    assert_eq!(fat.deletions_for(&vid("a")).len(), 1);
    assert!(
        due(&fat, T0 + 5_003).is_empty(),
        "{:?}",
        due(&fat, T0 + 5_003)
    );
    check_invariants(&fat).unwrap();
}

#[test]
fn a_plan_that_no_longer_holds_is_refused_whole() {
    let (mut fat, ids) = market_of_four();
    down(&mut fat, "c", T0);
    let repairs = due(&fat, T0 + 5_000);
    // The target lacks room for both.
    let mut small = fat.clone();
    small
        .apply(Command::ReportCapacity(ReportCapacity {
            vendor: vid("d"),
            offered_bytes: 120,
            stored_bytes: 0,
            deleted: vec![],
            now_unix_ms: T0 + 5_000,
        }))
        .unwrap();
    let err = refused(
        &mut small,
        Command::PlanRepairs(PlanRepairs {
            repairs: repairs.clone(),
            now_unix_ms: T0 + 5_000,
        }),
    );
    assert!(matches!(err, FatError::Conflict(_)), "{err}");
    // A source that does not hold the portion, and a target that does.
    for (source, target) in [("d", "d"), ("a", "b")] {
        let mut bad = repairs[0].clone();
        bad.source = vid(source);
        bad.target = vid(target);
        let err = refused(
            &mut fat,
            Command::PlanRepairs(PlanRepairs {
                repairs: vec![bad],
                now_unix_ms: T0 + 5_000,
            }),
        );
        assert!(!err.to_string().is_empty());
    }
    // The same portion twice in one plan.
    let mut twice = repairs[0].clone();
    twice.id = ReservationId::random();
    let err = refused(
        &mut fat,
        Command::PlanRepairs(PlanRepairs {
            repairs: vec![repairs[0].clone(), twice],
            now_unix_ms: T0 + 5_000,
        }),
    );
    assert!(err.to_string().contains("already being repaired"), "{err}");
    assert_eq!(ids.len(), 2);
}
