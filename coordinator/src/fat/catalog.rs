//! The final FAT and the snapshot records: which vendors hold each committed
//! portion of a tenant, and the snapshots that need them. Every lookup is by
//! tenant, so a tenant never sees another tenant's portions or snapshots.

use std::collections::{BTreeMap, BTreeSet};

use offsite_proto::limits::{MAX_PORTIONS_PER_CALL, MAX_PORTION_BYTES};
use offsite_proto::signing::{verify_receipt, ReceiptRule};
use offsite_proto::{
    Hash, PortionId, PortionLocation, PortionPlacement, Receipt, ReservationId, SnapshotId,
    SnapshotRecord, TenantId, VendorId,
};
use serde::{Deserialize, Serialize};

use super::command::{Commit, Forget};
use super::reservations::{Reservation, ReservationState};
use super::vendors::VendorRecord;
use super::{Fat, FatError, Outcome};

/// A committed portion and the vendors that hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PortionRecord {
    pub hash: Hash,
    pub size: u64,
    pub vendors: Vec<VendorId>,
    pub reservation: ReservationId,
    pub committed_unix_ms: u64,
}

/// Bytes each vendor takes on in a commit.
type Charges = BTreeMap<VendorId, u64>;

/// What a checked commit does.
pub(super) enum CommitPlan {
    /// The reservation was committed by this request before: its answer.
    Repeated(Outcome),
    /// A new commit: the bytes each vendor takes on.
    Record(Charges),
}

/// The receipts of one portion of a commit: the vendors' own, for this
/// tenant, portion and reservation, each from a candidate, once.
struct CommitReceipts<'a> {
    id: ReservationId,
    reservation: &'a Reservation,
    vendors: &'a BTreeMap<VendorId, VendorRecord>,
    tenant: &'a TenantId,
    rule: ReceiptRule,
}

fn check_receipts(
    commit: &CommitReceipts<'_>,
    p: &PortionPlacement,
    charges: &mut Charges,
) -> Result<(), FatError> {
    let (reservation, tenant) = (commit.reservation, commit.tenant);
    if p.receipts.is_empty() {
        return Err(FatError::invalid(format!(
            "portion {} has no receipt; commit a portion with the receipts of the vendors \
             that stored it",
            p.portion
        )));
    }
    let mut seen = BTreeSet::new();
    for r in &p.receipts {
        if &r.tenant != tenant {
            return Err(FatError::Forbidden(format!(
                "the receipt of vendor {} for portion {} is for tenant {}, not {tenant}; \
                 a tenant commits only its own portions",
                r.vendor, p.portion, r.tenant
            )));
        }
        if r.portion != p.portion || r.hash != p.hash || r.size != p.size {
            return Err(FatError::invalid(format!(
                "the receipt of vendor {} does not match portion {} (portion, hash or size \
                 differ); send the receipts the vendors returned for this portion",
                r.vendor, p.portion
            )));
        }
        if !seen.insert(&r.vendor) {
            return Err(FatError::invalid(format!(
                "portion {} has two receipts from vendor {}",
                p.portion, r.vendor
            )));
        }
        if reservation.hold_of(&r.vendor).is_none() {
            return Err(FatError::invalid(format!(
                "vendor {} is not a candidate of this reservation; store portion {} only on \
                 the reservation's candidates",
                r.vendor, p.portion
            )));
        }
        check_receipt_signature(commit.vendors, r, &commit.id, commit.rule)?;
        let charge = charges.entry(r.vendor.clone()).or_default();
        *charge = charge.saturating_add(p.size);
    }
    Ok(())
}

/// The receipt carries its vendor's signature, made with the identity key
/// the vendor registered, for the reservation or repair `answers`
/// (deterministic, so it is checked inside `apply`; `rule` says whether a
/// receipt of before reservations were signed is taken, see
/// [`ReceiptRule`]).
pub(super) fn check_receipt_signature(
    vendors: &BTreeMap<VendorId, VendorRecord>,
    r: &Receipt,
    answers: &ReservationId,
    rule: ReceiptRule,
) -> Result<(), FatError> {
    if r.signature.is_empty() {
        return Err(FatError::Forbidden(format!(
            "the receipt of vendor {} for portion {} is not signed; send the receipts \
             exactly as the vendors returned them",
            r.vendor, r.portion
        )));
    }
    let key = vendors
        .get(&r.vendor)
        .map(|v| v.identity_key.as_slice())
        .unwrap_or_default();
    verify_receipt(r, answers, key, rule).map_err(|e| {
        FatError::Forbidden(format!(
            "the receipt of vendor {} for portion {} does not answer {answers}: its \
             signature does not verify under the identity key vendor {} registered for \
             this reservation (forged, replayed from another one, or signed by a vendor \
             older than the coordinators: {e}); send the receipts the vendors returned \
             for this reservation, and store portions of reservations opened before an \
             upgrade again",
            r.vendor, r.portion, r.vendor
        ))
    })
}

impl Fat {
    fn check_placements(
        &self,
        reservation: &Reservation,
        c: &Commit,
        rule: ReceiptRule,
    ) -> Result<Charges, FatError> {
        if c.portions.len() > MAX_PORTIONS_PER_CALL {
            return Err(FatError::invalid(format!(
                "{} portions in one commit, more than {MAX_PORTIONS_PER_CALL}; split the commit",
                c.portions.len()
            )));
        }
        let held = self.portions.get(&c.tenant);
        let mut seen = BTreeSet::new();
        let mut charges = Charges::new();
        for p in &c.portions {
            if !(1..=MAX_PORTION_BYTES).contains(&p.size) {
                return Err(FatError::invalid(format!(
                    "portion {} has {} bytes; a portion holds 1 to {MAX_PORTION_BYTES} bytes",
                    p.portion, p.size
                )));
            }
            if !seen.insert(p.portion) || held.is_some_and(|h| h.contains_key(&p.portion)) {
                return Err(FatError::Conflict(format!(
                    "portion {} is committed twice; commit each portion once",
                    p.portion
                )));
            }
            if self.pending_deletion(&c.tenant, p.portion) {
                return Err(FatError::Conflict(format!(
                    "portion {} was released and is being deleted; store the data as a new \
                     portion",
                    p.portion
                )));
            }
        }
        // Receipt signatures are checked only once every portion id is known
        // to be new and named once, so a list of repeats costs no signature.
        let receipts = CommitReceipts {
            id: c.reservation,
            reservation,
            vendors: &self.vendors,
            tenant: &c.tenant,
            rule,
        };
        for p in &c.portions {
            check_receipts(&receipts, p, &mut charges)?;
        }
        for (vendor, bytes) in &charges {
            let hold = reservation.hold_of(vendor).unwrap_or(0);
            if *bytes > hold {
                return Err(FatError::invalid(format!(
                    "vendor {vendor} got {bytes} bytes but the reservation holds only {hold} \
                     there; reserve more room for these portions"
                )));
            }
        }
        Ok(charges)
    }

    /// A late commit (its lease ran out) takes room no reservation holds:
    /// each vendor must still have it free.
    fn check_late_room(&self, id: ReservationId, charges: &Charges) -> Result<(), FatError> {
        for (vendor, bytes) in charges {
            let free = self.vendors.get(vendor).map_or(0, |v| v.free());
            if *bytes > free {
                return Err(FatError::Expired(format!(
                    "the lease of reservation {id} ran out and vendor {vendor} has {free} bytes \
                     free, less than the {bytes} bytes committed there; store these portions \
                     again under a new reservation (a longer lease_secs on the coordinators \
                     avoids this)"
                )));
            }
        }
        Ok(())
    }

    /// The snapshot is new and every portion it needs (manifest included) is
    /// the tenant's: committed before or in this commit.
    fn check_snapshot(&self, c: &Commit, s: &SnapshotRecord) -> Result<(), FatError> {
        if self
            .snapshots
            .get(&c.tenant)
            .is_some_and(|t| t.contains_key(&s.id))
        {
            return Err(FatError::Conflict(format!(
                "snapshot {} already exists; give a new snapshot a new id",
                s.id
            )));
        }
        let held = self.portions.get(&c.tenant);
        let new: BTreeMap<PortionId, u64> =
            c.portions.iter().map(|p| (p.portion, p.size)).collect();
        let size_of = |id: &PortionId| {
            new.get(id)
                .copied()
                .or_else(|| held.and_then(|h| h.get(id)).map(|p| p.size))
        };
        for id in s.portions.iter().chain([&s.manifest.portion]) {
            if size_of(id).is_none() {
                return Err(FatError::invalid(format!(
                    "snapshot {} needs portion {id}, which is not a committed portion of \
                     tenant {}; commit the portion first",
                    s.id, c.tenant
                )));
            }
        }
        let manifest_size = size_of(&s.manifest.portion).unwrap_or(0);
        let end = s.manifest.offset.checked_add(s.manifest.length);
        if s.manifest.length == 0 || end.is_none_or(|end| end > manifest_size) {
            return Err(FatError::invalid(format!(
                "the manifest of snapshot {} lies outside portion {} ({manifest_size} bytes)",
                s.id, s.manifest.portion
            )));
        }
        Ok(())
    }

    /// Checks a commit in full without changing anything: what a repeated
    /// commit answers, or the bytes each vendor takes on.
    pub(super) fn check_commit(
        &self,
        c: &Commit,
        rule: ReceiptRule,
    ) -> Result<CommitPlan, FatError> {
        let reservation = self.tenant_reservation(&c.tenant, c.reservation)?;
        // A lease that ran out took the reservation's hold away, not the
        // copies its grants stored: they are committed late while their
        // vendors still have the room.
        let late = match &reservation.state {
            ReservationState::Open => false,
            ReservationState::Expired { .. } => true,
            ReservationState::Committed {
                request,
                committed_bytes,
                ..
            } => return repeated_commit(c, request, *committed_bytes).map(CommitPlan::Repeated),
            ReservationState::Released { .. } => {
                return Err(FatError::Expired(format!(
                    "reservation {} was released",
                    c.reservation
                )))
            }
            ReservationState::Collected { .. } => {
                return Err(FatError::Expired(super::reservations::collected(
                    c.reservation,
                )))
            }
        };
        let charges = self.check_placements(reservation, c, rule)?;
        if late {
            self.check_late_room(c.reservation, &charges)?;
        }
        if let Some(snapshot) = &c.snapshot {
            self.check_snapshot(c, snapshot)?;
        }
        Ok(CommitPlan::Record(charges))
    }

    pub(super) fn commit(&mut self, c: Commit) -> Result<Outcome, FatError> {
        match self.check_commit(&c, ReceiptRule::AsLogged)? {
            CommitPlan::Repeated(outcome) => Ok(outcome),
            CommitPlan::Record(charges) => Ok(self.record_commit(c, charges)),
        }
    }

    /// Applies a fully checked commit.
    fn record_commit(&mut self, c: Commit, charges: Charges) -> Outcome {
        self.ledger.tick(c.now_unix_ms);
        let committed_bytes = charges.values().fold(0u64, |sum, b| sum.saturating_add(*b));
        for (vendor, bytes) in &charges {
            if let Some(v) = self.vendors.get_mut(vendor) {
                v.used = v.used.saturating_add(*bytes);
            }
        }
        if !c.portions.is_empty() {
            let held = self.portions.entry(c.tenant.clone()).or_default();
            for p in c.portions {
                for r in &p.receipts {
                    self.ledger
                        .add_copy(r.vendor.clone(), c.tenant.clone(), p.portion, p.size);
                }
                held.insert(
                    p.portion,
                    PortionRecord {
                        hash: p.hash,
                        size: p.size,
                        vendors: p.receipts.into_iter().map(|r| r.vendor).collect(),
                        reservation: c.reservation,
                        committed_unix_ms: c.now_unix_ms,
                    },
                );
            }
        }
        if let Some(snapshot) = c.snapshot {
            self.snapshots
                .entry(c.tenant.clone())
                .or_default()
                .insert(snapshot.id, snapshot);
        }
        self.close(
            c.reservation,
            ReservationState::Committed {
                request: c.request,
                committed_bytes,
                closed_unix_ms: c.now_unix_ms,
            },
        );
        Outcome::Committed { committed_bytes }
    }

    pub(super) fn check_forget(&self, f: &Forget) -> Result<(), FatError> {
        match self.snapshots.get(&f.tenant) {
            Some(s) if s.contains_key(&f.snapshot) => Ok(()),
            _ => Err(FatError::NotFound(format!(
                "tenant {} has no snapshot {}",
                f.tenant, f.snapshot
            ))),
        }
    }

    pub(super) fn forget(&mut self, f: Forget) -> Result<Outcome, FatError> {
        self.check_forget(&f)?;
        let Some(snapshots) = self.snapshots.get_mut(&f.tenant) else {
            return Ok(Outcome::Forgotten);
        };
        snapshots.remove(&f.snapshot);
        if snapshots.is_empty() {
            self.snapshots.remove(&f.tenant);
        }
        Ok(Outcome::Forgotten)
    }

    /// The tenant's snapshots, oldest first.
    pub fn snapshots(&self, tenant: &TenantId) -> Vec<SnapshotRecord> {
        let mut list: Vec<SnapshotRecord> = self
            .snapshots
            .get(tenant)
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default();
        list.sort_by_key(|s| (s.time_unix_ms, s.id));
        list
    }

    /// One snapshot of the tenant with the locations of every portion it needs
    /// (the manifest's portion included).
    pub fn snapshot(
        &self,
        tenant: &TenantId,
        id: SnapshotId,
    ) -> Result<(SnapshotRecord, Vec<PortionLocation>), FatError> {
        let record = self
            .snapshots
            .get(tenant)
            .and_then(|s| s.get(&id))
            .ok_or_else(|| FatError::NotFound(format!("tenant {tenant} has no snapshot {id}")))?;
        let mut ids: Vec<PortionId> = Vec::with_capacity(record.portions.len() + 1);
        let mut seen = BTreeSet::new();
        for p in record.portions.iter().chain([&record.manifest.portion]) {
            if seen.insert(*p) {
                ids.push(*p);
            }
        }
        Ok((record.clone(), self.locate(tenant, &ids)))
    }

    /// Where the tenant's portions live; ids the tenant does not hold are
    /// left out, and so are copies known bad (being repaired).
    pub fn locate(&self, tenant: &TenantId, ids: &[PortionId]) -> Vec<PortionLocation> {
        let Some(held) = self.portions.get(tenant) else {
            return Vec::new();
        };
        ids.iter()
            .filter_map(|id| held.get(id).map(|p| (id, p)))
            .map(|(id, p)| PortionLocation {
                portion: *id,
                hash: p.hash,
                size: p.size,
                vendors: p
                    .vendors
                    .iter()
                    .filter(|v| !self.is_bad_copy(tenant, *id, v))
                    .map(|v| self.vendor_ref(v))
                    .collect(),
                fetch_grants: Vec::new(),
            })
            .collect()
    }
}

fn repeated_commit(
    c: &Commit,
    first_request: &offsite_proto::RequestId,
    committed_bytes: u64,
) -> Result<Outcome, FatError> {
    if &c.request == first_request {
        Ok(Outcome::Committed { committed_bytes })
    } else {
        Err(FatError::Conflict(format!(
            "reservation {} was already committed by request {first_request}; a reservation \
             is committed once, so ask for a new reservation for more portions",
            c.reservation
        )))
    }
}
