//! The coordinator group: the FAT replicated on three coordinators with
//! openraft. Every FAT command is an entry of the Raft log, applied by every
//! replica once a majority has it on disk.
//!
//! - [`log_store`]: the Raft log and vote on sled (flushed before acknowledged).
//! - [`state_machine`]: the FAT as openraft's state machine, with snapshots.
//! - [`network`]: the peer protocol's client side: openraft's messages over
//!   our gRPC `Raft` service, and a follower's forwarded proposals, read
//!   indexes and membership changes to the leader.
//! - [`convert`]: the group's domain types to and from their messages.
//! - [`rpc`]: the server side of the `Raft` service (peer traffic only).
//! - [`admin`]: initialising the group, membership changes, its status
//!   (served to operators by the `Admin` service).
//! - [`member`]: a member's address and certificate name, and which
//!   certificates the membership admits.
//! - [`group`]: [`RaftStore`], the [`FatStore`](crate::store::FatStore) that
//!   proposes through the leader and reads linearizably.
//!
//! Terms: a *member* is a coordinator in the group's membership (a *voter*
//! counts towards the majority, a *learner* only follows the log); the
//! *leader* is the one voter that appends to the log.

mod admin;
pub(crate) mod codec;
#[cfg(test)]
mod conformance;
mod convert;
mod group;
mod health;
// openraft's error types are large, and its traits return them.
#[allow(clippy::result_large_err)]
mod log_store;
mod member;
// openraft's error types are large, and its traits return them.
#[allow(clippy::result_large_err)]
mod network;
mod rpc;
// openraft's error types are large, and its traits return them.
#[allow(clippy::result_large_err)]
mod state_machine;

use std::io::Cursor;

use crate::fat::{Command, FatError, Outcome};

pub use admin::{GroupStatus, MemberStatus, MembershipChange};
#[cfg(test)]
pub(crate) use group::{open_db, LOCK_WAIT};
pub use group::{GroupSettings, RaftStore};
pub use member::{check_member_name, MemberAddr};
pub(crate) use network::FORWARDED_KEY;
pub use network::MAX_RAFT_MESSAGE_BYTES;
pub(crate) use rpc::RaftService;

/// A coordinator's id in the group.
pub type NodeId = u64;

/// What applying one log entry produced: the FAT's answer for a command,
/// nothing for openraft's own entries (blank, membership).
pub type Applied = Option<Result<Outcome, FatError>>;

openraft::declare_raft_types!(
    /// openraft's types for the coordinator group.
    pub TypeConfig:
        D = Command,
        R = Applied,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);
