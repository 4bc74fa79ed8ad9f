//! The FAT store: the seam between the gRPC services and the replicated
//! FAT. A store takes a proposed [`Command`] and answers with its
//! [`Outcome`] once a majority of the coordinator group has it on disk, and
//! lets callers read the state, linearizably or from this replica.
//! [`RaftStore`](crate::raft::RaftStore) is the implementation (a group of one
//! is a group too).

use std::future::Future;

use crate::fat::{Command, Fat, FatError, Outcome};

/// A durable, replicated home for the FAT.
pub trait FatStore: Send + Sync + 'static {
    /// Applies `command` and returns its outcome once it is committed. A
    /// refused command changed nothing; one the leader's check refuses
    /// (`Fat::check`) makes no log entry.
    fn propose(
        &self,
        command: Command,
    ) -> impl Future<Output = Result<Outcome, ProposeError>> + Send;

    /// Runs `f` on a state that includes every command committed before the
    /// call (a linearizable read).
    fn read<T, F>(&self, f: F) -> impl Future<Output = Result<T, StoreError>> + Send
    where
        F: FnOnce(&Fat) -> T + Send,
        T: Send;

    /// Runs `f` on this replica's state, which may lag the group's.
    fn read_local<T, F>(&self, f: F) -> T
    where
        F: FnOnce(&Fat) -> T;

    /// The index of the last log entry this replica applied.
    fn applied_index(&self) -> u64;

    /// Whether this replica leads the group (background work runs there).
    fn is_leader(&self) -> bool;
}

/// Why a proposal did not produce an outcome.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// The FAT refused the command; nothing changed.
    #[error(transparent)]
    Refused(#[from] FatError),
    /// The store could not commit the command.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The coordinator group could not serve the call, sorted by what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Fewer than a majority of the coordinators are up and connected.
    #[error(
        "no quorum: {reachable} of {members} coordinators reachable{unreachable}; the FAT \
         cannot change until a majority is back, and nothing was half-applied; start or \
         reconnect the missing coordinators, then retry"
    )]
    NoQuorum {
        reachable: usize,
        members: usize,
        /// ` (unreachable: 2 at host:port, ...)`, or empty.
        unreachable: String,
    },
    /// A majority is reachable but the call did not finish in time.
    #[error(
        "the coordinator group did not commit the call within {waited_ms} ms{leader}; it may \
         still apply; retry with the same request id"
    )]
    Timeout { waited_ms: u64, leader: String },
    /// The leader could not be reached from this coordinator.
    #[error(
        "the coordinator leader {leader} at {address} did not answer: {problem}; retry, or \
         ask another coordinator"
    )]
    Leader {
        leader: u64,
        address: String,
        problem: String,
    },
    /// The group refused a membership change.
    #[error("{0}")]
    Membership(String),
    /// This coordinator stopped (shut down, or its disk failed).
    #[error("this coordinator stopped ({0}); check its log and disk, then restart it")]
    Stopped(String),
}

#[cfg(test)]
pub(crate) mod suite;
