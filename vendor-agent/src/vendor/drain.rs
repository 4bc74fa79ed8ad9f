//! Emptying a draining store (`drain = true`): each piece the local FAT
//! places on it is read (hash-checked), put on another store with room,
//! recorded there (flushed), and only then deleted from the draining store,
//! so a crash on the way leaves at worst a stray copy of a piece, never a
//! portion without one. What finds no room on the other stores is counted
//! as `stuck`; the agent then asks the coordinator group for burst relief
//! of those bytes, and the portions that leave free the room.

use std::collections::BTreeSet;
use std::sync::Arc;

use offsite_proto::{PortionId, TenantId};

use super::claim::ClaimKind;
use super::{Vendor, VendorError};
use crate::store::random_piece_id;

/// Stores on their way out, by config index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retired {
    pub draining: BTreeSet<u32>,
    pub removed: BTreeSet<u32>,
}

/// One store with what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreUsage {
    pub index: u32,
    pub name: String,
    /// "serving", "draining" or "removed".
    pub state: &'static str,
    pub pieces: u64,
    pub bytes: u64,
    pub offered_bytes: u64,
    pub free_bytes: u64,
}

/// What one round of draining did and left.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainRound {
    pub moved_pieces: u64,
    pub moved_bytes: u64,
    /// Pieces (and bytes) still on draining stores after the round.
    pub left_pieces: u64,
    pub left_bytes: u64,
    /// Bytes left that no other store had room for.
    pub stuck_bytes: u64,
}

impl Vendor {
    /// Store indexes being drained.
    pub(crate) fn draining(&self) -> BTreeSet<u32> {
        self.retired
            .read()
            .map(|r| r.draining.clone())
            .unwrap_or_default()
    }

    /// Marks the stores (config indexes) being drained and those removed.
    pub fn set_retired(&self, retired: Retired) {
        if let Ok(mut r) = self.retired.write() {
            *r = retired;
        }
    }

    /// Every store in config order with what the local FAT places on it
    /// and what it measures now.
    pub async fn store_usage(&self) -> Result<Vec<StoreUsage>, VendorError> {
        let retired = self.retired.read().map(|r| r.clone()).unwrap_or_default();
        let mut held = vec![(0u64, 0u64); self.stores.len()];
        for record in self.fat.records() {
            for piece in record?.pieces {
                if let Some((n, bytes)) = held.get_mut(piece.store as usize) {
                    *n += 1;
                    *bytes = bytes.saturating_add(piece.size);
                }
            }
        }
        let capacities = self.capacities().await;
        Ok(self
            .stores
            .iter()
            .zip(capacities)
            .zip(held)
            .enumerate()
            .map(|(i, ((store, capacity), (pieces, bytes)))| {
                let index = i as u32;
                StoreUsage {
                    index,
                    name: store.name().to_string(),
                    state: match (
                        retired.removed.contains(&index),
                        retired.draining.contains(&index),
                    ) {
                        (true, _) => "removed",
                        (false, true) => "draining",
                        (false, false) => "serving",
                    },
                    pieces,
                    bytes,
                    offered_bytes: capacity.offered_bytes,
                    free_bytes: capacity.free_bytes,
                }
            })
            .collect())
    }

    /// Pieces the local FAT places on removed stores, per store index.
    pub fn pieces_on_removed(&self) -> Result<Vec<(u32, u64)>, VendorError> {
        let removed = self
            .retired
            .read()
            .map(|r| r.removed.clone())
            .unwrap_or_default();
        // Asked at every start: without a removed store, no record is read.
        if removed.is_empty() {
            return Ok(Vec::new());
        }
        let mut found = std::collections::BTreeMap::new();
        for record in self.fat.records() {
            for piece in record?.pieces {
                if removed.contains(&piece.store) {
                    *found.entry(piece.store).or_insert(0u64) += 1;
                }
            }
        }
        Ok(found.into_iter().collect())
    }

    /// Moves at most `max_pieces` pieces off the draining stores.
    pub async fn drain_round(self: &Arc<Self>, max_pieces: u64) -> Result<DrainRound, VendorError> {
        let draining = self.draining();
        let mut round = DrainRound::default();
        if draining.is_empty() {
            return Ok(round);
        }
        let mut portions: Vec<(TenantId, PortionId)> = Vec::new();
        for record in self.fat.records() {
            let record = record?;
            if record.pieces.iter().any(|p| draining.contains(&p.store)) {
                portions.push((record.tenant, record.portion));
            }
        }
        let mut free: Vec<u64> = self
            .capacities()
            .await
            .iter()
            .map(|c| c.free_bytes)
            .collect();
        for (i, room) in free.iter_mut().enumerate() {
            if draining.contains(&(i as u32)) {
                *room = 0;
            }
        }
        for (tenant, portion) in portions {
            let budget = max_pieces.saturating_sub(round.moved_pieces);
            self.drain_portion(&tenant, &portion, &draining, &mut free, budget, &mut round)
                .await;
        }
        Ok(round)
    }

    /// Moves the portion's pieces on draining stores (at most `budget`),
    /// counting what is left in `round`.
    async fn drain_portion(
        self: &Arc<Self>,
        tenant: &TenantId,
        portion: &PortionId,
        draining: &BTreeSet<u32>,
        free: &mut [u64],
        budget: u64,
        round: &mut DrainRound,
    ) {
        let count_left = |round: &mut DrainRound, size: u64, stuck: bool| {
            round.left_pieces += 1;
            round.left_bytes = round.left_bytes.saturating_add(size);
            if stuck {
                round.stuck_bytes = round.stuck_bytes.saturating_add(size);
            }
        };
        let claim = match budget {
            0 => None,
            _ => self
                .claim(
                    tenant,
                    portion,
                    ClaimKind::Other,
                    self.limits().claim_wait(),
                )
                .await
                .ok(),
        };
        let record = match self.fat.get(tenant, portion) {
            Ok(Some(record)) => record,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(%tenant, %portion, %err, "cannot read the local FAT to drain a portion");
                return;
            }
        };
        let mut moved = record.clone();
        let mut old = Vec::new();
        let mut written = Vec::new();
        for (i, piece) in record.pieces.iter().enumerate() {
            if !draining.contains(&piece.store) {
                continue;
            }
            let target = free
                .iter()
                .enumerate()
                .filter(|(_, room)| **room >= piece.size)
                .max_by_key(|(_, room)| **room)
                .map(|(j, _)| j);
            let (Some(target), Some(_)) = (target, claim.as_ref()) else {
                count_left(round, piece.size, target.is_none());
                continue;
            };
            if (old.len() as u64) >= budget {
                count_left(round, piece.size, false);
                continue;
            }
            let (Some(from), Some(to)) = (
                self.stores.get(piece.store as usize),
                self.stores.get(target),
            ) else {
                count_left(round, piece.size, false);
                continue;
            };
            let id = random_piece_id();
            // Not yet named by the record: garbage collection leaves it be.
            self.writing.add(target as u32, &id);
            written.push((target as u32, id.clone()));
            let put = async {
                let data = from.get(&piece.id, &piece.hash).await?;
                to.put(&id, data, &piece.hash).await
            };
            match put.await {
                Ok(_) => {
                    free[target] = free[target].saturating_sub(piece.size);
                    moved.pieces[i].id = id;
                    moved.pieces[i].store = target as u32;
                    old.push((Arc::clone(from), piece.id.clone(), piece.size));
                }
                Err(err) => {
                    tracing::warn!(%tenant, %portion, piece = %piece.id, %err, "piece not moved off its draining store; trying again later");
                    count_left(round, piece.size, false);
                }
            }
        }
        let recorded = match old.is_empty() {
            true => Ok(()),
            false => self.fat.insert(&moved).await,
        };
        // Named by the record now, or strays for garbage collection.
        self.writing.remove(&written);
        if old.is_empty() {
            return;
        }
        if let Err(err) = recorded {
            tracing::warn!(%tenant, %portion, %err, "cannot record the moved pieces; the draining store keeps them");
            return;
        }
        for (store, piece, size) in &old {
            round.moved_pieces += 1;
            round.moved_bytes = round.moved_bytes.saturating_add(*size);
            if let Err(err) = store.delete(piece).await {
                tracing::warn!(store = store.name(), %piece, %err, "a moved piece stays on its draining store as a stray copy");
            }
        }
        drop(claim);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use bytes::Bytes;
    use offsite_proto::signing::VendorKey;
    use offsite_proto::{Hash, PortionId, TenantId, VendorId};

    use super::{DrainRound, Retired};
    use crate::local_fat::{LocalFat, PieceRecord, PortionRecord};
    use crate::store::{random_piece_id, LocalStore, PieceStore};
    use crate::vendor::Vendor;

    /// A vendor with a draining local store holding one portion of two
    /// 1000-byte pieces, and a second local store of `room` bytes.
    async fn draining_vendor(room: u64) -> (Arc<Vendor>, PortionRecord, Vec<tempfile::TempDir>) {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let first = LocalStore::open(dirs[0].path(), None, 0.0).unwrap();
        let second = LocalStore::open(dirs[1].path(), Some(room), 0.0).unwrap();
        let mut pieces = Vec::new();
        for fill in [1u8, 2] {
            let data = Bytes::from(vec![fill; 1000]);
            let piece = PieceRecord {
                id: random_piece_id(),
                store: 0,
                size: 1000,
                hash: Hash::of(&data),
            };
            first.put(&piece.id, data, &piece.hash).await.unwrap();
            pieces.push(piece);
        }
        let record = PortionRecord {
            tenant: TenantId::new("t").unwrap(),
            portion: PortionId::random(),
            hash: Hash::of(b"whole"),
            size: 2000,
            piece_size: 1000,
            pieces,
            reservation: None,
        };
        let fat = LocalFat::open(dirs[2].path()).unwrap();
        fat.insert(&record).await.unwrap();
        let vendor = Arc::new(Vendor::new(
            VendorId::new("v1").unwrap(),
            vec![Arc::new(first), Arc::new(second)],
            fat,
            crate::testing::throwaway_credentials("v1"),
            VendorKey::from_secret(&[1; 32]),
        ));
        vendor.set_retired(Retired {
            draining: BTreeSet::from([0]),
            removed: BTreeSet::new(),
        });
        (vendor, record, dirs)
    }

    #[tokio::test]
    async fn a_draining_stores_pieces_move_to_a_store_with_room_and_stay_readable() {
        let (vendor, record, _dirs) = draining_vendor(1 << 20).await;
        let round = vendor.drain_round(64).await.unwrap();
        assert_eq!((round.moved_pieces, round.moved_bytes), (2, 2000));
        assert_eq!((round.left_pieces, round.stuck_bytes), (0, 0));
        let moved = vendor
            .fat
            .get(&record.tenant, &record.portion)
            .unwrap()
            .unwrap();
        assert!(moved.pieces.iter().all(|p| p.store == 1));
        for (old, new) in record.pieces.iter().zip(&moved.pieces) {
            assert_eq!(new.hash, old.hash);
            vendor.stores[1].get(&new.id, &new.hash).await.unwrap();
            assert!(vendor.stores[0].get(&old.id, &old.hash).await.is_err());
        }
        let usage = vendor.store_usage().await.unwrap();
        assert_eq!((usage[0].state, usage[0].pieces), ("draining", 0));
        assert_eq!(
            (usage[1].state, usage[1].pieces, usage[1].bytes),
            ("serving", 2, 2000)
        );
        assert_eq!(vendor.drain_round(64).await.unwrap(), DrainRound::default());
    }

    #[tokio::test]
    async fn what_finds_no_room_is_counted_as_stuck_and_a_round_is_bounded() {
        let (vendor, _, _dirs) = draining_vendor(1500).await;
        let round = vendor.drain_round(64).await.unwrap();
        assert_eq!(round.moved_pieces, 1, "{round:?}");
        assert_eq!(
            (round.left_pieces, round.stuck_bytes),
            (1, 1000),
            "{round:?}"
        );
        let (vendor, _, _dirs) = draining_vendor(1 << 20).await;
        let round = vendor.drain_round(1).await.unwrap();
        assert_eq!(
            (round.moved_pieces, round.left_pieces, round.stuck_bytes),
            (1, 1, 0)
        );
    }
}
