//! The vendor's core: what a vendor does with the portions routed to it,
//! in domain types only. It receives a portion behind its routing header
//! ([`receive`]), places it as pieces on its stores ([`place`]) while
//! forwarding it to the next vendor of the route ([`forward`]), reads it back
//! ([`read`]), deletes it ([`delete`]) and copies it to another vendor for a
//! repair ([`copy`]), each under the coordinator group's grant ([`grants`]),
//! and re-reads every piece it holds in the background ([`scrub`]).
//! The tonic adapter in `crate::service` converts the wire to and from these
//! types; forwarding and the NAS stores keep their own generated clients,
//! their transport edge.

mod audit;
mod budget;
mod claim;
mod collect;
mod copy;
mod delete;
mod drain;
mod egress;
mod error;
mod forward;
mod grants;
mod limits;
mod place;
mod read;
mod receive;
mod scrub;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use offsite_identity::Credentials;
use offsite_proto::signing::{SignatureError, VendorKey};
use offsite_proto::{PieceId, VendorId};

use crate::local_fat::LocalFat;
use crate::store::{PieceStore, StoreCapacity};
use budget::FetchBudget;
use claim::Claims;
use egress::EgressJournal;
use grants::Grants;

pub(crate) use copy::Copies;
pub(crate) use delete::DeleteRequest;
pub use drain::{Retired, StoreUsage};
pub(crate) use error::VendorError;
pub(crate) use forward::RouteFailure;
pub use limits::Limits;
pub(crate) use read::ReadRequest;
pub(crate) use receive::{next_within_idle, Stored};
pub use scrub::ScrubPolicy;

/// One vendor: its stores, its local FAT, its keys, and the portions it is
/// busy with. Shared by every call (behind an `Arc`).
pub(crate) struct Vendor {
    id: VendorId,
    /// In config order: the local FAT's store indexes refer to it.
    stores: Vec<Arc<dyn PieceStore>>,
    fat: LocalFat,
    /// Where the next upload starts its round-robin over the stores.
    next_store: AtomicUsize,
    /// Portions with a store, delete or copy under way, so two never
    /// interleave.
    claims: Claims,
    /// How long this vendor waits on its peers.
    limits: RwLock<Limits>,
    /// The memory reads may hold (replaced with the limits; a read keeps
    /// the budget it started under).
    fetch_budget: RwLock<Arc<FetchBudget>>,
    /// This vendor's certificate: its server, and its calls to the next
    /// vendor of a route, its NAS devices and the coordinators.
    credentials: Credentials,
    /// The identity key that signs this vendor's receipts.
    identity: VendorKey,
    /// The group's grant keys and what each store grant has stored.
    grants: Grants,
    /// Fetches served and not yet reported (egress).
    egress: EgressJournal,
    /// Stores being drained (`drain = true`) or removed, by index.
    retired: RwLock<drain::Retired>,
    /// Bad copies the scrub found, not yet reported.
    bad_copies: scrub::BadCopies,
    /// Pieces put by uploads under way, which the local FAT does not name
    /// yet: garbage collection leaves them alone.
    writing: Writing,
}

/// A piece on one store: the store's index in the config, and the piece.
pub(crate) type StoredPiece = (u32, PieceId);

/// Pieces being written, by store index.
#[derive(Default)]
pub(crate) struct Writing {
    pieces: Mutex<HashSet<StoredPiece>>,
}

impl Writing {
    fn lock(&self) -> MutexGuard<'_, HashSet<StoredPiece>> {
        // A set of ids: a panic mid-update leaves nothing half-changed.
        self.pieces
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn add(&self, store: u32, piece: &PieceId) {
        self.lock().insert((store, piece.clone()));
    }

    fn remove(&self, pieces: &[StoredPiece]) {
        let mut set = self.lock();
        for piece in pieces {
            set.remove(piece);
        }
    }

    /// The pieces being written now.
    pub(crate) fn snapshot(&self) -> HashSet<StoredPiece> {
        self.lock().clone()
    }
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
            egress: EgressJournal::default(),
            writing: Writing::default(),
            bad_copies: scrub::BadCopies::default(),
            retired: RwLock::default(),
            next_store: AtomicUsize::new(0),
            claims: Claims::default(),
            limits: RwLock::new(Limits::default()),
            fetch_budget: RwLock::new(Arc::new(FetchBudget::new(
                Limits::default().fetch_buffer_bytes,
            ))),
        }
    }

    /// Fetches served and not yet reported to the coordinator group.
    pub(crate) fn egress(&self) -> &EgressJournal {
        &self.egress
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

    /// How long this vendor waits on its peers, and its read buffers.
    pub fn limits(&self) -> Limits {
        *self
            .limits
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Replaces the limits; calls under way keep those they started with.
    pub fn set_limits(&self, limits: Limits) {
        let budget = Arc::new(FetchBudget::new(limits.fetch_buffer_bytes));
        *self
            .fetch_budget
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = budget;
        *self
            .limits
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = limits;
    }

    /// The budget a read starting now takes its buffers from.
    fn fetch_budget(&self) -> Arc<FetchBudget> {
        Arc::clone(
            &self
                .fetch_budget
                .read()
                .unwrap_or_else(|poison| poison.into_inner()),
        )
    }

    /// How long a store stream may go without a frame from its sender.
    pub fn idle_timeout(&self) -> std::time::Duration {
        self.limits().store_idle
    }

    /// The store index an upload's round-robin starts from.
    fn first_store(&self) -> usize {
        self.next_store.fetch_add(1, Ordering::Relaxed) % self.stores.len().max(1)
    }

    /// Capacity of every store, in order; a store that cannot answer counts as
    /// having no room (and is logged).
    /// A store that does not answer within [`Limits::capacity_answer`]
    /// (a hung NAS device) counts as full too, so no piece is put to it.
    pub async fn capacities(&self) -> Vec<StoreCapacity> {
        let within = self.limits().capacity_answer();
        let asks = self.stores.iter().map(|store| async move {
            let answer = tokio::time::timeout(within, store.capacity()).await;
            match answer {
                Ok(Ok(capacity)) => capacity,
                Ok(Err(err)) => {
                    tracing::warn!(store = store.name(), %err, "store capacity unavailable; counting it as full");
                    StoreCapacity::default()
                }
                Err(_) => {
                    tracing::warn!(store = store.name(), within = ?within, "store did not answer a capacity call in time; counting it as full");
                    StoreCapacity::default()
                }
            }
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
    use offsite_proto::{Hash, PortionId, TenantId};

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
        reservation: Some(offsite_proto::ReservationId::random()),
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
