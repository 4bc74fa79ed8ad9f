//! The vendor's core: what a vendor does with the portions routed to it,
//! in domain types only. It receives a portion behind its routing header
//! ([`receive`]), places it as pieces on its stores ([`place`]) while
//! forwarding it to the next vendor of the route ([`forward`]), reads it back
//! ([`read`]), deletes it ([`delete`]) and copies it to another vendor for a
//! repair ([`copy`]), each under the coordinator group's grant ([`grants`]).
//! The tonic adapter in `crate::service` converts the wire to and from these
//! types; forwarding and the NAS stores keep their own generated clients,
//! their transport edge.

mod copy;
mod delete;
mod error;
mod forward;
mod grants;
mod place;
mod read;
mod receive;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use offsite_identity::Credentials;
use offsite_proto::signing::{SignatureError, VendorKey};
use offsite_proto::{PortionId, TenantId, VendorId};

use crate::local_fat::LocalFat;
use crate::store::{PieceStore, StoreCapacity};
use grants::Grants;

pub(crate) use copy::Copies;
pub(crate) use delete::DeleteRequest;
pub(crate) use error::VendorError;
pub(crate) use forward::RouteFailure;
pub(crate) use read::ReadRequest;
pub(crate) use receive::{next_within_idle, Stored};

/// Default of `store_idle_timeout_secs`.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One vendor: its stores, its local FAT, its keys, and the portions it is
/// busy with. Shared by every call (behind an `Arc`).
pub(crate) struct Vendor {
    id: VendorId,
    /// In config order: the local FAT's store indexes refer to it.
    stores: Vec<Arc<dyn PieceStore>>,
    fat: LocalFat,
    /// Where the next upload starts its round-robin over the stores.
    next_store: AtomicUsize,
    /// Portions with a store or delete under way, so two never interleave.
    busy: Mutex<HashSet<(TenantId, PortionId)>>,
    /// Milliseconds a store stream may go without a frame, inbound or
    /// into the next vendor.
    idle_timeout_ms: AtomicU64,
    /// This vendor's certificate: its server, and its calls to the next
    /// vendor of a route, its NAS devices and the coordinators.
    credentials: Credentials,
    /// The identity key that signs this vendor's receipts.
    identity: VendorKey,
    /// The group's grant keys and what each store grant has stored.
    grants: Grants,
}

impl Vendor {
    pub fn new(
        id: VendorId,
        stores: Vec<Arc<dyn PieceStore>>,
        fat: LocalFat,
        credentials: Credentials,
        identity: VendorKey,
    ) -> Self {
        Self {
            id,
            stores,
            fat,
            credentials,
            identity,
            grants: Grants::default(),
            next_store: AtomicUsize::new(0),
            busy: Mutex::new(HashSet::new()),
            idle_timeout_ms: AtomicU64::new(DEFAULT_IDLE_TIMEOUT.as_millis() as u64),
        }
    }

    /// This vendor's id.
    pub fn id(&self) -> &VendorId {
        &self.id
    }

    /// This vendor's TLS credentials, for its server and its calls.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The public half of the identity key that signs this vendor's receipts.
    pub fn identity_public_key(&self) -> [u8; 32] {
        self.identity.public_key()
    }

    /// Replaces the coordinator group's grant keys `(key_id, public key)`;
    /// `true` when they changed.
    pub fn set_grant_keys(&self, keys: &[(u32, Vec<u8>)]) -> Result<bool, SignatureError> {
        self.grants.set_keys(keys)
    }

    /// Bytes of portions this vendor holds, as its local FAT counts them.
    pub fn stored_bytes(&self) -> u64 {
        self.fat.stored_bytes()
    }

    /// How long a store stream may go without a frame.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms.load(Ordering::Relaxed))
    }

    pub fn set_idle_timeout(&self, timeout: Duration) {
        let ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.idle_timeout_ms.store(ms, Ordering::Relaxed);
    }

    /// The store index an upload's round-robin starts from.
    fn first_store(&self) -> usize {
        self.next_store.fetch_add(1, Ordering::Relaxed) % self.stores.len().max(1)
    }

    /// Claims a portion for one store or delete at a time.
    fn claim(
        self: &Arc<Self>,
        tenant: &TenantId,
        portion: &PortionId,
    ) -> Result<BusyGuard, VendorError> {
        let key = (tenant.clone(), *portion);
        let mut busy = self
            .busy
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if !busy.insert(key.clone()) {
            return Err(VendorError::Busy {
                tenant: tenant.clone(),
                portion: *portion,
            });
        }
        Ok(BusyGuard {
            vendor: Arc::clone(self),
            key,
        })
    }

    /// Capacity of every store, in order; a store that cannot answer counts as
    /// having no room (and is logged).
    pub async fn capacities(&self) -> Vec<StoreCapacity> {
        let asks = self.stores.iter().map(|store| async move {
            store.capacity().await.unwrap_or_else(|err| {
                tracing::warn!(store = store.name(), %err, "store capacity unavailable; counting it as full");
                StoreCapacity::default()
            })
        });
        futures::future::join_all(asks).await
    }

    /// Free bytes over all stores right now (what a probe answers).
    pub async fn free_bytes(&self) -> u64 {
        self.capacities()
            .await
            .iter()
            .map(|c| c.free_bytes)
            .fold(0u64, u64::saturating_add)
    }
}

/// Releases a claimed portion when the call ends, however it ends.
struct BusyGuard {
    vendor: Arc<Vendor>,
    key: (TenantId, PortionId),
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let mut busy = self
            .vendor
            .busy
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        busy.remove(&self.key);
    }
}

/// A vendor ("v1") with one local store holding one portion of tenant "t":
/// `data` in a single piece. Keep the directories for as long as the vendor.
#[cfg(test)]
pub(crate) async fn vendor_holding(
    data: bytes::Bytes,
) -> (
    Arc<Vendor>,
    crate::local_fat::PortionRecord,
    [tempfile::TempDir; 2],
) {
    use crate::local_fat::{PieceRecord, PortionRecord};
    use crate::store::{random_piece_id, LocalStore};
    use offsite_proto::Hash;

    let (store_dir, fat_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = LocalStore::open(store_dir.path(), None, 0.0).unwrap();
    let piece = PieceRecord {
        id: random_piece_id(),
        store: 0,
        size: data.len() as u64,
        hash: Hash::of(&data),
    };
    store
        .put(&piece.id, data.clone(), &piece.hash)
        .await
        .unwrap();
    let held = PortionRecord {
        tenant: TenantId::new("t").unwrap(),
        portion: PortionId::random(),
        hash: Hash::of(&data),
        size: data.len() as u64,
        piece_size: 65_536,
        pieces: vec![piece],
    };
    let fat = LocalFat::open(fat_dir.path()).unwrap();
    fat.insert(&held).await.unwrap();
    let vendor = Arc::new(Vendor::new(
        VendorId::new("v1").unwrap(),
        vec![Arc::new(store)],
        fat,
        crate::testing::throwaway_credentials("v1"),
        VendorKey::from_secret(&[1; 32]),
    ));
    (vendor, held, [store_dir, fat_dir])
}
