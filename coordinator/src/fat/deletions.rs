//! Pruning in the FAT: a tenant releases committed portions that none of its
//! remaining snapshots needs; each leaves the final FAT and goes into the
//! deletion queue of every vendor holding it. A vendor learns its queue from
//! the answer to its capacity report, deletes, and acknowledges in its next
//! report; only then do the portion's bytes leave the vendor's `used`, since
//! until then they still take room on its disk. `used` only falls here, so
//! `used + reserved <= offered` keeps holding.

use std::collections::{BTreeMap, BTreeSet};

use offsite_proto::limits::{MAX_DELETIONS_PER_REPORT, MAX_LISTED_PORTIONS, MAX_RELEASE_PER_CALL};
use offsite_proto::{ListedPortion, PortionDeletion, PortionId, TenantId, VendorId};

use super::command::ReleasePortions;
use super::{Fat, FatError, Outcome};

/// Released portions a vendor still has to delete, with their sizes.
pub(crate) type DeletionQueue = BTreeMap<PortionDeletion, u64>;

impl Fat {
    /// Every portion the tenant's remaining snapshots need (manifests included).
    fn needed_portions(&self, tenant: &TenantId) -> BTreeMap<PortionId, offsite_proto::SnapshotId> {
        let mut needed = BTreeMap::new();
        for s in self
            .snapshots
            .get(tenant)
            .into_iter()
            .flat_map(|s| s.values())
        {
            for p in s.portions.iter().chain([&s.manifest.portion]) {
                needed.entry(*p).or_insert(s.id);
            }
        }
        needed
    }

    /// True when some vendor still has to delete this portion of this tenant.
    pub(super) fn pending_deletion(&self, tenant: &TenantId, portion: PortionId) -> bool {
        let key = PortionDeletion {
            tenant: tenant.clone(),
            portion,
        };
        self.deletions.values().any(|q| q.contains_key(&key))
    }

    /// Checks a release in full; returns the portions to release (ids
    /// already released and queued for deletion are skipped).
    pub(super) fn check_release(&self, r: &ReleasePortions) -> Result<Vec<PortionId>, FatError> {
        if r.portions.len() > MAX_RELEASE_PER_CALL {
            return Err(FatError::invalid(format!(
                "{} portions in one release, more than {MAX_RELEASE_PER_CALL}; release them in \
                 several calls",
                r.portions.len()
            )));
        }
        let held = self.portions.get(&r.tenant);
        let needed = self.needed_portions(&r.tenant);
        let mut seen = BTreeSet::new();
        let mut release = Vec::with_capacity(r.portions.len());
        for id in &r.portions {
            if !seen.insert(*id) {
                return Err(FatError::invalid(format!(
                    "portion {id} is named twice; name each portion once"
                )));
            }
            if let Some(snapshot) = needed.get(id) {
                return Err(FatError::Conflict(format!(
                    "portion {id} is needed by snapshot {snapshot} of tenant {}; forget the \
                     snapshot before releasing its portions",
                    r.tenant
                )));
            }
            if held.is_some_and(|h| h.contains_key(id)) {
                release.push(*id);
            } else if !self.pending_deletion(&r.tenant, *id) {
                return Err(FatError::NotFound(format!(
                    "tenant {} has no committed portion {id}",
                    r.tenant
                )));
            }
        }
        Ok(release)
    }

    pub(super) fn release_portions(&mut self, r: ReleasePortions) -> Result<Outcome, FatError> {
        let release = self.check_release(&r)?;
        let (mut portions, mut bytes) = (0u64, 0u64);
        let Some(held) = self.portions.get_mut(&r.tenant) else {
            return Ok(Outcome::PortionsReleased { portions, bytes });
        };
        let mut gone = Vec::new();
        for id in release {
            let Some(record) = held.remove(&id) else {
                continue;
            };
            portions += 1;
            bytes = bytes.saturating_add(record.size);
            self.repair_failures.remove(&(r.tenant.clone(), id));
            gone.push(id);
            for vendor in record.vendors {
                self.deletions.entry(vendor).or_default().insert(
                    PortionDeletion {
                        tenant: r.tenant.clone(),
                        portion: id,
                    },
                    record.size,
                );
            }
        }
        if held.is_empty() {
            self.portions.remove(&r.tenant);
        }
        for id in gone {
            self.forget_bad_copy(&r.tenant, id, None);
        }
        Ok(Outcome::PortionsReleased { portions, bytes })
    }

    /// A vendor's acknowledged deletions leave its queue and its used bytes;
    /// an acknowledgement of something not queued is ignored (a repeat).
    pub(super) fn acknowledge_deletions(&mut self, vendor: &VendorId, deleted: &[PortionDeletion]) {
        let Some(queue) = self.deletions.get_mut(vendor) else {
            return;
        };
        let mut freed = 0u64;
        for d in deleted {
            if let Some(size) = queue.remove(d) {
                freed = freed.saturating_add(size);
                self.ledger.remove_copy(vendor, &d.tenant, d.portion);
            }
        }
        if queue.is_empty() {
            self.deletions.remove(vendor);
        }
        if let Some(v) = self.vendors.get_mut(vendor) {
            v.used = v.used.saturating_sub(freed);
        }
    }

    /// The next batch of deletions asked of `vendor`, in (tenant, portion) order.
    pub fn deletions_for(&self, vendor: &VendorId) -> Vec<PortionDeletion> {
        self.deletions
            .get(vendor)
            .map(|q| q.keys().take(MAX_DELETIONS_PER_REPORT).cloned().collect())
            .unwrap_or_default()
    }

    /// Deletions still to be done, over all vendors.
    pub fn pending_deletions(&self) -> u64 {
        self.deletions.values().map(|q| q.len() as u64).sum()
    }

    /// One page of the tenant's committed portions, in id order, after
    /// `after`; and whether more follow.
    pub fn list_portions(
        &self,
        tenant: &TenantId,
        after: Option<PortionId>,
        limit: usize,
    ) -> (Vec<ListedPortion>, bool) {
        let limit = if limit == 0 {
            MAX_LISTED_PORTIONS
        } else {
            limit.min(MAX_LISTED_PORTIONS)
        };
        let Some(held) = self.portions.get(tenant) else {
            return (Vec::new(), false);
        };
        let range = match after {
            Some(after) => {
                held.range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
            }
            None => held.range(..),
        };
        let mut page: Vec<ListedPortion> = range
            .take(limit + 1)
            .map(|(id, p)| ListedPortion {
                portion: *id,
                size: p.size,
                committed_unix_ms: p.committed_unix_ms,
            })
            .collect();
        let more = page.len() > limit;
        page.truncate(limit);
        (page, more)
    }
}
