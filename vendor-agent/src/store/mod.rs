//! The seam between the vendor agent and where its pieces live: a narrow async
//! [`PieceStore`] trait with two implementations, a local directory
//! ([`LocalStore`]) and a NAS device reached over gRPC ([`NasStore`]). Every
//! implementation passes [`crate::testing::piece_store_suite`].

mod local;
mod nas;
mod retired;

use offsite_identity::Credentials;

use std::sync::Arc;

use bytes::Bytes;
use offsite_proto::{Hash, PieceId};

use crate::config::{StoreConfig, VendorConfig};

pub use local::LocalStore;
pub use nas::{NasStore, NasTimeouts};

/// Room in one store, as the vendor counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreCapacity {
    /// Bytes this store offers to the marketplace, including what it holds.
    pub offered_bytes: u64,
    /// Bytes of pieces it holds.
    pub used_bytes: u64,
    /// `offered - used`: room for new pieces.
    pub free_bytes: u64,
}

/// Why a store operation failed, sorted by what the caller should do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The piece is not there; for a fetch, use another replica.
    #[error("piece {piece} is not on store {store}")]
    NotFound { store: String, piece: PieceId },
    /// The piece is there but its bytes are damaged; use another replica.
    #[error("piece {piece} on store {store} is corrupt: {detail}")]
    Corrupt {
        store: String,
        piece: PieceId,
        detail: String,
    },
    /// The bytes offered do not hash to the expected hash; nothing was written.
    #[error("store {store} refused piece {piece}: {detail}")]
    HashMismatch {
        store: String,
        piece: PieceId,
        detail: String,
    },
    /// The store refused the request as malformed; nothing was written.
    #[error("store {store} refused piece {piece}: {detail}")]
    Refused {
        store: String,
        piece: PieceId,
        detail: String,
    },
    /// No room; place the piece on another store.
    #[error("store {store} is full: {detail}")]
    Full { store: String, detail: String },
    /// The store cannot be reached right now; retry later.
    #[error("store {store} is unavailable: {detail}; retry later")]
    Unavailable { store: String, detail: String },
    /// Anything else (disk error, unexpected answer); an operator should look.
    #[error("store {store} failed: {detail}")]
    Failed { store: String, detail: String },
}

/// A place pieces are kept: put, get, delete, and how much room it has.
#[tonic::async_trait]
pub trait PieceStore: Send + Sync + 'static {
    /// A name for logs and errors, e.g. `local:/srv/pieces` or `nas:10.0.0.5:7201`.
    fn name(&self) -> &str;

    /// Writes the piece if its bytes hash to `expected`; returns the store's
    /// validation (the hash it computed), which equals `expected`.
    async fn put(&self, id: &PieceId, data: Bytes, expected: &Hash) -> Result<Hash, StoreError>;

    /// Reads the piece back, checked to hash to `expected` (the local FAT's hash).
    async fn get(&self, id: &PieceId, expected: &Hash) -> Result<Bytes, StoreError>;

    /// Removes the piece; `false` when it was not there.
    async fn delete(&self, id: &PieceId) -> Result<bool, StoreError>;

    /// Offered, used and free bytes right now (measured, not assumed).
    async fn capacity(&self) -> Result<StoreCapacity, StoreError>;

    /// Up to `limit` (at most [`offsite_proto::limits::MAX_LISTED_PIECES`]) ids of the pieces
    /// held, in order, after `after`: garbage collection pages through a
    /// store to find pieces the local FAT does not name.
    async fn list(&self, after: Option<&PieceId>, limit: usize)
        -> Result<Vec<PieceId>, StoreError>;
}

/// Checks that bytes read back are the piece the local FAT recorded.
pub(crate) fn verify_piece(
    store: &str,
    id: &PieceId,
    data: Bytes,
    expected: &Hash,
) -> Result<Bytes, StoreError> {
    let actual = Hash::of(&data);
    if actual != *expected {
        return Err(StoreError::Corrupt {
            store: store.to_owned(),
            piece: id.clone(),
            detail: format!("its {} bytes hash to {actual}, not {expected}", data.len()),
        });
    }
    Ok(data)
}

/// A fresh piece id: 16 random bytes as 32 hex digits.
pub fn random_piece_id() -> PieceId {
    let bytes: [u8; 16] = rand::random();
    let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    PieceId::new(text).unwrap_or_else(|_| unreachable!("hex digits are a valid piece id"))
}

/// Opens every store of the config, in config order (the order the local FAT's
/// store indexes refer to).
/// NAS devices are called over mutual TLS with `credentials`.
pub fn open_stores(
    config: &VendorConfig,
    credentials: &Credentials,
) -> Result<Vec<Arc<dyn PieceStore>>, StoreError> {
    config
        .stores
        .iter()
        .enumerate()
        .map(
            |(index, store)| -> Result<Arc<dyn PieceStore>, StoreError> {
                let opened: Arc<dyn PieceStore> = match store {
                    StoreConfig::Local {
                        path, cap_bytes, ..
                    } => Arc::new(LocalStore::open(path, *cap_bytes, config.keep_free_share)?),
                    StoreConfig::Nas { address, name, .. } => {
                        let timeouts = config.limits().nas();
                        Arc::new(NasStore::connect_lazy(
                            address,
                            name,
                            credentials,
                            timeouts,
                            config.keep_free_share,
                        )?)
                    }
                    StoreConfig::Removed => return Ok(Arc::new(retired::Removed::new(index))),
                };
                Ok(match store.draining() {
                    true => Arc::new(retired::Draining::new(opened)),
                    false => opened,
                })
            },
        )
        .collect()
}
