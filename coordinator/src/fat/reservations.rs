//! Reservations: the provisional FAT. Bytes held on candidate vendors for one
//! tenant under a lease, until committed, released or expired.

use std::collections::BTreeSet;

use offsite_proto::limits::MAX_REPLICATION;
use offsite_proto::{Candidate, Grant, RequestId, ReservationId, TenantId};
use serde::{Deserialize, Serialize};

use super::command::{Hold, Release, RenewLease, ReservationView, Reserve};
use super::{Fat, FatError, Liveness, Outcome};

/// Why a collected reservation takes no more calls.
pub(super) fn collected(id: ReservationId) -> String {
    format!(
        "the lease of reservation {id} ran out long ago and the copies it stored were \
         collected (deleted at the vendors); reserve again and store those portions anew"
    )
}

/// Largest reservation, in bytes before replication (1 PiB).
pub const MAX_RESERVE_BYTES: u64 = 1 << 50;
/// Most candidates in one reservation.
pub const MAX_CANDIDATES: usize = 64;
/// How long a closed reservation is remembered, so retried requests still get
/// their first answer.
pub const CLOSED_RETENTION_MS: u64 = 24 * 60 * 60 * 1000;

/// Where a reservation stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ReservationState {
    Open,
    Committed {
        request: RequestId,
        committed_bytes: u64,
        closed_unix_ms: u64,
    },
    Released {
        closed_unix_ms: u64,
    },
    Expired {
        closed_unix_ms: u64,
    },
    /// Expired, and collected: too late for a late commit, so the vendors
    /// delete what it stored (format version 9).
    Collected {
        closed_unix_ms: u64,
    },
}

/// One reservation as the FAT records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Reservation {
    pub tenant: TenantId,
    pub request: RequestId,
    pub bytes: u64,
    pub replication: u32,
    pub holds: Vec<Hold>,
    pub lease_expires_unix_ms: u64,
    pub state: ReservationState,
}

impl Reservation {
    fn closed_unix_ms(&self) -> Option<u64> {
        match self.state {
            ReservationState::Open => None,
            ReservationState::Committed { closed_unix_ms, .. }
            | ReservationState::Released { closed_unix_ms }
            | ReservationState::Expired { closed_unix_ms }
            | ReservationState::Collected { closed_unix_ms } => Some(closed_unix_ms),
        }
    }

    pub fn hold_of(&self, vendor: &offsite_proto::VendorId) -> Option<u64> {
        self.holds
            .iter()
            .find(|h| &h.vendor == vendor)
            .map(|h| h.bytes)
    }
}

/// Checks the size and replication factor a tenant asks for.
pub fn check_reserve_request(bytes: u64, replication: u32) -> Result<(), FatError> {
    if !(1..=MAX_REPLICATION).contains(&replication) {
        return Err(FatError::invalid(format!(
            "replication {replication} is out of range; use 1 to {MAX_REPLICATION}"
        )));
    }
    if !(1..=MAX_RESERVE_BYTES).contains(&bytes) {
        return Err(FatError::invalid(format!(
            "a reservation of {bytes} bytes is out of range; ask for 1 to {MAX_RESERVE_BYTES} \
             bytes (take several reservations for more)"
        )));
    }
    Ok(())
}

fn check_shape(r: &Reserve) -> Result<(), FatError> {
    check_reserve_request(r.bytes, r.replication)?;
    if r.lease_expires_unix_ms <= r.now_unix_ms {
        return Err(FatError::invalid("the lease ends before it starts"));
    }
    if r.holds.len() > MAX_CANDIDATES {
        return Err(FatError::invalid(format!(
            "{} candidates, more than the {MAX_CANDIDATES} allowed",
            r.holds.len()
        )));
    }
    let mut seen = BTreeSet::new();
    for hold in &r.holds {
        if !seen.insert(&hold.vendor) {
            return Err(FatError::invalid(format!(
                "vendor {} is a candidate twice",
                hold.vendor
            )));
        }
        if hold.bytes == 0 || hold.bytes > r.bytes {
            return Err(FatError::invalid(format!(
                "candidate {} holds {} bytes; a candidate holds 1 to {} bytes",
                hold.vendor, hold.bytes, r.bytes
            )));
        }
    }
    Ok(())
}

impl Fat {
    /// Checks a reservation in full without changing anything; `Some` is
    /// the answer to a repeated request.
    pub(super) fn check_reserve(&self, r: &Reserve) -> Result<Option<Outcome>, FatError> {
        if let Some(id) = self.requests.get(&(r.tenant.clone(), r.request.clone())) {
            return self.repeated_reserve(*id, r).map(Some);
        }
        if self.reservations.contains_key(&r.reservation) {
            return Err(FatError::Conflict(format!(
                "reservation id {} is taken; retry with a new id",
                r.reservation
            )));
        }
        check_shape(r)?;
        self.check_tenant_limits(r)?;
        self.check_room(r)?;
        Ok(None)
    }

    pub(super) fn reserve(&mut self, r: Reserve) -> Result<Outcome, FatError> {
        if let Some(repeated) = self.check_reserve(&r)? {
            return Ok(repeated);
        }
        let key = (r.tenant.clone(), r.request.clone());
        for hold in &r.holds {
            if let Some(vendor) = self.vendors.get_mut(&hold.vendor) {
                vendor.reserved = vendor.reserved.saturating_add(hold.bytes);
            }
        }
        self.requests.insert(key, r.reservation);
        self.reservations.insert(
            r.reservation,
            Reservation {
                tenant: r.tenant,
                request: r.request,
                bytes: r.bytes,
                replication: r.replication,
                holds: r.holds,
                lease_expires_unix_ms: r.lease_expires_unix_ms,
                state: ReservationState::Open,
            },
        );
        Ok(Outcome::Reserved(self.reservation_view(r.reservation)))
    }

    fn repeated_reserve(&self, id: ReservationId, r: &Reserve) -> Result<Outcome, FatError> {
        let first = &self.reservations[&id];
        if first.bytes != r.bytes || first.replication != r.replication {
            return Err(FatError::Conflict(format!(
                "request id {} was already used for a reservation of {} bytes at replication {}; \
                 use a new request id for a different reservation",
                r.request, first.bytes, first.replication
            )));
        }
        Ok(Outcome::Reserved(self.reservation_view(id)))
    }

    /// Re-checks that every candidate exists, is up and has the room it is to
    /// hold.
    fn check_room(&self, r: &Reserve) -> Result<(), FatError> {
        let mut total: u128 = 0;
        for hold in &r.holds {
            let vendor = self.vendors.get(&hold.vendor).ok_or_else(|| {
                FatError::invalid(format!(
                    "candidate {} is not a registered vendor",
                    hold.vendor
                ))
            })?;
            let placeable = vendor.liveness == Liveness::Up && self.takes_new_data(&hold.vendor);
            if hold.bytes > vendor.free() || !placeable {
                return Err(self.not_enough(r));
            }
            total += u128::from(hold.bytes);
        }
        let needed = u128::from(r.bytes) * u128::from(r.replication);
        if r.holds.len() < r.replication as usize || total < needed {
            return Err(self.not_enough(r));
        }
        Ok(())
    }

    fn not_enough(&self, r: &Reserve) -> FatError {
        let free = self
            .vendors
            .values()
            .fold(0u64, |sum, v| sum.saturating_add(v.free()));
        FatError::NotEnoughCapacity {
            asked_bytes: r.bytes,
            replication: r.replication,
            needed_bytes: r.bytes.saturating_mul(u64::from(r.replication)),
            free_bytes: free,
            vendors: self.vendors.values().filter(|v| v.free() > 0).count() as u64,
        }
    }

    /// Checks a release; `true` when the reservation is open (there is
    /// something to release).
    fn check_release_open(&self, r: &Release) -> Result<bool, FatError> {
        let reservation = self.tenant_reservation(&r.tenant, r.reservation)?;
        match reservation.state {
            ReservationState::Open => Ok(true),
            ReservationState::Released { .. }
            | ReservationState::Expired { .. }
            | ReservationState::Collected { .. } => Ok(false),
            ReservationState::Committed { .. } => Err(FatError::Conflict(format!(
                "reservation {} was committed; the rest of it was released then, \
                 so there is nothing to release",
                r.reservation
            ))),
        }
    }

    pub(super) fn check_release_reservation(&self, r: &Release) -> Result<(), FatError> {
        self.check_release_open(r).map(drop)
    }

    pub(super) fn release(&mut self, r: Release) -> Result<Outcome, FatError> {
        if !self.check_release_open(&r)? {
            return Ok(Outcome::Released);
        }
        self.close(
            r.reservation,
            ReservationState::Released {
                closed_unix_ms: r.now_unix_ms,
            },
        );
        Ok(Outcome::Released)
    }

    /// Checks a renewal: the tenant's reservation is open and its lease has
    /// not run out by the renewal's time.
    pub(super) fn check_renew_lease(&self, r: &RenewLease) -> Result<(), FatError> {
        let reservation = self.tenant_reservation(&r.tenant, r.reservation)?;
        match reservation.state {
            ReservationState::Open if reservation.lease_expires_unix_ms > r.now_unix_ms => Ok(()),
            ReservationState::Open | ReservationState::Expired { .. } => {
                Err(FatError::Expired(format!(
                    "the lease of reservation {} ran out before it was renewed, so its room \
                     is no longer held; commit what it stored (accepted while the vendors \
                     have room) and reserve again for the rest",
                    r.reservation
                )))
            }
            ReservationState::Released { .. } => Err(FatError::Expired(format!(
                "reservation {} was released; reserve again",
                r.reservation
            ))),
            ReservationState::Collected { .. } => Err(FatError::Expired(collected(r.reservation))),
            ReservationState::Committed { .. } => Err(FatError::Conflict(format!(
                "reservation {} was committed, so there is no lease to renew; reserve again \
                 for more",
                r.reservation
            ))),
        }
    }

    /// Extends an open lease; a renewal never shortens one.
    pub(super) fn renew_lease(&mut self, r: RenewLease) -> Result<Outcome, FatError> {
        self.check_renew_lease(&r)?;
        if let Some(reservation) = self.reservations.get_mut(&r.reservation) {
            reservation.lease_expires_unix_ms = reservation
                .lease_expires_unix_ms
                .max(r.lease_expires_unix_ms);
        }
        Ok(Outcome::Reserved(self.reservation_view(r.reservation)))
    }

    pub(super) fn expire_leases(&mut self, now_unix_ms: u64) -> Result<Outcome, FatError> {
        let expired: Vec<ReservationId> = self
            .reservations
            .iter()
            .filter(|(_, r)| {
                r.state == ReservationState::Open && r.lease_expires_unix_ms <= now_unix_ms
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            self.close(
                *id,
                ReservationState::Expired {
                    closed_unix_ms: now_unix_ms,
                },
            );
        }
        self.forget_old_closed(now_unix_ms);
        let mut released = expired;
        released.extend(self.expire_repairs(now_unix_ms));
        Ok(Outcome::LeasesExpired { released })
    }

    /// Whether `ExpireLeases { now }` would change anything.
    pub fn has_expired_leases(&self, now_unix_ms: u64) -> bool {
        self.has_expired_repairs(now_unix_ms)
            || self
                .reservations
                .values()
                .any(|r| match r.closed_unix_ms() {
                    None => r.lease_expires_unix_ms <= now_unix_ms,
                    Some(closed) => closed.saturating_add(CLOSED_RETENTION_MS) <= now_unix_ms,
                })
    }

    fn forget_old_closed(&mut self, now_unix_ms: u64) {
        let old: Vec<ReservationId> = self
            .reservations
            .iter()
            .filter(|(_, r)| {
                r.closed_unix_ms()
                    .is_some_and(|closed| closed.saturating_add(CLOSED_RETENTION_MS) <= now_unix_ms)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in old {
            if let Some(r) = self.reservations.remove(&id) {
                self.requests.remove(&(r.tenant, r.request));
            }
        }
    }

    /// Gives back every byte an open reservation holds and marks it closed
    /// (a closed one, committed late after its lease ran out, holds nothing
    /// to give back).
    pub(super) fn close(&mut self, id: ReservationId, state: ReservationState) {
        let Some(reservation) = self.reservations.get_mut(&id) else {
            return;
        };
        if reservation.state != ReservationState::Open {
            reservation.state = state;
            return;
        }
        for hold in &reservation.holds {
            if let Some(vendor) = self.vendors.get_mut(&hold.vendor) {
                debug_assert!(vendor.reserved >= hold.bytes);
                vendor.reserved = vendor.reserved.saturating_sub(hold.bytes);
            }
        }
        reservation.state = state;
    }

    /// The tenant's reservation; another tenant's looks like a missing one.
    pub(super) fn tenant_reservation(
        &self,
        tenant: &TenantId,
        id: ReservationId,
    ) -> Result<&Reservation, FatError> {
        self.reservations
            .get(&id)
            .filter(|r| &r.tenant == tenant)
            .ok_or_else(|| FatError::NotFound(format!("tenant {tenant} has no reservation {id}")))
    }

    /// The provisional FAT of a reservation, with current vendor addresses.
    pub(super) fn reservation_view(&self, id: ReservationId) -> ReservationView {
        let reservation = &self.reservations[&id];
        let candidates = reservation
            .holds
            .iter()
            .map(|hold| Candidate {
                vendor: self.vendor_ref(&hold.vendor),
                reserved_bytes: hold.bytes,
                region: self
                    .vendors
                    .get(&hold.vendor)
                    .map(|v| v.region.clone())
                    .unwrap_or_default(),
                store_grant: Grant::default(),
                storage_price_micros_per_tib_month: self
                    .ledger
                    .prices_of(&hold.vendor)
                    .storage_micros_per_tib_month,
            })
            .collect();
        ReservationView {
            id,
            candidates,
            lease_expires_unix_ms: reservation.lease_expires_unix_ms,
        }
    }

    /// The reservation a tenant's earlier request made, if it is remembered.
    pub fn reservation_for_request(
        &self,
        tenant: &TenantId,
        request: &RequestId,
    ) -> Option<ReservationView> {
        self.requests
            .get(&(tenant.clone(), request.clone()))
            .map(|id| self.reservation_view(*id))
    }
}
