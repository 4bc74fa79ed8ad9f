//! The memory reads may hold: every piece read back for a fetch or a repair
//! copy takes its size from one budget (`fetch_buffer_bytes`) until the last
//! frame cut from it is dropped, and one tenant's reads at most a share of
//! it. However many fetches a tenant opens and leaves unread, it holds no
//! more than its share, and other tenants' reads still find room.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use offsite_proto::TenantId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::VendorError;
use super::limits::TENANT_SHARE;

/// The budget is counted in units of this many bytes.
const UNIT: u64 = 1024 * 1024;

/// A vendor's read budget.
pub(super) struct FetchBudget {
    total: Arc<Semaphore>,
    /// Units one tenant may hold.
    share: u32,
    tenants: Mutex<HashMap<TenantId, Arc<Semaphore>>>,
}

/// A piece's share of the budget, released when dropped.
pub(super) struct Held {
    _tenant: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

impl FetchBudget {
    pub fn new(bytes: u64) -> Self {
        let units = u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .max(1);
        Self {
            total: Arc::new(Semaphore::new(units as usize)),
            share: (units / TENANT_SHARE as u32).max(1),
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// Takes room for `bytes` for `tenant`, waiting at most `wait` (a piece
    /// larger than a tenant's share takes the whole share).
    pub async fn take(
        &self,
        tenant: &TenantId,
        bytes: u64,
        wait: Duration,
    ) -> Result<Held, VendorError> {
        let units = u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, self.share);
        let own = self.tenant(tenant);
        let busy = || VendorError::ReadsBusy {
            tenant: tenant.clone(),
            waited: wait.as_secs_f64(),
        };
        let taking = async {
            // The tenant's own share first: a tenant that holds all of it
            // queues behind itself, not in front of other tenants.
            let tenant = own.acquire_many_owned(units).await;
            let total = Arc::clone(&self.total).acquire_many_owned(units).await;
            match (tenant, total) {
                (Ok(tenant), Ok(total)) => Ok(Held {
                    _tenant: tenant,
                    _total: total,
                }),
                _ => Err(VendorError::Internal("the read budget was closed".into())),
            }
        };
        tokio::time::timeout(wait, taking)
            .await
            .map_err(|_| busy())?
    }

    fn tenant(&self, tenant: &TenantId) -> Arc<Semaphore> {
        let mut tenants = self
            .tenants
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        // Tenants with nothing held are forgotten, so the map stays as small
        // as the set of tenants reading right now.
        let share = self.share as usize;
        tenants.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < share);
        Arc::clone(
            tenants
                .entry(tenant.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(share))),
        )
    }
}

/// Piece bytes that keep their share of the budget until the last slice
/// cut from them is dropped (frames waiting in a stalled stream included).
struct Budgeted {
    data: Bytes,
    _held: Held,
}

impl AsRef<[u8]> for Budgeted {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// `data` holding `held` for as long as any slice of it lives.
pub(super) fn budgeted(data: Bytes, held: Held) -> Bytes {
    Bytes::from_owner(Budgeted { data, _held: held })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_tenant_cannot_take_the_room_of_another() {
        let budget = FetchBudget::new(8 * UNIT);
        let (greedy, other) = (
            TenantId::new("greedy").unwrap(),
            TenantId::new("other").unwrap(),
        );
        let wait = Duration::from_millis(50);
        // A share is 2 units: the greedy tenant's third piece waits, then fails.
        let first = budget.take(&greedy, UNIT, wait).await.unwrap();
        let second = budget.take(&greedy, UNIT, wait).await.unwrap();
        let err = budget.take(&greedy, UNIT, wait).await.err().unwrap();
        assert!(matches!(err, VendorError::ReadsBusy { .. }), "{err}");
        // A piece larger than a share takes the whole share.
        let held = budget.take(&other, 5 * UNIT, wait).await.unwrap();
        // Room comes back when the frames cut from a piece are all dropped.
        let frame = budgeted(Bytes::from_static(b"piece"), first).slice(1..3);
        assert!(budget.take(&greedy, UNIT, wait).await.is_err());
        drop(frame);
        let _again = budget.take(&greedy, UNIT, wait).await.unwrap();
        drop((second, held));
    }
}
