//! The FAT: the coordinator group's replicated state (vendors, capacity,
//! reservations, the final FAT of every portion, snapshot records) as an
//! I/O-free, deterministic state machine.
//!
//! `Fat::apply` takes a [`Command`] and returns an [`Outcome`] or a
//! [`FatError`]. Time and choices travel inside the command; `apply` never
//! reads a clock or draws a random number, so every replica that applies the
//! same commands holds the same FAT. A refused command changes nothing: each
//! command is checked in full before anything is mutated.
//!
//! Invariant after every command, for every vendor: `used + reserved <= offered`.

mod catalog;
mod command;
mod error;
mod reservations;
mod vendors;

#[cfg(test)]
mod liveness_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use offsite_proto::{
    PortionId, RequestId, ReservationId, SnapshotId, SnapshotRecord, TenantId, VendorId,
};
use serde::{Deserialize, Serialize};

pub use command::{
    Command, Commit, Forget, Hold, LivenessChange, Outcome, RegisterVendor, Release,
    ReportCapacity, ReservationView, Reserve, UpdateLiveness,
};
pub use error::FatError;
pub use reservations::{
    check_reserve_request, CLOSED_RETENTION_MS, MAX_CANDIDATES, MAX_RESERVE_BYTES,
};
pub use vendors::{Liveness, LivenessPolicy, VendorRoom, VendorStatus, MAX_REGION_LEN};

use catalog::PortionRecord;
use reservations::{Reservation, ReservationState};
use vendors::VendorRecord;

/// The whole replicated state. Maps are ordered so that serializing the same
/// state always gives the same bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fat {
    vendors: BTreeMap<VendorId, VendorRecord>,
    reservations: BTreeMap<ReservationId, Reservation>,
    /// Which reservation a tenant's reserve request made (idempotency).
    requests: BTreeMap<(TenantId, RequestId), ReservationId>,
    portions: BTreeMap<TenantId, BTreeMap<PortionId, PortionRecord>>,
    snapshots: BTreeMap<TenantId, BTreeMap<SnapshotId, SnapshotRecord>>,
}

/// Counts for the marketplace status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FatStatus {
    pub vendors: Vec<VendorStatus>,
    pub open_reservations: u64,
    pub portions: u64,
    pub snapshots: u64,
}

impl Fat {
    /// Applies one command. On error nothing changed.
    pub fn apply(&mut self, command: Command) -> Result<Outcome, FatError> {
        match command {
            Command::RegisterVendor(c) => self.register_vendor(c),
            Command::ReportCapacity(c) => self.report_capacity(c),
            Command::Reserve(c) => self.reserve(c),
            Command::Commit(c) => self.commit(c),
            Command::Release(c) => self.release(c),
            Command::ExpireLeases { now_unix_ms } => self.expire_leases(now_unix_ms),
            Command::Forget(c) => self.forget(c),
            Command::UpdateLiveness(c) => self.update_liveness(c),
        }
    }

    /// The marketplace: every vendor with its stored liveness and the FAT's
    /// sizes.
    pub fn status(&self) -> FatStatus {
        FatStatus {
            vendors: self.vendor_statuses(),
            open_reservations: self
                .reservations
                .values()
                .filter(|r| r.state == ReservationState::Open)
                .count() as u64,
            portions: self.portions.values().map(|p| p.len() as u64).sum(),
            snapshots: self.snapshots.values().map(|s| s.len() as u64).sum(),
        }
    }
}
