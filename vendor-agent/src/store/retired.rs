//! Stores on their way out, as wrappers over the seam: a **draining** store
//! serves and deletes its pieces but takes no new ones and offers nothing
//! (its pieces move to the other stores, see `vendor::drain`); a
//! **removed** slot has no store at all and only keeps the index of the
//! stores after it in the local FAT.

use std::sync::Arc;

use bytes::Bytes;
use offsite_proto::{Hash, PieceId};

use super::{PieceStore, StoreCapacity, StoreError};

/// A store being emptied.
pub struct Draining {
    inner: Arc<dyn PieceStore>,
    name: String,
}

impl Draining {
    pub fn new(inner: Arc<dyn PieceStore>) -> Self {
        let name = format!("{} (draining)", inner.name());
        Self { inner, name }
    }
}

#[tonic::async_trait]
impl PieceStore for Draining {
    fn name(&self) -> &str {
        &self.name
    }

    async fn put(&self, _id: &PieceId, _data: Bytes, _expected: &Hash) -> Result<Hash, StoreError> {
        Err(StoreError::Full {
            store: self.name.clone(),
            detail: "the store is draining (drain = true) and takes no new pieces".into(),
        })
    }

    async fn get(&self, id: &PieceId, expected: &Hash) -> Result<Bytes, StoreError> {
        self.inner.get(id, expected).await
    }

    async fn delete(&self, id: &PieceId) -> Result<bool, StoreError> {
        self.inner.delete(id).await
    }

    /// Offers only what it still holds (so the vendor's offer drops by its
    /// room at once), with no room for new pieces.
    async fn capacity(&self) -> Result<StoreCapacity, StoreError> {
        let c = self.inner.capacity().await?;
        Ok(StoreCapacity {
            offered_bytes: 0,
            used_bytes: c.used_bytes,
            free_bytes: 0,
        })
    }

    /// What it still holds: a stray piece there is garbage like any other.
    async fn list(
        &self,
        after: Option<&PieceId>,
        limit: usize,
    ) -> Result<Vec<PieceId>, StoreError> {
        self.inner.list(after, limit).await
    }
}

/// A slot whose store was taken away (`kind = "removed"`).
pub struct Removed {
    name: String,
}

impl Removed {
    pub fn new(index: usize) -> Self {
        Self {
            name: format!("removed store #{index}"),
        }
    }

    fn gone(&self) -> StoreError {
        StoreError::Failed {
            store: self.name.clone(),
            detail: "this store was removed from the config (kind = \"removed\")".into(),
        }
    }
}

#[tonic::async_trait]
impl PieceStore for Removed {
    fn name(&self) -> &str {
        &self.name
    }

    async fn put(&self, _id: &PieceId, _data: Bytes, _expected: &Hash) -> Result<Hash, StoreError> {
        Err(self.gone())
    }

    async fn get(&self, _id: &PieceId, _expected: &Hash) -> Result<Bytes, StoreError> {
        Err(self.gone())
    }

    /// Nothing can be there any more: deleting is a success.
    async fn delete(&self, _id: &PieceId) -> Result<bool, StoreError> {
        Ok(false)
    }

    async fn capacity(&self) -> Result<StoreCapacity, StoreError> {
        Ok(StoreCapacity::default())
    }

    /// Nothing is there any more.
    async fn list(
        &self,
        _after: Option<&PieceId>,
        _limit: usize,
    ) -> Result<Vec<PieceId>, StoreError> {
        Ok(Vec::new())
    }
}
