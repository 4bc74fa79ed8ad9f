//! Garbage collection's view of the FAT: which held copies nothing needs,
//! and, over random interleavings of stores, commits, releases, expiries,
//! collections, prunes and reconciliations, that a vendor following the
//! answers never deletes a copy the FAT needs and ends holding exactly
//! what the FAT says.

use std::collections::{BTreeMap, BTreeSet};

use offsite_proto::reconcile::{bucket_of, Digests, Held, Holdings, BUCKETS};
use offsite_proto::{PortionDeletion, PortionId, PortionPlacement, ReservationId, TenantId};
use proptest::prelude::*;

use super::tests::{commit, market, placement, reserve, reserved, tid, vid, T0};
use super::*;

const LEASE: u64 = 60_000;

/// Every bucket, with `held` in them.
fn everything(held: Vec<Held>) -> Holdings {
    Holdings {
        buckets: (0..BUCKETS as u32).collect(),
        held,
        ..Holdings::default()
    }
}

fn held(tenant: &str, portion: PortionId, reservation: ReservationId) -> Held {
    Held {
        tenant: tid(tenant),
        portion,
        reservation: Some(reservation),
    }
}

fn unneeded(fat: &Fat, holdings: Vec<Held>) -> Vec<PortionId> {
    fat.reconcile(&vid("a"), &everything(holdings))
        .unneeded
        .into_iter()
        .map(|d| d.portion)
        .collect()
}

fn expire(fat: &mut Fat, now: u64) {
    fat.apply(Command::ExpireLeases { now_unix_ms: now })
        .unwrap();
}

fn collect(fat: &mut Fat, now: u64, after: u64) -> u64 {
    let ids = fat.collectable(now, after);
    match fat
        .apply(Command::CollectReservations(CollectReservations {
            ids,
            now_unix_ms: now,
        }))
        .unwrap()
    {
        Outcome::ReservationsCollected { collected } => collected,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_copy_is_needed_while_its_reservation_may_still_commit_it() {
    let mut fat = market();
    let id = reserved(&mut fat, reserve("acme", "r1", 300, 1, &[("a", 300)]));
    let (kept, dropped) = (placement("acme", 10, &["a"]), placement("acme", 10, &["a"]));
    let stored = vec![
        held("acme", kept.portion, id),
        held("acme", dropped.portion, id),
    ];
    // Open: both may be committed.
    assert_eq!(unneeded(&fat, stored.clone()), vec![]);
    fat.apply(commit("acme", id, vec![kept.clone()], None))
        .unwrap();
    // Committed: the placed one is needed, the other never will be.
    assert_eq!(unneeded(&fat, stored.clone()), vec![dropped.portion]);
    // Another tenant's copy of the same portion id is not this one.
    let foreign = vec![held("globex", kept.portion, id)];
    assert_eq!(unneeded(&fat, foreign), vec![kept.portion]);
}

#[test]
fn a_released_reservation_leaves_garbage_at_once_an_expired_one_once_collected() {
    let mut fat = market();
    let released = reserved(&mut fat, reserve("acme", "r1", 100, 1, &[("a", 100)]));
    let expired = reserved(&mut fat, reserve("acme", "r2", 100, 1, &[("a", 100)]));
    let (p1, p2) = (placement("acme", 10, &["a"]), placement("acme", 10, &["a"]));
    fat.apply(Command::Release(Release {
        tenant: tid("acme"),
        reservation: released,
        now_unix_ms: T0 + 1,
    }))
    .unwrap();
    let stored = vec![
        held("acme", p1.portion, released),
        held("acme", p2.portion, expired),
    ];
    assert_eq!(unneeded(&fat, stored.clone()), vec![p1.portion]);
    // Expired, it may still be committed late: needed.
    expire(&mut fat, T0 + LEASE);
    assert_eq!(unneeded(&fat, stored.clone()), vec![p1.portion]);
    // Not collectable before its time, then collected.
    assert_eq!(collect(&mut fat, T0 + LEASE + 999, 1000), 0);
    assert_eq!(collect(&mut fat, T0 + LEASE + 1000, 1000), 1);
    let mut got = unneeded(&fat, stored);
    got.sort();
    let mut want = vec![p1.portion, p2.portion];
    want.sort();
    assert_eq!(got, want);
    // A collected reservation is never committed late: its copies may be gone.
    let mut late = commit("acme", expired, vec![p2], None);
    if let Command::Commit(c) = &mut late {
        c.now_unix_ms = T0 + LEASE + 2000;
    }
    let err = fat.apply(late).unwrap_err();
    assert!(matches!(err, FatError::Expired(_)), "{err}");
    assert!(err.to_string().contains("collected"), "{err}");
    // Collecting again changes nothing.
    assert_eq!(collect(&mut fat, T0 + LEASE + 3000, 1000), 0);
}

#[test]
fn a_copy_without_a_reservation_is_kept_only_where_it_is_placed() {
    let mut fat = market();
    let id = reserved(&mut fat, reserve("acme", "r1", 100, 1, &[("a", 100)]));
    let p = placement("acme", 10, &["a"]);
    fat.apply(commit("acme", id, vec![p.clone()], None))
        .unwrap();
    let other = PortionId::random();
    let old_records = vec![
        Held {
            tenant: tid("acme"),
            portion: p.portion,
            reservation: None,
        },
        Held {
            tenant: tid("acme"),
            portion: other,
            reservation: None,
        },
    ];
    assert_eq!(unneeded(&fat, old_records), vec![other]);
}

#[test]
fn the_deletion_queue_keeps_its_own_and_missing_copies_are_named() {
    let mut fat = market();
    let ids = super::deletion_tests::committed(&mut fat, "acme", &[10, 20, 30], 0);
    fat.apply(Command::ReleasePortions(ReleasePortions {
        tenant: tid("acme"),
        portions: vec![ids[0]],
    }))
    .unwrap();
    // ids[0] is in a's deletion queue: the queue deletes it, not GC.
    let any = ReservationId::random();
    let a_holds: Vec<Held> = ids.iter().map(|p| held("acme", *p, any)).collect();
    assert_eq!(unneeded(&fat, a_holds.clone()), vec![]);
    // The digests agree exactly when a holds its placements and its queue.
    let mut digests = Digests::default();
    for h in &a_holds {
        digests.add(&h.tenant, &h.portion);
    }
    assert!(fat
        .reconcile_digests(&vid("a"))
        .differing(&digests)
        .is_empty());
    // Without ids[2], its bucket differs, and ids[2] is missing there.
    let mut short = Digests::default();
    for h in &a_holds[..2] {
        short.add(&h.tenant, &h.portion);
    }
    let differing = fat.reconcile_digests(&vid("a")).differing(&short);
    assert_eq!(differing, vec![bucket_of(&ids[2])]);
    let holdings = Holdings {
        partial: Default::default(),
        buckets: differing.into_iter().collect(),
        held: a_holds[..2]
            .iter()
            .filter(|h| bucket_of(&h.portion) == bucket_of(&ids[2]))
            .cloned()
            .collect(),
    };
    let reconciled = fat.reconcile(&vid("a"), &holdings);
    assert_eq!(
        reconciled.missing,
        vec![PortionDeletion {
            tenant: tid("acme"),
            portion: ids[2]
        }]
    );
}

#[test]
fn a_repair_targets_copy_is_needed_while_the_repair_is_open() {
    let mut fat = market();
    register(&mut fat, "d", "eu", 1000);
    let ids = super::deletion_tests::committed(&mut fat, "acme", &[10], 0);
    let repair = ReservationId::random();
    fat.apply(Command::PlanRepairs(PlanRepairs {
        repairs: vec![PlannedRepair {
            id: repair,
            tenant: tid("acme"),
            portion: ids[0],
            source: vid("a"),
            target: vid("d"),
            replaces: vid("c"),
        }],
        now_unix_ms: T0,
    }))
    .unwrap();
    let on_d = everything(vec![held("acme", ids[0], repair)]);
    assert!(fat.reconcile(&vid("d"), &on_d).unneeded.is_empty());
    // Another vendor holding a copy under that repair's id is no target.
    assert_eq!(
        unneeded(&fat, vec![held("acme", PortionId::random(), repair)]).len(),
        1
    );
    // The repair runs out: d's copy goes through d's deletion queue, which
    // counts its bytes back when d acknowledges; GC leaves it to the queue.
    expire(&mut fat, T0 + REPAIR_LEASE_MS + 1);
    assert!(fat.reconcile(&vid("d"), &on_d).unneeded.is_empty());
    assert_eq!(
        fat.deletions_for(&vid("d")),
        vec![PortionDeletion {
            tenant: tid("acme"),
            portion: ids[0]
        }]
    );
    // Once acknowledged, a copy still held under the repair is garbage.
    fat.apply(Command::ReportCapacity(ReportCapacity {
        vendor: vid("d"),
        offered_bytes: 1000,
        stored_bytes: 0,
        deleted: fat.deletions_for(&vid("d")),
        now_unix_ms: T0 + REPAIR_LEASE_MS + 2,
    }))
    .unwrap();
    assert_eq!(fat.reconcile(&vid("d"), &on_d).unneeded.len(), 1);
}

fn register(fat: &mut Fat, v: &str, region: &str, offered: u64) {
    super::tests::register(fat, v, region, offered, T0).unwrap();
}

/// One step of the interleaving.
#[derive(Debug, Clone)]
enum Op {
    Reserve { tenant: usize },
    Store { pick: usize, size: u64 },
    Commit { pick: usize, mask: u8 },
    Release { pick: usize },
    Advance { ms: u64 },
    Collect,
    Prune { pick: usize },
    Reconcile,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0..2usize).prop_map(|tenant| Op::Reserve { tenant }),
        3 => (any::<usize>(), 1..40u64).prop_map(|(pick, size)| Op::Store { pick, size }),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(pick, mask)| Op::Commit { pick, mask }),
        1 => any::<usize>().prop_map(|pick| Op::Release { pick }),
        2 => (1..=70_000u64).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Collect),
        1 => any::<usize>().prop_map(|pick| Op::Prune { pick }),
        3 => Just(Op::Reconcile),
    ]
}

const TENANTS: [&str; 2] = ["acme", "globex"];
const COLLECT_AFTER: u64 = 30_000;
const GRACE: u64 = 5_000;

/// Vendor a, modelled: what its local FAT holds (and under which
/// reservation), and the copies found unneeded, with when first.
#[derive(Default)]
struct Vendor {
    holds: BTreeMap<(TenantId, PortionId), ReservationId>,
    unneeded_since: BTreeMap<(TenantId, PortionId), (ReservationId, u64)>,
}

impl Vendor {
    fn holdings(&self) -> Holdings {
        everything(
            self.holds
                .iter()
                .map(|((tenant, portion), r)| Held {
                    tenant: tenant.clone(),
                    portion: *portion,
                    reservation: Some(*r),
                })
                .collect(),
        )
    }

    /// One reconciliation, as the agent does it: a copy found unneeded a
    /// grace period after it was first found so, still stored under the
    /// same reservation, is deleted.
    fn reconcile(&mut self, fat: &Fat, now: u64) {
        let answer = fat.reconcile(&vid("a"), &self.holdings());
        let mut still = BTreeMap::new();
        for d in answer.unneeded {
            let key = (d.tenant, d.portion);
            let Some(r) = self.holds.get(&key).copied() else {
                continue;
            };
            match self.unneeded_since.get(&key) {
                Some((seen_r, since)) if *seen_r == r && now.saturating_sub(*since) >= GRACE => {
                    self.holds.remove(&key);
                }
                Some((seen_r, since)) if *seen_r == r => {
                    still.insert(key, (r, *since));
                }
                _ => {
                    still.insert(key, (r, now));
                }
            }
        }
        self.unneeded_since = still;
    }

    /// Deletes what the deletion queue asks and acknowledges it.
    fn drain_deletions(&mut self, fat: &mut Fat, now: u64) {
        let asked = fat.deletions_for(&vid("a"));
        for d in &asked {
            self.holds.remove(&(d.tenant.clone(), d.portion));
        }
        fat.apply(Command::ReportCapacity(ReportCapacity {
            vendor: vid("a"),
            offered_bytes: 100_000,
            stored_bytes: 0,
            deleted: asked,
            now_unix_ms: now,
        }))
        .unwrap();
    }
}

struct Harness {
    fat: Fat,
    now: u64,
    vendor: Vendor,
    /// Reservations made, with their tenant and what a stored under each.
    reservations: Vec<(ReservationId, usize, Vec<PortionPlacement>)>,
    committed: Vec<(usize, PortionId)>,
    next: u64,
}

impl Harness {
    fn new() -> Self {
        let mut fat = Fat::default();
        register(&mut fat, "a", "eu", 100_000);
        Self {
            fat,
            now: T0,
            vendor: Vendor::default(),
            reservations: Vec::new(),
            committed: Vec::new(),
            next: 0,
        }
    }

    fn open(&self, id: &ReservationId) -> bool {
        self.fat.reservations.get(id).is_some_and(|r| {
            r.state == reservations::ReservationState::Open && r.lease_expires_unix_ms > self.now
        })
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Reserve { tenant } => {
                let mut r = reserve(
                    TENANTS[tenant],
                    &format!("r{}", self.next),
                    200,
                    1,
                    &[("a", 200)],
                );
                self.next += 1;
                r.now_unix_ms = self.now;
                r.lease_expires_unix_ms = self.now + LEASE;
                if let Ok(Outcome::Reserved(view)) = self.fat.apply(Command::Reserve(r)) {
                    self.reservations.push((view.id, tenant, Vec::new()));
                }
            }
            Op::Store { pick, size } => {
                if self.reservations.is_empty() {
                    return;
                }
                let at = pick % self.reservations.len();
                let (id, tenant, _) = self.reservations[at].clone();
                // A vendor stores only under a grant, which lasts as the lease.
                if !self.open(&id) {
                    return;
                }
                let p = placement(TENANTS[tenant], size, &["a"]);
                self.vendor
                    .holds
                    .insert((tid(TENANTS[tenant]), p.portion), id);
                self.reservations[at].2.push(p);
            }
            Op::Commit { pick, mask } => {
                if self.reservations.is_empty() {
                    return;
                }
                let (id, tenant, stored) =
                    self.reservations[pick % self.reservations.len()].clone();
                let chosen: Vec<PortionPlacement> = stored
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << (i % 8)) != 0)
                    .map(|(_, p)| p)
                    .collect();
                let ids: Vec<PortionId> = chosen.iter().map(|p| p.portion).collect();
                let mut c = commit(TENANTS[tenant], id, chosen, None);
                if let Command::Commit(c) = &mut c {
                    c.now_unix_ms = self.now;
                    c.request = offsite_proto::RequestId::new(format!("c{}", self.next)).unwrap();
                }
                self.next += 1;
                if self.fat.apply(c).is_ok() {
                    self.committed.extend(ids.into_iter().map(|p| (tenant, p)));
                }
            }
            Op::Release { pick } => {
                if self.reservations.is_empty() {
                    return;
                }
                let (id, tenant, _) = &self.reservations[pick % self.reservations.len()];
                let _ = self.fat.apply(Command::Release(Release {
                    tenant: tid(TENANTS[*tenant]),
                    reservation: *id,
                    now_unix_ms: self.now,
                }));
            }
            Op::Advance { ms } => {
                self.now += ms;
                expire(&mut self.fat, self.now);
            }
            Op::Collect => {
                collect(&mut self.fat, self.now, COLLECT_AFTER);
            }
            Op::Prune { pick } => {
                if self.committed.is_empty() {
                    return;
                }
                let (tenant, portion) = self.committed.remove(pick % self.committed.len());
                let _ = self.fat.apply(Command::ReleasePortions(ReleasePortions {
                    tenant: tid(TENANTS[tenant]),
                    portions: vec![portion],
                }));
                self.vendor.drain_deletions(&mut self.fat, self.now);
            }
            Op::Reconcile => self.vendor.reconcile(&self.fat, self.now),
        }
    }

    /// Every copy the FAT places on a is still on a.
    fn check_nothing_needed_is_gone(&self) -> Result<(), TestCaseError> {
        for (tenant, portions) in &self.fat.portions {
            for (portion, record) in portions {
                if record.vendors.contains(&vid("a")) {
                    prop_assert!(
                        self.vendor.holds.contains_key(&(tenant.clone(), *portion)),
                        "portion {portion} of {tenant} is placed on a but a deleted it"
                    );
                }
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn reconciliation_never_deletes_what_the_fat_needs_and_ends_exact(
        ops in prop::collection::vec(op(), 1..120)
    ) {
        let mut h = Harness::new();
        for op in ops {
            h.step(op);
            h.check_nothing_needed_is_gone()?;
        }
        // Every lease runs out and is collected, the queue is drained, and
        // two reconciliations a grace period apart leave a holding exactly
        // what the FAT says it holds.
        h.now += LEASE;
        expire(&mut h.fat, h.now);
        h.now += COLLECT_AFTER;
        collect(&mut h.fat, h.now, COLLECT_AFTER);
        h.vendor.drain_deletions(&mut h.fat, h.now);
        h.vendor.reconcile(&h.fat, h.now);
        h.now += GRACE;
        h.vendor.reconcile(&h.fat, h.now);
        h.check_nothing_needed_is_gone()?;
        let expected: BTreeSet<(TenantId, PortionId)> = h
            .fat
            .expected_on(&vid("a"))
            .into_iter()
            .map(|(t, p)| (t.clone(), p))
            .collect();
        let holds: BTreeSet<(TenantId, PortionId)> = h.vendor.holds.keys().cloned().collect();
        prop_assert_eq!(&holds, &expected);
        let mut digests = Digests::default();
        for (t, p) in &holds {
            digests.add(t, p);
        }
        prop_assert!(h.fat.reconcile_digests(&vid("a")).differing(&digests).is_empty());
    }
}
