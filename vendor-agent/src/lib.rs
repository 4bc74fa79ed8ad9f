//! The Offsite vendor agent (`offsite-vendor`): registers with the coordinator
//! group and reports capacity, receives portions behind routing headers,
//! forwards them along the route while re-chunking them into pieces on its
//! stores (NAS devices and local directories), keeps its local FAT, and serves
//! fetches and deletes to the tenant that stored each portion.
//!
//! ```
//! use offsite_vendor::VendorConfig;
//! let config: VendorConfig = toml::from_str(r#"
//!     vendor_id = "vendor-1"
//!     coordinators = ["127.0.0.1:7000"]
//!     data_dir = "/var/lib/offsite/vendor"
//!     tls = { ca = "/etc/offsite/tls/ca.pem", cert = "/etc/offsite/tls/vendor-1.pem", key = "/etc/offsite/tls/vendor-1.key" }
//!     [[stores]]
//!     kind = "nas"
//!     address = "127.0.0.1:7201"
//!     name = "nas-1"
//! "#).unwrap();
//! config.validate().unwrap();
//! assert_eq!(config.advertised_address(), "127.0.0.1:7101");
//! ```

mod agent;
mod config;
pub mod departure;
mod draining;
pub mod earnings;
pub mod identity_key;
mod local_fat;
mod reconcile;
mod registration;
mod service;
mod store;
pub mod testing;
mod vendor;

pub use agent::{AgentError, VendorAgent};
pub use config::{ConfigError, StoreConfig, VendorConfig};
pub use local_fat::{LocalFat, LocalFatError, PieceRecord, PortionRecord};
pub use reconcile::Collected;
pub use store::{LocalStore, NasStore, NasTimeouts, PieceStore, StoreCapacity, StoreError};
pub use vendor::{Limits, Retired, ScrubPolicy, StoreUsage};
