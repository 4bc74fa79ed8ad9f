//! Everything that can go wrong in a vendor call. Each message names the thing
//! and what the caller should do; the adapter (`crate::service::status`)
//! turns each into the `tonic::Status` code the caller acts on.

use offsite_proto::signing::SignatureError;
use offsite_proto::{Hash, PortionId, TenantId, VendorId, WireError};

use crate::local_fat::LocalFatError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum VendorError {
    /// A field of the request failed its checks.
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(
        "this certificate is tenant {caller:?}'s; it cannot reach tenant {named:?}'s portions"
    )]
    NotYourTenant { caller: TenantId, named: String },
    #[error("the first frame of a store stream must be the routing header; send the header, then data frames")]
    HeaderMissing,
    #[error(
        "a store stream carries one routing header, as its first frame; this one sent another"
    )]
    HeaderRepeated,
    #[error("empty store frame; send data frames with bytes")]
    EmptyFrame,
    #[error(
        "routed to vendor {to} but this is {me}; send the stream to the first vendor of the route"
    )]
    Misrouted { to: VendorId, me: VendorId },
    #[error("data frame of {len} bytes exceeds the {max}-byte limit; send smaller frames")]
    FrameTooLarge { len: usize, max: usize },
    #[error("stream for portion {portion} carries more than the {size} bytes its header announced; send exactly header.size bytes")]
    TooManyBytes { portion: PortionId, size: u64 },
    #[error("stream for portion {portion} ended after {received} of {size} bytes; resend the whole portion")]
    ShortStream {
        portion: PortionId,
        received: u64,
        size: u64,
    },
    /// The sender's stream failed in its transport (the adapter's error,
    /// passed through so its code reaches the caller).
    #[error("the store stream broke: {0}; resend the portion")]
    Inbound(Box<dyn std::error::Error + Send + Sync>),
    #[error(
        "the store stream{} sent nothing for {secs} s, so this vendor aborted it \
         (store_idle_timeout_secs); resend the portion without pausing",
        portion.map(|p| format!(" of portion {p}")).unwrap_or_default()
    )]
    Idle {
        portion: Option<PortionId>,
        secs: f64,
    },
    #[error("portion hash mismatch: portion {portion} hashes to {actual}, the header says {expected}; resend the portion's exact bytes")]
    HashMismatch {
        portion: PortionId,
        expected: Hash,
        actual: Hash,
    },
    #[error("portion {portion} is already held for tenant {tenant} with another hash ({held}); portion ids are never reused, pick a new one")]
    HeldWithOtherHash {
        tenant: TenantId,
        portion: PortionId,
        held: Hash,
    },
    #[error("portion {portion} of tenant {tenant} is being stored, deleted or copied by another call that did not end within {waited} s; retry later")]
    Busy {
        tenant: TenantId,
        portion: PortionId,
        waited: f64,
    },
    #[error("this store of portion {portion} was aborted: a newer store of the same portion arrived (a resend); the newer one stands")]
    Superseded { portion: PortionId },
    #[error("tenant {tenant}'s reads hold all the read buffers this vendor gives one tenant, and none came free within {waited} s; read the streams already open, or fetch from another replica")]
    ReadsBusy { tenant: TenantId, waited: f64 },
    #[error("the reader of portion {portion} took no frame for {secs} s, so this vendor cut the fetch off (fetch_idle_timeout_secs); read fetch streams as they arrive")]
    ReaderIdle { portion: PortionId, secs: f64 },
    #[error("vendor {vendor} has no room for {needed} more bytes ({free} free); store the portion at another vendor")]
    NoRoom {
        vendor: VendorId,
        needed: u64,
        free: u64,
    },
    #[error("storing a piece of portion {portion} failed: {source}")]
    PieceStore {
        portion: PortionId,
        source: StoreError,
    },
    #[error("portion {portion} is not held for tenant {tenant} by this vendor")]
    NotHeld {
        tenant: TenantId,
        portion: PortionId,
    },
    #[error("range offset {offset} length {length} is outside portion {portion} of {size} bytes; ask for a range inside it")]
    OutOfRange {
        portion: PortionId,
        offset: u64,
        length: u64,
        size: u64,
    },
    #[error("portion {portion} cannot be read back here: {source}; fetch it from another vendor holding a replica")]
    PieceLost {
        portion: PortionId,
        source: StoreError,
    },
    #[error("portion {portion} was only partly deleted: {detail}; retry the delete")]
    DeleteIncomplete { portion: PortionId, detail: String },
    #[error("probe payload of {len} bytes exceeds the {max}-byte limit; send a smaller payload")]
    ProbeTooLarge { len: usize, max: usize },
    #[error("vendor {vendor} refused the grant: {source}")]
    Grant {
        vendor: VendorId,
        source: SignatureError,
    },
    #[error("this vendor is not registered with the coordinator group yet, so it cannot check grants; retry in a few seconds")]
    NotRegistered,
    #[error(transparent)]
    LocalFat(#[from] LocalFatError),
    #[error("internal error: {0}")]
    Internal(String),
}
