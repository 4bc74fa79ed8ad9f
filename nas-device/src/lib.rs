//! The NAS device (`offsite-nas`): one piece store on one disk, served over
//! gRPC (`offsite.nas.Nas`) to its vendor, which puts, gets, deletes and stats
//! pieces and asks for the device's capacity.
//!
//! The library exposes the config and [`serve`], so tests start the real
//! server in-process; `main.rs` wires it to a listener and signals.
//!
//! ```
//! use offsite_identity::config::Config as _;
//! let config = offsite_nas::NasConfig::parse(
//!     r#"
//! data_dir = "/srv/nas"
//! allowed_vendor = "vendor-1"
//! tls = { ca = "/etc/offsite/tls/ca.pem", cert = "/etc/offsite/tls/nas-1.pem", key = "/etc/offsite/tls/nas-1.key" }
//! "#,
//! )
//! .unwrap();
//! assert!(config.validate().is_ok());
//! assert_eq!(config.listen.port(), 7201);
//! ```

mod config;
mod put;
mod server;
mod service;
mod status;

pub use config::{ConfigError, NasConfig};
pub use server::{serve, ServeError};
