//! Unit tests of pruning in the FAT: releasing portions no snapshot needs,
//! the vendors' deletion queues and their acknowledgements.

use offsite_proto::{PortionDeletion, PortionId, SnapshotRecord};

use super::tests::{
    commit, held, market, placement, refused, reserve, reserved, snapshot_of, tid, vid, T0,
};
use super::*;

/// Commits portions of `sizes` bytes for `tenant` on vendors a, b and c,
/// with a snapshot needing the first `needed` of them (when `needed > 0`).
pub(super) fn committed(
    fat: &mut Fat,
    tenant: &str,
    sizes: &[u64],
    needed: usize,
) -> Vec<PortionId> {
    let total: u64 = sizes.iter().sum();
    let id = reserved(
        fat,
        reserve(
            tenant,
            &format!("r-{tenant}-{}", fat.status().portions),
            total,
            3,
            &[("a", total), ("b", total), ("c", total)],
        ),
    );
    let placements: Vec<_> = sizes
        .iter()
        .map(|s| placement(tenant, *s, &["a", "b", "c"]))
        .collect();
    let ids: Vec<PortionId> = placements.iter().map(|p| p.portion).collect();
    let snapshot = (needed > 0).then(|| snapshot_of(&ids[..needed]));
    fat.apply(commit(tenant, id, placements, snapshot)).unwrap();
    ids
}

fn release(tenant: &str, portions: &[PortionId]) -> Command {
    Command::ReleasePortions(ReleasePortions {
        tenant: tid(tenant),
        portions: portions.to_vec(),
    })
}

fn report(fat: &mut Fat, v: &str, deleted: Vec<PortionDeletion>) -> Vec<PortionDeletion> {
    match fat
        .apply(Command::ReportCapacity(ReportCapacity {
            vendor: vid(v),
            offered_bytes: 1000,
            stored_bytes: 0,
            deleted,
            now_unix_ms: T0 + 10,
        }))
        .unwrap()
    {
        Outcome::CapacityReported { delete } => delete,
        other => panic!("{other:?}"),
    }
}

#[test]
fn release_refuses_needed_foreign_unknown_and_repeated_portions() {
    let mut fat = market();
    let acme = committed(&mut fat, "acme", &[10, 20, 30], 2);
    let globex = committed(&mut fat, "globex", &[5], 0);

    let err = refused(&mut fat, release("acme", &[acme[2], acme[0]]));
    assert!(
        matches!(&err, FatError::Conflict(m) if m.contains("needed by snapshot")),
        "{err}"
    );
    let err = refused(&mut fat, release("acme", &[acme[2], globex[0]]));
    assert!(matches!(err, FatError::NotFound(_)), "{err}");
    let err = refused(&mut fat, release("acme", &[PortionId::random()]));
    assert!(matches!(err, FatError::NotFound(_)), "{err}");
    let err = refused(&mut fat, release("acme", &[acme[2], acme[2]]));
    assert!(matches!(err, FatError::Invalid(_)), "{err}");
    // The manifest's portion is needed too, even when not listed.
    let s = fat.snapshots(&tid("acme"))[0].clone();
    let mut fat2 = fat.clone();
    fat2.apply(Command::Forget(Forget {
        tenant: tid("acme"),
        snapshot: s.id,
    }))
    .unwrap();
    assert!(fat2.apply(release("acme", &[acme[0], acme[1]])).is_ok());
}

#[test]
fn released_portions_wait_for_the_vendors_acknowledgement() {
    let mut fat = market();
    let ids = committed(&mut fat, "acme", &[100, 40], 1);
    assert_eq!(held(&fat, "a").0, 140);

    let outcome = fat.apply(release("acme", &[ids[1]])).unwrap();
    assert_eq!(
        outcome,
        Outcome::PortionsReleased {
            portions: 1,
            bytes: 40
        }
    );
    assert!(fat.locate(&tid("acme"), &[ids[1]]).is_empty());
    assert_eq!(fat.list_portions(&tid("acme"), None, 0).0.len(), 1);
    assert_eq!(fat.status().pending_deletions, 3);
    // Used stays until the vendor deleted: the bytes are still on its disk.
    assert_eq!(held(&fat, "a").0, 140);

    // Releasing again while queued is a no-op, not an error.
    assert_eq!(
        fat.apply(release("acme", &[ids[1]])).unwrap(),
        Outcome::PortionsReleased {
            portions: 0,
            bytes: 0
        }
    );
    // The portion id cannot come back while it is being deleted.
    let r = reserved(&mut fat, reserve("acme", "again", 40, 1, &[("a", 40)]));
    let mut again = placement("acme", 40, &["a"]);
    again.portion = ids[1];
    for receipt in &mut again.receipts {
        receipt.portion = ids[1];
    }
    let err = refused(&mut fat, commit("acme", r, vec![again], None));
    assert!(matches!(err, FatError::Conflict(_)), "{err}");

    let wanted = PortionDeletion {
        tenant: tid("acme"),
        portion: ids[1],
    };
    let asked = report(&mut fat, "a", vec![]);
    assert_eq!(asked, vec![wanted.clone()]);
    // An acknowledgement of something never asked is ignored.
    let stray = PortionDeletion {
        tenant: tid("acme"),
        portion: PortionId::random(),
    };
    assert_eq!(
        report(&mut fat, "a", vec![stray.clone()]),
        vec![wanted.clone()]
    );
    assert_eq!(held(&fat, "a").0, 140);

    assert!(report(&mut fat, "a", vec![wanted.clone()]).is_empty());
    assert_eq!(held(&fat, "a").0, 100);
    assert_eq!(held(&fat, "b").0, 140, "b has not deleted yet");
    assert_eq!(fat.status().pending_deletions, 2);
    // A repeated acknowledgement takes nothing more.
    report(&mut fat, "a", vec![wanted.clone()]);
    assert_eq!(held(&fat, "a").0, 100);
    for v in ["b", "c"] {
        assert_eq!(report(&mut fat, v, vec![]), vec![wanted.clone()]);
        report(&mut fat, v, vec![wanted.clone()]);
        assert_eq!(held(&fat, v).0, 100);
    }
    assert_eq!(fat.status().pending_deletions, 0);
    // Once deleted everywhere, the id is unknown.
    let err = refused(&mut fat, release("acme", &[ids[1]]));
    assert!(matches!(err, FatError::NotFound(_)), "{err}");
}

#[test]
fn a_report_asks_for_a_bounded_batch() {
    let mut fat = market();
    for v in ["a", "b", "c"] {
        tests::register(&mut fat, v, "eu", 1_000_000, T0).unwrap();
    }
    let sizes = vec![1u64; offsite_proto::limits::MAX_DELETIONS_PER_REPORT + 5];
    let ids = committed(&mut fat, "acme", &sizes, 0);
    fat.apply(release("acme", &ids)).unwrap();
    let first = report(&mut fat, "a", vec![]);
    assert_eq!(first.len(), offsite_proto::limits::MAX_DELETIONS_PER_REPORT);
    let rest = report(&mut fat, "a", first);
    assert_eq!(rest.len(), 5);
    assert!(report(&mut fat, "a", rest).is_empty());
    assert_eq!(held(&fat, "a").0, 0);
}

#[test]
fn portions_are_listed_in_pages_per_tenant() {
    let mut fat = market();
    let mut ids = committed(&mut fat, "acme", &[1, 2, 3, 4, 5], 0);
    committed(&mut fat, "globex", &[9], 0);
    ids.sort();
    let (page, more) = fat.list_portions(&tid("acme"), None, 2);
    assert!(more);
    assert_eq!(page.iter().map(|p| p.portion).collect::<Vec<_>>(), ids[..2]);
    let (page, more) = fat.list_portions(&tid("acme"), Some(ids[1]), 3);
    assert!(!more);
    assert_eq!(page.iter().map(|p| p.portion).collect::<Vec<_>>(), ids[2..]);
    assert!(page.iter().all(|p| p.committed_unix_ms == T0 + 1));
    assert_eq!(fat.list_portions(&tid("nobody"), None, 0), (vec![], false));
}

#[test]
fn a_rewrite_moves_snapshots_to_other_portions_in_one_step() {
    let mut fat = market();
    let old = committed(&mut fat, "acme", &[10, 20], 2);
    let new = committed(&mut fat, "acme", &[15], 0);
    let foreign = committed(&mut fat, "globex", &[5], 0);
    let stored = fat.snapshots(&tid("acme"))[0].clone();
    let rewrite = |record: SnapshotRecord| {
        Command::RewriteSnapshots(RewriteSnapshots {
            tenant: tid("acme"),
            snapshots: vec![record],
        })
    };
    let moved = |portions: &[PortionId]| {
        let mut r = stored.clone();
        r.portions = portions.to_vec();
        r.manifest.portion = portions[0];
        r
    };

    let err = refused(&mut fat, rewrite(moved(&[foreign[0]])));
    assert!(matches!(err, FatError::Invalid(_)), "{err}");
    let err = refused(&mut fat, rewrite(moved(&[PortionId::random()])));
    assert!(matches!(err, FatError::Invalid(_)), "{err}");
    let mut renamed = moved(&new);
    renamed.host = "elsewhere".into();
    let err = refused(&mut fat, rewrite(renamed));
    assert!(matches!(err, FatError::Invalid(_)), "{err}");
    let mut outside = moved(&new);
    outside.manifest.offset = 15;
    let err = refused(&mut fat, rewrite(outside));
    assert!(matches!(err, FatError::Invalid(_)), "{err}");
    let mut unknown = moved(&new);
    unknown.id = offsite_proto::SnapshotId::random();
    let err = refused(&mut fat, rewrite(unknown));
    assert!(matches!(err, FatError::NotFound(_)), "{err}");

    // Before the rewrite the old portions are needed; after it, the new one.
    assert!(fat.apply(release("acme", &old)).is_err());
    assert_eq!(
        fat.apply(rewrite(moved(&new))).unwrap(),
        Outcome::SnapshotsRewritten { snapshots: 1 }
    );
    assert_eq!(fat.snapshots(&tid("acme")), vec![moved(&new)]);
    let err = refused(&mut fat, release("acme", &new));
    assert!(matches!(err, FatError::Conflict(_)), "{err}");
    assert!(fat.apply(release("acme", &old)).is_ok());
}
