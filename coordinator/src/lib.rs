//! The Offsite coordinator: the FAT state machine ([`fat`]), the choice of
//! candidate vendors for a reservation ([`placement`]), the FAT's store
//! ([`store`]) replicated over the coordinator group ([`raft`]) and the gRPC
//! services that front them.
//!
//! ```
//! use offsite_coordinator::fat::{Command, Fat, Outcome, RegisterVendor};
//! use offsite_proto::signing::VendorKey;
//! use offsite_proto::{VendorId, VendorRef};
//!
//! let identity = VendorKey::from_secret(&[7; 32]);
//! let mut fat = Fat::default();
//! let outcome = fat.apply(Command::RegisterVendor(RegisterVendor {
//!     vendor: VendorRef { id: VendorId::new("vendor-1").unwrap(), address: "10.0.0.4:7100".into() },
//!     region: "eu-west".into(),
//!     offered_bytes: 1 << 30,
//!     network_bytes_per_sec: 0,
//!     identity_key: identity.public_key().to_vec(),
//!     now_unix_ms: 1_700_000_000_000,
//! }));
//! assert_eq!(outcome, Ok(Outcome::VendorRegistered));
//! ```

mod audit;
mod bad_copy_audit;
pub mod config;
pub mod fat;
pub mod placement;
pub mod raft;
mod server;
mod service;
pub mod store;

pub use config::{ConfigError, CoordinatorConfig, MemberConfig};
pub use server::{serve, Coordinator, CoordinatorError};
