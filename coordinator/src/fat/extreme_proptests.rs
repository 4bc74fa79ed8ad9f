//! Extreme numbers in every command kind: each size, offer, time and count
//! a caller chooses is drawn from 0, 1, `u64::MAX - 1`, `u64::MAX` or any
//! value. `apply` must never panic (a panic in `apply` replays at every
//! restart), a refused command changes nothing, [`Fat::check`] refuses what
//! `apply` refuses, and the accounting invariants hold after every command.

use offsite_proto::{
    BlobLocation, CopyResult, PortionId, RequestId, ReservationId, SnapshotId, SnapshotRecord,
    VendorRef,
};
use proptest::prelude::*;

use super::proptests::check_invariants;
use super::tests::{placement, tid, vendor_key, vid};
use super::*;

const VENDORS: [&str; 4] = ["a", "b", "c", "d"];
const TENANTS: [&str; 2] = ["acme", "globex"];

fn extreme() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(u64::MAX - 1),
        Just(u64::MAX),
        any::<u64>(),
        0u64..10_000,
        1u64..1 << 40,
    ]
}

fn extreme_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(2),
        Just(3),
        Just(u32::MAX),
        any::<u32>()
    ]
}

#[derive(Debug, Clone)]
enum Op {
    Register(usize, u64, u64, u64),
    Report(usize, u64, u64, u64),
    /// `None` holds: every up vendor with room holds what it can.
    Reserve(usize, u64, u32, Option<Vec<(usize, u64)>>, u64, u64),
    Commit(usize, usize, Vec<(u64, usize)>, Option<(u64, u64)>, u64),
    Release(usize, usize, u64),
    Renew(usize, usize, u64, u64),
    Expire(u64),
    Liveness(usize, usize, u64, u64),
    ReleasePortions(usize, Vec<usize>),
    Rewrite(usize, usize, u64, u64),
    Forget(usize, usize),
    TenantKey(usize, usize, u64),
    GrantKey(u32, u64),
    PlanRepairs(u64, u64),
    FinishRepairs(usize),
    Prices(usize, u64, u64, u64),
    Fee(u32, u64),
    Limits(usize, Option<u64>, Option<u64>, Option<u32>, u64),
    Close(u32, u64),
    Egress(usize, usize, u64, u64, u64, u64),
    /// A copy marked bad, by its vendor (false) or a failed audit (true).
    Bad(usize, usize, u64, u64, bool),
    /// 0 start an exit, 1 cancel it, 2 relieve, 3 settle.
    Depart(usize, usize, u64, u64),
}

fn op() -> impl Strategy<Value = Op> {
    let v = 0..VENDORS.len();
    let t = 0..TENANTS.len();
    prop_oneof![
        3 => (v.clone(), extreme(), extreme(), extreme())
            .prop_map(|(v, o, n, now)| Op::Register(v, o, n, now)),
        2 => (v.clone(), extreme(), extreme(), extreme())
            .prop_map(|(v, o, s, now)| Op::Report(v, o, s, now)),
        6 => (
            t.clone(),
            extreme(),
            extreme_u32(),
            prop::option::weighted(0.3, prop::collection::vec((v.clone(), extreme()), 0..5)),
            extreme(),
            extreme()
        )
            .prop_map(|(t, b, r, h, now, lease)| Op::Reserve(t, b, r, h, now, lease)),
        6 => (
            t.clone(),
            any::<usize>(),
            prop::collection::vec((extreme(), any::<usize>()), 0..3),
            prop::option::of((extreme(), extreme())),
            extreme()
        )
            .prop_map(|(t, r, p, s, now)| Op::Commit(t, r, p, s, now)),
        1 => (t.clone(), any::<usize>(), extreme()).prop_map(|(t, r, now)| Op::Release(t, r, now)),
        2 => (t.clone(), any::<usize>(), extreme(), extreme())
            .prop_map(|(t, r, now, until)| Op::Renew(t, r, now, until)),
        1 => extreme().prop_map(Op::Expire),
        1 => (v.clone(), 0usize..3, extreme(), extreme())
            .prop_map(|(v, l, seen, now)| Op::Liveness(v, l, seen, now)),
        1 => (t.clone(), prop::collection::vec(any::<usize>(), 0..4))
            .prop_map(|(t, p)| Op::ReleasePortions(t, p)),
        1 => (t.clone(), any::<usize>(), extreme(), extreme())
            .prop_map(|(t, s, o, l)| Op::Rewrite(t, s, o, l)),
        1 => (t.clone(), any::<usize>()).prop_map(|(t, s)| Op::Forget(t, s)),
        1 => (t.clone(), prop_oneof![Just(0usize), Just(1), Just(16 * 1024 + 1)], extreme())
            .prop_map(|(t, len, now)| Op::TenantKey(t, len, now)),
        1 => (extreme_u32(), extreme()).prop_map(|(id, now)| Op::GrantKey(id, now)),
        1 => (extreme(), extreme()).prop_map(|(now, after)| Op::PlanRepairs(now, after)),
        1 => v.clone().prop_map(Op::FinishRepairs),
        2 => (v.clone(), extreme(), extreme(), extreme())
            .prop_map(|(v, s, e, now)| Op::Prices(v, s, e, now)),
        1 => (extreme_u32(), extreme()).prop_map(|(f, now)| Op::Fee(f, now)),
        2 => (
            t.clone(),
            prop::option::of(extreme()),
            prop::option::of(extreme()),
            prop::option::of(extreme_u32()),
            extreme()
        )
            .prop_map(|(t, q, c, o, now)| Op::Limits(t, q, c, o, now)),
        1 => (extreme_u32(), extreme()).prop_map(|(p, now)| Op::Close(p, now)),
        2 => (v.clone(), any::<usize>(), extreme(), extreme(), extreme(), extreme())
            .prop_map(|(v, p, max, bytes, expires, now)| Op::Egress(v, p, max, bytes, expires, now)),
        2 => (0..VENDORS.len(), any::<usize>(), extreme(), extreme(), any::<bool>())
            .prop_map(|(v, p, offset, now, audit)| Op::Bad(v, p, offset, now, audit)),
        2 => (v, 0usize..4, extreme(), extreme())
            .prop_map(|(v, kind, bytes, now)| Op::Depart(v, kind, bytes, now)),
    ]
}

#[derive(Default)]
struct Harness {
    fat: Fat,
    reservations: Vec<(usize, ReservationId)>,
    portions: Vec<(usize, PortionId)>,
    snapshots: Vec<(usize, SnapshotRecord)>,
}

fn pick<T: Clone>(list: &[T], i: usize) -> Option<T> {
    (!list.is_empty()).then(|| list[i % list.len()].clone())
}

impl Harness {
    fn command(&self, op: Op) -> Option<Command> {
        Some(match op {
            Op::Register(v, offered, net, now) => Command::RegisterVendor(RegisterVendor {
                vendor: VendorRef {
                    id: vid(VENDORS[v]),
                    address: format!("{}.example:7100", VENDORS[v]),
                },
                region: ["eu", "us", "ap", "eu"][v].into(),
                offered_bytes: offered,
                network_bytes_per_sec: net,
                identity_key: vendor_key(VENDORS[v]).public_key().to_vec(),
                now_unix_ms: now,
            }),
            Op::Report(v, offered, stored, now) => Command::ReportCapacity(ReportCapacity {
                vendor: vid(VENDORS[v]),
                offered_bytes: offered,
                stored_bytes: stored,
                deleted: self.fat.deletions_for(&vid(VENDORS[v])),
                now_unix_ms: now,
            }),
            Op::Reserve(t, bytes, replication, holds, now, lease) => Command::Reserve(Reserve {
                tenant: tid(TENANTS[t]),
                request: RequestId::new(format!("r{}", bytes % 3)).unwrap(),
                reservation: ReservationId::random(),
                bytes,
                replication,
                holds: match holds {
                    Some(holds) => holds
                        .into_iter()
                        .map(|(v, bytes)| Hold {
                            vendor: vid(VENDORS[v]),
                            bytes,
                        })
                        .collect(),
                    None => self
                        .fat
                        .vendors_with_room()
                        .into_iter()
                        .map(|room| Hold {
                            bytes: room.free_bytes.min(bytes),
                            vendor: room.vendor,
                        })
                        .collect(),
                },
                now_unix_ms: now,
                lease_expires_unix_ms: lease,
            }),
            Op::Commit(t, r, portions, snapshot, now) => {
                let (owner, reservation) = pick(&self.reservations, r)?;
                let holds = self.fat.reservations.get(&reservation)?.holds.clone();
                let portions: Vec<_> = portions
                    .into_iter()
                    .map(|(size, v)| {
                        let vendor = pick(&holds, v).map_or("a".to_string(), |h| h.vendor.into());
                        placement(TENANTS[owner], size, &[vendor.as_str()])
                    })
                    .collect();
                let snapshot = snapshot.and_then(|(offset, length)| {
                    let portion = portions.first()?.portion;
                    Some(SnapshotRecord {
                        id: SnapshotId::random(),
                        host: "h".into(),
                        time_unix_ms: offset,
                        paths: vec![],
                        tags: vec![],
                        manifest: BlobLocation {
                            portion,
                            offset,
                            length,
                        },
                        portions: vec![portion],
                        logical_bytes: length,
                        file_count: offset,
                    })
                });
                Command::Commit(Commit {
                    tenant: tid(TENANTS[t]),
                    request: RequestId::new("c").unwrap(),
                    reservation,
                    portions: super::tests::signed_for(reservation, portions),
                    snapshot,
                    now_unix_ms: now,
                })
            }
            Op::Release(t, r, now) => Command::Release(Release {
                tenant: tid(TENANTS[t]),
                reservation: pick(&self.reservations, r)?.1,
                now_unix_ms: now,
            }),
            Op::Renew(t, r, now, until) => Command::RenewLease(RenewLease {
                tenant: tid(TENANTS[t]),
                reservation: pick(&self.reservations, r)?.1,
                now_unix_ms: now,
                lease_expires_unix_ms: until,
            }),
            Op::Expire(now) => Command::ExpireLeases { now_unix_ms: now },
            Op::Liveness(v, l, seen, now) => Command::UpdateLiveness(UpdateLiveness {
                changes: vec![LivenessChange {
                    vendor: vid(VENDORS[v]),
                    liveness: [Liveness::Up, Liveness::Suspect, Liveness::Down][l],
                    seen_report_unix_ms: seen,
                }],
                now_unix_ms: now,
            }),
            Op::ReleasePortions(t, picks) => Command::ReleasePortions(ReleasePortions {
                tenant: tid(TENANTS[t]),
                portions: picks
                    .into_iter()
                    .filter_map(|i| pick(&self.portions, i).map(|(_, p)| p))
                    .collect(),
            }),
            Op::Rewrite(t, s, offset, length) => {
                let (_, mut record) = pick(&self.snapshots, s)?;
                record.manifest.offset = offset;
                record.manifest.length = length;
                Command::RewriteSnapshots(RewriteSnapshots {
                    tenant: tid(TENANTS[t]),
                    snapshots: vec![record],
                })
            }
            Op::Forget(t, s) => Command::Forget(Forget {
                tenant: tid(TENANTS[t]),
                snapshot: pick(&self.snapshots, s)?.1.id,
            }),
            Op::TenantKey(t, len, now) => Command::StoreTenantKey(StoreTenantKey {
                tenant: tid(TENANTS[t]),
                key_file: vec![1; len],
                now_unix_ms: now,
            }),
            Op::GrantKey(key_id, now) => Command::InstallGrantKey(InstallGrantKey {
                key_id,
                secret: GrantSecret([7; 32]),
                now_unix_ms: now,
            }),
            Op::PlanRepairs(now, after) => {
                let policy = RepairPolicy {
                    replace_after_ms: after,
                };
                Command::PlanRepairs(PlanRepairs {
                    repairs: self.fat.repairs_due(now, &policy, ReservationId::random),
                    now_unix_ms: now,
                })
            }
            Op::FinishRepairs(v) => {
                let source = vid(VENDORS[v]);
                Command::FinishRepairs(FinishRepairs {
                    results: self
                        .fat
                        .copies_for(&source, 64)
                        .into_iter()
                        .map(|order| CopyResult {
                            repair: order.id,
                            outcome: Err("disk full".into()),
                        })
                        .collect(),
                    source,
                })
            }
            Op::Prices(v, storage, egress, now) => Command::SetVendorPrices(SetVendorPrices {
                vendor: vid(VENDORS[v]),
                prices: Prices {
                    storage_micros_per_tib_month: storage,
                    egress_micros_per_tib: egress,
                },
                now_unix_ms: now,
            }),
            Op::Fee(fee_ppm, now) => Command::SetMarketFee(SetMarketFee {
                fee_ppm,
                now_unix_ms: now,
            }),
            Op::Limits(t, quota, cap, open, now) => Command::SetTenantLimits(SetTenantLimits {
                tenant: tid(TENANTS[t]),
                limits: TenantLimits {
                    quota_bytes: quota,
                    monthly_cap_micros: cap,
                    max_open_reservations: open,
                },
                now_unix_ms: now,
            }),
            Op::Close(period, now) => Command::ClosePeriod(ClosePeriod {
                period: period.min(self.fat.open_period().saturating_add(1)),
                now_unix_ms: now,
            }),
            Op::Bad(v, p, offset, now, audit) => {
                let (t, portion) = pick(&self.portions, p)?;
                let (vendor, tenant) = (vid(VENDORS[v]), tid(TENANTS[t]));
                let mark = if audit {
                    BadCopyMark::FailedAudit(Audit {
                        vendor,
                        tenant,
                        portion,
                        offset,
                        length: offset,
                        result: AuditResult::Failed {
                            reason: "x".repeat(300),
                        },
                    })
                } else {
                    BadCopyMark::SelfReported {
                        vendor,
                        tenant,
                        portion,
                        reason: String::new(),
                    }
                };
                Command::MarkBadCopies(MarkBadCopies {
                    marks: vec![mark],
                    now_unix_ms: now,
                })
            }
            Op::Egress(v, p, max_bytes, bytes, expires, now) => {
                let (t, portion) = pick(&self.portions, p)?;
                Command::BookEgress(BookEgress {
                    vendor: vid(VENDORS[v]),
                    served: vec![ServedFetch {
                        digest: *blake3::hash(&bytes.to_le_bytes()).as_bytes(),
                        tenant: tid(TENANTS[t]),
                        portion,
                        max_bytes,
                        expires_unix_ms: expires,
                        bytes,
                    }],
                    now_unix_ms: now,
                })
            }
            Op::Depart(v, kind, bytes, now) => {
                let vendor = vid(VENDORS[v]);
                Command::Departure(match kind {
                    0 => Departure::StartExit {
                        vendor,
                        now_unix_ms: now,
                    },
                    1 => Departure::CancelExit {
                        vendor,
                        now_unix_ms: now,
                    },
                    2 => Departure::Relieve {
                        vendor,
                        bytes,
                        now_unix_ms: now,
                    },
                    _ => Departure::Settle { now_unix_ms: now },
                })
            }
        })
    }

    fn note(&mut self, command: &Command, outcome: &Outcome) {
        match (command, outcome) {
            (Command::Reserve(r), Outcome::Reserved(view)) => {
                let t = TENANTS.iter().position(|t| tid(t) == r.tenant).unwrap();
                if !self.reservations.iter().any(|(_, id)| *id == view.id) {
                    self.reservations.push((t, view.id));
                }
            }
            (Command::Commit(c), Outcome::Committed { .. }) => {
                let t = TENANTS.iter().position(|t| tid(t) == c.tenant).unwrap();
                self.portions
                    .extend(c.portions.iter().map(|p| (t, p.portion)));
                if let Some(s) = &c.snapshot {
                    self.snapshots.push((t, s.clone()));
                }
            }
            _ => {}
        }
    }
}

/// Commands only the leader makes pass [`Fat::check`]; `apply` judges them.
fn leader_made(command: &Command) -> bool {
    matches!(
        command,
        Command::ExpireLeases { .. }
            | Command::UpdateLiveness(_)
            | Command::InstallGrantKey(_)
            | Command::PlanRepairs(_)
            | Command::FinishRepairs(_)
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn extreme_numbers_in_every_command_never_panic_or_break_the_accounting(
        ops in prop::collection::vec(op(), 1..100)
    ) {
        let mut h = Harness::default();
        for op in ops {
            let Some(command) = h.command(op) else { continue };
            let before = h.fat.clone();
            let checked = h.fat.check(&command);
            let result = h.fat.apply(command.clone());
            match &result {
                Err(err) => {
                    prop_assert_eq!(&h.fat, &before, "refused {:?} ({}) changed the FAT", command, err);
                    if !leader_made(&command) {
                        prop_assert_eq!(checked.as_ref().err(), Some(err), "check passed {:?}", command);
                    }
                }
                Ok(outcome) => {
                    prop_assert!(checked.is_ok(), "check refused {:?} that apply took: {:?}", command, checked);
                    h.note(&command, outcome);
                }
            }
            check_invariants(&h.fat)?;
        }
    }
}
