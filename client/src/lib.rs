//! Offsite's backup client: chunk, compress, encrypt and pack files into
//! portions, reserve room at the coordinator group, probe the candidate
//! vendors, upload each portion along a route of vendors, commit the final
//! FAT with the snapshot record, and restore it all; and the commands around
//! it: retention (`forget`), `check`, `diff`, `find`, excludes and tags.
//!
//! ```
//! use offsite_client::{blob, Keys};
//! let keys = Keys::from_data_key(&[1u8; 32]);
//! let id = blob::BlobId::of(&keys, b"chunk");
//! let sealed = blob::seal(&keys, blob::BlobKind::Data, &id, b"chunk").unwrap();
//! assert_eq!(blob::open(&keys, blob::BlobKind::Data, &id, &sealed).unwrap(), b"chunk");
//! ```

pub mod backup;
pub mod blob;
mod cache;
pub mod chunker;
pub mod config;
mod connect;
pub mod coordinator;
mod estimate;
pub mod filecache;
pub mod filter;
pub mod index_cache;
pub mod keys;
pub mod manifest;
pub mod policy;
pub mod portion;
mod probe;
pub mod progress;
mod records;
pub mod restore;
pub mod resume;
mod session;
pub mod tree;
pub mod upload;
mod vendor;

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod tests;

pub use config::ClientConfig;
pub use keys::{KeyError, Keys};
pub use session::{
    entries as snapshot_entries, has_tags, is_no_quorum, BackupOptions, BackupSummary, Change,
    CheckOptions, CheckReport, Diff, Found, Problem, PruneOptions, PruneSummary, Session,
    SessionError, Unlocking, DEFAULT_REPACK_BELOW,
};
