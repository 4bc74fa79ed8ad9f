//! Re-chunking a portion into pieces as its bytes arrive and putting them to
//! the vendor's stores round-robin over those with room. A bounded number of
//! puts overlap with receiving; if anything fails, every piece written (or
//! possibly written) is deleted again.

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

type PutResult = Result<(usize, PieceRecord), StoreError>;

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
        let store_index = self.choose(piece.len() as u64)?;
        let store = Arc::clone(&self.vendor.stores[store_index]);
        let id = random_piece_id();
        let sequence = self.done.len();
        self.done.push(None);
        let store_number = u32::try_from(store_index)
            .map_err(|_| VendorError::Internal("more than u32::MAX stores".into()))?;
        self.attempted.push((store_number, id.clone()));
        self.in_flight.spawn(async move {
            let hash = Hash::of(&piece);
            let size = piece.len() as u64;
            store.put(&id, piece, &hash).await?;
            let record = PieceRecord {
                id,
                store: store_number,
                size,
                hash,
            };
            Ok((sequence, record))
        });
        Ok(())
    }

    async fn complete_one(&mut self) -> Result<(), VendorError> {
        let Some(joined) = self.in_flight.join_next().await else {
            return Ok(());
        };
        let result = joined
            .map_err(|join| VendorError::Internal(format!("piece put task failed: {join}")))?;
        let (sequence, record) = result.map_err(|source| VendorError::PieceStore {
            portion: self.portion,
            source,
        })?;
        self.done[sequence] = Some(record);
        Ok(())
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
