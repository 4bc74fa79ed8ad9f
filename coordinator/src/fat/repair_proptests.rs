//! Random repair sequences on a market of five vendors: backups (three
//! copies on three of them), releases, vendors going down, shrinking and
//! reporting (acknowledging deletions), the leader's repair plans, and
//! reports of how repairs ended (the target's receipt, an error, a receipt
//! signed by someone else, a report from another vendor than the source).
//! After every command the accounting of [`check_invariants`] holds, a
//! refused command changed nothing, and every committed portion still has
//! exactly three distinct vendors: a repair never lowers a copy count.
//! Holders also report copies bad at random: no repair ever copies from a
//! bad copy, and every bad copy is one the catalog still places.

use std::collections::BTreeSet;

use offsite_proto::{CopyResult, PortionId, Receipt, RequestId, ReservationId};
use proptest::prelude::*;

use super::proptests::check_invariants;
use super::tests::{placement, register, reserve, tid, vendor_key, vid, T0};
use super::*;

const VENDORS: [&str; 5] = ["a", "b", "c", "d", "e"];
const POLICY: RepairPolicy = RepairPolicy {
    replace_after_ms: 1_000,
};

#[derive(Debug, Clone)]
enum Op {
    Backup {
        sizes: Vec<u64>,
        on: usize,
    },
    Release {
        pick: usize,
    },
    Down {
        vendor: usize,
    },
    Report {
        vendor: usize,
        acks: usize,
        offered: u64,
    },
    Advance,
    Plan,
    Finish {
        pick: usize,
        how: usize,
    },
    /// A holder of a portion reports its copy bad.
    Bad {
        pick: usize,
        holder: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (prop::collection::vec(1u64..100, 1..4), 0usize..10).prop_map(|(sizes, on)| Op::Backup { sizes, on }),
        1 => any::<usize>().prop_map(|pick| Op::Release { pick }),
        1 => (0usize..5).prop_map(|vendor| Op::Down { vendor }),
        3 => (0usize..5, 0usize..6, prop_oneof![Just(1u64 << 30), 0u64..400]).prop_map(|(vendor, acks, offered)| Op::Report { vendor, acks, offered }),
        1 => Just(Op::Advance),
        3 => Just(Op::Plan),
        4 => (any::<usize>(), 0usize..6).prop_map(|(pick, how)| Op::Finish { pick, how }),
        2 => (any::<usize>(), 0usize..3).prop_map(|(pick, holder)| Op::Bad { pick, holder }),
    ]
}

struct Harness {
    fat: Fat,
    now: u64,
    backups: usize,
    portions: Vec<PortionId>,
}

impl Harness {
    fn new() -> Self {
        let mut fat = Fat::default();
        for (i, v) in VENDORS.iter().enumerate() {
            register(&mut fat, v, ["eu", "us", "ap"][i % 3], 1 << 30, T0).unwrap();
        }
        Self {
            fat,
            now: T0,
            backups: 0,
            portions: Vec::new(),
        }
    }

    /// Three up vendors chosen by `on`, or none.
    fn three_up(&self, on: usize) -> Option<Vec<&'static str>> {
        let up: Vec<&'static str> = VENDORS
            .iter()
            .copied()
            .filter(|v| self.fat.vendors[&vid(v)].liveness == Liveness::Up)
            .collect();
        (up.len() >= 3).then(|| (0..3).map(|k| up[(on + k) % up.len()]).collect())
    }

    fn command(&mut self, op: Op) -> Option<Command> {
        let now = self.now;
        Some(match op {
            Op::Backup { sizes, on } => {
                let vendors = self.three_up(on)?;
                self.backups += 1;
                let total: u64 = sizes.iter().sum();
                let holds: Vec<(&str, u64)> = vendors.iter().map(|v| (*v, total)).collect();
                let mut r = reserve("acme", &format!("r{}", self.backups), total, 3, &holds);
                r.now_unix_ms = now;
                r.lease_expires_unix_ms = now + 600_000;
                let id = r.reservation;
                self.fat.apply(Command::Reserve(r)).ok()?;
                let placements: Vec<_> = sizes
                    .iter()
                    .map(|s| placement("acme", *s, &vendors))
                    .collect();
                self.portions.extend(placements.iter().map(|p| p.portion));
                Command::Commit(Commit {
                    tenant: tid("acme"),
                    request: RequestId::new(format!("c{}", self.backups)).unwrap(),
                    reservation: id,
                    portions: super::tests::signed_for(id, placements),
                    snapshot: None,
                    now_unix_ms: now,
                })
            }
            Op::Release { pick } => {
                let held: Vec<PortionId> = self
                    .fat
                    .portions
                    .get(&tid("acme"))
                    .map(|h| h.keys().copied().collect())
                    .unwrap_or_default();
                if held.is_empty() {
                    return None;
                }
                Command::ReleasePortions(ReleasePortions {
                    tenant: tid("acme"),
                    portions: vec![held[pick % held.len()]],
                })
            }
            Op::Down { vendor } => {
                let v = vid(VENDORS[vendor]);
                Command::UpdateLiveness(UpdateLiveness {
                    changes: vec![LivenessChange {
                        seen_report_unix_ms: self.fat.vendors[&v].last_report_unix_ms,
                        vendor: v,
                        liveness: Liveness::Down,
                    }],
                    now_unix_ms: now,
                })
            }
            Op::Report {
                vendor,
                acks,
                offered,
            } => {
                let vendor = vid(VENDORS[vendor]);
                let deleted = self
                    .fat
                    .deletions_for(&vendor)
                    .into_iter()
                    .take(acks)
                    .collect();
                Command::ReportCapacity(ReportCapacity {
                    vendor,
                    offered_bytes: offered,
                    stored_bytes: 0,
                    deleted,
                    now_unix_ms: now,
                })
            }
            Op::Advance => {
                self.now += 2_000;
                Command::ExpireLeases {
                    now_unix_ms: self.now,
                }
            }
            Op::Plan => Command::PlanRepairs(PlanRepairs {
                repairs: self.fat.repairs_due(now, &POLICY, ReservationId::random),
                now_unix_ms: now,
            }),
            Op::Bad { pick, holder } => {
                let held: Vec<(PortionId, VendorId)> = self
                    .fat
                    .portions
                    .get(&tid("acme"))
                    .map(|h| {
                        h.iter()
                            .map(|(p, r)| (*p, r.vendors[holder % r.vendors.len()].clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                if held.is_empty() {
                    return None;
                }
                let (portion, vendor) = held[pick % held.len()].clone();
                Command::MarkBadCopies(MarkBadCopies {
                    marks: vec![BadCopyMark::SelfReported {
                        vendor,
                        tenant: tid("acme"),
                        portion,
                        reason: "scrub".into(),
                    }],
                    now_unix_ms: now,
                })
            }
            Op::Finish { pick, how } => {
                let ids: Vec<ReservationId> = self.fat.repairs.keys().copied().collect();
                if ids.is_empty() {
                    return None;
                }
                let id = ids[pick % ids.len()];
                let repair = self.fat.repairs[&id].clone();
                let signer = if how == 2 {
                    &repair.source
                } else {
                    &repair.target
                };
                let mut receipt = Receipt {
                    vendor: repair.target.clone(),
                    tenant: repair.tenant.clone(),
                    portion: repair.portion,
                    hash: repair.hash,
                    size: repair.size,
                    signature: vec![],
                };
                vendor_key(signer.as_str()).sign(&mut receipt, &id);
                Command::FinishRepairs(FinishRepairs {
                    source: if how == 3 {
                        repair.target
                    } else {
                        repair.source
                    },
                    results: vec![CopyResult {
                        repair: id,
                        outcome: if how == 1 {
                            Err("the target refused".into())
                        } else {
                            Ok(receipt)
                        },
                    }],
                })
            }
        })
    }
}

/// Every committed portion has three distinct vendors.
fn three_copies_each(fat: &Fat) -> Result<(), TestCaseError> {
    for (portion, record) in fat.portions.values().flat_map(|h| h.iter()) {
        let distinct: BTreeSet<_> = record.vendors.iter().collect();
        prop_assert!(
            record.vendors.len() == 3 && distinct.len() == 3,
            "portion {} has vendors {:?}",
            portion,
            record.vendors
        );
    }
    Ok(())
}

/// No open repair copies from a bad copy, and every bad copy is placed.
fn bad_copies_never_sources(fat: &Fat) -> Result<(), TestCaseError> {
    for r in fat.repairs.values() {
        prop_assert!(
            !fat.is_bad_copy(&r.tenant, r.portion, &r.source),
            "repair of {} copies from bad copy on {}",
            r.portion,
            r.source
        );
    }
    for (tenant, portion, vendor, _) in fat.bad_copies() {
        prop_assert!(
            fat.portions[&tenant][&portion].vendors.contains(&vendor),
            "bad copy of {} on {} is not in the catalog",
            portion,
            vendor
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn repair_sequences_keep_the_accounting_and_the_copy_counts(ops in prop::collection::vec(op(), 1..80)) {
        let mut h = Harness::new();
        for op in ops {
            let Some(command) = h.command(op) else { continue };
            let before = h.fat.clone();
            if let Err(err) = h.fat.apply(command.clone()) {
                prop_assert_eq!(&h.fat, &before, "refused {:?} ({}) changed the FAT", command, err);
            }
            check_invariants(&h.fat)?;
            three_copies_each(&h.fat)?;
            bad_copies_never_sources(&h.fat)?;
        }
    }
}

/// The generator reaches the interesting paths: over many sequences, copies
/// are placed, and failed repairs happen.
#[test]
fn repair_sequences_place_and_fail_copies() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut placed, mut failed, mut bad_replaced) = (0u64, 0usize, 0usize);
    for _ in 0..64 {
        let ops = prop::collection::vec(op(), 40..80)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let mut h = Harness::new();
        for op in ops {
            let Some(command) = h.command(op) else {
                continue;
            };
            let bad_before = h.fat.bad_copies().len();
            let finishing = matches!(command, Command::FinishRepairs(_));
            let applied = h.fat.apply(command);
            if finishing && h.fat.bad_copies().len() < bad_before {
                bad_replaced += 1;
            }
            if let Ok(Outcome::RepairsFinished {
                placed: p,
                failed: f,
            }) = applied
            {
                placed += p;
                failed += f.len();
            }
        }
    }
    assert!(
        placed > 0 && failed > 0 && bad_replaced > 0,
        "placed {placed}, failed {failed}, bad copies replaced {bad_replaced}"
    );
}
