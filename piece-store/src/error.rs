//! What can go wrong with a piece directory, sorted by what the caller should
//! do: fetch another replica (`NotFound`, `Corrupt`), resend correct bytes
//! (`HashMismatch`, `TooLarge`, `Conflict`), place the piece elsewhere
//! (`Full`), or fix the machine or the request (`Io`, whose source says which).

use std::path::PathBuf;

use offsite_proto::{Hash, PieceId};

/// An error from [`crate::PieceDir`].
#[derive(Debug, thiserror::Error)]
pub enum PieceError {
    #[error("piece {0} is not in this piece directory; fetch it from another replica")]
    NotFound(PieceId),

    #[error("piece {id} is corrupt: {problem}; fetch another replica and store it again")]
    Corrupt { id: PieceId, problem: String },

    #[error(
        "piece bytes hash to {actual}, not the expected {expected}; \
         resend the piece (it was damaged on the way) or fix the expected hash"
    )]
    HashMismatch { expected: Hash, actual: Hash },

    #[error(
        "piece of {needed} bytes does not fit: {free} bytes free; \
         place it on another store or raise cap_bytes"
    )]
    Full { needed: u64, free: u64 },

    #[error(
        "piece of {size} bytes is larger than the {max} bytes allowed; \
         re-chunk the portion into smaller pieces",
        max = offsite_proto::limits::MAX_PIECE_BYTES
    )]
    TooLarge { size: u64 },

    #[error(
        "piece {0} is already stored with other bytes (another hash); \
         pieces are immutable: delete it first or use a new piece id"
    )]
    Conflict(PieceId),

    #[error("I/O error on {}: {source}; check the disk, its permissions and free space", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl PieceError {
    /// Wraps an I/O error with the path it happened on.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> PieceError {
        let path = path.into();
        move |source| PieceError::Io { path, source }
    }

    /// An `Io` error that did not come from the operating system; `problem`
    /// says what to do.
    pub(crate) fn refused(
        path: impl Into<PathBuf>,
        kind: std::io::ErrorKind,
        problem: String,
    ) -> Self {
        PieceError::Io {
            path: path.into(),
            source: std::io::Error::new(kind, problem),
        }
    }
}
