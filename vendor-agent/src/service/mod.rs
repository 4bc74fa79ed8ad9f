//! The vendor's gRPC service (`offsite.vendor.Vendor`): thin adapters from the
//! wire to the store pipeline ([`upload`]), reads ([`fetch`]) and deletes, with
//! every error turned into a `tonic::Status` in [`error`].

mod copy;
mod error;
mod fetch;
mod forward;
mod grants;
mod placement;
mod upload;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use offsite_identity::{require_role, Credentials, Role};
use offsite_proto::limits::MAX_PROBE_BYTES;
use offsite_proto::pb::common::DataFrame;
use offsite_proto::pb::vendor::{
    vendor_server, DeleteRequest, DeleteResponse, FetchRequest, ProbeRequest, ProbeResponse,
    StoreFrame, StoreResponse,
};
use offsite_proto::signing::VendorKey;
use offsite_proto::{PortionId, TenantId, VendorId};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::local_fat::LocalFat;
use crate::store::{PieceStore, StoreCapacity};
use grants::Grants;

pub(crate) use copy::Copies;
pub use error::VendorError;
pub(crate) use fetch::delete_portion;

/// Default of `store_idle_timeout_secs`.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What every call of this vendor shares.
pub(crate) struct Shared {
    pub vendor: VendorId,
    /// In config order: the local FAT's store indexes refer to it.
    pub stores: Vec<Arc<dyn PieceStore>>,
    pub fat: LocalFat,
    /// Where the next upload starts its round-robin over the stores.
    next_store: AtomicUsize,
    /// Portions with a store or delete under way, so two never interleave.
    busy: Mutex<HashSet<(TenantId, PortionId)>>,
    /// Milliseconds a store stream may go without a frame, inbound or
    /// into the next vendor.
    idle_timeout_ms: AtomicU64,
    /// This vendor's certificate: its server, and its calls to the next
    /// vendor of a route, its NAS devices and the coordinators.
    pub credentials: Credentials,
    /// The identity key that signs this vendor's receipts.
    pub identity: VendorKey,
    /// The group's grant keys and what each store grant has stored.
    pub grants: Grants,
}

impl Shared {
    pub fn new(
        vendor: VendorId,
        stores: Vec<Arc<dyn PieceStore>>,
        fat: LocalFat,
        credentials: Credentials,
        identity: VendorKey,
    ) -> Self {
        Self {
            vendor,
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
    pub fn first_store(&self) -> usize {
        self.next_store.fetch_add(1, Ordering::Relaxed) % self.stores.len().max(1)
    }

    /// Claims a portion for one store or delete at a time.
    pub fn claim(
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
            shared: Arc::clone(self),
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
}

/// Releases a claimed portion when the call ends, however it ends.
pub(crate) struct BusyGuard {
    shared: Arc<Shared>,
    key: (TenantId, PortionId),
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let mut busy = self
            .shared
            .busy
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        busy.remove(&self.key);
    }
}

/// The tenant a call is limited to: the name of a tenant certificate, or
/// none for another allowed role (a vendor forwarding a store).
fn caller_tenant<T>(request: &Request<T>, allowed: &[Role]) -> Result<Option<TenantId>, Status> {
    let peer = require_role(request, allowed)?;
    if peer.role != Role::Tenant {
        return Ok(None);
    }
    TenantId::new(peer.name).map(Some).map_err(|e| {
        Status::unauthenticated(format!(
            "the tenant certificate names no valid tenant id: {e}"
        ))
    })
}

/// Only a tenant certificate, and only for the tenant it names.
fn own_portion<T>(request: &Request<T>, named: &str, what: &str) -> Result<(), Status> {
    let Some(caller) = caller_tenant(request, &[Role::Tenant])? else {
        return Err(Status::permission_denied(format!(
            "{what} needs a tenant certificate"
        )));
    };
    if caller.as_str() == named {
        Ok(())
    } else {
        Err(VendorError::NotYourTenant {
            caller,
            named: named.to_string(),
        }
        .into())
    }
}

/// The tonic service; cheap to clone.
#[derive(Clone)]
pub(crate) struct VendorService {
    shared: Arc<Shared>,
}

impl VendorService {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl vendor_server::Vendor for VendorService {
    async fn probe(
        &self,
        request: Request<ProbeRequest>,
    ) -> Result<Response<ProbeResponse>, Status> {
        require_role(&request, &[Role::Tenant, Role::Vendor, Role::Admin])?;
        let payload = request.into_inner().payload;
        if payload.len() > MAX_PROBE_BYTES {
            return Err(VendorError::ProbeTooLarge {
                len: payload.len(),
                max: MAX_PROBE_BYTES,
            }
            .into());
        }
        let free_bytes = self
            .shared
            .capacities()
            .await
            .iter()
            .map(|c| c.free_bytes)
            .fold(0u64, u64::saturating_add);
        Ok(Response::new(ProbeResponse {
            vendor_id: self.shared.vendor.to_string(),
            payload,
            free_bytes,
        }))
    }

    async fn store(
        &self,
        request: Request<Streaming<StoreFrame>>,
    ) -> Result<Response<StoreResponse>, Status> {
        // A tenant stores its own portions; a vendor forwards anyone's.
        let owner = caller_tenant(&request, &[Role::Tenant, Role::Vendor])?;
        // The upload runs in its own task so that a caller hanging up cannot
        // cancel it half-way: it always finishes or cleans up its pieces.
        let task = tokio::spawn(upload::store(
            Arc::clone(&self.shared),
            owner,
            request.into_inner(),
        ));
        match task.await {
            Ok(result) => Ok(Response::new(result?)),
            Err(join) => Err(VendorError::Internal(format!("store task failed: {join}")).into()),
        }
    }

    type FetchStream = ReceiverStream<Result<DataFrame, Status>>;

    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        own_portion(&request, &request.get_ref().tenant_id, "fetch")?;
        let stream = fetch::fetch(Arc::clone(&self.shared), request.into_inner())?;
        Ok(Response::new(stream))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        own_portion(&request, &request.get_ref().tenant_id, "delete")?;
        let shared = Arc::clone(&self.shared);
        let task = tokio::spawn(fetch::delete(shared, request.into_inner()));
        match task.await {
            Ok(result) => Ok(Response::new(DeleteResponse { existed: result? })),
            Err(join) => Err(VendorError::Internal(format!("delete task failed: {join}")).into()),
        }
    }
}

/// A vendor ("v1") with one local store holding one portion of tenant "t":
/// `data` in a single piece. Keep the directories for as long as the vendor.
#[cfg(test)]
pub(crate) async fn vendor_holding(
    data: bytes::Bytes,
) -> (
    Arc<Shared>,
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
    let shared = Arc::new(Shared::new(
        VendorId::new("v1").unwrap(),
        vec![Arc::new(store)],
        fat,
        crate::testing::throwaway_credentials("v1"),
        VendorKey::from_secret(&[1; 32]),
    ));
    (shared, held, [store_dir, fat_dir])
}
