//! The FAT store: the seam between the gRPC services and the durable,
//! (later) replicated FAT. A store takes a proposed [`Command`] and answers
//! with its [`Outcome`] once the command is durable, and lets callers read the
//! state. [`SledStore`] keeps a command log and snapshots on one disk; the
//! coordinator-group issue puts openraft behind the same trait.

mod sled_store;

use std::future::Future;
use std::path::PathBuf;

use crate::fat::{Command, Fat, FatError, Outcome};

pub use sled_store::{SledStore, FORMAT_VERSION};

/// A durable home for the FAT.
pub trait FatStore: Send + Sync + 'static {
    /// Applies `command` and returns its outcome once it is durable. A refused
    /// command changed nothing.
    fn propose(
        &self,
        command: Command,
    ) -> impl Future<Output = Result<Outcome, ProposeError>> + Send;

    /// Runs `f` on the current state.
    fn read<T, F>(&self, f: F) -> impl Future<Output = T> + Send
    where
        F: FnOnce(&Fat) -> T + Send,
        T: Send;

    /// The index of the last command applied.
    fn applied_index(&self) -> impl Future<Output = u64> + Send;
}

/// Why a proposal did not produce an outcome.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// The FAT refused the command; nothing changed.
    #[error(transparent)]
    Refused(#[from] FatError),
    /// The store could not make the command durable.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The store's disk failed or holds something it cannot read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the data dir failed; the command may not be durable.
    #[error(
        "the FAT store in {path} failed to {action}: {source}; check the disk and the \
         data dir's permissions, then retry"
    )]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: sled::Error,
    },
    /// The data dir holds a record this build cannot read.
    #[error(
        "the FAT store in {path} holds an unreadable {what}: {problem}; restore the data dir \
         from a backup, or run a coordinator build that wrote it"
    )]
    Corrupt {
        path: PathBuf,
        what: String,
        problem: String,
    },
    /// The background task that applies commands stopped.
    #[error("the FAT store stopped while applying a command; restart the coordinator")]
    Stopped,
}

#[cfg(test)]
pub(crate) mod suite;
