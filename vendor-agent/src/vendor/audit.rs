//! Answering an audit: the asked slice of a held portion with its proof.
//! The whole portion is read back from its pieces (each checked) and hashed
//! to make the proof, so a vendor that lost or damaged any of it cannot
//! answer; one audit costs one portion read.

use std::sync::Arc;

use futures::StreamExt;
use offsite_proto::audit::prove;
use offsite_proto::{PortionId, TenantId};

use super::claim::ClaimKind;
use super::read::{chunk_channel, stream_range};
use super::{Vendor, VendorError};

impl Vendor {
    /// The proof of `length` bytes at `offset` of a held portion.
    pub async fn audit(
        self: &Arc<Self>,
        tenant: TenantId,
        portion: PortionId,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, VendorError> {
        let wait = self.limits().claim_wait();
        let _claim = self
            .claim(&tenant, &portion, ClaimKind::Other, wait)
            .await?;
        let record = self
            .fat
            .get(&tenant, &portion)?
            .ok_or_else(|| VendorError::NotHeld {
                tenant: tenant.clone(),
                portion,
            })?;
        if length == 0
            || offset
                .checked_add(length)
                .is_none_or(|end| end > record.size)
        {
            return Err(VendorError::OutOfRange {
                portion,
                offset,
                length,
                size: record.size,
            });
        }
        let (sink, mut chunks) = chunk_channel(4, self.limits().fetch_idle);
        let reader = {
            let (vendor, record) = (Arc::clone(self), record.clone());
            tokio::spawn(async move { stream_range(&vendor, &record, 0, record.size, &sink).await })
        };
        let mut bytes = Vec::with_capacity(record.size as usize);
        while let Some(chunk) = chunks.next().await {
            bytes.extend_from_slice(&chunk?);
        }
        reader
            .await
            .map_err(|e| VendorError::Internal(format!("the reading task failed: {e}")))??;
        let hash = record.hash.0;
        tokio::task::spawn_blocking(move || prove(&bytes, &hash, offset, length))
            .await
            .map_err(|e| VendorError::Internal(format!("the proving task failed: {e}")))?
            .map_err(|e| VendorError::Internal(format!("portion {portion}: {e}")))
    }
}
