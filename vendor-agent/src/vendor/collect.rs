//! Garbage collection at the vendor: what it tells the coordinator group it
//! holds (digests of its local FAT by bucket, then the portions of the
//! buckets that differ), deleting a copy the group found unneeded, and the
//! pieces on its stores that no local FAT record names (written by an
//! upload that crashed before its record, or left by a deletion that could
//! not reach a store). The rhythm and the grace period are in
//! `crate::reconcile`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use offsite_proto::limits::{MAX_LISTED_PIECES, MAX_RECONCILE_HELD};
use offsite_proto::reconcile::{bucket_of, Digests, Held, Holdings};
use offsite_proto::{PieceId, PortionId, ReservationId, TenantId};

use super::claim::ClaimKind;
use super::error::VendorError;
use super::{StoredPiece, Vendor};
use crate::store::StoreError;

/// Most pieces one sweep lists on one store (a store holding more is swept
/// in part, the rest at the next sweep).
const MAX_SWEPT_PIECES: usize = 10_000_000;
/// A store where more pieces than this, and more than
/// [`STRAY_SHARE_PERCENT`] of those listed, look stray is not swept: an
/// upload or a deletion that failed leaves a few, a store that moved to
/// another place in the config (or a directory listed twice) would make
/// them all look stray.
const STRAY_FLOOR: usize = 64;
const STRAY_SHARE_PERCENT: usize = 5;

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

    /// Round two: the whole holdings of as many of `buckets` as fit one
    /// request, taken in order from the one at `start` (wrapping, so a
    /// round that cannot send them all starts elsewhere next time).
    pub(crate) fn holdings_in(
        &self,
        buckets: &[u32],
        start: usize,
    ) -> Result<Holdings, VendorError> {
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
        let ordered: Vec<u32> = wanted.into_iter().collect();
        let first = start % ordered.len().max(1);
        let mut holdings = Holdings::default();
        for bucket in ordered[first..].iter().chain(&ordered[..first]) {
            let members = by_bucket.remove(bucket).unwrap_or_default();
            if holdings.held.len() + members.len() > MAX_RECONCILE_HELD {
                if holdings.buckets.is_empty() {
                    // One bucket larger than a request: its first part goes,
                    // named as partial (so nothing of it counts missing).
                    tracing::warn!(
                        bucket,
                        portions = members.len(),
                        "a reconciliation bucket holds more portions than one request carries; \
                         reconciling part of it"
                    );
                    holdings.partial.insert(*bucket);
                    holdings
                        .held
                        .extend(members.into_iter().take(MAX_RECONCILE_HELD));
                }
                break;
            }
            holdings.buckets.insert(*bucket);
            holdings.held.extend(members);
        }
        Ok(holdings)
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
    pub(crate) async fn stray_pieces(&self) -> Vec<StoredPiece> {
        let mut listed: Vec<StoredPiece> = Vec::new();
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
        let mut named: HashSet<StoredPiece> = HashSet::new();
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
        let mut listed_on: HashMap<u32, usize> = HashMap::new();
        for (store, _) in &listed {
            *listed_on.entry(*store).or_default() += 1;
        }
        let strays: Vec<StoredPiece> = listed
            .into_iter()
            .filter(|piece| !named.contains(piece) && !writing.contains(piece))
            .collect();
        let mut stray_on: HashMap<u32, usize> = HashMap::new();
        for (store, _) in &strays {
            *stray_on.entry(*store).or_default() += 1;
        }
        let unsafe_stores: HashSet<u32> =
            stray_on
                .iter()
                .filter(|(store, strays)| {
                    let listed = listed_on.get(store).copied().unwrap_or(0);
                    **strays > STRAY_FLOOR && **strays * 100 > listed * STRAY_SHARE_PERCENT
                })
                .map(|(store, strays)| {
                    let name = self.stores.get(*store as usize).map_or("?", |s| s.name());
                    tracing::error!(
                    store = name, index = store, strays,
                    listed = listed_on.get(store).copied().unwrap_or(0),
                    "most of a store's pieces are named by no local FAT record; not sweeping it. \
                     Was a [[stores]] entry moved, or the same directory or device listed twice? \
                     Put the stores back in the order the local FAT knows"
                );
                    *store
                })
                .collect();
        strays
            .into_iter()
            .filter(|(store, _)| !unsafe_stores.contains(store))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::random_piece_id;
    use offsite_proto::Hash;

    async fn put_unnamed(vendor: &Vendor, count: usize) -> Vec<PieceId> {
        let mut ids = Vec::new();
        for k in 0..count {
            let data = bytes::Bytes::from(vec![k as u8; 100]);
            let id = random_piece_id();
            vendor.stores[0]
                .put(&id, data.clone(), &Hash::of(&data))
                .await
                .unwrap();
            ids.push(id);
        }
        ids
    }

    /// A few unnamed pieces are strays; pieces being written are not; a
    /// store where most pieces look stray is not swept at all.
    #[tokio::test]
    async fn strays_are_the_unnamed_pieces_unless_a_store_looks_misplaced() {
        let (vendor, held, _dirs) =
            super::super::vendor_holding(crate::testing::test_bytes(70_000, 9)).await;
        let strays = put_unnamed(&vendor, 3).await;
        vendor.writing.add(0, &strays[2]);
        let found: BTreeSet<PieceId> = vendor
            .stray_pieces()
            .await
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        let want: BTreeSet<PieceId> = strays[..2].iter().cloned().collect();
        assert_eq!(found, want);
        assert!(
            !found.contains(&held.pieces[0].id),
            "a named piece is no stray"
        );
        assert!(vendor.delete_stray(0, &strays[0]).await.unwrap());
        // The piece being written is kept even when asked.
        assert!(!vendor.delete_stray(0, &strays[2]).await.unwrap());

        put_unnamed(&vendor, STRAY_FLOOR + 10).await;
        assert_eq!(
            vendor.stray_pieces().await,
            vec![],
            "a store that looks misplaced is left alone"
        );
    }

    /// Round two takes whole buckets from a rotating start, and a bucket
    /// too large for one request in part.
    #[tokio::test]
    async fn holdings_take_whole_buckets_from_a_rotating_start() {
        let (vendor, held, _dirs) =
            super::super::vendor_holding(crate::testing::test_bytes(1000, 3)).await;
        let bucket = bucket_of(&held.portion);
        let other = (bucket + 1) % offsite_proto::reconcile::BUCKETS as u32;
        let h = vendor.holdings_in(&[bucket, other], 0).unwrap();
        assert_eq!(h.buckets, [bucket, other].into_iter().collect());
        assert_eq!(h.held.len(), 1);
        assert_eq!(h.held[0].reservation, held.reservation);
        let rotated = vendor.holdings_in(&[bucket, other], 1).unwrap();
        assert_eq!(rotated.buckets, h.buckets);
        assert!(rotated.partial.is_empty());
    }
}
