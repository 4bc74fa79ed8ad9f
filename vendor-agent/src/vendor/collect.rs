//! Garbage collection at the vendor: what it tells the coordinator group it
//! holds (digests of its local FAT by bucket, then the portions of the
//! buckets that differ), deleting a copy the group found unneeded, and the
//! pieces on its stores that no local FAT record names (written by an
//! upload that crashed before its record, or left by a deletion that could
//! not reach a store). The rhythm and the grace period are in
//! `crate::reconcile`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use offsite_proto::limits::{MAX_LISTED_PIECES, MAX_RECONCILE_HELD};
use offsite_proto::reconcile::{bucket_of, Digests, Held};
use offsite_proto::{PieceId, PortionId, ReservationId, TenantId};

use super::claim::ClaimKind;
use super::error::VendorError;
use super::Vendor;
use crate::store::StoreError;

/// Most pieces one sweep lists on one store (a store holding more is swept
/// in part, the rest at the next sweep).
const MAX_SWEPT_PIECES: usize = 10_000_000;

impl Vendor {
    /// Round one: the digest of every bucket of the local FAT.
    pub(crate) fn holding_digests(&self) -> Result<Digests, VendorError> {
        let mut digests = Digests::default();
        for record in self.fat.records() {
            let record = record?;
            digests.add(&record.tenant, &record.portion);
        }
        Ok(digests)
    }

    /// Round two: the whole holdings of as many of `buckets` (in order) as
    /// fit one request, and those buckets.
    pub(crate) fn holdings_in(
        &self,
        buckets: &[u32],
    ) -> Result<(Vec<u32>, Vec<Held>), VendorError> {
        let wanted: BTreeSet<u32> = buckets.iter().copied().collect();
        let mut by_bucket: BTreeMap<u32, Vec<Held>> = BTreeMap::new();
        for record in self.fat.records() {
            let record = record?;
            let bucket = bucket_of(&record.portion);
            if wanted.contains(&bucket) {
                by_bucket.entry(bucket).or_default().push(Held {
                    tenant: record.tenant,
                    portion: record.portion,
                    reservation: record.reservation,
                });
            }
        }
        let (mut covered, mut held) = (Vec::new(), Vec::new());
        for bucket in wanted {
            let members = by_bucket.remove(&bucket).unwrap_or_default();
            if held.len() + members.len() > MAX_RECONCILE_HELD {
                if covered.is_empty() {
                    // One bucket larger than a request: its first part goes,
                    // listed as not whole (so nothing of it counts missing).
                    tracing::warn!(
                        bucket,
                        portions = members.len(),
                        "a reconciliation bucket holds more portions than one request carries; \
                         reconciling part of it"
                    );
                    held.extend(members.into_iter().take(MAX_RECONCILE_HELD));
                }
                break;
            }
            covered.push(bucket);
            held.extend(members);
        }
        Ok((covered, held))
    }

    /// A portion the group places here that the local FAT does not hold,
    /// checked again now (one stored and committed while the round ran is
    /// held by now: its receipt came after its record), goes into the next
    /// capacity report as a bad copy, so it is made again elsewhere.
    /// `true` when it was found missing.
    pub(crate) fn report_missing(
        &self,
        tenant: &TenantId,
        portion: PortionId,
    ) -> Result<bool, VendorError> {
        if self.fat.get(tenant, &portion)?.is_some() {
            return Ok(false);
        }
        let reason = "not held: this vendor's local FAT has no record of it (found by \
                      reconciliation)";
        self.bad_copies().add(tenant, portion, reason.to_owned());
        Ok(true)
    }

    /// Deletes a copy the coordinator group found unneeded, if its record
    /// still names `reservation`: a copy stored again since (under another
    /// reservation) may be needed again and is left for the next round.
    /// `false` when nothing was deleted.
    pub(crate) async fn delete_garbage(
        self: &Arc<Self>,
        tenant: &TenantId,
        portion: &PortionId,
        reservation: Option<ReservationId>,
        wait: Duration,
    ) -> Result<bool, VendorError> {
        let _claim = self.claim(tenant, portion, ClaimKind::Other, wait).await?;
        match self.fat.get(tenant, portion)? {
            Some(record) if record.reservation == reservation => {
                self.delete_held(record).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Pieces on the stores that no local FAT record names and no upload is
    /// writing: each store is listed first, then the records and the
    /// uploads are read, so a piece listed is either named by then or
    /// garbage.
    pub(crate) async fn stray_pieces(&self) -> Vec<(u32, PieceId)> {
        let mut listed: Vec<(u32, PieceId)> = Vec::new();
        for (index, store) in self.stores.iter().enumerate() {
            let Ok(index) = u32::try_from(index) else {
                break;
            };
            let mut after: Option<PieceId> = None;
            let mut count = 0usize;
            loop {
                let page = match store.list(after.as_ref(), MAX_LISTED_PIECES).await {
                    Ok(page) => page,
                    Err(err) => {
                        tracing::warn!(store = store.name(), %err, "cannot list a store; its stray pieces wait for the next sweep");
                        break;
                    }
                };
                let full = page.len() >= MAX_LISTED_PIECES;
                after = page.last().cloned();
                count += page.len();
                listed.extend(page.into_iter().map(|id| (index, id)));
                if !full || count >= MAX_SWEPT_PIECES {
                    break;
                }
            }
        }
        let writing = self.writing.snapshot();
        let mut named: HashSet<(u32, PieceId)> = HashSet::new();
        for record in self.fat.records() {
            match record {
                Ok(record) => named.extend(record.pieces.into_iter().map(|p| (p.store, p.id))),
                Err(err) => {
                    // Without every record, a named piece could look stray.
                    tracing::warn!(%err, "cannot read the local FAT; no stray pieces this sweep");
                    return Vec::new();
                }
            }
        }
        listed
            .into_iter()
            .filter(|piece| !named.contains(piece) && !writing.contains(piece))
            .collect()
    }

    /// Deletes a stray piece if it is still stray (no record was written
    /// for it meanwhile); `false` when it was kept or already gone.
    pub(crate) async fn delete_stray(
        &self,
        store: u32,
        piece: &PieceId,
    ) -> Result<bool, StoreError> {
        if self.writing.snapshot().contains(&(store, piece.clone())) {
            return Ok(false);
        }
        let Some(target) = self.stores.get(store as usize) else {
            return Ok(false);
        };
        target.delete(piece).await
    }
}
