//! Unit tests of the FAT rules, asserting on outcomes and state.

use offsite_proto::{
    BlobLocation, Hash, PortionId, PortionPlacement, Receipt, RequestId, ReservationId, SnapshotId,
    SnapshotRecord, TenantId, VendorId, VendorRef,
};

use offsite_proto::signing::VendorKey;

use super::*;

pub(super) const T0: u64 = 1_700_000_000_000;
const LEASE: u64 = 60_000;

pub(super) fn vid(id: &str) -> VendorId {
    VendorId::new(id).unwrap()
}

pub(super) fn tid(id: &str) -> TenantId {
    TenantId::new(id).unwrap()
}

/// The identity key of test vendor `id` (derived from its name).
pub(super) fn vendor_key(id: &str) -> VendorKey {
    VendorKey::from_secret(blake3::hash(id.as_bytes()).as_bytes())
}

/// The reservation [`placement`] signs its receipts for; [`signed_for`]
/// signs them again for the reservation they are committed to.
const ANY_RESERVATION: ReservationId = ReservationId::from_bytes([0xee; 16]);

/// A receipt of `vendor` for what it stored under `answers` (a reservation
/// or a repair), signed with its test identity key.
pub(super) fn signed_receipt(
    vendor: &str,
    tenant: &str,
    p: &PortionPlacement,
    answers: &ReservationId,
) -> Receipt {
    let mut receipt = Receipt {
        vendor: vid(vendor),
        tenant: tid(tenant),
        portion: p.portion,
        hash: p.hash,
        size: p.size,
        signature: vec![],
    };
    vendor_key(vendor).sign(&mut receipt, answers);
    receipt
}

/// `portions` with every receipt [`placement`] signed made for reservation
/// `id` instead; receipts a test forged or altered stay as they are.
pub(super) fn signed_for(
    id: ReservationId,
    mut portions: Vec<PortionPlacement>,
) -> Vec<PortionPlacement> {
    for receipt in portions.iter_mut().flat_map(|p| p.receipts.iter_mut()) {
        let key = vendor_key(receipt.vendor.as_str());
        let made_by_placement = offsite_proto::signing::verify_receipt(
            receipt,
            &ANY_RESERVATION,
            &key.public_key(),
            offsite_proto::signing::ReceiptRule::Fresh,
        );
        if made_by_placement.is_ok() {
            key.sign(receipt, &id);
        }
    }
    portions
}

pub(super) fn register(
    fat: &mut Fat,
    id: &str,
    region: &str,
    offered: u64,
    now: u64,
) -> Result<Outcome, FatError> {
    fat.apply(Command::RegisterVendor(RegisterVendor {
        vendor: VendorRef {
            id: vid(id),
            address: format!("{id}.example:7100"),
        },
        region: region.into(),
        offered_bytes: offered,
        network_bytes_per_sec: 0,
        identity_key: vendor_key(id).public_key().to_vec(),
        now_unix_ms: now,
    }))
}

pub(super) fn reserve(
    tenant: &str,
    request: &str,
    bytes: u64,
    r: u32,
    holds: &[(&str, u64)],
) -> Reserve {
    Reserve {
        tenant: tid(tenant),
        request: RequestId::new(request).unwrap(),
        reservation: ReservationId::random(),
        bytes,
        replication: r,
        holds: holds
            .iter()
            .map(|(v, b)| Hold {
                vendor: vid(v),
                bytes: *b,
            })
            .collect(),
        now_unix_ms: T0,
        lease_expires_unix_ms: T0 + LEASE,
    }
}

pub(super) fn placement(tenant: &str, size: u64, vendors: &[&str]) -> PortionPlacement {
    let portion = PortionId::random();
    let hash = Hash::of(portion.as_bytes());
    let mut p = PortionPlacement {
        portion,
        hash,
        size,
        receipts: vec![],
    };
    p.receipts = vendors
        .iter()
        .map(|v| signed_receipt(v, tenant, &p, &ANY_RESERVATION))
        .collect();
    p
}

pub(super) fn snapshot_of(portions: &[PortionId]) -> SnapshotRecord {
    SnapshotRecord {
        id: SnapshotId::random(),
        host: "laptop".into(),
        time_unix_ms: T0,
        paths: vec!["/home".into()],
        tags: vec![],
        manifest: BlobLocation {
            portion: portions[0],
            offset: 0,
            length: 1,
        },
        portions: portions.to_vec(),
        logical_bytes: 10,
        file_count: 1,
    }
}

pub(super) fn commit(
    tenant: &str,
    id: ReservationId,
    portions: Vec<PortionPlacement>,
    snapshot: Option<SnapshotRecord>,
) -> Command {
    Command::Commit(Commit {
        tenant: tid(tenant),
        request: RequestId::new("c1").unwrap(),
        reservation: id,
        portions: signed_for(id, portions),
        snapshot,
        now_unix_ms: T0 + 1,
    })
}

/// Three vendors in three regions, 1000 bytes each.
pub(super) fn market() -> Fat {
    let mut fat = Fat::default();
    for (v, region) in [("a", "eu"), ("b", "us"), ("c", "ap")] {
        register(&mut fat, v, region, 1000, T0).unwrap();
    }
    fat
}

pub(super) fn reserved(fat: &mut Fat, r: Reserve) -> ReservationId {
    match fat.apply(Command::Reserve(r)).unwrap() {
        Outcome::Reserved(view) => view.id,
        other => panic!("{other:?}"),
    }
}

pub(super) fn held(fat: &Fat, v: &str) -> (u64, u64, u64) {
    let rec = &fat.vendors[&vid(v)];
    (rec.used, rec.reserved, rec.offered())
}

/// Applies a command that must be refused and checks it changed nothing.
pub(super) fn refused(fat: &mut Fat, command: Command) -> FatError {
    let before = fat.clone();
    let err = fat.apply(command).unwrap_err();
    assert_eq!(*fat, before, "a refused command changed the FAT");
    err
}

#[test]
fn vendors_register_report_and_age() {
    let mut fat = market();
    let err = refused(
        &mut fat,
        Command::ReportCapacity(ReportCapacity {
            vendor: vid("z"),
            offered_bytes: 1,
            stored_bytes: 0,
            deleted: vec![],
            now_unix_ms: T0,
        }),
    );
    assert!(matches!(err, FatError::NotFound(_)), "{err}");
    assert!(matches!(
        register(&mut fat, "d", "bad region!", 1, T0),
        Err(FatError::Invalid(_))
    ));
    assert!(!fat.vendors.contains_key(&vid("d")));
    fat.apply(Command::ReportCapacity(ReportCapacity {
        vendor: vid("a"),
        offered_bytes: 500,
        stored_bytes: 42,
        deleted: vec![],
        now_unix_ms: T0 + 20_000,
    }))
    .unwrap();
    let status = fat.status();
    let of = |id: &str| {
        status
            .vendors
            .iter()
            .find(|v| v.vendor.id == vid(id))
            .unwrap()
            .clone()
    };
    assert_eq!((of("a").offered_bytes, of("a").stored_bytes), (500, 42));
    // Liveness is stored: it changes by a report or the leader's command
    // (see `liveness_tests`), never by reading later.
    assert!(status.vendors.iter().all(|v| v.liveness == Liveness::Up));
    let rooms = fat.vendors_with_room();
    assert_eq!(rooms.len(), 3);
    assert_eq!(rooms[0].free_bytes, 500);
}

#[test]
fn reserve_holds_bytes_and_checks_room() {
    let mut fat = market();
    let id = reserved(
        &mut fat,
        reserve("acme", "r1", 300, 2, &[("a", 300), ("b", 300), ("c", 200)]),
    );
    assert_eq!(held(&fat, "a"), (0, 300, 1000));
    assert_eq!(fat.status().open_reservations, 1);
    let view = fat.reservation_view(id);
    assert_eq!(view.candidates.len(), 3);
    assert_eq!(view.candidates[0].vendor.address, "a.example:7100");
    assert_eq!(view.lease_expires_unix_ms, T0 + LEASE);

    // Too few vendors, too little in total, more than the free room.
    for holds in [vec![("a", 300)], vec![("a", 300), ("b", 200)]] {
        let err = refused(
            &mut fat,
            Command::Reserve(reserve("acme", "r2", 300, 2, &holds)),
        );
        assert!(matches!(err, FatError::NotEnoughCapacity { .. }), "{err}");
    }
    let err = refused(
        &mut fat,
        Command::Reserve(reserve("acme", "r2", 800, 1, &[("a", 800)])),
    );
    assert!(
        matches!(
            err,
            FatError::NotEnoughCapacity {
                free_bytes: 2200,
                vendors: 3,
                ..
            }
        ),
        "{err}"
    );
    // Malformed choices.
    for holds in [
        vec![("a", 100), ("a", 100)],
        vec![("zz", 100)],
        vec![("a", 0)],
        vec![("a", 101)],
    ] {
        let err = refused(
            &mut fat,
            Command::Reserve(reserve("acme", "r2", 100, 1, &holds)),
        );
        assert!(matches!(err, FatError::Invalid(_)), "{err}");
    }
    let err = refused(
        &mut fat,
        Command::Reserve(reserve("acme", "r2", 100, 0, &[("a", 100)])),
    );
    assert!(err.to_string().contains("replication 0"), "{err}");
}

#[test]
fn a_lowered_offer_keeps_what_is_held_and_gets_no_new_reservations() {
    let mut fat = market();
    reserved(&mut fat, reserve("acme", "r1", 400, 1, &[("a", 400)]));
    fat.apply(Command::ReportCapacity(ReportCapacity {
        vendor: vid("a"),
        offered_bytes: 100,
        stored_bytes: 0,
        deleted: vec![],
        now_unix_ms: T0,
    }))
    .unwrap();
    assert_eq!(held(&fat, "a"), (0, 400, 400));
    let err = refused(
        &mut fat,
        Command::Reserve(reserve("acme", "r2", 10, 1, &[("a", 10)])),
    );
    assert!(matches!(err, FatError::NotEnoughCapacity { .. }));
    assert!(fat.vendors_with_room().iter().all(|r| r.vendor != vid("a")));
}

#[test]
fn a_repeated_request_id_returns_the_same_reservation() {
    let mut fat = market();
    let first = reserved(&mut fat, reserve("acme", "r1", 100, 1, &[("a", 100)]));
    let again = reserved(&mut fat, reserve("acme", "r1", 100, 1, &[("b", 100)]));
    assert_eq!(first, again);
    assert_eq!(held(&fat, "b"), (0, 0, 1000));
    let err = refused(
        &mut fat,
        Command::Reserve(reserve("acme", "r1", 200, 1, &[("b", 200)])),
    );
    assert!(matches!(err, FatError::Conflict(_)), "{err}");
    let other = reserved(&mut fat, reserve("globex", "r1", 100, 1, &[("b", 100)]));
    assert_ne!(other, first);
}

#[test]
fn commit_marks_bytes_used_and_releases_the_rest() {
    let mut fat = market();
    let id = reserved(
        &mut fat,
        reserve("acme", "r1", 300, 2, &[("a", 300), ("b", 300), ("c", 300)]),
    );
    let p1 = placement("acme", 100, &["a", "b"]);
    let p2 = placement("acme", 50, &["b", "c"]);
    let snap = snapshot_of(&[p1.portion, p2.portion]);
    let outcome = fat
        .apply(commit(
            "acme",
            id,
            vec![p1.clone(), p2.clone()],
            Some(snap.clone()),
        ))
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::Committed {
            committed_bytes: 300
        }
    );
    assert_eq!(held(&fat, "a"), (100, 0, 1000));
    assert_eq!(held(&fat, "b"), (150, 0, 1000));
    assert_eq!(held(&fat, "c"), (50, 0, 1000));
    assert_eq!(fat.status().open_reservations, 0);
    assert_eq!(fat.snapshots(&tid("acme")), vec![snap.clone()]);
    let (record, locations) = fat.snapshot(&tid("acme"), snap.id).unwrap();
    assert_eq!(record, snap);
    assert_eq!(locations.len(), 2);
    let names: Vec<_> = locations[0].vendors.iter().map(|v| v.id.as_str()).collect();
    assert_eq!(names, ["a", "b"]);

    // The same commit again returns the first result; another is refused.
    let before = fat.clone();
    assert_eq!(
        fat.apply(commit("acme", id, vec![], None)).unwrap(),
        outcome
    );
    assert_eq!(fat, before);
    let mut other = commit("acme", id, vec![], None);
    if let Command::Commit(c) = &mut other {
        c.request = RequestId::new("c2").unwrap();
    }
    assert!(matches!(refused(&mut fat, other), FatError::Conflict(_)));
}

#[test]
fn commit_refuses_receipts_that_do_not_fit_the_reservation() {
    let mut fat = market();
    let id = reserved(
        &mut fat,
        reserve("acme", "r1", 100, 1, &[("a", 100), ("b", 50)]),
    );
    let not_candidate = placement("acme", 10, &["c"]);
    assert!(matches!(
        refused(&mut fat, commit("acme", id, vec![not_candidate], None)),
        FatError::Invalid(_)
    ));
    let mut wrong_hash = placement("acme", 10, &["a"]);
    wrong_hash.receipts[0].hash = Hash::of(b"other");
    assert!(matches!(
        refused(&mut fat, commit("acme", id, vec![wrong_hash], None)),
        FatError::Invalid(_)
    ));
    let mut wrong_size = placement("acme", 10, &["a"]);
    wrong_size.receipts[0].size = 11;
    assert!(matches!(
        refused(&mut fat, commit("acme", id, vec![wrong_size], None)),
        FatError::Invalid(_)
    ));
    let foreign = placement("globex", 10, &["a"]);
    assert!(matches!(
        refused(&mut fat, commit("acme", id, vec![foreign], None)),
        FatError::Forbidden(_)
    ));
    let over_hold = vec![placement("acme", 30, &["b"]), placement("acme", 30, &["b"])];
    let err = refused(&mut fat, commit("acme", id, over_hold, None));
    assert!(err.to_string().contains("reserve more room"), "{err}");
    let no_receipt = placement("acme", 10, &[]);
    assert!(matches!(
        refused(&mut fat, commit("acme", id, vec![no_receipt], None)),
        FatError::Invalid(_)
    ));
    let twice = placement("acme", 10, &["a", "a"]);
    assert!(matches!(
        refused(&mut fat, commit("acme", id, vec![twice], None)),
        FatError::Invalid(_)
    ));
    let p = placement("acme", 10, &["a"]);
    assert!(matches!(
        refused(&mut fat, commit("acme", id, vec![p.clone(), p], None)),
        FatError::Conflict(_)
    ));
    // Another tenant cannot commit to (or see) this reservation.
    let theirs = placement("globex", 10, &["a"]);
    assert!(matches!(
        refused(&mut fat, commit("globex", id, vec![theirs], None)),
        FatError::NotFound(_)
    ));
}

#[test]
fn a_snapshot_needs_portions_of_its_own_tenant() {
    let mut fat = market();
    let theirs = reserved(&mut fat, reserve("globex", "r1", 100, 1, &[("a", 100)]));
    let foreign = placement("globex", 10, &["a"]);
    fat.apply(commit("globex", theirs, vec![foreign.clone()], None))
        .unwrap();

    let id = reserved(&mut fat, reserve("acme", "r1", 100, 1, &[("b", 100)]));
    let mine = placement("acme", 10, &["b"]);
    let steal = snapshot_of(&[mine.portion, foreign.portion]);
    let err = refused(
        &mut fat,
        commit("acme", id, vec![mine.clone()], Some(steal)),
    );
    assert!(
        err.to_string()
            .contains("not a committed portion of tenant acme"),
        "{err}"
    );
    let mut foreign_manifest = snapshot_of(&[mine.portion]);
    foreign_manifest.manifest.portion = foreign.portion;
    refused(
        &mut fat,
        commit("acme", id, vec![mine.clone()], Some(foreign_manifest)),
    );
    let mut outside = snapshot_of(&[mine.portion]);
    outside.manifest.offset = 10;
    assert!(matches!(
        refused(
            &mut fat,
            commit("acme", id, vec![mine.clone()], Some(outside))
        ),
        FatError::Invalid(_)
    ));

    // Portions from an earlier intermediate commit count as the tenant's.
    fat.apply(commit("acme", id, vec![mine.clone()], None))
        .unwrap();
    let id2 = reserved(&mut fat, reserve("acme", "r2", 100, 1, &[("b", 100)]));
    let snap = snapshot_of(&[mine.portion]);
    fat.apply(commit("acme", id2, vec![], Some(snap.clone())))
        .unwrap();
    assert!(fat.snapshots(&tid("globex")).is_empty());
    assert!(matches!(
        fat.snapshot(&tid("globex"), snap.id),
        Err(FatError::NotFound(_))
    ));
    assert!(fat.locate(&tid("globex"), &[mine.portion]).is_empty());
    assert_eq!(
        fat.locate(&tid("acme"), &[mine.portion, foreign.portion])
            .len(),
        1
    );
}

#[test]
fn release_gives_the_bytes_back_once() {
    let mut fat = market();
    let id = reserved(&mut fat, reserve("acme", "r1", 100, 1, &[("a", 100)]));
    let release = |tenant: &str| {
        Command::Release(Release {
            tenant: tid(tenant),
            reservation: id,
            now_unix_ms: T0,
        })
    };
    assert!(matches!(
        refused(&mut fat, release("globex")),
        FatError::NotFound(_)
    ));
    assert_eq!(fat.apply(release("acme")).unwrap(), Outcome::Released);
    assert_eq!(held(&fat, "a"), (0, 0, 1000));
    assert_eq!(fat.apply(release("acme")).unwrap(), Outcome::Released);
    assert_eq!(held(&fat, "a"), (0, 0, 1000));
    let err = refused(
        &mut fat,
        commit("acme", id, vec![placement("acme", 1, &["a"])], None),
    );
    assert!(matches!(err, FatError::Expired(_)), "{err}");
}

#[test]
fn leases_expire_and_closed_reservations_are_forgotten_later() {
    let mut fat = market();
    let old = reserved(&mut fat, reserve("acme", "r1", 100, 1, &[("a", 100)]));
    let mut late = reserve("acme", "r2", 100, 1, &[("b", 100)]);
    late.lease_expires_unix_ms = T0 + 2 * LEASE;
    let young = reserved(&mut fat, late);
    let expiry = T0 + LEASE;
    assert!(fat.has_expired_leases(expiry));
    let outcome = fat
        .apply(Command::ExpireLeases {
            now_unix_ms: expiry,
        })
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::LeasesExpired {
            released: vec![old]
        }
    );
    assert_eq!(held(&fat, "a"), (0, 0, 1000));
    assert_eq!(held(&fat, "b"), (0, 100, 1000));
    assert!(fat.reservations.contains_key(&young));

    let much_later = expiry + CLOSED_RETENTION_MS;
    fat.apply(Command::ExpireLeases {
        now_unix_ms: much_later,
    })
    .unwrap();
    assert!(!fat.reservations.contains_key(&old));
    assert!(fat
        .reservation_for_request(&tid("acme"), &RequestId::new("r1").unwrap())
        .is_none());
    assert!(!fat.has_expired_leases(much_later));
}

fn renew(tenant: &str, id: ReservationId, now: u64, until: u64) -> Command {
    Command::RenewLease(RenewLease {
        tenant: tid(tenant),
        reservation: id,
        now_unix_ms: now,
        lease_expires_unix_ms: until,
    })
}

fn expire(fat: &mut Fat, now: u64) -> Vec<ReservationId> {
    match fat.apply(Command::ExpireLeases { now_unix_ms: now }) {
        Ok(Outcome::LeasesExpired { released }) => released,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_renewed_lease_outlives_its_first_end_and_never_shortens() {
    let mut fat = market();
    let id = reserved(&mut fat, reserve("acme", "r1", 100, 1, &[("a", 100)]));
    let err = refused(&mut fat, renew("globex", id, T0 + 1, T0 + 3 * LEASE));
    assert!(matches!(err, FatError::NotFound(_)), "{err}");

    let view = match fat
        .apply(renew("acme", id, T0 + 1, T0 + 2 * LEASE))
        .unwrap()
    {
        Outcome::Reserved(view) => view,
        other => panic!("{other:?}"),
    };
    assert_eq!(view.lease_expires_unix_ms, T0 + 2 * LEASE);
    assert_eq!(view.candidates.len(), 1);
    // An older renewal arriving late does not shorten the lease.
    fat.apply(renew("acme", id, T0 + 2, T0 + LEASE)).unwrap();
    assert_eq!(fat.reservations[&id].lease_expires_unix_ms, T0 + 2 * LEASE);

    assert!(expire(&mut fat, T0 + LEASE).is_empty());
    assert_eq!(held(&fat, "a"), (0, 100, 1000));
    assert_eq!(expire(&mut fat, T0 + 2 * LEASE), vec![id]);
    assert_eq!(held(&fat, "a"), (0, 0, 1000));
    let err = refused(&mut fat, renew("acme", id, T0 + 2 * LEASE, T0 + 3 * LEASE));
    assert!(matches!(err, FatError::Expired(_)), "{err}");
}

#[test]
fn a_lease_that_ran_out_is_not_renewed_even_before_the_sweep() {
    let mut fat = market();
    let id = reserved(&mut fat, reserve("acme", "r1", 100, 1, &[("a", 100)]));
    let err = refused(&mut fat, renew("acme", id, T0 + LEASE, T0 + 2 * LEASE));
    assert!(matches!(err, FatError::Expired(_)), "{err}");
}

#[test]
fn renewing_a_committed_or_released_reservation_is_refused() {
    let mut fat = market();
    let id = reserved(&mut fat, reserve("acme", "r1", 100, 1, &[("a", 100)]));
    fat.apply(commit(
        "acme",
        id,
        vec![placement("acme", 10, &["a"])],
        None,
    ))
    .unwrap();
    let err = refused(&mut fat, renew("acme", id, T0 + 2, T0 + LEASE));
    assert!(matches!(err, FatError::Conflict(_)), "{err}");
    let other = reserved(&mut fat, reserve("acme", "r2", 100, 1, &[("b", 100)]));
    fat.apply(Command::Release(Release {
        tenant: tid("acme"),
        reservation: other,
        now_unix_ms: T0,
    }))
    .unwrap();
    let err = refused(&mut fat, renew("acme", other, T0 + 2, T0 + LEASE));
    assert!(matches!(err, FatError::Expired(_)), "{err}");
}

#[test]
fn a_commit_after_the_lease_ran_out_takes_room_that_is_still_free() {
    let mut fat = market();
    let id = reserved(
        &mut fat,
        reserve("acme", "r1", 300, 2, &[("a", 300), ("b", 300)]),
    );
    assert_eq!(expire(&mut fat, T0 + LEASE), vec![id]);
    assert_eq!(held(&fat, "a"), (0, 0, 1000));
    let p = placement("acme", 200, &["a", "b"]);
    let mut late = commit("acme", id, vec![p.clone()], Some(snapshot_of(&[p.portion])));
    if let Command::Commit(c) = &mut late {
        c.now_unix_ms = T0 + LEASE + 1;
    }
    assert_eq!(
        fat.apply(late.clone()).unwrap(),
        Outcome::Committed {
            committed_bytes: 400
        }
    );
    // The holds were given back once, at expiry; the commit takes only the
    // bytes it stored.
    assert_eq!(held(&fat, "a"), (200, 0, 1000));
    assert_eq!(held(&fat, "b"), (200, 0, 1000));
    assert_eq!(fat.status().open_reservations, 0);
    // Repeated, it answers as the first time and charges nothing more.
    assert_eq!(
        fat.apply(late).unwrap(),
        Outcome::Committed {
            committed_bytes: 400
        }
    );
    assert_eq!(held(&fat, "a"), (200, 0, 1000));
}

#[test]
fn a_late_commit_is_refused_where_the_room_was_taken_meanwhile() {
    let mut fat = market();
    let id = reserved(&mut fat, reserve("acme", "r1", 300, 1, &[("a", 300)]));
    expire(&mut fat, T0 + LEASE);
    // Another tenant takes all but 100 bytes of vendor a.
    let mut other = reserve("globex", "r2", 900, 1, &[("a", 900)]);
    other.now_unix_ms = T0 + LEASE;
    other.lease_expires_unix_ms = T0 + 3 * LEASE;
    reserved(&mut fat, other);
    let mut late = commit("acme", id, vec![placement("acme", 200, &["a"])], None);
    if let Command::Commit(c) = &mut late {
        c.now_unix_ms = T0 + LEASE + 1;
    }
    let err = refused(&mut fat, late);
    assert!(matches!(err, FatError::Expired(_)), "{err}");
    assert!(err.to_string().contains("100 bytes free"), "{err}");
}

#[test]
fn forget_removes_only_the_tenants_own_snapshot() {
    let mut fat = market();
    let id = reserved(&mut fat, reserve("acme", "r1", 100, 1, &[("a", 100)]));
    let p = placement("acme", 10, &["a"]);
    let snap = snapshot_of(&[p.portion]);
    fat.apply(commit("acme", id, vec![p.clone()], Some(snap.clone())))
        .unwrap();
    let forget = |tenant: &str| {
        Command::Forget(Forget {
            tenant: tid(tenant),
            snapshot: snap.id,
        })
    };
    assert!(matches!(
        refused(&mut fat, forget("globex")),
        FatError::NotFound(_)
    ));
    assert_eq!(fat.apply(forget("acme")).unwrap(), Outcome::Forgotten);
    assert!(fat.snapshots(&tid("acme")).is_empty());
    assert_eq!(
        fat.locate(&tid("acme"), &[p.portion]).len(),
        1,
        "portions stay until pruned"
    );
    assert!(matches!(
        refused(&mut fat, forget("acme")),
        FatError::NotFound(_)
    ));
}

#[test]
fn commit_refuses_forged_and_unsigned_receipts_and_changes_nothing() {
    let mut fat = market();
    let id = reserved(
        &mut fat,
        reserve("acme", "r1", 100, 1, &[("a", 100), ("b", 100)]),
    );
    let mut flipped = placement("acme", 10, &["a"]);
    flipped.receipts[0].signature[3] ^= 0x40;
    let mut stranger = placement("acme", 10, &["a"]);
    let receipt = &mut stranger.receipts[0];
    vendor_key("someone-else").sign(receipt, &id);
    let mut unsigned = placement("acme", 10, &["a", "b"]);
    unsigned.receipts[1].signature.clear();
    // Signed by a's key but claiming to come from b.
    let mut impostor = placement("acme", 10, &["a"]);
    impostor.receipts[0].vendor = vid("b");
    for (case, p, needle) in [
        ("flipped", flipped, "forged"),
        ("other key", stranger, "forged"),
        ("unsigned", unsigned, "not signed"),
        ("impostor", impostor, "forged"),
    ] {
        let before = fat.clone();
        let err = refused(&mut fat, commit("acme", id, vec![p], None));
        assert!(matches!(err, FatError::Forbidden(_)), "{case}: {err}");
        assert!(err.to_string().contains(needle), "{case}: {err}");
        assert_eq!(fat, before, "{case}: a refused commit changed the FAT");
    }
    fat.apply(commit(
        "acme",
        id,
        vec![placement("acme", 10, &["a", "b"])],
        None,
    ))
    .unwrap();
}

#[test]
fn a_vendor_registers_a_valid_identity_key_and_may_replace_it() {
    let mut fat = Fat::default();
    let mut with_key = |key: Vec<u8>| {
        fat.apply(Command::RegisterVendor(RegisterVendor {
            vendor: VendorRef {
                id: vid("a"),
                address: "a.example:7100".into(),
            },
            region: "eu".into(),
            offered_bytes: 100,
            network_bytes_per_sec: 0,
            identity_key: key,
            now_unix_ms: T0,
        }))
    };
    let err = with_key(vec![]).unwrap_err();
    assert!(err.to_string().contains("no identity key"), "{err}");
    assert!(with_key(vec![7; 31]).is_err());
    with_key(vendor_key("a").public_key().to_vec()).unwrap();
    with_key(vendor_key("a2").public_key().to_vec()).unwrap();
    assert_eq!(
        fat.vendor_identity_key(&vid("a")),
        Some(vendor_key("a2").public_key().to_vec())
    );
}
