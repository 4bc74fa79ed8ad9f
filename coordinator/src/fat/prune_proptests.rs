//! Random pruning sequences on a market of three vendors with room to
//! spare: backups (a reservation committed with portions and maybe a
//! snapshot needing some of the tenant's portions), forgets, releases of
//! needed, unneeded, foreign and unknown portions, and capacity reports that
//! acknowledge some of the vendor's deletions, and rewrites of snapshots to
//! other portions. After every command the
//! accounting of [`check_invariants`] holds (used = committed + released
//! and unacknowledged), a refused command changed nothing, and no snapshot
//! needs a released portion; a release refuses exactly when a named portion
//! is needed or not the tenant's.

use offsite_proto::{PortionDeletion, PortionId, RequestId};
use proptest::prelude::*;

use super::proptests::check_invariants;
use super::tests::{placement, register, reserve, snapshot_of, tid, vid, T0};
use super::*;

const TENANTS: [&str; 2] = ["acme", "globex"];
const VENDORS: [&str; 3] = ["a", "b", "c"];

#[derive(Debug, Clone)]
enum Op {
    Backup {
        tenant: usize,
        sizes: Vec<u64>,
        /// Portions of the tenant (old or new) the snapshot needs.
        snapshot: Option<Vec<usize>>,
    },
    Forget {
        tenant: usize,
        pick: usize,
    },
    Release {
        tenant: usize,
        /// Indexes into every portion ever committed (any tenant).
        picks: Vec<usize>,
        unknown: bool,
    },
    Report {
        vendor: usize,
        acks: usize,
        stray: bool,
    },
    /// Moves a snapshot of the tenant to other portions (any tenant's).
    Rewrite {
        tenant: usize,
        pick: usize,
        picks: Vec<usize>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0usize..2, prop::collection::vec(1u64..100, 1..4), prop::option::weighted(0.7, prop::collection::vec(any::<usize>(), 1..4)))
            .prop_map(|(tenant, sizes, snapshot)| Op::Backup { tenant, sizes, snapshot }),
        1 => (0usize..2, any::<usize>()).prop_map(|(tenant, pick)| Op::Forget { tenant, pick }),
        3 => (0usize..2, prop::collection::vec(any::<usize>(), 1..5), prop::bool::weighted(0.1))
            .prop_map(|(tenant, picks, unknown)| Op::Release { tenant, picks, unknown }),
        3 => (0usize..3, 0usize..6, prop::bool::weighted(0.2)).prop_map(|(vendor, acks, stray)| Op::Report { vendor, acks, stray }),
        1 => (0usize..2, any::<usize>(), prop::collection::vec(any::<usize>(), 1..4)).prop_map(|(tenant, pick, picks)| Op::Rewrite { tenant, pick, picks }),
    ]
}

#[derive(Default)]
struct Harness {
    fat: Fat,
    /// Every portion committed, with its tenant.
    portions: Vec<(usize, PortionId)>,
    backups: usize,
}

impl Harness {
    fn new() -> Self {
        let mut fat = Fat::default();
        for v in VENDORS {
            register(&mut fat, v, "eu", 1 << 40, T0).unwrap();
        }
        Self {
            fat,
            ..Self::default()
        }
    }

    fn backup(&mut self, tenant: usize, sizes: &[u64], snapshot: Option<Vec<usize>>) -> Command {
        self.backups += 1;
        let name = TENANTS[tenant];
        let total: u64 = sizes.iter().sum();
        let holds: Vec<(&str, u64)> = VENDORS.iter().map(|v| (*v, total)).collect();
        let r = reserve(name, &format!("r{}", self.backups), total, 3, &holds);
        let id = r.reservation;
        self.fat.apply(Command::Reserve(r)).unwrap();
        let placements: Vec<_> = sizes
            .iter()
            .map(|s| placement(name, *s, &VENDORS))
            .collect();
        let mine: Vec<PortionId> = self
            .portions
            .iter()
            .filter(|(t, _)| *t == tenant)
            .map(|(_, p)| *p)
            .chain(placements.iter().map(|p| p.portion))
            .collect();
        self.portions
            .extend(placements.iter().map(|p| (tenant, p.portion)));
        let snapshot = snapshot.map(|picks| {
            let chosen: Vec<PortionId> = picks.iter().map(|i| mine[i % mine.len()]).collect();
            snapshot_of(&chosen)
        });
        Command::Commit(Commit {
            tenant: tid(name),
            request: RequestId::new(format!("c{}", self.backups)).unwrap(),
            reservation: id,
            portions: super::tests::signed_for(id, placements),
            snapshot,
            now_unix_ms: T0 + 1,
        })
    }

    fn command(&mut self, op: Op) -> Command {
        match op {
            Op::Backup {
                tenant,
                sizes,
                snapshot,
            } => self.backup(tenant, &sizes, snapshot),
            Op::Forget { tenant, pick } => {
                let list = self.fat.snapshots(&tid(TENANTS[tenant]));
                let snapshot = if list.is_empty() {
                    offsite_proto::SnapshotId::random()
                } else {
                    list[pick % list.len()].id
                };
                Command::Forget(Forget {
                    tenant: tid(TENANTS[tenant]),
                    snapshot,
                })
            }
            Op::Release {
                tenant,
                picks,
                unknown,
            } => {
                let mut portions: Vec<PortionId> = if self.portions.is_empty() {
                    Vec::new()
                } else {
                    picks
                        .iter()
                        .map(|i| self.portions[i % self.portions.len()].1)
                        .collect()
                };
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
            Op::Report {
                vendor,
                acks,
                stray,
            } => {
                let vendor = vid(VENDORS[vendor]);
                let mut deleted: Vec<PortionDeletion> = self
                    .fat
                    .deletions_for(&vendor)
                    .into_iter()
                    .take(acks)
                    .collect();
                if stray {
                    deleted.push(PortionDeletion {
                        tenant: tid("acme"),
                        portion: PortionId::random(),
                    });
                }
                Command::ReportCapacity(ReportCapacity {
                    vendor,
                    offered_bytes: 1 << 40,
                    stored_bytes: 0,
                    deleted,
                    now_unix_ms: T0 + 2,
                })
            }
            Op::Rewrite {
                tenant,
                pick,
                picks,
            } => {
                let list = self.fat.snapshots(&tid(TENANTS[tenant]));
                let snapshots = match (list.is_empty(), self.portions.is_empty()) {
                    (false, false) => {
                        let mut record = list[pick % list.len()].clone();
                        record.portions = picks
                            .iter()
                            .map(|i| self.portions[i % self.portions.len()].1)
                            .collect();
                        record.manifest.portion = record.portions[0];
                        vec![record]
                    }
                    _ => Vec::new(),
                };
                Command::RewriteSnapshots(RewriteSnapshots {
                    tenant: tid(TENANTS[tenant]),
                    snapshots,
                })
            }
        }
    }

    /// Whether a rewrite must be refused: a new portion is not committed for
    /// the tenant.
    fn rewrite_must_fail(&self, r: &RewriteSnapshots) -> bool {
        r.snapshots.iter().any(|s| {
            s.portions.iter().any(|p| {
                !self
                    .fat
                    .portions
                    .get(&r.tenant)
                    .is_some_and(|h| h.contains_key(p))
            })
        })
    }

    /// Whether a release must be refused: a portion needed by a snapshot, or
    /// neither committed for the tenant nor queued for deletion.
    fn release_must_fail(&self, r: &ReleasePortions) -> bool {
        let needed: Vec<PortionId> = self
            .fat
            .snapshots(&r.tenant)
            .iter()
            .flat_map(|s| s.portions.iter().chain([&s.manifest.portion]).copied())
            .collect();
        r.portions.iter().any(|p| {
            needed.contains(p)
                || !(self
                    .fat
                    .portions
                    .get(&r.tenant)
                    .is_some_and(|h| h.contains_key(p))
                    || self.fat.pending_deletion(&r.tenant, *p))
        })
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn prune_sequences_keep_the_accounting(ops in prop::collection::vec(op(), 1..60)) {
        let mut h = Harness::new();
        for op in ops {
            let command = h.command(op);
            let before = h.fat.clone();
            let must_fail = match &command {
                Command::ReleasePortions(r) => Some(h.release_must_fail(r)),
                Command::RewriteSnapshots(r) => Some(h.rewrite_must_fail(r)),
                _ => None,
            };
            match h.fat.apply(command.clone()) {
                Err(err) => {
                    prop_assert_eq!(&h.fat, &before, "refused {:?} ({}) changed the FAT", command, err);
                    prop_assert_ne!(must_fail, Some(false), "a valid release or rewrite was refused: {}", err);
                }
                Ok(outcome) => {
                    prop_assert_ne!(must_fail, Some(true), "a needed or foreign portion was released, or a snapshot moved to one");
                    if let Outcome::CapacityReported { delete } = outcome {
                        prop_assert!(delete.len() <= offsite_proto::limits::MAX_DELETIONS_PER_REPORT);
                    }
                }
            }
            check_invariants(&h.fat)?;
        }
        // Acknowledge everything: the vendors end up using exactly the
        // committed portions.
        for v in VENDORS {
            let queue = h.fat.deletions_for(&vid(v));
            h.fat.apply(Command::ReportCapacity(ReportCapacity {
                vendor: vid(v),
                offered_bytes: 1 << 40,
                stored_bytes: 0,
                deleted: queue,
                now_unix_ms: T0 + 3,
            })).unwrap();
        }
        prop_assert_eq!(h.fat.pending_deletions(), 0);
        check_invariants(&h.fat)?;
    }
}
