//! Offsite's backup client: chunk, compress, encrypt and pack files into
//! portions, reserve room at the coordinator group, probe the candidate
//! vendors, upload each portion along a route of vendors, commit the final
//! FAT with the snapshot record, and restore it all; and the commands around
//! it: retention (`forget`), `check`, `diff`, `find`, excludes and tags.
//!
//! The crate is in rooms by concern, each depending only on those before it:
//! `format` (the stored formats: blobs, chunks, portions, trees, manifests,
//! the key file), `local` (the cache and the other state kept on this
//! machine), `market` (the coordinator group and the vendors: connecting,
//! uploading, fetching), and `session` (the commands, one [`Session`] per
//! invocation, with the backup pipeline and the restore). `config`,
//! `filter`, `progress`, `estimate` and `usage` (what the tenant pays) serve
//! them all. Only what the `offsite`
//! CLI needs is exported.
//!
//! ```
//! use offsite_client::{blob, Keys};
//! let keys = Keys::from_data_key(&[1u8; 32]);
//! let id = blob::BlobId::of(&keys, b"chunk");
//! let sealed = blob::seal(&keys, blob::BlobKind::Data, &id, b"chunk").unwrap();
//! assert_eq!(blob::open(&keys, blob::BlobKind::Data, &id, &sealed).unwrap(), b"chunk");
//! ```

mod accounts;
mod calendar;
mod config;
mod estimate;
mod filter;
mod format;
mod local;
mod market;
mod progress;
mod session;
mod usage;

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod tests;

/// Blobs, the sealed unit of the stored format: enough to seal and open one
/// (the crate example) and to choose a compression.
pub mod blob {
    pub use crate::format::blob::{open, seal, BlobId, BlobKind, Compression};
}

/// The key file: creating it, its passphrase, changing it.
pub mod keys {
    pub use crate::format::keys::{
        change_passphrase, init_key_file, new_passphrase, passphrase, KdfParams,
    };
}

pub use config::{ClientConfig, PriceLimits};
pub use filter::ExcludeOptions;
pub use format::keys::{KeyError, Keys};
pub use session::forget::{parse_duration, Decision, Policy};
pub use session::hosts;
pub use session::mount;
pub use session::restore::dump::{Archive, DumpStats};
pub use session::restore::Overwrite;
pub use session::{
    entries as snapshot_entries, has_tags, is_no_quorum, split_spec, BackupOptions, CheckOptions,
    PruneOptions, RestoreRequest, Session, SessionError, DEFAULT_REPACK_BELOW,
};
pub use usage::{HostUsage, UsageReport, VendorUsage};
