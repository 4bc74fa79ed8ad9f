//! Re-replication (the design's "vendor life"): copies of committed portions
//! leave vendors that are gone or want their disk back, vendor to vendor.
//!
//! A vendor's copies are *leaving* when it has been down for the policy's
//! `replace_after_ms`, or when it has offered less than it holds for as
//! long (it needs its disk back; a store that is only restarting does not
//! set copies moving). The leader's sweep plans repairs ([`Fat::repairs_due`]): for a
//! portion with a leaving copy, a holder that is up (the source) sends a
//! copy to an up vendor with room that does not hold it (the target). The
//! FAT keeps the repair with the target's bytes under `reserved`; the
//! source learns it from the answer to its capacity report, sends the copy
//! under the target's store grant, and reports the target's signed receipt.
//! Then the target joins the portion's vendors, the leaving vendor leaves
//! them and gets the portion in its deletion queue. A failed or expired
//! repair frees the target's bytes; the next sweep plans it again.
//!
//! A portion has at most one repair at a time, so its copy count never
//! falls on the way: the leaving copy goes only once the new one is held.

use std::collections::{BTreeMap, BTreeSet};

use offsite_proto::{
    CopyResult, Hash, PortionDeletion, PortionId, Receipt, ReservationId, TenantId, VendorId,
    VendorRef,
};
use serde::{Deserialize, Serialize};

use offsite_proto::signing::ReceiptRule;

use super::catalog::check_receipt_signature;
use super::vendors::Liveness;
use super::{Fat, FatError, Outcome};

/// Most repairs open at once, over all vendors.
pub const MAX_OPEN_REPAIRS: usize = 64;
/// How long a source has to send a copy and report it.
pub const REPAIR_LEASE_MS: u64 = 30 * 60 * 1000;

/// When copies leave a vendor that went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepairPolicy {
    /// How long a vendor must have been down, or offering less than it
    /// holds, before its copies (the excess, for the latter) are made again
    /// elsewhere.
    pub replace_after_ms: u64,
}

/// A copy being made: `source` sends the portion to `target`, which takes
/// the place of `replaces` among the portion's vendors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repair {
    pub tenant: TenantId,
    pub portion: PortionId,
    pub hash: Hash,
    pub size: u64,
    pub source: VendorId,
    pub target: VendorId,
    pub replaces: VendorId,
    pub expires_unix_ms: u64,
}

/// A repair as the leader plans it (the FAT checks it again when applying).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedRepair {
    /// A fresh id, chosen by the leader; it names the target's store grant.
    pub id: ReservationId,
    pub tenant: TenantId,
    pub portion: PortionId,
    pub source: VendorId,
    pub target: VendorId,
    pub replaces: VendorId,
}

/// Opens the planned repairs; refused whole if one does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanRepairs {
    pub repairs: Vec<PlannedRepair>,
    pub now_unix_ms: u64,
}

/// A source vendor's report of how its copies ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishRepairs {
    pub source: VendorId,
    pub results: Vec<CopyResult>,
}

/// A copy the source vendor is asked to send, with where to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOrder {
    pub id: ReservationId,
    pub repair: Repair,
    pub target: VendorRef,
}

impl Fat {
    /// Whether `vendor`'s copies should move elsewhere at `now_unix_ms`.
    /// A disqualified or exiting vendor's copies all move, whatever its
    /// liveness; a relieved one's move at once, down to its goal.
    fn leaving(&self, vendor: &VendorId, now_unix_ms: u64, policy: &RepairPolicy) -> bool {
        if self.disqualified(vendor) || self.exiting(vendor) {
            return true;
        }
        if self
            .relief_goal(vendor)
            .is_some_and(|goal| self.committed_on(vendor) > goal)
        {
            return true;
        }
        self.vendors.get(vendor).is_none_or(|v| match v.liveness {
            Liveness::Down => {
                now_unix_ms.saturating_sub(v.liveness_since_unix_ms) >= policy.replace_after_ms
            }
            Liveness::Up => self.short_too_long(vendor, now_unix_ms, policy),
            Liveness::Suspect => false,
        })
    }

    /// Whether an up vendor has offered less than it holds for the policy's
    /// `replace_after_ms`.
    fn short_too_long(&self, vendor: &VendorId, now_unix_ms: u64, policy: &RepairPolicy) -> bool {
        self.vendors.get(vendor).is_some_and(|v| {
            v.liveness == Liveness::Up
                && v.reported_offered < self.committed_on(vendor)
                && v.short_since_unix_ms.is_some_and(|since| {
                    now_unix_ms.saturating_sub(since) >= policy.replace_after_ms
                })
        })
    }

    /// How many bytes a leaving vendor still sheds, beyond what open repairs
    /// move already; `None`: all it holds (down, disqualified or exiting).
    fn to_shed(&self, vendor: &VendorId, now_unix_ms: u64, policy: &RepairPolicy) -> Option<u64> {
        let v = self.vendors.get(vendor)?;
        if self.disqualified(vendor) || self.exiting(vendor) {
            return None;
        }
        let committed = self.committed_on(vendor);
        let short = match self.short_too_long(vendor, now_unix_ms, policy) {
            true => committed.saturating_sub(v.reported_offered),
            false => 0,
        };
        let relief = self
            .relief_goal(vendor)
            .map_or(0, |goal| committed.saturating_sub(goal));
        let down_too_long = v.liveness == Liveness::Down
            && now_unix_ms.saturating_sub(v.liveness_since_unix_ms) >= policy.replace_after_ms;
        if down_too_long {
            return None;
        }
        let moving: u64 = self
            .repairs
            .values()
            .filter(|r| &r.replaces == vendor)
            .fold(0u64, |sum, r| sum.saturating_add(r.size));
        Some(short.max(relief).saturating_sub(moving))
    }

    /// What `vendor` holds in the catalog: its `used` without the released
    /// copies it still has to delete (those leave on their own).
    pub(super) fn committed_on(&self, vendor: &VendorId) -> u64 {
        let owed = self.deletions.get(vendor).map_or(0, |q| {
            q.values().fold(0u64, |sum, size| sum.saturating_add(*size))
        });
        self.vendors
            .get(vendor)
            .map_or(0, |v| v.used.saturating_sub(owed))
    }

    fn is_up(&self, vendor: &VendorId) -> bool {
        self.vendors
            .get(vendor)
            .is_some_and(|v| v.liveness == Liveness::Up)
    }

    pub(super) fn queued_for_deletion(
        &self,
        vendor: &VendorId,
        tenant: &TenantId,
        portion: PortionId,
    ) -> bool {
        self.deletions.get(vendor).is_some_and(|q| {
            q.contains_key(&PortionDeletion {
                tenant: tenant.clone(),
                portion,
            })
        })
    }

    /// The repairs the leader should open now: at most enough to bring the
    /// open ones to [`MAX_OPEN_REPAIRS`], ids drawn by `new_id`.
    pub fn repairs_due(
        &self,
        now_unix_ms: u64,
        policy: &RepairPolicy,
        mut new_id: impl FnMut() -> ReservationId,
    ) -> Vec<PlannedRepair> {
        let room = MAX_OPEN_REPAIRS.saturating_sub(self.repairs.len());
        if room == 0 {
            return Vec::new();
        }
        let leaving: BTreeSet<&VendorId> = self
            .vendors
            .keys()
            .filter(|v| self.leaving(v, now_unix_ms, policy))
            .collect();
        let with_bad = self.portions_with_bad_copies();
        if leaving.is_empty() && with_bad.is_empty() {
            return Vec::new();
        }
        let repairing: BTreeSet<(&TenantId, PortionId)> = self
            .repairs
            .values()
            .map(|r| (&r.tenant, r.portion))
            .collect();
        // A vendor that offers less than it holds, or asked for relief,
        // sheds only the excess (absent: everything).
        let mut to_shed: BTreeMap<&VendorId, u64> = leaving
            .iter()
            .filter_map(|id| Some((*id, self.to_shed(id, now_unix_ms, policy)?)))
            .collect();
        // Burst relief goes ahead of every other repair but bad copies.
        let urgent: BTreeSet<&VendorId> = leaving
            .iter()
            .copied()
            .filter(|id| self.relief_goal(id).is_some())
            .collect();
        let mut free: BTreeMap<&VendorId, u64> = self
            .vendors
            .iter()
            .filter(|(id, v)| {
                v.liveness == Liveness::Up && !leaving.contains(id) && self.takes_new_data(id)
            })
            .map(|(id, v)| (id, v.free()))
            .collect();
        // Portions with a bad copy first: they are short of a copy now;
        // then those with a copy on a vendor asking for relief; then the
        // rest.
        let all = || {
            self.portions.iter().flat_map(|(tenant, portions)| {
                portions.iter().map(move |(p, record)| (tenant, *p, record))
            })
        };
        let in_order = with_bad
            .iter()
            .filter_map(|(t, p)| {
                let record = self.portions.get(*t)?.get(p)?;
                Some((*t, *p, record))
            })
            .chain(all().filter(|(_, _, record)| record.vendors.iter().any(|v| urgent.contains(v))))
            .chain(all());
        let mut planned = Vec::new();
        let mut chosen: BTreeSet<(&TenantId, PortionId)> = BTreeSet::new();
        for (tenant, portion, record) in in_order {
            if planned.len() >= room {
                return planned;
            }
            if repairing.contains(&(tenant, portion)) || chosen.contains(&(tenant, portion)) {
                continue;
            }
            // A bad copy is replaced at once; never copied from.
            let bad = self.bad_holders(tenant, portion);
            let sheds = |v: &&VendorId| to_shed.get(v).is_none_or(|left| *left > 0);
            let mut copies = record.vendors.iter();
            let Some(replaces) = copies
                .clone()
                .find(|v| bad.contains(v))
                .or_else(|| copies.clone().find(|v| urgent.contains(v) && sheds(v)))
                .or_else(|| copies.find(|v| leaving.contains(v) && sheds(v)))
            else {
                continue;
            };
            // After a failed try another source and target get their turn.
            let tries = self
                .repair_failures
                .get(&(tenant.clone(), portion))
                .copied()
                .unwrap_or(0) as usize;
            let mut sources: Vec<&VendorId> = record
                .vendors
                .iter()
                .filter(|v| {
                    *v != replaces && self.is_up(v) && !leaving.contains(v) && !bad.contains(v)
                })
                .collect();
            if sources.is_empty() {
                sources = record
                    .vendors
                    .iter()
                    .filter(|v| self.is_up(v) && !bad.contains(v))
                    .collect();
            }
            let Some(source) = sources.get(tries % sources.len().max(1)).copied() else {
                continue;
            };
            let regions: BTreeSet<&str> = record
                .vendors
                .iter()
                .filter(|v| *v != replaces)
                .filter_map(|v| self.vendors.get(v).map(|r| r.region.as_str()))
                .collect();
            // A new region first, then the most room; ties by id.
            let mut targets: Vec<(&VendorId, u64)> = free
                .iter()
                .filter(|(id, room)| {
                    **room >= record.size
                        && !record.vendors.contains(id)
                        && !self.queued_for_deletion(id, tenant, portion)
                })
                .map(|(id, room)| (*id, *room))
                .collect();
            targets.sort_by_key(|(id, room)| {
                let region = self.vendors.get(*id).map(|v| v.region.as_str());
                (
                    std::cmp::Reverse(region.is_some_and(|r| !regions.contains(r))),
                    std::cmp::Reverse(*room),
                    *id,
                )
            });
            let Some((target, _)) = targets.get(tries % targets.len().max(1)).copied() else {
                continue;
            };
            if let Some(room) = free.get_mut(target) {
                *room = room.saturating_sub(record.size);
            }
            if let Some(left) = to_shed.get_mut(replaces) {
                *left = left.saturating_sub(record.size);
            }
            chosen.insert((tenant, portion));
            planned.push(PlannedRepair {
                id: new_id(),
                tenant: tenant.clone(),
                portion,
                source: source.clone(),
                target: target.clone(),
                replaces: replaces.clone(),
            });
        }
        planned
    }

    /// Checks one planned repair against the FAT and the bytes already
    /// taken by earlier repairs of the same command.
    fn check_planned(
        &self,
        p: &PlannedRepair,
        taken: &BTreeMap<&VendorId, u64>,
        ids: &BTreeSet<ReservationId>,
        portions: &BTreeSet<(&TenantId, PortionId)>,
    ) -> Result<u64, FatError> {
        let record = self
            .portions
            .get(&p.tenant)
            .and_then(|h| h.get(&p.portion))
            .ok_or_else(|| {
                FatError::NotFound(format!(
                    "tenant {} has no committed portion {} to repair",
                    p.tenant, p.portion
                ))
            })?;
        if self.repairs.contains_key(&p.id)
            || self.reservations.contains_key(&p.id)
            || ids.contains(&p.id)
        {
            return Err(FatError::Conflict(format!("repair id {} is taken", p.id)));
        }
        if portions.contains(&(&p.tenant, p.portion))
            || self
                .repairs
                .values()
                .any(|r| r.tenant == p.tenant && r.portion == p.portion)
        {
            return Err(FatError::Conflict(format!(
                "portion {} of tenant {} is already being repaired",
                p.portion, p.tenant
            )));
        }
        if !record.vendors.contains(&p.source) || !self.is_up(&p.source) {
            return Err(FatError::invalid(format!(
                "repair source {} does not hold portion {} or is not up",
                p.source, p.portion
            )));
        }
        if self.is_bad_copy(&p.tenant, p.portion, &p.source) {
            return Err(FatError::invalid(format!(
                "repair source {}'s copy of portion {} is bad; copy from a healthy holder",
                p.source, p.portion
            )));
        }
        if !record.vendors.contains(&p.replaces) {
            return Err(FatError::invalid(format!(
                "vendor {} does not hold portion {}, so no copy of it can replace it",
                p.replaces, p.portion
            )));
        }
        let target = self.vendors.get(&p.target).filter(|v| {
            v.liveness == Liveness::Up
                && self.takes_new_data(&p.target)
                && !record.vendors.contains(&p.target)
                && !self.queued_for_deletion(&p.target, &p.tenant, p.portion)
        });
        let free = target.map_or(0, |v| v.free());
        let taken = taken.get(&p.target).copied().unwrap_or(0);
        if target.is_none() || free.saturating_sub(taken) < record.size {
            return Err(FatError::Conflict(format!(
                "repair target {} is not up, in good standing and taking data (not exiting or relieved), already holds portion {}, or lacks {} free bytes",
                p.target, p.portion, record.size
            )));
        }
        Ok(record.size)
    }

    pub(super) fn plan_repairs(&mut self, c: PlanRepairs) -> Result<Outcome, FatError> {
        let mut taken: BTreeMap<&VendorId, u64> = BTreeMap::new();
        let mut ids = BTreeSet::new();
        let mut portions = BTreeSet::new();
        for p in &c.repairs {
            let size = self.check_planned(p, &taken, &ids, &portions)?;
            let taken_there = taken.entry(&p.target).or_default();
            *taken_there = taken_there.saturating_add(size);
            ids.insert(p.id);
            portions.insert((&p.tenant, p.portion));
        }
        if self.repairs.len() + c.repairs.len() > MAX_OPEN_REPAIRS {
            return Err(FatError::Conflict(format!(
                "{} repairs are open; at most {MAX_OPEN_REPAIRS} may be",
                self.repairs.len() + c.repairs.len()
            )));
        }
        let opened = c.repairs.len() as u64;
        for p in c.repairs {
            let Some(record) = self.portions.get(&p.tenant).and_then(|h| h.get(&p.portion)) else {
                continue;
            };
            let repair = Repair {
                tenant: p.tenant,
                portion: p.portion,
                hash: record.hash,
                size: record.size,
                source: p.source,
                target: p.target,
                replaces: p.replaces,
                expires_unix_ms: c.now_unix_ms.saturating_add(REPAIR_LEASE_MS),
            };
            if let Some(v) = self.vendors.get_mut(&repair.target) {
                v.reserved = v.reserved.saturating_add(repair.size);
            }
            self.repairs.insert(p.id, repair);
        }
        Ok(Outcome::RepairsPlanned { opened })
    }

    /// Closes a repair: its bytes leave the target's `reserved`.
    pub(super) fn close_repair(&mut self, id: &ReservationId) -> Option<Repair> {
        let repair = self.repairs.remove(id)?;
        if let Some(v) = self.vendors.get_mut(&repair.target) {
            v.reserved = v.reserved.saturating_sub(repair.size);
        }
        Some(repair)
    }

    /// A repair that failed or ran out of time: the target may hold the copy
    /// all the same (its answer lost, or late), so it is asked to delete it
    /// (deleting a portion it never stored is a success); the next plan of
    /// the portion tries another source and target.
    pub(super) fn abandon_repair(&mut self, repair: Repair) {
        let failures = self
            .repair_failures
            .entry((repair.tenant.clone(), repair.portion))
            .or_default();
        *failures = failures.saturating_add(1);
        self.owe_deletion(&repair.target, &repair, true);
    }

    /// Puts the repair's portion into `vendor`'s deletion queue. `charge`:
    /// its bytes join `vendor`'s `used` until the deletion is acknowledged
    /// (a copy the catalog never counted); a replaced copy is counted already.
    fn owe_deletion(&mut self, vendor: &VendorId, repair: &Repair, charge: bool) {
        let deletion = PortionDeletion {
            tenant: repair.tenant.clone(),
            portion: repair.portion,
        };
        let queue = self.deletions.entry(vendor.clone()).or_default();
        if queue.insert(deletion, repair.size).is_none() && charge {
            if let Some(v) = self.vendors.get_mut(vendor) {
                v.used = v.used.saturating_add(repair.size);
            }
        }
    }

    /// Whether `receipt` is the target's signed receipt for exactly this
    /// copy, stored under repair `id`.
    fn check_copy_receipt(
        &self,
        id: &ReservationId,
        repair: &Repair,
        receipt: &Receipt,
        rule: ReceiptRule,
    ) -> Result<(), String> {
        if receipt.vendor != repair.target
            || receipt.tenant != repair.tenant
            || receipt.portion != repair.portion
            || receipt.hash != repair.hash
            || receipt.size != repair.size
        {
            return Err(format!(
                "the receipt is not target {}'s for portion {} (vendor, tenant, portion, hash \
                 or size differ)",
                repair.target, repair.portion
            ));
        }
        check_receipt_signature(&self.vendors, receipt, id, rule).map_err(|e| e.to_string())
    }

    /// `results` as a new copy report may bring them: a receipt that does
    /// not name its repair (one of before repairs were signed, or of an
    /// earlier repair replayed) becomes that copy's failure, so it never
    /// reaches the log.
    pub fn fresh_copy_results(&self, results: Vec<CopyResult>) -> Vec<CopyResult> {
        results
            .into_iter()
            .map(|mut result| {
                if let (Some(repair), Ok(receipt)) =
                    (self.repairs.get(&result.repair), &result.outcome)
                {
                    let rule = ReceiptRule::Fresh;
                    if let Err(why) = self.check_copy_receipt(&result.repair, repair, receipt, rule)
                    {
                        result.outcome = Err(why);
                    }
                }
                result
            })
            .collect()
    }

    /// A held copy joins the portion's vendors in place of the leaving one,
    /// which must delete its copy; a copy of a portion released meanwhile is
    /// deleted again at the target.
    fn place_copy(&mut self, repair: Repair) {
        self.repair_failures
            .remove(&(repair.tenant.clone(), repair.portion));
        let record = self
            .portions
            .get_mut(&repair.tenant)
            .and_then(|h| h.get_mut(&repair.portion))
            .filter(|r| r.hash == repair.hash && r.size == repair.size);
        let Some(record) = record else {
            // Released meanwhile (or committed again with other bytes).
            self.owe_deletion(&repair.target, &repair, true);
            return;
        };
        record.vendors.push(repair.target.clone());
        self.ledger.add_copy(
            repair.target.clone(),
            repair.tenant.clone(),
            repair.portion,
            repair.size,
        );
        let before = record.vendors.len();
        record.vendors.retain(|v| *v != repair.replaces);
        let replaced = record.vendors.len() < before;
        if let Some(v) = self.vendors.get_mut(&repair.target) {
            v.used = v.used.saturating_add(repair.size);
        }
        if replaced {
            self.owe_deletion(&repair.replaces, &repair, false);
        }
        self.forget_bad_copy(&repair.tenant, repair.portion, Some(&repair.replaces));
    }

    /// Closes the source's reported repairs; unknown ids and other vendors'
    /// repairs are skipped (a repeated report).
    pub(super) fn finish_repairs(&mut self, c: FinishRepairs) -> Result<Outcome, FatError> {
        let mut placed = 0u64;
        let mut failed = Vec::new();
        for result in c.results {
            if self
                .repairs
                .get(&result.repair)
                .is_none_or(|r| r.source != c.source)
            {
                continue;
            }
            let Some(repair) = self.close_repair(&result.repair) else {
                continue;
            };
            let checked = result.outcome.and_then(|receipt| {
                self.check_copy_receipt(&result.repair, &repair, &receipt, ReceiptRule::AsLogged)
            });
            match checked {
                Ok(()) => {
                    self.place_copy(repair);
                    placed += 1;
                }
                Err(why) => {
                    self.abandon_repair(repair);
                    failed.push((result.repair, why));
                }
            }
        }
        Ok(Outcome::RepairsFinished { placed, failed })
    }

    /// Closes repairs whose lease ran out by `now_unix_ms`; their ids.
    pub(super) fn expire_repairs(&mut self, now_unix_ms: u64) -> Vec<ReservationId> {
        let expired: Vec<ReservationId> = self
            .repairs
            .iter()
            .filter(|(_, r)| r.expires_unix_ms <= now_unix_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            if let Some(repair) = self.close_repair(id) {
                self.abandon_repair(repair);
            }
        }
        expired
    }

    /// Whether some repair's lease ran out by `now_unix_ms`.
    pub(super) fn has_expired_repairs(&self, now_unix_ms: u64) -> bool {
        self.repairs
            .values()
            .any(|r| r.expires_unix_ms <= now_unix_ms)
    }

    /// The open repairs `source` should send, oldest lease first, at most
    /// `limit`, with their targets' addresses.
    pub fn copies_for(&self, source: &VendorId, limit: usize) -> Vec<CopyOrder> {
        let mut orders: Vec<CopyOrder> = self
            .repairs
            .iter()
            .filter(|(_, r)| &r.source == source)
            .filter_map(|(id, r)| {
                let target = self.vendors.get(&r.target)?;
                Some(CopyOrder {
                    id: *id,
                    repair: r.clone(),
                    target: VendorRef {
                        id: r.target.clone(),
                        address: target.address.clone(),
                    },
                })
            })
            .collect();
        orders.sort_by_key(|o| (o.repair.expires_unix_ms, o.id));
        orders.truncate(limit);
        orders
    }

    /// Repairs open now.
    pub fn open_repairs(&self) -> u64 {
        self.repairs.len() as u64
    }
}
