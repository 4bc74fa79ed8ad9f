//! A store of pieces in a directory on the vendor's own machine, backed by
//! `offsite_piece_store::PieceDir` (blocking file I/O, run on the blocking pool).
//! It offers `min(cap, used + filesystem available - keep_free_share *
//! filesystem size)`, leaving the vendor's own share of the disk alone.

use std::path::Path;

use bytes::Bytes;
use offsite_piece_store::{PieceDir, PieceError};
use offsite_proto::{Hash, PieceId};

use super::{verify_piece, PieceStore, StoreCapacity, StoreError};

/// Pieces as files under one local directory.
#[derive(Clone)]
pub struct LocalStore {
    name: String,
    dir: PieceDir,
    keep_free_share: f64,
}

impl LocalStore {
    /// Opens (creating if needed) the piece directory at `path`.
    pub fn open(
        path: &Path,
        cap_bytes: Option<u64>,
        keep_free_share: f64,
    ) -> Result<Self, StoreError> {
        let name = format!("local:{}", path.display());
        let dir = PieceDir::open(path, cap_bytes).map_err(|e| StoreError::Failed {
            store: name.clone(),
            detail: format!("cannot open the piece directory: {e}"),
        })?;
        Ok(Self {
            name,
            dir,
            keep_free_share,
        })
    }

    /// Runs blocking piece-directory work off the async threads; `piece` names
    /// the piece in errors (none for capacity).
    async fn blocking<T, F>(&self, piece: Option<&PieceId>, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&PieceDir) -> Result<T, PieceError> + Send + 'static,
    {
        self.dir
            .run_blocking(work)
            .await
            .map_err(|e| self.error(e, piece))
    }

    fn error(&self, err: PieceError, piece: Option<&PieceId>) -> StoreError {
        let store = self.name.clone();
        let detail = err.to_string();
        let Some(piece) = piece.cloned() else {
            return match err {
                PieceError::Full { .. } => StoreError::Full { store, detail },
                _ => StoreError::Failed { store, detail },
            };
        };
        match err {
            PieceError::NotFound(piece) => StoreError::NotFound { store, piece },
            PieceError::Corrupt { .. } => StoreError::Corrupt {
                store,
                piece,
                detail,
            },
            PieceError::HashMismatch { .. } => StoreError::HashMismatch {
                store,
                piece,
                detail,
            },
            PieceError::TooLarge { .. } | PieceError::Conflict(_) => StoreError::Refused {
                store,
                piece,
                detail,
            },
            PieceError::Full { .. } => StoreError::Full { store, detail },
            PieceError::Io { .. } => StoreError::Failed { store, detail },
        }
    }
}

#[tonic::async_trait]
impl PieceStore for LocalStore {
    fn name(&self) -> &str {
        &self.name
    }

    async fn put(&self, id: &PieceId, data: Bytes, expected: &Hash) -> Result<Hash, StoreError> {
        let (piece, hash) = (id.clone(), *expected);
        self.blocking(Some(id), move |dir| dir.put(&piece, &data, &hash))
            .await
    }

    async fn get(&self, id: &PieceId, expected: &Hash) -> Result<Bytes, StoreError> {
        let piece = id.clone();
        let data = self.blocking(Some(id), move |dir| dir.get(&piece)).await?;
        verify_piece(&self.name, id, Bytes::from(data), expected)
    }

    async fn delete(&self, id: &PieceId) -> Result<bool, StoreError> {
        let piece = id.clone();
        self.blocking(Some(id), move |dir| dir.delete(&piece)).await
    }

    async fn capacity(&self) -> Result<StoreCapacity, StoreError> {
        let share = self.keep_free_share;
        self.blocking(None, move |dir| {
            let held = dir.capacity()?;
            let fs = dir.filesystem()?;
            Ok(offered_capacity(
                held.capacity_bytes,
                held.used_bytes,
                fs.total_bytes,
                fs.available_bytes,
                share,
            ))
        })
        .await
    }

    async fn list(
        &self,
        after: Option<&PieceId>,
        limit: usize,
    ) -> Result<Vec<PieceId>, StoreError> {
        let after = after.cloned();
        let limit = limit.min(offsite_proto::limits::MAX_LISTED_PIECES);
        self.blocking(None, move |dir| dir.list(after.as_ref(), limit))
            .await
    }
}

/// `min(cap, used + available - share * total)`; `cap_or_fs` is the piece
/// directory's own `min(cap, used + available)` (a local store's, or what a
/// NAS device reports).
pub(super) fn offered_capacity(
    cap_or_fs: u64,
    used: u64,
    fs_total: u64,
    fs_available: u64,
    keep_free_share: f64,
) -> StoreCapacity {
    let kept = (keep_free_share * fs_total as f64) as u64;
    let offered = cap_or_fs.min(used.saturating_add(fs_available.saturating_sub(kept)));
    StoreCapacity {
        offered_bytes: offered,
        used_bytes: used,
        free_bytes: offered.saturating_sub(used),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offered_leaves_the_vendors_share_of_the_disk_alone() {
        // 1000-byte disk, 500 available, 10% kept: 100 used + 400 = 500.
        let c = offered_capacity(u64::MAX, 100, 1000, 500, 0.10);
        assert_eq!(c.offered_bytes, 500);
        assert_eq!(c.free_bytes, 400);
        // A cap below that wins.
        let c = offered_capacity(300, 100, 1000, 500, 0.10);
        assert_eq!(c.offered_bytes, 300);
        assert_eq!(c.free_bytes, 200);
        // A disk fuller than the kept share offers only what is held.
        let c = offered_capacity(u64::MAX, 100, 1000, 50, 0.10);
        assert_eq!(c.offered_bytes, 100);
        assert_eq!(c.free_bytes, 0);
    }

    #[tokio::test]
    async fn local_store_passes_the_piece_store_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path(), Some(1 << 30), 0.0).unwrap();
        crate::testing::piece_store_suite(&store).await;
    }
}
