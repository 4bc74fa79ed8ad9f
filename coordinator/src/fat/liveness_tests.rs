//! Unit tests of stored vendor liveness: the leader's `UpdateLiveness` makes
//! a silent vendor suspect, then down; a report makes it up again; placement
//! and `apply` hold only up vendors.

use offsite_proto::ReservationId;

use super::tests::{register, reserve, vid, T0};
use super::*;

const POLICY: LivenessPolicy = LivenessPolicy {
    suspect_after_ms: 15_000,
    down_after_ms: 60_000,
};

fn market() -> Fat {
    let mut fat = Fat::default();
    for (v, region) in [("a", "eu"), ("b", "us"), ("c", "ap")] {
        register(&mut fat, v, region, 1000, T0).unwrap();
    }
    fat
}

fn report(fat: &mut Fat, v: &str, now: u64) {
    fat.apply(Command::ReportCapacity(ReportCapacity {
        vendor: vid(v),
        offered_bytes: 1000,
        stored_bytes: 0,
        deleted: vec![],
        now_unix_ms: now,
    }))
    .unwrap();
}

/// What the leader's sweep does at `now`: proposes the changes due, if any.
fn sweep(fat: &mut Fat, now: u64) -> Vec<(VendorId, Liveness)> {
    let changes = fat.liveness_changes(now, &POLICY);
    if changes.is_empty() {
        return Vec::new();
    }
    match fat
        .apply(Command::UpdateLiveness(UpdateLiveness {
            changes,
            now_unix_ms: now,
        }))
        .unwrap()
    {
        Outcome::LivenessUpdated { changed } => changed,
        other => panic!("{other:?}"),
    }
}

fn liveness(fat: &Fat, v: &str) -> Liveness {
    fat.vendors[&vid(v)].liveness
}

#[test]
fn a_silent_vendor_becomes_suspect_then_down_and_a_report_brings_it_up() {
    let mut fat = market();
    assert!(sweep(&mut fat, T0 + 15_000).is_empty(), "15 s is not past");
    report(&mut fat, "a", T0 + 10_000);
    report(&mut fat, "c", T0 + 10_000);

    assert_eq!(
        sweep(&mut fat, T0 + 20_000),
        vec![(vid("b"), Liveness::Suspect)]
    );
    assert_eq!(fat.vendors[&vid("b")].liveness_since_unix_ms, T0 + 20_000);
    // Reading later changes nothing: only the command does.
    assert_eq!(liveness(&fat, "b"), Liveness::Suspect);
    assert!(sweep(&mut fat, T0 + 21_000).is_empty(), "no change twice");

    report(&mut fat, "a", T0 + 60_000);
    let changed = sweep(&mut fat, T0 + 61_000);
    assert_eq!(
        changed,
        vec![(vid("b"), Liveness::Down), (vid("c"), Liveness::Suspect)]
    );
    let status = fat.status();
    let of = |v: &str| {
        status
            .vendors
            .iter()
            .find(|s| s.vendor.id == vid(v))
            .unwrap()
            .liveness
    };
    assert_eq!(
        (of("a"), of("b"), of("c")),
        (Liveness::Up, Liveness::Down, Liveness::Suspect)
    );
    let rooms: Vec<_> = fat
        .vendors_with_room()
        .into_iter()
        .map(|r| r.vendor)
        .collect();
    assert_eq!(rooms, vec![vid("a")], "only up vendors are placed on");

    report(&mut fat, "b", T0 + 62_000);
    assert_eq!(liveness(&fat, "b"), Liveness::Up);
    assert_eq!(fat.vendors[&vid("b")].liveness_since_unix_ms, T0 + 62_000);
    register(&mut fat, "c", "ap", 1000, T0 + 62_000).unwrap();
    assert_eq!(
        liveness(&fat, "c"),
        Liveness::Up,
        "re-registering is a report"
    );
    assert_eq!(fat.vendors_with_room().len(), 3);
}

#[test]
fn a_change_judged_before_a_newer_report_is_skipped() {
    let mut fat = market();
    let changes = fat.liveness_changes(T0 + 20_000, &POLICY);
    assert_eq!(changes.len(), 3);
    // "a" reports after the leader looked but before its command applies.
    report(&mut fat, "a", T0 + 20_001);
    let outcome = fat
        .apply(Command::UpdateLiveness(UpdateLiveness {
            changes,
            now_unix_ms: T0 + 20_000,
        }))
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::LivenessUpdated {
            changed: vec![(vid("b"), Liveness::Suspect), (vid("c"), Liveness::Suspect)]
        }
    );
    assert_eq!(liveness(&fat, "a"), Liveness::Up);

    // Unknown vendors are skipped too; the command is never refused.
    let outcome = fat
        .apply(Command::UpdateLiveness(UpdateLiveness {
            changes: vec![LivenessChange {
                vendor: vid("gone"),
                liveness: Liveness::Down,
                seen_report_unix_ms: 0,
            }],
            now_unix_ms: T0 + 21_000,
        }))
        .unwrap();
    assert_eq!(outcome, Outcome::LivenessUpdated { changed: vec![] });
}

#[test]
fn apply_refuses_a_reservation_on_a_vendor_that_is_not_up() {
    let mut fat = market();
    report(&mut fat, "a", T0 + 10_000);
    report(&mut fat, "b", T0 + 10_000);
    sweep(&mut fat, T0 + 20_000);
    assert_eq!(liveness(&fat, "c"), Liveness::Suspect);

    // Placement chose "c" before the leader marked it suspect.
    let mut r = reserve("acme", "r1", 100, 2, &[("a", 100), ("b", 100), ("c", 100)]);
    r.reservation = ReservationId::random();
    let before = fat.clone();
    let err = fat.apply(Command::Reserve(r)).unwrap_err();
    assert!(matches!(err, FatError::NotEnoughCapacity { .. }), "{err}");
    assert_eq!(fat, before, "a refused reserve changed the FAT");

    let ok = reserve("acme", "r2", 100, 2, &[("a", 100), ("b", 100)]);
    assert!(matches!(
        fat.apply(Command::Reserve(ok)).unwrap(),
        Outcome::Reserved(_)
    ));
}

#[test]
fn the_leader_restamps_its_time_into_the_command() {
    let mut command = Command::UpdateLiveness(UpdateLiveness {
        changes: vec![],
        now_unix_ms: 1,
    });
    command.restamp(T0);
    assert_eq!(command.kind(), "update-liveness");
    assert!(matches!(command, Command::UpdateLiveness(u) if u.now_unix_ms == T0));
}
