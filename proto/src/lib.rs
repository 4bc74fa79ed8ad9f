//! The Offsite wire contract.
//!
//! `pb` holds the code generated from `proto/*.proto`. Everything else is the
//! domain side of the edge: id newtypes, the routing header, receipts, grants and
//! the FAT records that travel between client and coordinator, each with a
//! checked `TryFrom` from its generated type, so a malformed message is refused
//! where it arrives. No daemon logic lives here.
//!
//! ```
//! use offsite_proto::{PortionId, VendorId};
//! let portion = PortionId::random();
//! assert_eq!(portion.to_string().parse::<PortionId>().unwrap(), portion);
//! assert!(VendorId::new("vendor-1").is_ok());
//! assert!(VendorId::new("no spaces").is_err());
//! ```

pub mod audit;
mod bad_copy;
pub mod clock;
pub mod exit_statement;
mod fat;
mod ids;
pub mod limits;
mod prune;
pub mod reconcile;
pub mod refusal;
mod repair;
mod routing;
pub mod signing;
pub mod statement;
pub mod stream;
mod wire_error;

pub use bad_copy::{
    bounded_reason, parse_bad_copies, parse_bad_copy_reports, BadCopy, BadCopyReport,
};
pub use fat::{
    parse_portion_ids, BlobLocation, Candidate, PortionLocation, PortionPlacement, SnapshotRecord,
};
pub use ids::{Hash, PieceId, PortionId, RequestId, ReservationId, SnapshotId, TenantId, VendorId};
pub use prune::{parse_deletions, ListedPortion, PortionDeletion};
pub use repair::{parse_copies, CopyResult, CopyTask};
pub use routing::{Grant, Receipt, RoutingHeader, VendorRef};
pub use wire_error::WireError;

/// Code generated from the `.proto` files. Convert to domain types at the edge.
pub mod pb {
    pub mod common {
        tonic::include_proto!("offsite.common");
    }
    pub mod coordinator {
        tonic::include_proto!("offsite.coordinator");
    }
    pub mod vendor {
        tonic::include_proto!("offsite.vendor");
    }
    pub mod nas {
        tonic::include_proto!("offsite.nas");
    }
    pub mod raft {
        tonic::include_proto!("offsite.raft");
    }
    pub mod admin {
        tonic::include_proto!("offsite.admin");
    }
}
