//! Vendors in the FAT: what each offers, holds under reservation (`reserved`),
//! holds committed (`used`) and reports storing, and its liveness. Liveness is
//! stored: a report (or registration) makes a vendor up; the leader proposes
//! `UpdateLiveness` when a vendor's report age crosses the suspect or down
//! threshold ([`Fat::liveness_changes`] says which), so every replica agrees.

use offsite_proto::{VendorId, VendorRef};
use serde::{Deserialize, Serialize};

use super::command::{LivenessChange, RegisterVendor, ReportCapacity, UpdateLiveness};
use super::{Fat, FatError, Outcome};

/// Longest region name.
pub const MAX_REGION_LEN: usize = 64;

/// Report ages that make a vendor suspect, then down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessPolicy {
    pub suspect_after_ms: u64,
    pub down_after_ms: u64,
}

/// A vendor's liveness: up (reports arrive), suspect (none for
/// `suspect_after`), down (none for `down_after`). Only up vendors get new
/// reservations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Liveness {
    Up,
    Suspect,
    Down,
}

impl Liveness {
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Up => "up",
            Liveness::Suspect => "suspect",
            Liveness::Down => "down",
        }
    }
}

/// One vendor as the FAT records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VendorRecord {
    pub address: String,
    pub region: String,
    pub network_bytes_per_sec: u64,
    pub identity_key: Vec<u8>,
    /// What the vendor last said it offers; `offered()` never goes below what
    /// it holds.
    pub reported_offered: u64,
    pub used: u64,
    pub reserved: u64,
    pub stored: u64,
    pub last_report_unix_ms: u64,
    /// Set up by a report, suspect or down by the leader's `UpdateLiveness`.
    pub liveness: Liveness,
    /// When `liveness` last changed (the time inside the command).
    pub liveness_since_unix_ms: u64,
    /// Since when the vendor has been offering less than it holds (a store
    /// shrank or went away); `None` while it offers enough.
    pub short_since_unix_ms: Option<u64>,
}

impl VendorRecord {
    /// What the vendor offers, never below what it already holds.
    pub fn offered(&self) -> u64 {
        self.reported_offered.max(self.held())
    }

    /// Bytes committed or under reservation.
    pub fn held(&self) -> u64 {
        self.used.saturating_add(self.reserved)
    }

    /// Notes whether the vendor now offers less than it holds.
    fn note_offer(&mut self, offered: u64, now_unix_ms: u64) {
        self.reported_offered = offered;
        self.short_since_unix_ms = match offered < self.used {
            true => self.short_since_unix_ms.or(Some(now_unix_ms)),
            false => None,
        };
    }

    fn mark_up(&mut self, now_unix_ms: u64) {
        if self.liveness != Liveness::Up {
            self.liveness = Liveness::Up;
            self.liveness_since_unix_ms = now_unix_ms;
        }
    }

    /// Room for new reservations.
    pub fn free(&self) -> u64 {
        self.reported_offered.saturating_sub(self.held())
    }

    /// The liveness the report age calls for at `now_unix_ms`; the leader
    /// proposes it when it differs from the stored one.
    pub fn liveness_due(&self, now_unix_ms: u64, policy: &LivenessPolicy) -> Liveness {
        let age = now_unix_ms.saturating_sub(self.last_report_unix_ms);
        if age <= policy.suspect_after_ms {
            Liveness::Up
        } else if age <= policy.down_after_ms {
            Liveness::Suspect
        } else {
            Liveness::Down
        }
    }
}

/// A vendor's line in the marketplace status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VendorStatus {
    pub vendor: VendorRef,
    pub region: String,
    pub liveness: Liveness,
    /// The reported offer, never below what the vendor holds.
    pub offered_bytes: u64,
    /// What the vendor last said it offers.
    pub reported_offered_bytes: u64,
    pub reserved_bytes: u64,
    pub used_bytes: u64,
    pub stored_bytes: u64,
    pub last_report_unix_ms: u64,
    pub liveness_since_unix_ms: u64,
    pub prices: super::Prices,
    pub reputation: super::Reputation,
    /// Its copies known bad now, and those it ever reported bad itself.
    pub bad_copies: (u64, u64),
    /// Its exit or burst relief, if it asked for one.
    pub departure: super::DepartureStatus,
}

/// An up vendor with free room, as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VendorRoom {
    pub vendor: VendorId,
    pub region: String,
    pub free_bytes: u64,
    /// What it charges for new placements.
    pub prices: super::Prices,
}

pub(super) fn check_region(region: &str) -> Result<(), FatError> {
    let well_formed = !region.is_empty()
        && region.len() <= MAX_REGION_LEN
        && region
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if well_formed {
        Ok(())
    } else {
        Err(FatError::invalid(format!(
            "region {region:?} is not 1 to {MAX_REGION_LEN} letters, digits, '.', '_' or '-'; \
             fix the vendor's region"
        )))
    }
}

/// A vendor registers the ed25519 public key its receipts are signed with.
pub(super) fn check_identity_key(vendor: &VendorId, key: &[u8]) -> Result<(), FatError> {
    if key.is_empty() {
        return Err(FatError::invalid(format!(
            "vendor {vendor} registered no identity key; its receipts could not be checked: \
             upgrade the vendor agent, which sends the key from its data_dir/identity.key"
        )));
    }
    offsite_proto::signing::check_public_key(key, "the vendor's identity key").map_err(|e| {
        FatError::invalid(format!(
            "vendor {vendor}: {e}; the identity key is the public half of data_dir/identity.key"
        ))
    })
}

impl Fat {
    pub(super) fn register_vendor(&mut self, r: RegisterVendor) -> Result<Outcome, FatError> {
        check_region(&r.region)?;
        check_identity_key(&r.vendor.id, &r.identity_key)?;
        self.check_not_exited(&r.vendor.id)?;
        let record = self
            .vendors
            .entry(r.vendor.id)
            .or_insert_with(|| VendorRecord {
                address: String::new(),
                region: String::new(),
                network_bytes_per_sec: 0,
                identity_key: Vec::new(),
                reported_offered: 0,
                used: 0,
                reserved: 0,
                stored: 0,
                last_report_unix_ms: 0,
                liveness: Liveness::Up,
                liveness_since_unix_ms: r.now_unix_ms,
                short_since_unix_ms: None,
            });
        record.address = r.vendor.address;
        record.region = r.region;
        record.network_bytes_per_sec = r.network_bytes_per_sec;
        record.identity_key = r.identity_key;
        record.note_offer(r.offered_bytes, r.now_unix_ms);
        record.last_report_unix_ms = record.last_report_unix_ms.max(r.now_unix_ms);
        record.mark_up(r.now_unix_ms);
        Ok(Outcome::VendorRegistered)
    }

    pub(super) fn check_reporting_vendor(&self, vendor: &VendorId) -> Result<(), FatError> {
        if self.vendors.contains_key(vendor) {
            return Ok(());
        }
        Err(FatError::NotFound(format!(
            "vendor {vendor} is not registered; register it before reporting capacity"
        )))
    }

    pub(super) fn report_capacity(&mut self, r: ReportCapacity) -> Result<Outcome, FatError> {
        self.check_reporting_vendor(&r.vendor)?;
        let Some(record) = self.vendors.get_mut(&r.vendor) else {
            return Ok(Outcome::CapacityReported { delete: Vec::new() });
        };
        record.note_offer(r.offered_bytes, r.now_unix_ms);
        record.stored = r.stored_bytes;
        record.last_report_unix_ms = record.last_report_unix_ms.max(r.now_unix_ms);
        record.mark_up(r.now_unix_ms);
        // Deletions stop their copies' metering now; the copies a repair
        // places right after this report start from it.
        self.ledger.tick(r.now_unix_ms);
        self.acknowledge_deletions(&r.vendor, &r.deleted);
        Ok(Outcome::CapacityReported {
            delete: self.deletions_for(&r.vendor),
        })
    }

    /// Applies the leader's liveness changes. A change is skipped when the
    /// vendor is gone, or reported after the leader looked (its report time
    /// differs from `seen_report_unix_ms`): that report made it up, and the
    /// leader judges it again at its next sweep.
    pub(super) fn update_liveness(&mut self, u: UpdateLiveness) -> Result<Outcome, FatError> {
        let mut changed = Vec::new();
        for change in u.changes {
            let Some(record) = self.vendors.get_mut(&change.vendor) else {
                continue;
            };
            if record.last_report_unix_ms != change.seen_report_unix_ms
                || record.liveness == change.liveness
            {
                continue;
            }
            record.liveness = change.liveness;
            record.liveness_since_unix_ms = u.now_unix_ms;
            changed.push((change.vendor, change.liveness));
        }
        Ok(Outcome::LivenessUpdated { changed })
    }

    /// The liveness changes the report ages call for at `now_unix_ms`: what
    /// the leader proposes in `UpdateLiveness`. Never makes a vendor up; only
    /// a report does.
    pub fn liveness_changes(
        &self,
        now_unix_ms: u64,
        policy: &LivenessPolicy,
    ) -> Vec<LivenessChange> {
        self.vendors
            .iter()
            .filter_map(|(id, v)| {
                let due = v.liveness_due(now_unix_ms, policy);
                (due != Liveness::Up && due != v.liveness).then(|| LivenessChange {
                    vendor: id.clone(),
                    liveness: due,
                    seen_report_unix_ms: v.last_report_unix_ms,
                })
            })
            .collect()
    }

    /// Every vendor with its stored liveness.
    pub fn vendor_statuses(&self) -> Vec<VendorStatus> {
        self.vendors
            .iter()
            .map(|(id, v)| VendorStatus {
                vendor: VendorRef {
                    id: id.clone(),
                    address: v.address.clone(),
                },
                region: v.region.clone(),
                liveness: v.liveness,
                offered_bytes: v.offered(),
                reported_offered_bytes: v.reported_offered,
                reserved_bytes: v.reserved,
                used_bytes: v.used,
                stored_bytes: v.stored,
                last_report_unix_ms: v.last_report_unix_ms,
                liveness_since_unix_ms: v.liveness_since_unix_ms,
                prices: self.ledger.prices_of(id),
                reputation: self.reputation(id),
                bad_copies: self.bad_copy_counts(id),
                departure: self.departure_status(id),
            })
            .collect()
    }

    /// One vendor's line of the status.
    pub fn vendor_status(&self, id: &VendorId) -> Option<VendorStatus> {
        self.vendor_statuses()
            .into_iter()
            .find(|v| &v.vendor.id == id)
    }

    /// Up vendors with free room: what placement chooses from.
    pub fn vendors_with_room(&self) -> Vec<VendorRoom> {
        self.vendors
            .iter()
            .filter(|(id, v)| v.liveness == Liveness::Up && v.free() > 0 && self.takes_new_data(id))
            .map(|(id, v)| VendorRoom {
                vendor: id.clone(),
                region: v.region.clone(),
                free_bytes: v.free(),
                prices: self.ledger.prices_of(id),
            })
            .collect()
    }

    /// The identity key the vendor registered (its receipts' key).
    pub fn vendor_identity_key(&self, id: &VendorId) -> Option<Vec<u8>> {
        self.vendors.get(id).map(|v| v.identity_key.clone())
    }

    pub(super) fn vendor_ref(&self, id: &VendorId) -> VendorRef {
        VendorRef {
            id: id.clone(),
            address: self
                .vendors
                .get(id)
                .map(|v| v.address.clone())
                .unwrap_or_default(),
        }
    }
}
