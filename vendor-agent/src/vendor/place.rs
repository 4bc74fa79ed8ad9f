//! Re-chunking a portion into pieces as its bytes arrive and putting them to
//! the vendor's stores round-robin over those with room. A bounded number of
//! puts overlap with receiving. A put to a store that is unavailable (down,
//! or hung and cut off) is put again on another store with room, and that
//! store gets no more pieces of this upload; if anything else fails, every
//! piece written (or possibly written) is deleted again.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use offsite_proto::{Hash, PieceId, PortionId};
use tokio::task::JoinSet;

use super::error::VendorError;
use super::Vendor;
use crate::local_fat::PieceRecord;
use crate::store::{random_piece_id, StoreError};

/// Piece puts in flight at once, besides the piece being filled.
const PUTS_IN_FLIGHT: usize = 2;

/// A finished put: the piece's place in the portion, the store it went to,
/// the piece (for a put again elsewhere) and what the store answered.
struct PutResult {
    sequence: usize,
    store: usize,
    piece: Bytes,
    stored: Result<PieceRecord, StoreError>,
}

/// Turns a stream of bytes into stored pieces.
pub(super) struct PieceWriter {
    vendor: Arc<Vendor>,
    portion: PortionId,
    piece_size: usize,
    /// Room left in each store for this upload.
    free: Vec<u64>,
    cursor: usize,
    /// The piece being filled; allocated at its full size when its first
    /// bytes arrive, so filling it copies each byte once (a sender that
    /// stalls holds that allocation until the idle timeout ends the upload;
    /// its untouched pages are not resident).
    buffer: BytesMut,
    /// Bytes of the portion not yet pushed.
    left: u64,
    in_flight: JoinSet<PutResult>,
    /// Every piece handed to a store, to delete on failure.
    attempted: Vec<(u32, PieceId)>,
    done: Vec<Option<PieceRecord>>,
}

/// The pieces this upload wrote leave the vendor's set of pieces being
/// written once the upload is over: recorded in the local FAT, or deleted.
impl Drop for PieceWriter {
    fn drop(&mut self) {
        self.vendor.writing.remove(&self.attempted);
    }
}

impl PieceWriter {
    /// A writer for `size` bytes; refuses at once when the stores lack room.
    pub async fn new(
        vendor: Arc<Vendor>,
        portion: PortionId,
        size: u64,
        piece_size: u64,
    ) -> Result<Self, VendorError> {
        let free: Vec<u64> = vendor
            .capacities()
            .await
            .iter()
            .map(|c| c.free_bytes)
            .collect();
        let total = free.iter().copied().fold(0u64, u64::saturating_add);
        if total < size {
            return Err(VendorError::NoRoom {
                vendor: vendor.id.clone(),
                needed: size,
                free: total,
            });
        }
        let cursor = vendor.first_store();
        Ok(Self {
            vendor,
            portion,
            // Bounded by MAX_PIECE_BYTES in the header check.
            piece_size: usize::try_from(piece_size).unwrap_or(usize::MAX),
            free,
            cursor,
            buffer: BytesMut::new(),
            left: size,
            in_flight: JoinSet::new(),
            attempted: Vec::new(),
            done: Vec::new(),
        })
    }

    /// Takes in received bytes, launching a put for every full piece.
    pub async fn push(&mut self, mut data: &[u8]) -> Result<(), VendorError> {
        while !data.is_empty() {
            if self.buffer.is_empty() {
                // At most `piece_size`, so it fits a usize.
                self.buffer
                    .reserve(self.left.min(self.piece_size as u64) as usize);
            }
            let room = self.piece_size - self.buffer.len();
            let take = room.min(data.len());
            self.buffer.extend_from_slice(&data[..take]);
            self.left = self.left.saturating_sub(take as u64);
            data = &data[take..];
            if self.buffer.len() == self.piece_size {
                let piece = self.buffer.split().freeze();
                self.launch(piece).await?;
            }
        }
        Ok(())
    }

    /// Stores the last partial piece and waits for every put; the pieces in order.
    pub async fn finish(&mut self) -> Result<Vec<PieceRecord>, VendorError> {
        if !self.buffer.is_empty() {
            let piece = self.buffer.split().freeze();
            self.launch(piece).await?;
        }
        while !self.in_flight.is_empty() {
            self.complete_one().await?;
        }
        self.done
            .iter()
            .cloned()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| VendorError::Internal("a piece put never completed".into()))
    }

    /// Deletes every piece this upload wrote or may have written, all at
    /// once (each store call is bounded, so a hung store delays the clean-up
    /// by one call, not one per piece).
    pub async fn clean_up(mut self) {
        while self.in_flight.join_next().await.is_some() {}
        let vendor = &self.vendor;
        let portion = self.portion;
        let deletes = self.attempted.iter().filter_map(|(store, piece)| {
            let store = vendor.stores.get(*store as usize)?;
            Some(async move {
                match store.delete(piece).await {
                    Ok(_) | Err(StoreError::NotFound { .. }) => {}
                    Err(err) => tracing::warn!(
                        store = store.name(), %piece, %portion, %err,
                        "could not delete a piece of a failed upload; it is orphaned"
                    ),
                }
            })
        });
        futures::future::join_all(deletes).await;
    }

    async fn launch(&mut self, piece: Bytes) -> Result<(), VendorError> {
        while self.in_flight.len() >= PUTS_IN_FLIGHT {
            self.complete_one().await?;
        }
        let sequence = self.done.len();
        self.done.push(None);
        self.put(sequence, piece)
    }

    /// Starts the put of the piece at `sequence` on the next store with room.
    fn put(&mut self, sequence: usize, piece: Bytes) -> Result<(), VendorError> {
        let store_index = self.choose(piece.len() as u64)?;
        let store = Arc::clone(&self.vendor.stores[store_index]);
        let id = random_piece_id();
        let store_number = u32::try_from(store_index)
            .map_err(|_| VendorError::Internal("more than u32::MAX stores".into()))?;
        self.attempted.push((store_number, id.clone()));
        self.vendor.writing.add(store_number, &id);
        self.in_flight.spawn(async move {
            let hash = Hash::of(&piece);
            let size = piece.len() as u64;
            let stored = store
                .put(&id, piece.clone(), &hash)
                .await
                .map(|_| PieceRecord {
                    id,
                    store: store_number,
                    size,
                    hash,
                });
            PutResult {
                sequence,
                store: store_index,
                piece,
                stored,
            }
        });
        Ok(())
    }

    async fn complete_one(&mut self) -> Result<(), VendorError> {
        let Some(joined) = self.in_flight.join_next().await else {
            return Ok(());
        };
        let put = joined
            .map_err(|join| VendorError::Internal(format!("piece put task failed: {join}")))?;
        match put.stored {
            Ok(record) => {
                self.done[put.sequence] = Some(record);
                Ok(())
            }
            Err(source @ StoreError::Unavailable { .. }) => {
                // No more pieces of this upload to that store; the piece goes
                // to another one, or the upload fails with the store's error.
                self.free[put.store] = 0;
                let store = self.vendor.stores[put.store].name();
                tracing::warn!(store, portion = %self.portion, %source, "store unavailable; putting the piece on another store");
                if self.free.iter().all(|free| *free < put.piece.len() as u64) {
                    return Err(VendorError::PieceStore {
                        portion: self.portion,
                        source,
                    });
                }
                self.put(put.sequence, put.piece)
            }
            Err(source) => Err(VendorError::PieceStore {
                portion: self.portion,
                source,
            }),
        }
    }

    /// The next store, round-robin, with room for `len` bytes.
    fn choose(&mut self, len: u64) -> Result<usize, VendorError> {
        let count = self.free.len();
        for step in 0..count {
            let index = (self.cursor + step) % count;
            if self.free[index] >= len {
                self.free[index] -= len;
                self.cursor = index + 1;
                return Ok(index);
            }
        }
        Err(VendorError::NoRoom {
            vendor: self.vendor.id.clone(),
            needed: len,
            free: self.free.iter().copied().max().unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local_fat::LocalFat;
    use crate::store::{LocalStore, PieceStore, StoreCapacity};
    use offsite_proto::signing::VendorKey;
    use offsite_proto::VendorId;

    /// A store that has room but whose every put fails as unavailable (a
    /// NAS device that hung and was cut off).
    struct Unavailable;

    #[tonic::async_trait]
    impl PieceStore for Unavailable {
        fn name(&self) -> &str {
            "nas:hung"
        }

        async fn put(&self, _: &PieceId, _: Bytes, _: &Hash) -> Result<Hash, StoreError> {
            Err(StoreError::Unavailable {
                store: "nas:hung".into(),
                detail: "cut off".into(),
            })
        }

        async fn get(&self, id: &PieceId, _: &Hash) -> Result<Bytes, StoreError> {
            Err(StoreError::NotFound {
                store: "nas:hung".into(),
                piece: id.clone(),
            })
        }

        async fn delete(&self, _: &PieceId) -> Result<bool, StoreError> {
            Ok(false)
        }

        async fn capacity(&self) -> Result<StoreCapacity, StoreError> {
            Ok(StoreCapacity {
                offered_bytes: 1 << 30,
                used_bytes: 0,
                free_bytes: 1 << 30,
            })
        }

        async fn list(&self, _: Option<&PieceId>, _: usize) -> Result<Vec<PieceId>, StoreError> {
            Ok(Vec::new())
        }
    }

    #[tokio::test]
    async fn pieces_bound_for_an_unavailable_store_go_to_another() {
        let (store_dir, fat_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let local = LocalStore::open(store_dir.path(), Some(1 << 30), 0.0).unwrap();
        let stores: Vec<Arc<dyn PieceStore>> = vec![Arc::new(Unavailable), Arc::new(local)];
        let vendor = Arc::new(Vendor::new(
            VendorId::new("v1").unwrap(),
            stores,
            LocalFat::open(fat_dir.path()).unwrap(),
            crate::testing::throwaway_credentials("v1"),
            VendorKey::from_secret(&[1; 32]),
        ));
        let data = crate::testing::test_bytes(1_000_000, 3);
        let portion = PortionId::random();
        let mut writer = PieceWriter::new(vendor, portion, data.len() as u64, 65_536)
            .await
            .unwrap();
        writer.push(&data).await.unwrap();
        let pieces = writer.finish().await.unwrap();
        assert_eq!(pieces.len(), data.len().div_ceil(65_536));
        assert!(pieces.iter().all(|p| p.store == 1), "{pieces:?}");
        let total: u64 = pieces.iter().map(|p| p.size).sum();
        assert_eq!(total, data.len() as u64);
    }
}
