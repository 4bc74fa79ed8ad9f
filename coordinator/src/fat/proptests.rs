//! Random command sequences against the FAT: after every command, for every
//! vendor `used + reserved <= offered`, `reserved` is what open reservations
//! hold and `used` is what committed portions take; a refused command
//! changes nothing; a new reservation holds only up vendors; a report makes
//! its vendor up; released portions count in `used` until their vendor
//! acknowledges deleting them, and no snapshot ever needs a released portion;
//! the state survives a postcard round trip.

use std::collections::BTreeMap;

use offsite_proto::{Hash, PortionId, RequestId, ReservationId, SnapshotId, VendorId};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::tests::{placement, reserve, snapshot_of, tid, vendor_key, vid, T0};
use super::*;
use crate::placement::{self, PlacementPolicy};

const VENDORS: usize = 6; // the last one never registers
const TENANTS: [&str; 2] = ["acme", "globex"];
const POLICY: LivenessPolicy = LivenessPolicy {
    suspect_after_ms: 15_000,
    down_after_ms: 60_000,
};

#[derive(Debug, Clone)]
enum Op {
    Register {
        v: usize,
        region: usize,
        offered: u64,
    },
    Report {
        v: usize,
        offered: u64,
        /// Acknowledge this many of the deletions last asked of the vendor
        /// (plus a stray one when odd).
        acks: usize,
    },
    /// A tenant releases some portions (needed, foreign or unknown ones too).
    ReleasePortions {
        tenant: usize,
        picks: Vec<usize>,
        unknown: bool,
        /// Pick among the tenant's committed portions no snapshot needs.
        unneeded: bool,
    },
    Reserve {
        tenant: usize,
        request: usize,
        bytes: u64,
        replication: u32,
        holds: Vec<(usize, u64)>,
        placed: Option<u64>,
    },
    Commit {
        own: bool,
        tenant: usize,
        reservation: usize,
        request: usize,
        portions: Vec<PortionOp>,
        snapshot: Option<Vec<usize>>,
    },
    Release {
        tenant: usize,
        reservation: usize,
    },
    Expire,
    Forget {
        tenant: usize,
        snapshot: usize,
    },
    Advance {
        ms: u64,
    },
    /// The leader's sweep: the changes the report ages call for now.
    Sweep,
    /// A grant key rotation, with the next key id or a stale one.
    InstallGrantKey {
        next: bool,
        seed: u8,
    },
    /// An arbitrary liveness change, possibly judged on a stale report time.
    Liveness {
        v: usize,
        liveness: usize,
        stale: bool,
    },
}

#[derive(Debug, Clone)]
struct PortionOp {
    /// Receipts from the reservation's candidates (by index) rather than
    /// from any vendor.
    from_candidates: bool,
    size: u64,
    vendors: Vec<usize>,
    bad_hash: bool,
    foreign: bool,
    /// The first receipt's signature is flipped (a forged receipt).
    forged: bool,
}

fn op() -> impl Strategy<Value = Op> {
    let portion = (
        prop::bool::weighted(0.8),
        1u64..150,
        prop::collection::vec(0..VENDORS, 0..4),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.05),
        prop::bool::weighted(0.05),
    )
        .prop_map(
            |(from_candidates, size, vendors, bad_hash, foreign, forged)| PortionOp {
                from_candidates,
                size,
                vendors,
                bad_hash,
                foreign,
                forged,
            },
        );
    prop_oneof![
        2 => (0..VENDORS - 1, 0usize..3, 0u64..1500).prop_map(|(v, region, offered)| Op::Register { v, region, offered }),
        2 => (0..VENDORS, 0u64..1500, 0usize..5).prop_map(|(v, offered, acks)| Op::Report { v, offered, acks }),
        3 => (0usize..2, prop::collection::vec(any::<usize>(), 1..4), prop::bool::weighted(0.1), prop::bool::weighted(0.7)).prop_map(|(tenant, picks, unknown, unneeded)| Op::ReleasePortions { tenant, picks, unknown, unneeded }),
        3 => (0usize..2, 0usize..4, 1u64..400, 1u32..4, prop::collection::vec((0..VENDORS, 0u64..400), 0..6), prop::option::weighted(0.6, any::<u64>()))
            .prop_map(|(tenant, request, bytes, replication, holds, placed)| Op::Reserve { tenant, request, bytes, replication, holds, placed }),
        4 => (prop::bool::weighted(0.9), 0usize..2, any::<usize>(), 0usize..2, prop::collection::vec(portion, 0..4), prop::option::of(prop::collection::vec(any::<usize>(), 1..4)))
            .prop_map(|(own, tenant, reservation, request, portions, snapshot)| Op::Commit { own, tenant, reservation, request, portions, snapshot }),
        1 => (0usize..2, any::<usize>()).prop_map(|(tenant, reservation)| Op::Release { tenant, reservation }),
        1 => Just(Op::Expire),
        1 => (0usize..2, any::<usize>()).prop_map(|(tenant, snapshot)| Op::Forget { tenant, snapshot }),
        1 => (0u64..40_000).prop_map(|ms| Op::Advance { ms }),
        2 => Just(Op::Sweep),
        1 => (0..VENDORS, 0usize..3, prop::bool::weighted(0.3)).prop_map(|(v, liveness, stale)| Op::Liveness { v, liveness, stale }),
        1 => (prop::bool::weighted(0.8), any::<u8>()).prop_map(|(next, seed)| Op::InstallGrantKey { next, seed }),
    ]
}

#[derive(Default)]
struct Harness {
    fat: Fat,
    now: u64,
    reservations: Vec<ReservationId>,
    portions: Vec<PortionId>,
    snapshots: Vec<SnapshotId>,
    /// The deletions last asked of each vendor.
    asked: BTreeMap<VendorId, Vec<offsite_proto::PortionDeletion>>,
}

fn vendor_name(v: usize) -> String {
    format!("v{v}")
}

fn pick<T: Copy>(list: &[T], i: usize) -> Option<T> {
    (!list.is_empty()).then(|| list[i % list.len()])
}

impl Harness {
    fn command(&mut self, op: Op) -> Option<Command> {
        let now = self.now;
        Some(match op {
            Op::Register { v, region, offered } => Command::RegisterVendor(RegisterVendor {
                vendor: offsite_proto::VendorRef {
                    id: vid(&vendor_name(v)),
                    address: format!("v{v}.example:7100"),
                },
                region: ["eu", "us", "ap"][region].into(),
                offered_bytes: offered,
                network_bytes_per_sec: 0,
                identity_key: vendor_key(&vendor_name(v)).public_key().to_vec(),
                now_unix_ms: now,
            }),
            Op::Report { v, offered, acks } => {
                let vendor = vid(&vendor_name(v));
                // What the last report asked for, or the queue as it is now.
                let asked = self
                    .asked
                    .get(&vendor)
                    .filter(|a| !a.is_empty())
                    .cloned()
                    .unwrap_or_else(|| self.fat.deletions_for(&vendor));
                let mut deleted: Vec<_> = asked.into_iter().take(acks / 2 * 3).collect();
                if acks % 2 == 1 {
                    deleted.push(offsite_proto::PortionDeletion {
                        tenant: tid(TENANTS[0]),
                        portion: pick(&self.portions, acks).unwrap_or_else(PortionId::random),
                    });
                }
                Command::ReportCapacity(ReportCapacity {
                    vendor,
                    offered_bytes: offered,
                    stored_bytes: 0,
                    deleted,
                    now_unix_ms: now,
                })
            }
            Op::ReleasePortions {
                tenant,
                picks,
                unknown,
                unneeded,
            } => {
                let from = if unneeded {
                    self.unneeded(&tid(TENANTS[tenant]))
                } else {
                    self.portions.clone()
                };
                let mut portions: Vec<PortionId> =
                    picks.iter().filter_map(|i| pick(&from, *i)).collect();
                portions.sort();
                portions.dedup();
                if unknown {
                    portions.push(PortionId::random());
                }
                Command::ReleasePortions(ReleasePortions {
                    tenant: tid(TENANTS[tenant]),
                    portions,
                })
            }
            Op::Reserve {
                tenant,
                request,
                bytes,
                replication,
                holds,
                placed,
            } => self.reserve(tenant, request, bytes, replication, holds, placed),
            Op::Commit {
                own,
                tenant,
                reservation,
                request,
                portions,
                snapshot,
            } => {
                let reservation =
                    pick(&self.reservations, reservation).unwrap_or_else(ReservationId::random);
                let owner = self
                    .fat
                    .reservations
                    .get(&reservation)
                    .map(|r| r.tenant.as_str());
                let tenant = match owner {
                    Some(owner) if own => {
                        TENANTS.iter().position(|t| *t == owner).unwrap_or(tenant)
                    }
                    _ => tenant,
                };
                self.commit(tenant, reservation, request, portions, snapshot)
            }
            Op::Release {
                tenant,
                reservation,
            } => Command::Release(Release {
                tenant: tid(TENANTS[tenant]),
                reservation: pick(&self.reservations, reservation)
                    .unwrap_or_else(ReservationId::random),
                now_unix_ms: now,
            }),
            Op::Expire => Command::ExpireLeases { now_unix_ms: now },
            Op::Forget { tenant, snapshot } => Command::Forget(Forget {
                tenant: tid(TENANTS[tenant]),
                snapshot: pick(&self.snapshots, snapshot).unwrap_or_else(SnapshotId::random),
            }),
            Op::Advance { ms } => {
                self.now += ms;
                return None;
            }
            Op::InstallGrantKey { next, seed } => Command::InstallGrantKey(InstallGrantKey {
                key_id: self.fat.next_grant_key_id() - u32::from(!next),
                secret: GrantSecret([seed; 32]),
                now_unix_ms: now,
            }),
            Op::Sweep => Command::UpdateLiveness(UpdateLiveness {
                changes: self.fat.liveness_changes(now, &POLICY),
                now_unix_ms: now,
            }),
            Op::Liveness { v, liveness, stale } => {
                let vendor = vid(&vendor_name(v));
                let seen = self
                    .fat
                    .vendors
                    .get(&vendor)
                    .map_or(0, |r| r.last_report_unix_ms);
                Command::UpdateLiveness(UpdateLiveness {
                    changes: vec![LivenessChange {
                        vendor,
                        liveness: [Liveness::Up, Liveness::Suspect, Liveness::Down][liveness],
                        seen_report_unix_ms: if stale { seen.wrapping_sub(1) } else { seen },
                    }],
                    now_unix_ms: now,
                })
            }
        })
    }

    /// The tenant's committed portions that none of its snapshots needs.
    fn unneeded(&self, tenant: &offsite_proto::TenantId) -> Vec<PortionId> {
        let needed: Vec<PortionId> = self
            .fat
            .snapshots
            .get(tenant)
            .into_iter()
            .flat_map(|s| s.values())
            .flat_map(|s| s.portions.iter().chain([&s.manifest.portion]).copied())
            .collect();
        self.fat
            .portions
            .get(tenant)
            .into_iter()
            .flat_map(|h| h.keys())
            .filter(|p| !needed.contains(p))
            .copied()
            .collect()
    }

    fn reserve(
        &mut self,
        tenant: usize,
        request: usize,
        bytes: u64,
        replication: u32,
        holds: Vec<(usize, u64)>,
        placed: Option<u64>,
    ) -> Command {
        let names: Vec<(String, u64)> = holds.iter().map(|(v, b)| (vendor_name(*v), *b)).collect();
        let refs: Vec<(&str, u64)> = names.iter().map(|(v, b)| (v.as_str(), *b)).collect();
        let mut r = reserve(
            TENANTS[tenant],
            &format!("r{request}"),
            bytes,
            replication,
            &refs,
        );
        if let Some(seed) = placed {
            let rooms = self.fat.vendors_with_room();
            let policy = PlacementPolicy {
                overprovision: 1.5,
                extra_vendors: 2,
            };
            if let Ok(chosen) = placement::choose(
                &rooms,
                bytes,
                replication,
                &policy,
                &mut StdRng::seed_from_u64(seed),
            ) {
                r.holds = chosen;
            }
        }
        r.now_unix_ms = self.now;
        r.lease_expires_unix_ms = self.now + 60_000;
        Command::Reserve(r)
    }

    fn commit(
        &mut self,
        tenant: usize,
        reservation: ReservationId,
        request: usize,
        portions: Vec<PortionOp>,
        snapshot: Option<Vec<usize>>,
    ) -> Command {
        let tenant_name = TENANTS[tenant];
        let placements: Vec<_> = portions
            .iter()
            .map(|p| {
                let candidates: Vec<String> = self
                    .fat
                    .reservations
                    .get(&reservation)
                    .map(|r| r.holds.iter().map(|h| h.vendor.to_string()).collect())
                    .unwrap_or_default();
                let names: Vec<String> = if p.from_candidates && !candidates.is_empty() {
                    let mut names: Vec<String> = p
                        .vendors
                        .iter()
                        .map(|v| candidates[v % candidates.len()].clone())
                        .collect();
                    names.sort();
                    names.dedup();
                    names
                } else {
                    p.vendors.iter().map(|v| vendor_name(*v)).collect()
                };
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                let owner = if p.foreign {
                    TENANTS[1 - tenant]
                } else {
                    tenant_name
                };
                let mut placed = placement(owner, p.size, &refs);
                if p.bad_hash {
                    if let Some(r) = placed.receipts.first_mut() {
                        r.hash = Hash::of(b"wrong");
                    }
                }
                if p.forged {
                    if let Some(byte) = placed
                        .receipts
                        .first_mut()
                        .and_then(|r| r.signature.first_mut())
                    {
                        *byte ^= 1;
                    }
                }
                placed
            })
            .collect();
        let fresh: Vec<PortionId> = placements.iter().map(|p| p.portion).collect();
        self.portions.extend(&fresh);
        let snapshot = snapshot.and_then(|picks| {
            let all: Vec<PortionId> = self.portions.clone();
            let chosen: Vec<PortionId> = picks.iter().filter_map(|i| pick(&all, *i)).collect();
            (!chosen.is_empty()).then(|| snapshot_of(&chosen))
        });
        if let Some(s) = &snapshot {
            self.snapshots.push(s.id);
        }
        Command::Commit(Commit {
            tenant: tid(tenant_name),
            request: RequestId::new(format!("c{request}")).unwrap(),
            reservation,
            portions: super::tests::signed_for(reservation, placements),
            snapshot,
            now_unix_ms: self.now,
        })
    }
}

/// The accounting every vendor must agree with, recomputed from scratch.
pub(super) fn check_invariants(fat: &Fat) -> Result<(), TestCaseError> {
    let mut reserved: BTreeMap<&VendorId, u64> = BTreeMap::new();
    for r in fat
        .reservations
        .values()
        .filter(|r| r.state == reservations::ReservationState::Open)
    {
        for h in &r.holds {
            *reserved.entry(&h.vendor).or_default() += h.bytes;
        }
    }
    // A repair holds the portion's bytes on its target until it ends.
    for r in fat.repairs.values() {
        *reserved.entry(&r.target).or_default() += r.size;
    }
    let mut used: BTreeMap<&VendorId, u64> = BTreeMap::new();
    for p in fat.portions.values().flat_map(|t| t.values()) {
        for v in &p.vendors {
            *used.entry(v).or_default() += p.size;
        }
    }
    // Released portions take room until their vendor acknowledges deleting them.
    for (v, queue) in &fat.deletions {
        prop_assert!(!queue.is_empty(), "empty deletion queue of {} kept", v);
        *used.entry(v).or_default() += queue.values().sum::<u64>();
    }
    // No released portion is needed by a snapshot.
    for (tenant, snapshots) in &fat.snapshots {
        for s in snapshots.values() {
            for p in s.portions.iter().chain([&s.manifest.portion]) {
                prop_assert!(
                    fat.portions.get(tenant).is_some_and(|h| h.contains_key(p)),
                    "snapshot {} of {} needs {}, which is not committed",
                    s.id,
                    tenant,
                    p
                );
            }
        }
    }
    // A vendor never deletes a copy the final FAT says it holds (a repair
    // leaves the portion committed on other vendors).
    for (vendor, queue) in &fat.deletions {
        for d in queue.keys() {
            prop_assert!(
                !fat.portions
                    .get(&d.tenant)
                    .and_then(|h| h.get(&d.portion))
                    .is_some_and(|p| p.vendors.contains(vendor)),
                "{} of {} is held by {} and being deleted there",
                d.portion,
                d.tenant,
                vendor
            );
        }
    }
    for (id, v) in &fat.vendors {
        prop_assert!(v.used + v.reserved <= v.offered(), "vendor {id}: {v:?}");
        prop_assert_eq!(
            v.reserved,
            reserved.get(id).copied().unwrap_or(0),
            "reserved of {}",
            id
        );
        prop_assert_eq!(v.used, used.get(id).copied().unwrap_or(0), "used of {}", id);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_command_sequences_keep_the_accounting(ops in prop::collection::vec(op(), 1..80)) {
        let mut h = Harness { now: T0, ..Harness::default() };
        for op in ops {
            let Some(command) = h.command(op) else { continue };
            let before = h.fat.clone();
            let is_reserve = matches!(command, Command::Reserve(_));
            let forged = match &command {
                Command::Commit(c) => c.portions.iter().any(|p| {
                    p.receipts.iter().any(|r| {
                        let key = h.fat.vendor_identity_key(&r.vendor).unwrap_or_default();
                        offsite_proto::signing::verify_receipt(
                            r,
                            &c.reservation,
                            &key,
                            offsite_proto::signing::ReceiptRule::Fresh,
                        )
                        .is_err()
                    })
                }),
                _ => false,
            };
            let reported = match &command {
                Command::ReportCapacity(c) => Some(c.vendor.clone()),
                Command::RegisterVendor(c) => Some(c.vendor.id.clone()),
                _ => None,
            };
            let result = h.fat.apply(command.clone());
            let applied = result.is_ok();
            // (A repeated commit answers its first result and changes nothing.)
            prop_assert!(!(forged && h.fat != before), "a commit with a forged receipt was applied");
            match result {
                Err(err) => prop_assert_eq!(&h.fat, &before, "refused {:?} ({}) changed the FAT", command, err),
                Ok(Outcome::Reserved(view)) if is_reserve => {
                    let fresh = !h.reservations.contains(&view.id);
                    if fresh {
                        h.reservations.push(view.id);
                    }
                    for c in &view.candidates {
                        let v = &h.fat.vendors[&c.vendor.id];
                        prop_assert!(v.held() <= v.reported_offered || before == h.fat, "reserve overbooked {}", c.vendor.id);
                        prop_assert!(!fresh || v.liveness == Liveness::Up, "reserved on {} while {:?}", c.vendor.id, v.liveness);
                    }
                }
                Ok(Outcome::CapacityReported { delete }) => {
                    prop_assert!(delete.len() <= offsite_proto::limits::MAX_DELETIONS_PER_REPORT);
                    if let Some(v) = &reported {
                        h.asked.insert(v.clone(), delete);
                    }
                }
                Ok(_) => {}
            }
            if let Some(vendor) = reported.filter(|_| applied) {
                prop_assert_eq!(h.fat.vendors[&vendor].liveness, Liveness::Up, "{} reported but is not up", vendor);
            }
            check_invariants(&h.fat)?;
        }
        let bytes = postcard::to_stdvec(&h.fat).unwrap();
        let back: Fat = postcard::from_bytes(&bytes).unwrap();
        prop_assert_eq!(back, h.fat);
    }
}
