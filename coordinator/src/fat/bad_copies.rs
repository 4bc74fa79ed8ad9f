//! Bad copies: a copy of a committed portion that its vendor can no longer
//! serve whole. Two findings mark one ([`MarkBadCopies`]):
//! - the vendor's own scrub found a piece of it damaged or missing and said
//!   so in its capacity report ([`BadCopyMark::SelfReported`]);
//! - a tenant's `check --read-data` reported it and a targeted audit of
//!   that copy failed ([`BadCopyMark::FailedAudit`]); a tenant's word alone
//!   marks nothing, since a tenant could accuse an honest vendor.
//!
//! A bad copy is repaired at once (not after `repair_after_secs`): the
//! leader's sweep plans a copy from a healthy holder, never from a vendor
//! whose copy of that portion is bad, onto a vendor that does not hold it;
//! the target's receipt places the new copy and only then does the bad one
//! leave the portion's vendors, into its vendor's deletion queue. So the
//! portion's copy count never falls on the way. Bad copies are neither
//! audited again nor handed out for fetches.
//!
//! Reputation: a self-reported bad copy does not count against the vendor's
//! standing, a confirmed accusation does (it is a failed audit). Disks lose
//! pieces; a vendor that finds and says so is doing what the marketplace
//! wants, and punishing it would teach vendors to stay quiet and hope no
//! audit lands on the damage. Saying so gains it nothing either: the copy
//! is made elsewhere and the vendor stops earning for it once it has
//! deleted it. A vendor that throws data away and reports it costs the
//! marketplace repair traffic only, so each vendor's self-reports are
//! counted (`copies_reported_bad` in status) for operators to see.

use std::collections::{BTreeMap, BTreeSet};

use offsite_proto::limits::MAX_BAD_COPIES_PER_REPORT;
use offsite_proto::{PortionId, TenantId, VendorId};
use serde::{Deserialize, Serialize};

use super::audits::{Audit, AuditResult};
use super::{Fat, FatError, Outcome};

/// Longest reason kept with a bad copy.
const MAX_REASON: usize = 200;

/// One finding of a bad copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BadCopyMark {
    /// The vendor found its own copy damaged or missing (scrubbing).
    SelfReported {
        vendor: VendorId,
        tenant: TenantId,
        portion: PortionId,
        reason: String,
    },
    /// A targeted audit of the copy a tenant reported failed; the audit is
    /// recorded in the vendor's reputation as well.
    FailedAudit(Audit),
}

impl BadCopyMark {
    fn copy(&self) -> (&VendorId, &TenantId, PortionId) {
        match self {
            BadCopyMark::SelfReported {
                vendor,
                tenant,
                portion,
                ..
            } => (vendor, tenant, *portion),
            BadCopyMark::FailedAudit(a) => (&a.vendor, &a.tenant, a.portion),
        }
    }
}

/// Marks copies bad; marks of copies the FAT does not place (any more) are
/// skipped, so a repeated report is harmless.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkBadCopies {
    pub marks: Vec<BadCopyMark>,
    pub now_unix_ms: u64,
}

/// How a bad copy was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FoundBy {
    /// The vendor's own scrub.
    Vendor,
    /// A tenant's check, confirmed by an audit.
    Audit,
}

/// What is known about one bad copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadCopy {
    pub found_by: FoundBy,
    pub reason: String,
    pub since_unix_ms: u64,
}

/// Where a copy a tenant reports bad stands in the FAT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyState {
    /// The FAT does not place the tenant's portion on that vendor.
    NotPlaced,
    /// Already known bad.
    Bad,
    /// Placed and not known bad: what an audit of it asks, where, and
    /// whether the vendor is up.
    Placed {
        copy: super::AuditCandidate,
        address: String,
        up: bool,
    },
}

/// The FAT's bad copies (format version 9).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BadCopies {
    /// Each portion's bad copies still in the catalog, by vendor.
    copies: BTreeMap<(TenantId, PortionId), BTreeMap<VendorId, BadCopy>>,
    /// Copies each vendor reported bad itself, ever.
    self_reported: BTreeMap<VendorId, u64>,
}

impl Fat {
    /// Whether `vendor`'s copy of the tenant's portion is known bad.
    pub fn is_bad_copy(&self, tenant: &TenantId, portion: PortionId, vendor: &VendorId) -> bool {
        self.bad_copies
            .copies
            .get(&(tenant.clone(), portion))
            .is_some_and(|bad| bad.contains_key(vendor))
    }

    /// The vendors whose copies of the tenant's portion are known bad.
    pub(super) fn bad_holders(&self, tenant: &TenantId, portion: PortionId) -> BTreeSet<&VendorId> {
        self.bad_copies
            .copies
            .get(&(tenant.clone(), portion))
            .map(|bad| bad.keys().collect())
            .unwrap_or_default()
    }

    /// The portions with a bad copy, in (tenant, portion) order.
    pub(super) fn portions_with_bad_copies(&self) -> BTreeSet<(&TenantId, PortionId)> {
        self.bad_copies
            .copies
            .keys()
            .map(|(t, p)| (t, *p))
            .collect()
    }

    /// Bad copies on `vendor` now, and how many it reported bad itself.
    pub fn bad_copy_counts(&self, vendor: &VendorId) -> (u64, u64) {
        let now = self
            .bad_copies
            .copies
            .values()
            .filter(|bad| bad.contains_key(vendor))
            .count() as u64;
        let reported = self
            .bad_copies
            .self_reported
            .get(vendor)
            .copied()
            .unwrap_or(0);
        (now, reported)
    }

    /// Every bad copy, for status and tests.
    pub fn bad_copies(&self) -> Vec<(TenantId, PortionId, VendorId, BadCopy)> {
        self.bad_copies
            .copies
            .iter()
            .flat_map(|((t, p), bad)| {
                bad.iter()
                    .map(|(v, c)| (t.clone(), *p, v.clone(), c.clone()))
            })
            .collect()
    }

    /// A copy left the catalog (replaced, or its portion released): it is
    /// no longer a bad copy to repair. `vendor` None: every copy of it.
    pub(super) fn forget_bad_copy(
        &mut self,
        tenant: &TenantId,
        portion: PortionId,
        vendor: Option<&VendorId>,
    ) {
        let key = (tenant.clone(), portion);
        let Some(bad) = self.bad_copies.copies.get_mut(&key) else {
            return;
        };
        match vendor {
            Some(vendor) => {
                bad.remove(vendor);
            }
            None => bad.clear(),
        }
        if bad.is_empty() {
            self.bad_copies.copies.remove(&key);
        }
    }

    /// Where `vendor`'s copy of the tenant's portion stands.
    pub fn copy_state(
        &self,
        tenant: &TenantId,
        portion: PortionId,
        vendor: &VendorId,
    ) -> CopyState {
        let record = self
            .portions
            .get(tenant)
            .and_then(|held| held.get(&portion))
            .filter(|record| record.vendors.contains(vendor));
        let (Some(record), Some(v)) = (record, self.vendors.get(vendor)) else {
            return CopyState::NotPlaced;
        };
        if self.is_bad_copy(tenant, portion, vendor) {
            return CopyState::Bad;
        }
        CopyState::Placed {
            copy: super::AuditCandidate {
                vendor: vendor.clone(),
                tenant: tenant.clone(),
                portion,
                size: record.size,
                hash: record.hash.0,
            },
            address: v.address.clone(),
            up: v.liveness == super::Liveness::Up,
        }
    }

    /// A repair copying from a copy now known bad is abandoned (its target
    /// deletes whatever it got); the next plan takes a healthy source.
    fn cancel_repairs_from(&mut self, tenant: &TenantId, portion: PortionId, source: &VendorId) {
        let from_bad: Vec<_> = self
            .repairs
            .iter()
            .filter(|(_, r)| &r.tenant == tenant && r.portion == portion && &r.source == source)
            .map(|(id, _)| *id)
            .collect();
        for id in from_bad {
            if let Some(repair) = self.close_repair(&id) {
                self.abandon_repair(repair);
            }
        }
    }

    /// Whether the FAT places `vendor`'s copy of the tenant's portion.
    fn places(&self, vendor: &VendorId, tenant: &TenantId, portion: PortionId) -> bool {
        self.portions
            .get(tenant)
            .and_then(|held| held.get(&portion))
            .is_some_and(|record| record.vendors.contains(vendor))
    }

    /// Refuses a command `apply` would refuse: too many marks, or an audit
    /// that did not fail.
    pub(super) fn check_mark_bad_copies(&self, c: &MarkBadCopies) -> Result<(), FatError> {
        if c.marks.len() > MAX_BAD_COPIES_PER_REPORT {
            return Err(FatError::invalid(format!(
                "{} bad copies in one command, more than {MAX_BAD_COPIES_PER_REPORT}; \
                 mark at most that many at once",
                c.marks.len()
            )));
        }
        for mark in &c.marks {
            if let BadCopyMark::FailedAudit(audit) = mark {
                if !matches!(audit.result, AuditResult::Failed { .. }) {
                    return Err(FatError::invalid(format!(
                        "the audit of vendor {}'s copy of portion {} did not fail; only a \
                         failed audit marks a copy bad",
                        audit.vendor, audit.portion
                    )));
                }
            }
        }
        Ok(())
    }

    pub(super) fn mark_bad_copies(&mut self, c: MarkBadCopies) -> Result<Outcome, FatError> {
        self.check_mark_bad_copies(&c)?;
        let mut marked = 0u64;
        for mark in c.marks {
            let (vendor, tenant, portion) = mark.copy();
            if !self.vendors.contains_key(vendor) || !self.places(vendor, tenant, portion) {
                continue;
            }
            let (key, vendor) = ((tenant.clone(), portion), vendor.clone());
            let (found_by, mut reason) = match &mark {
                BadCopyMark::SelfReported { reason, .. } => (FoundBy::Vendor, reason.clone()),
                BadCopyMark::FailedAudit(audit) => {
                    self.reputation
                        .entry(audit.vendor.clone())
                        .or_default()
                        .record(&audit.result, c.now_unix_ms);
                    let reason = match &audit.result {
                        AuditResult::Failed { reason } => reason.clone(),
                        AuditResult::Passed | AuditResult::Down => String::new(),
                    };
                    (FoundBy::Audit, reason)
                }
            };
            if self
                .bad_copies
                .copies
                .get(&key)
                .is_some_and(|bad| bad.contains_key(&vendor))
            {
                continue;
            }
            reason.truncate(MAX_REASON);
            if found_by == FoundBy::Vendor {
                let count = self
                    .bad_copies
                    .self_reported
                    .entry(vendor.clone())
                    .or_default();
                *count = count.saturating_add(1);
            }
            self.bad_copies
                .copies
                .entry(key.clone())
                .or_default()
                .insert(
                    vendor.clone(),
                    BadCopy {
                        found_by,
                        reason,
                        since_unix_ms: c.now_unix_ms,
                    },
                );
            self.cancel_repairs_from(&key.0, key.1, &vendor);
            marked += 1;
        }
        Ok(Outcome::BadCopiesMarked { marked })
    }
}
