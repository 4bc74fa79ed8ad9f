//! Unit tests of bad copies in the FAT: marking them (by the vendor's own
//! report or a failed audit), repairing them at once from a healthy holder
//! and never from a bad one, the copy count on the way, and what a mark
//! changes in reputation, locations and audits.

use offsite_proto::{CopyResult, PortionDeletion, PortionId, ReservationId};

use super::proptests::check_invariants;
use super::repair_tests::{due, finish, market_of_four, plan, receipt_of, vendors_of};
use super::tests::{refused, tid, vid, T0};
use super::*;

/// `vendor` reports its copy of the tenant's portion bad at `now`.
pub(super) fn self_report(
    fat: &mut Fat,
    vendor: &VendorId,
    tenant: &str,
    portion: PortionId,
    now: u64,
) -> u64 {
    let command = Command::MarkBadCopies(MarkBadCopies {
        marks: vec![BadCopyMark::SelfReported {
            vendor: vendor.clone(),
            tenant: tid(tenant),
            portion,
            reason: "piece 00ff is corrupt".into(),
        }],
        now_unix_ms: now,
    });
    fat.check(&command).unwrap();
    match fat.apply(command).unwrap() {
        Outcome::BadCopiesMarked { marked } => marked,
        other => panic!("{other:?}"),
    }
}

fn failed_audit(vendor: &str, portion: PortionId) -> Audit {
    Audit {
        vendor: vid(vendor),
        tenant: tid("acme"),
        portion,
        offset: 0,
        length: 1024,
        result: AuditResult::Failed {
            reason: "NotFound: vendor does not hold it".into(),
        },
    }
}

#[test]
fn a_self_reported_bad_copy_is_repaired_at_once_from_a_healthy_holder() {
    let (mut fat, ids) = market_of_four();
    let portion = ids[0];
    assert_eq!(
        self_report(&mut fat, &vid("c"), "acme", portion, T0 + 10),
        1
    );
    // A repeat, and a portion c does not hold, mark nothing more.
    assert_eq!(
        self_report(&mut fat, &vid("c"), "acme", portion, T0 + 11),
        0
    );
    assert_eq!(
        self_report(&mut fat, &vid("c"), "acme", PortionId::random(), T0 + 11),
        0
    );
    assert!(fat.is_bad_copy(&tid("acme"), portion, &vid("c")));
    assert_eq!(fat.bad_copy_counts(&vid("c")), (1, 1));
    // Honest self-reporting is not a failed audit.
    assert_eq!(fat.reputation(&vid("c")), Reputation::default());
    // Not audited again, not handed out for fetches.
    assert!(!fat
        .audit_candidates()
        .iter()
        .any(|c| c.vendor == vid("c") && c.portion == portion));
    let located = fat.locate(&tid("acme"), &[portion]);
    assert!(!located[0].vendors.iter().any(|v| v.id == vid("c")));

    // c is up and in good standing: repaired at once all the same (no
    // repair_after wait), from a or b, onto d, replacing c.
    let repairs = due(&fat, T0 + 12);
    assert_eq!(repairs.len(), 1, "{repairs:?}");
    let repair = repairs[0].clone();
    assert_eq!(repair.portion, portion);
    assert_eq!(repair.replaces, vid("c"));
    assert_eq!(repair.target, vid("d"));
    assert_ne!(repair.source, vid("c"));
    plan(&mut fat, repairs, T0 + 12);
    check_invariants(&fat).unwrap();
    // On the way the portion keeps its three copies.
    assert_eq!(vendors_of(&fat, portion).len(), 3);
    assert!(
        due(&fat, T0 + 13).is_empty(),
        "a second repair of one portion"
    );

    let result = CopyResult {
        repair: repair.id,
        outcome: Ok(receipt_of(&fat, "d", &repair)),
    };
    assert_eq!(
        finish(&mut fat, repair.source.as_str(), vec![result]),
        (1, 0)
    );
    check_invariants(&fat).unwrap();
    let mut now_on = vendors_of(&fat, portion);
    now_on.sort();
    assert_eq!(now_on, ["a", "b", "d"]);
    // The bad copy goes through c's deletion queue, and is no longer bad.
    assert_eq!(
        fat.deletions_for(&vid("c")),
        vec![PortionDeletion {
            tenant: tid("acme"),
            portion
        }]
    );
    assert!(fat.bad_copies().is_empty());
    assert_eq!(fat.bad_copy_counts(&vid("c")), (0, 1));
    assert!(due(&fat, T0 + 14).is_empty());
}

#[test]
fn a_bad_copy_is_never_the_source_of_its_repair() {
    let (mut fat, ids) = market_of_four();
    let portion = ids[1];
    self_report(&mut fat, &vid("a"), "acme", portion, T0 + 10);
    self_report(&mut fat, &vid("b"), "acme", portion, T0 + 10);
    // Only c is healthy: it is the source of every try, whichever the
    // rotation after failed tries picks.
    for round in 0..6u64 {
        let repairs = due(&fat, T0 + 20 + round);
        assert_eq!(repairs.len(), 1, "round {round}: {repairs:?}");
        let repair = repairs[0].clone();
        assert_eq!(repair.source, vid("c"), "round {round}");
        assert!(repair.replaces == vid("a") || repair.replaces == vid("b"));
        plan(&mut fat, repairs, T0 + 20 + round);
        let failed = CopyResult {
            repair: repair.id,
            outcome: Err("the target hung up".into()),
        };
        assert_eq!(finish(&mut fat, "c", vec![failed]), (0, 1));
        check_invariants(&fat).unwrap();
        // The target deletes whatever it may have stored; then it may be
        // a target again.
        let deleted = fat.deletions_for(&repair.target);
        fat.apply(Command::ReportCapacity(ReportCapacity {
            vendor: repair.target.clone(),
            offered_bytes: 1000,
            stored_bytes: 0,
            deleted,
            now_unix_ms: T0 + 20 + round,
        }))
        .unwrap();
        assert_eq!(vendors_of(&fat, portion).len(), 3, "round {round}");
    }
    // A plan naming a bad copy as the source is refused, changing nothing.
    let bad_source = PlannedRepair {
        id: ReservationId::random(),
        tenant: tid("acme"),
        portion,
        source: vid("a"),
        target: vid("d"),
        replaces: vid("b"),
    };
    let err = refused(
        &mut fat,
        Command::PlanRepairs(PlanRepairs {
            repairs: vec![bad_source],
            now_unix_ms: T0 + 40,
        }),
    );
    assert!(err.to_string().contains("is bad"), "{err}");
    // With the one healthy holder down there is no source: nothing is
    // planned, rather than a copy of a bad one.
    super::repair_tests::down(&mut fat, "c", T0 + 50);
    let repairs = due(&fat, T0 + 60);
    assert!(
        repairs.iter().all(|r| r.portion != portion),
        "copied from a bad holder: {repairs:?}"
    );
}

#[test]
fn a_failed_audit_marks_the_copy_and_counts_against_the_vendor() {
    let (mut fat, ids) = market_of_four();
    let command = Command::MarkBadCopies(MarkBadCopies {
        marks: vec![BadCopyMark::FailedAudit(failed_audit("b", ids[0]))],
        now_unix_ms: T0 + 10,
    });
    match fat.apply(command).unwrap() {
        Outcome::BadCopiesMarked { marked } => assert_eq!(marked, 1),
        other => panic!("{other:?}"),
    }
    let reputation = fat.reputation(&vid("b"));
    assert_eq!(
        (reputation.audits_failed, reputation.recent_failures()),
        (1, 1)
    );
    assert!(fat.bad_copies()[0].3.found_by == FoundBy::Audit);
    // Not a self-report.
    assert_eq!(fat.bad_copy_counts(&vid("b")), (1, 0));
    assert_eq!(due(&fat, T0 + 11)[0].replaces, vid("b"));
}

#[test]
fn malformed_marks_are_refused_whole_and_change_nothing() {
    let (mut fat, ids) = market_of_four();
    let mut passed = failed_audit("b", ids[0]);
    passed.result = AuditResult::Passed;
    let command = Command::MarkBadCopies(MarkBadCopies {
        marks: vec![
            BadCopyMark::FailedAudit(failed_audit("a", ids[0])),
            BadCopyMark::FailedAudit(passed),
        ],
        now_unix_ms: T0,
    });
    assert!(fat.check(&command).is_err());
    let err = refused(&mut fat, command);
    assert!(err.to_string().contains("did not fail"), "{err}");
    let too_many = Command::MarkBadCopies(MarkBadCopies {
        marks: (0..=offsite_proto::limits::MAX_BAD_COPIES_PER_REPORT)
            .map(|_| BadCopyMark::FailedAudit(failed_audit("a", ids[0])))
            .collect(),
        now_unix_ms: T0,
    });
    let err = refused(&mut fat, too_many);
    assert!(err.to_string().contains("at most"), "{err}");
}

#[test]
fn a_released_portion_leaves_no_bad_copy_behind() {
    let (mut fat, _) = market_of_four();
    // Needed by no snapshot: it can be released.
    let unneeded = super::deletion_tests::committed(&mut fat, "acme", &[30], 0)[0];
    self_report(&mut fat, &vid("a"), "acme", unneeded, T0 + 10);
    fat.apply(Command::ReleasePortions(ReleasePortions {
        tenant: tid("acme"),
        portions: vec![unneeded],
    }))
    .unwrap();
    assert!(fat.bad_copies().is_empty());
    assert!(due(&fat, T0 + 20).is_empty());
    check_invariants(&fat).unwrap();
}
