//! Deleting a portion: its pieces, then its local FAT entry. Two paths lead
//! here: `Vendor.Delete`, under a delete grant, and the coordinator's
//! deletion queue of released portions (in capacity report answers), which
//! needs none. Deleting what this vendor does not hold is a success, so a
//! repeated deletion is harmless.

use std::sync::Arc;

use offsite_proto::signing::GrantOp;
use offsite_proto::{Grant, PortionId, TenantId};

use super::claim::ClaimKind;
use super::error::VendorError;
use super::grants::portion_grant;
use super::Vendor;
use crate::local_fat::PortionRecord;
use crate::store::StoreError;

/// A deletion of a tenant's portion under a delete grant.
#[derive(Debug, Clone)]
pub(crate) struct DeleteRequest {
    pub tenant: TenantId,
    pub portion: PortionId,
    pub grant: Option<Grant>,
}

impl Vendor {
    /// Removes a portion's pieces and then its local FAT entry, under a
    /// delete grant; `false` when this vendor does not hold the portion for
    /// this tenant.
    pub async fn delete(self: &Arc<Self>, request: DeleteRequest) -> Result<bool, VendorError> {
        let DeleteRequest {
            tenant,
            portion,
            grant,
        } = request;
        self.grants.check(
            grant.as_ref(),
            &portion_grant(GrantOp::Delete, &tenant, &self.id, portion),
        )?;
        let wait = self.limits().claim_wait();
        self.delete_portion(&tenant, &portion, wait).await
    }

    /// Removes a portion's pieces and then its local FAT entry, without a
    /// grant (the path of [`Vendor::delete`] and of the coordinator's
    /// deletion queue); `false` when this vendor does not hold the portion
    /// for this tenant, so a repeated deletion is a success. A piece already
    /// gone counts as deleted. A store, delete or copy of the portion under
    /// way is waited for at most `wait`, then the delete is
    /// [`VendorError::Busy`].
    pub async fn delete_portion(
        self: &Arc<Self>,
        tenant: &TenantId,
        portion: &PortionId,
        wait: std::time::Duration,
    ) -> Result<bool, VendorError> {
        let (tenant, portion) = (tenant.clone(), *portion);
        let _claim = self
            .claim(&tenant, &portion, ClaimKind::Other, wait)
            .await?;
        let Some(record) = self.fat.get(&tenant, &portion)? else {
            return Ok(false);
        };
        self.delete_held(record).await?;
        Ok(true)
    }

    /// Removes a held portion's pieces and then its local FAT entry; the
    /// caller holds the portion's claim.
    pub(super) async fn delete_held(&self, record: PortionRecord) -> Result<(), VendorError> {
        let (tenant, portion) = (record.tenant, record.portion);
        let mut problems = Vec::new();
        for piece in &record.pieces {
            let Some(store) = self.stores.get(piece.store as usize) else {
                problems.push(format!("store #{} is no longer configured", piece.store));
                continue;
            };
            match store.delete(&piece.id).await {
                Ok(_) | Err(StoreError::NotFound { .. }) => {}
                Err(err) => problems.push(err.to_string()),
            }
        }
        if !problems.is_empty() {
            return Err(VendorError::DeleteIncomplete {
                portion,
                detail: problems.join("; "),
            });
        }
        self.fat.remove(&tenant, &portion).await?;
        tracing::info!(%tenant, %portion, "portion deleted");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The deletion the coordinator asks for after a prune: pieces and local
    /// FAT entry go, stored bytes shrink, and deleting again (or deleting a
    /// portion never held) is a success that reports `false`.
    #[tokio::test]
    async fn deleting_a_released_portion_is_idempotent() {
        let (vendor, held, _dirs) =
            super::super::vendor_holding(crate::testing::test_bytes(70_000, 9)).await;
        let (store, piece) = (Arc::clone(&vendor.stores[0]), held.pieces[0].clone());
        assert_eq!(vendor.fat.stored_bytes(), 70_000);

        assert!(vendor
            .delete_portion(&held.tenant, &held.portion, Duration::ZERO)
            .await
            .unwrap());
        assert!(vendor
            .fat
            .get(&held.tenant, &held.portion)
            .unwrap()
            .is_none());
        assert_eq!(vendor.fat.stored_bytes(), 0);
        assert!(
            store.get(&piece.id, &piece.hash).await.is_err(),
            "the piece is gone"
        );
        assert!(!vendor
            .delete_portion(&held.tenant, &held.portion, Duration::ZERO)
            .await
            .unwrap());
        let other = TenantId::new("someone-else").unwrap();
        assert!(!vendor
            .delete_portion(&other, &PortionId::random(), Duration::ZERO)
            .await
            .unwrap());
    }
}
