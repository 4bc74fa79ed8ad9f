//! Garbage collection's view of the FAT: which copies a vendor holds that
//! nothing needs, and which it should hold but lacks (see
//! `offsite_proto::reconcile` for the exchange).
//!
//! A portion a vendor holds is *needed* while any of these holds:
//! - the final FAT places it on the vendor;
//! - it is in the vendor's deletion queue (the queue deletes it, and
//!   counts the bytes back when the vendor acknowledges);
//! - the reservation it was stored under is open, or expired but not yet
//!   collected (a late commit may still name it);
//! - it was stored under an open repair whose target is this vendor.
//!
//! None of these can start to hold again for a stored copy once it has
//! stopped: a reservation never reopens, a collected one is never
//! committed, and a new placement needs a receipt that names a new
//! reservation or repair, which the vendor records when it stores the
//! copy again. So a copy found unneeded twice, a grace period apart, is
//! garbage, and deleting it loses nothing the FAT needs.
//!
//! Expired reservations are collected by the leader a configured time after
//! their lease ran out ([`Fat::collectable`]); from then on a late commit
//! is refused.

use std::collections::BTreeSet;

use offsite_proto::limits::MAX_RECONCILE_HELD;
use offsite_proto::reconcile::{bucket_of, Digests, Holdings};
use offsite_proto::{PortionDeletion, ReservationId, TenantId, VendorId};

use super::command::CollectReservations;
use super::reservations::ReservationState;
use super::{Fat, Outcome};

/// Most reservations one `CollectReservations` names.
pub const MAX_COLLECT_PER_COMMAND: usize = 1_000;

/// The FAT's answer to round two of a reconciliation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Held portions nothing needs of this vendor.
    pub unneeded: Vec<PortionDeletion>,
    /// Portions placed on this vendor, in the whole buckets listed, that
    /// it does not hold: at most [`MAX_RECONCILE_HELD`].
    pub missing: Vec<PortionDeletion>,
    /// More were missing than `missing` names.
    pub missing_cut: bool,
}

impl Fat {
    /// Expired reservations whose lease ran out at least `after_ms` before
    /// `now_unix_ms`, oldest id first, at most [`MAX_COLLECT_PER_COMMAND`].
    pub fn collectable(&self, now_unix_ms: u64, after_ms: u64) -> Vec<ReservationId> {
        self.reservations
            .iter()
            .filter(|(_, r)| match r.state {
                ReservationState::Expired { closed_unix_ms } => {
                    closed_unix_ms.saturating_add(after_ms) <= now_unix_ms
                }
                _ => false,
            })
            .map(|(id, _)| *id)
            .take(MAX_COLLECT_PER_COMMAND)
            .collect()
    }

    pub(super) fn collect_reservations(&mut self, c: CollectReservations) -> Outcome {
        let mut collected = 0;
        for id in c.ids.iter().take(MAX_COLLECT_PER_COMMAND) {
            if let Some(r) = self.reservations.get_mut(id) {
                if let ReservationState::Expired { closed_unix_ms } = r.state {
                    r.state = ReservationState::Collected { closed_unix_ms };
                    collected += 1;
                }
            }
        }
        Outcome::ReservationsCollected { collected }
    }

    /// Each (tenant, portion) the vendor should hold, once: its placements
    /// and its deletion queue.
    pub(super) fn expected_on(
        &self,
        vendor: &VendorId,
    ) -> BTreeSet<(&TenantId, offsite_proto::PortionId)> {
        let placed = self.portions.iter().flat_map(|(tenant, portions)| {
            portions
                .iter()
                .filter(|(_, record)| record.vendors.contains(vendor))
                .map(move |(portion, _)| (tenant, *portion))
        });
        let queued = self
            .deletions
            .get(vendor)
            .into_iter()
            .flat_map(|q| q.keys().map(|d| (&d.tenant, d.portion)));
        placed.chain(queued).collect()
    }

    /// Round one: the digests of what the vendor should hold.
    pub fn reconcile_digests(&self, vendor: &VendorId) -> Digests {
        let mut digests = Digests::default();
        for (tenant, portion) in self.expected_on(vendor) {
            digests.add(tenant, &portion);
        }
        digests
    }

    /// Round two: which of the vendor's `holdings` nothing needs, and which
    /// portions placed on it in the listed buckets it lacks.
    pub fn reconcile(&self, vendor: &VendorId, holdings: &Holdings) -> Reconciled {
        let unneeded = holdings
            .held
            .iter()
            .filter(|h| !self.needs(vendor, &h.tenant, h.portion, h.reservation))
            .map(|h| PortionDeletion {
                tenant: h.tenant.clone(),
                portion: h.portion,
            })
            .collect();
        let held: BTreeSet<(&TenantId, offsite_proto::PortionId)> = holdings
            .held
            .iter()
            .map(|h| (&h.tenant, h.portion))
            .collect();
        let mut missing: Vec<PortionDeletion> = self
            .portions
            .iter()
            .flat_map(|(tenant, portions)| {
                portions
                    .iter()
                    .filter(|(portion, record)| {
                        record.vendors.contains(vendor)
                            && holdings.buckets.contains(&bucket_of(portion))
                    })
                    .map(move |(portion, _)| (tenant, *portion))
            })
            .filter(|key| !held.contains(key))
            .filter(|(tenant, portion)| !self.queued_for_deletion(vendor, tenant, *portion))
            .map(|(tenant, portion)| PortionDeletion {
                tenant: tenant.clone(),
                portion,
            })
            .take(MAX_RECONCILE_HELD + 1)
            .collect();
        let missing_cut = missing.len() > MAX_RECONCILE_HELD;
        missing.truncate(MAX_RECONCILE_HELD);
        Reconciled {
            unneeded,
            missing,
            missing_cut,
        }
    }

    /// Whether the copy of `portion` the vendor stored under `reservation`
    /// is needed (see the module's list).
    fn needs(
        &self,
        vendor: &VendorId,
        tenant: &TenantId,
        portion: offsite_proto::PortionId,
        reservation: Option<ReservationId>,
    ) -> bool {
        let placed = self
            .portions
            .get(tenant)
            .and_then(|p| p.get(&portion))
            .is_some_and(|record| record.vendors.contains(vendor));
        if placed || self.queued_for_deletion(vendor, tenant, portion) {
            return true;
        }
        let Some(id) = reservation else {
            return false;
        };
        let may_commit = self.reservations.get(&id).is_some_and(|r| {
            &r.tenant == tenant
                && matches!(
                    r.state,
                    ReservationState::Open | ReservationState::Expired { .. }
                )
        });
        let repairing = self
            .repairs
            .get(&id)
            .is_some_and(|r| &r.target == vendor && &r.tenant == tenant && r.portion == portion);
        may_commit || repairing
    }
}
