//! Pieces as files in one directory: versioned, hash-checked, written
//! atomically. A piece is a vendor's re-chunk of a portion; this crate is the
//! piece store behind every NAS device (`offsite-nas`) and behind a vendor's
//! local directories.
//!
//! Each piece is `<root>/pieces/<id[0..2]>/<id>`: magic `OFPIECE` + version
//! byte 1, the 32-byte blake3 hash, the data length (u64 LE), the data.
//! Writes go through `<root>/tmp/`, are fsynced, renamed into place and the
//! directory fsynced. [`PieceDir::put`] refuses bytes that do not hash to the
//! expected hash; [`PieceDir::get`] refuses a piece whose file does not check.
//!
//! ```
//! use offsite_piece_store::{PieceDir, PieceError};
//! use offsite_proto::{Hash, PieceId};
//!
//! let root = tempfile::tempdir().unwrap();
//! let dir = PieceDir::open(root.path(), Some(1 << 20)).unwrap();
//! let id = PieceId::new("p-0").unwrap();
//! let data = b"a piece of a portion";
//! dir.put(&id, data, &Hash::of(data)).unwrap();
//! assert_eq!(dir.get(&id).unwrap(), data);
//! assert_eq!(dir.capacity().unwrap().used_bytes, data.len() as u64);
//! assert!(matches!(
//!     dir.put(&PieceId::new("p-1").unwrap(), data, &Hash::of(b"other")),
//!     Err(PieceError::HashMismatch { .. })
//! ));
//! ```

mod blocking;
mod dir;
mod error;
mod format;
mod fsutil;
mod space;

pub use dir::{PieceDir, PieceStat};
pub use error::PieceError;
pub use space::{Capacity, FsSpace};
