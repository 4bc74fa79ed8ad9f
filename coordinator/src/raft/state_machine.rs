//! The FAT as openraft's state machine. The FAT itself lives in memory
//! ([`SharedFat`], read by the services); what makes it durable is the Raft
//! log plus the last snapshot: a snapshot (the FAT at a log index, postcard
//! behind a format version byte) is written to the `raft-snapshot` tree
//! before openraft may purge the log up to it, and opening a coordinator
//! loads that snapshot, after which openraft re-applies the log after it.
//!
//! `apply` is deterministic: the same entries give the same FAT on every
//! replica (time and choices are inside each command).

use std::io::Cursor;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::codec::{decode_stored, encode};
use super::{Applied, NodeId, TypeConfig};
use crate::fat::decode_snapshot;
use crate::fat::Fat;

const SNAPSHOT_TREE: &str = "raft-snapshot";
const SNAPSHOT_KEY: &str = "current";

type StoreResult<T> = Result<T, StorageError<NodeId>>;
type Membership = StoredMembership<NodeId, BasicNode>;

/// The replica's FAT and what it has applied, shared with the services.
#[derive(Debug, Default)]
pub struct FatState {
    pub fat: Fat,
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: Membership,
    /// Index of the last snapshot taken or installed (0: none).
    pub snapshot_index: u64,
}

/// The FAT state behind a lock. Locks are held only for plain reads and
/// for applying a batch, never across an await.
#[derive(Debug, Clone, Default)]
pub struct SharedFat(Arc<RwLock<FatState>>);

impl SharedFat {
    /// The state for reading (a poisoned lock still holds a consistent
    /// state: `apply` mutates nothing on refusal).
    pub fn read(&self) -> RwLockReadGuard<'_, FatState> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, FatState> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A snapshot as stored on disk: openraft's metadata and the encoded FAT.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

/// openraft's handle on the state machine.
pub struct StateMachine {
    db: sled::Db,
    snapshots: sled::Tree,
    state: SharedFat,
}

fn io_err(e: impl ToString) -> AnyError {
    AnyError::error(e.to_string())
}

impl StateMachine {
    /// Opens the snapshot tree of `db` and loads the last snapshot, if any,
    /// into a new [`SharedFat`].
    pub fn open(db: &sled::Db) -> Result<Self, String> {
        let snapshots = db.open_tree(SNAPSHOT_TREE).map_err(|e| e.to_string())?;
        let machine = Self {
            db: db.clone(),
            snapshots,
            state: SharedFat::default(),
        };
        if let Some(stored) = machine.stored().map_err(|e| e.to_string())? {
            let fat: Fat = decode_snapshot(&stored.data).map_err(|e| format!("snapshot: {e}"))?;
            let mut state = machine.state.write();
            state.snapshot_index = stored.meta.last_log_id.map_or(0, |id| id.index);
            state.last_applied = stored.meta.last_log_id;
            state.membership = stored.meta.last_membership;
            state.fat = fat;
            tracing::info!(index = state.snapshot_index, "FAT loaded from its snapshot");
        }
        Ok(machine)
    }

    pub fn shared(&self) -> SharedFat {
        self.state.clone()
    }

    fn stored(&self) -> StoreResult<Option<StoredSnapshot>> {
        let Some(bytes) = self
            .snapshots
            .get(SNAPSHOT_KEY)
            .map_err(|e| StorageIOError::read_snapshot(None, io_err(e)))?
        else {
            return Ok(None);
        };
        let stored =
            decode_stored(&bytes).map_err(|e| StorageIOError::read_snapshot(None, io_err(e)))?;
        Ok(Some(stored))
    }
}

/// Writes `stored` as the current snapshot and flushes it.
async fn persist(db: &sled::Db, tree: &sled::Tree, stored: &StoredSnapshot) -> StoreResult<()> {
    let signature = Some(stored.meta.signature());
    let bytes =
        encode(stored).map_err(|e| StorageIOError::write_snapshot(signature.clone(), io_err(e)))?;
    tree.insert(SNAPSHOT_KEY, bytes)
        .map_err(|e| StorageIOError::write_snapshot(signature.clone(), io_err(e)))?;
    db.flush_async()
        .await
        .map_err(|e| StorageIOError::write_snapshot(signature, io_err(e)))?;
    Ok(())
}

/// Builds a snapshot from a copy of the FAT taken when the builder was made,
/// so commands applied meanwhile do not leak into it.
pub struct SnapshotBuilder {
    db: sled::Db,
    snapshots: sled::Tree,
    state: SharedFat,
    fat: Fat,
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StoreResult<Snapshot<TypeConfig>> {
        let data =
            encode(&self.fat).map_err(|e| StorageIOError::write_snapshot(None, io_err(e)))?;
        let snapshot_id = match self.last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, data.len()),
            None => format!("empty-{}", data.len()),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        persist(&self.db, &self.snapshots, &stored).await?;
        let index = self.last_applied.map_or(0, |id| id.index);
        self.state.write().snapshot_index = index;
        tracing::info!(index, bytes = stored.data.len(), "FAT snapshot written");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> StoreResult<(Option<LogId<NodeId>>, Membership)> {
        let state = self.state.read();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StoreResult<Vec<Applied>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut state = self.state.write();
        let mut replies = Vec::new();
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => replies.push(None),
                EntryPayload::Normal(command) => replies.push(Some(state.fat.apply(command))),
                EntryPayload::Membership(membership) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), membership);
                    replies.push(None);
                }
            }
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let state = self.state.read();
        SnapshotBuilder {
            db: self.db.clone(),
            snapshots: self.snapshots.clone(),
            state: self.state.clone(),
            fat: state.fat.clone(),
            last_applied: state.last_applied,
            membership: state.membership.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StoreResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StoreResult<()> {
        let data = snapshot.into_inner();
        let fat: Fat = decode_snapshot(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), io_err(e)))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        persist(&self.db, &self.snapshots, &stored).await?;
        let mut state = self.state.write();
        state.fat = fat;
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        state.snapshot_index = meta.last_log_id.map_or(0, |id| id.index);
        tracing::info!(
            index = state.snapshot_index,
            "FAT snapshot installed from the leader"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot<TypeConfig>>> {
        Ok(self.stored()?.map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}
