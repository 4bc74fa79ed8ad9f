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
//! A vendor's `used` counts its committed portions and the released ones it
//! has not yet acknowledged deleting.

mod audits;
mod bad_copies;
mod catalog;
mod check;
mod command;
mod deletions;
mod departures;
mod error;
mod gc;
mod grant_keys;
mod ledger;
mod migrate;
mod repairs;
mod reservations;
mod rewrite;
mod tenant_keys;
mod vendors;

#[cfg(test)]
mod bad_copy_tests;
#[cfg(test)]
mod deletion_tests;
#[cfg(test)]
mod departure_tests;
#[cfg(test)]
mod extreme_proptests;
#[cfg(test)]
mod gc_tests;
#[cfg(test)]
mod ledger_tests;
#[cfg(test)]
mod liveness_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod prune_proptests;
#[cfg(test)]
mod repair_proptests;
#[cfg(test)]
mod repair_tests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use offsite_proto::{
    PortionId, RequestId, ReservationId, SnapshotId, SnapshotRecord, TenantId, VendorId,
};
use serde::{Deserialize, Serialize};

pub use audits::{
    Audit, AuditCandidate, AuditResult, RecordAudits, Reputation, Standing, AUDIT_WINDOW,
    DISQUALIFY_FAILURES, MAX_AUDITS_PER_COMMAND, SUSPEND_FAILURES,
};
pub use bad_copies::{BadCopy, BadCopyMark, CopyState, FoundBy, MarkBadCopies};
pub use command::{
    BookEgress, ClosePeriod, CollectReservations, Command, Commit, Forget, Hold, InstallGrantKey,
    LivenessChange, Outcome, RegisterVendor, Release, ReleasePortions, RenewLease, ReportCapacity,
    ReservationView, Reserve, RewriteSnapshots, ServedFetch, SetMarketFee, SetTenantLimits,
    SetVendorPrices, StoreTenantKey, UpdateLiveness,
};
pub use departures::{Departure, DepartureStatus, ExitProgress, ReliefProgress, Settled};
pub use error::FatError;
pub use gc::{Reconciled, MAX_COLLECT_PER_COMMAND};
pub use grant_keys::{GrantKeyInfo, GrantSecret, KEPT_GRANT_KEYS};
pub use ledger::{
    Line, LineKind, Prices, Statement, TenantLimits, DEFAULT_MAX_OPEN_RESERVATIONS,
    EGRESS_REPORT_WINDOW_MS, MONTH_MS, PPM, TIB,
};
pub use migrate::decode_snapshot;
pub use repairs::{
    CopyOrder, FinishRepairs, PlanRepairs, PlannedRepair, Repair, RepairPolicy, MAX_OPEN_REPAIRS,
    REPAIR_LEASE_MS,
};
pub use reservations::{
    check_reserve_request, CLOSED_RETENTION_MS, MAX_CANDIDATES, MAX_RESERVE_BYTES,
};
pub use vendors::{Liveness, LivenessPolicy, VendorRoom, VendorStatus, MAX_REGION_LEN};

use catalog::PortionRecord;
use deletions::DeletionQueue;
use grant_keys::GrantKeys;
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
    /// Released portions each vendor still has to delete.
    deletions: BTreeMap<VendorId, DeletionQueue>,
    /// The group's keys that sign grants (the newest signs).
    grant_keys: GrantKeys,
    /// Each tenant's key file (its data key wrapped by its passphrase).
    tenant_keys: BTreeMap<TenantId, Vec<u8>>,
    /// Copies being made to replace leaving ones, by repair id.
    repairs: BTreeMap<ReservationId, Repair>,
    /// Failed or expired repairs of a portion since its last placed copy; the
    /// next plan rotates its source and target by this count.
    repair_failures: BTreeMap<(TenantId, PortionId), u32>,
    /// Prices, limits and the ledger (format version 7).
    ledger: ledger::Ledger,
    /// Each audited vendor's audit and uptime record (format version 8).
    reputation: BTreeMap<VendorId, audits::Reputation>,
    /// Copies found bad, until a repair replaces them (format version 9).
    bad_copies: bad_copies::BadCopies,
    /// Vendors' exits and burst reliefs (format version 9).
    departures: departures::Departures,
}

/// Counts for the marketplace status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FatStatus {
    pub vendors: Vec<VendorStatus>,
    pub open_reservations: u64,
    pub portions: u64,
    pub snapshots: u64,
    /// Deletions vendors have not acknowledged yet.
    pub pending_deletions: u64,
    /// Copies being made to replace copies on leaving vendors.
    pub open_repairs: u64,
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
            Command::ReleasePortions(c) => self.release_portions(c),
            Command::RewriteSnapshots(c) => self.rewrite_snapshots(c),
            Command::InstallGrantKey(c) => self.install_grant_key(c),
            Command::StoreTenantKey(c) => self.store_tenant_key(c),
            Command::PlanRepairs(c) => self.plan_repairs(c),
            Command::FinishRepairs(c) => self.finish_repairs(c),
            Command::RenewLease(c) => self.renew_lease(c),
            Command::SetVendorPrices(c) => self.set_vendor_prices(c),
            Command::SetMarketFee(c) => self.set_market_fee(c),
            Command::SetTenantLimits(c) => self.set_tenant_limits(c),
            Command::ClosePeriod(c) => self.close_period(c),
            Command::BookEgress(c) => self.book_egress(c),
            Command::RecordAudits(c) => self.record_audits(c),
            Command::CollectReservations(c) => Ok(self.collect_reservations(c)),
            Command::MarkBadCopies(c) => self.mark_bad_copies(c),
            Command::Departure(c) => self.depart(c),
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
            pending_deletions: self.pending_deletions(),
            open_repairs: self.open_repairs(),
        }
    }
}
