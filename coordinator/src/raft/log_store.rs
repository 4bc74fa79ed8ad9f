//! The Raft log and vote on sled. Log entries live in the `raft-log` tree
//! under their index (big-endian u64, so keys sort by index); the vote, the
//! committed log id and the last purged log id in `raft-meta`. Everything is
//! encoded with [`codec`](super::codec) behind a format version byte.
//!
//! Durability: the vote and appended entries are flushed to disk
//! (`flush_async`) before openraft is told they are stored, since a vote or
//! an entry acknowledged and then lost breaks Raft's safety.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};

use super::codec::{decode_stored, encode};
use super::{NodeId, TypeConfig};

const LOG_TREE: &str = "raft-log";
const META_TREE: &str = "raft-meta";
const VOTE_KEY: &str = "vote";
const COMMITTED_KEY: &str = "committed";
const PURGED_KEY: &str = "last-purged";

type StoreResult<T> = Result<T, StorageError<NodeId>>;

/// The Raft log and vote of one coordinator. Clones share the same trees.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
}

fn io_err(e: impl ToString) -> AnyError {
    AnyError::error(e.to_string())
}

impl LogStore {
    /// Opens the log trees of `db`.
    pub fn open(db: &sled::Db) -> Result<Self, sled::Error> {
        Ok(Self {
            db: db.clone(),
            log: db.open_tree(LOG_TREE)?,
            meta: db.open_tree(META_TREE)?,
        })
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> StoreResult<Option<T>> {
        let bytes = self
            .meta
            .get(key)
            .map_err(|e| StorageIOError::read(io_err(e)))?;
        bytes
            .map(|b| {
                decode_stored(&b).map_err(|e| StorageIOError::read(io_err(format!("{key}: {e}"))))
            })
            .transpose()
            .map_err(Into::into)
    }

    fn write_meta<T: serde::Serialize>(&self, key: &str, value: &T) -> StoreResult<()> {
        let bytes = encode(value).map_err(|e| StorageIOError::write(io_err(e)))?;
        self.meta
            .insert(key, bytes)
            .map_err(|e| StorageIOError::write(io_err(e)))?;
        Ok(())
    }

    async fn flush(&self) -> StoreResult<()> {
        self.db
            .flush_async()
            .await
            .map_err(|e| StorageIOError::write(io_err(e)))?;
        Ok(())
    }

    fn last_entry_log_id(&self) -> StoreResult<Option<LogId<NodeId>>> {
        match self
            .log
            .last()
            .map_err(|e| StorageIOError::read_logs(io_err(e)))?
        {
            Some((_, value)) => {
                let entry: Entry<TypeConfig> =
                    decode_stored(&value).map_err(|e| StorageIOError::read_logs(io_err(e)))?;
                Ok(Some(entry.log_id))
            }
            None => Ok(None),
        }
    }
}

fn bound_key(bound: Bound<&u64>) -> Bound<[u8; 8]> {
    match bound {
        Bound::Included(i) => Bound::Included(i.to_be_bytes()),
        Bound::Excluded(i) => Bound::Excluded(i.to_be_bytes()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<Entry<TypeConfig>>> {
        let keys = (bound_key(range.start_bound()), bound_key(range.end_bound()));
        let mut entries = Vec::new();
        for item in self.log.range(keys) {
            let (key, value) = item.map_err(|e| StorageIOError::read_logs(io_err(e)))?;
            let entry: Entry<TypeConfig> = decode_stored(&value).map_err(|e| {
                StorageIOError::read_logs(io_err(format!("log entry {key:?}: {e}")))
            })?;
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StoreResult<LogState<TypeConfig>> {
        // Stored as written by `purge`: an `Option<LogId>`.
        let last_purged_log_id = self
            .read_meta::<Option<LogId<NodeId>>>(PURGED_KEY)?
            .flatten();
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StoreResult<()> {
        self.write_meta(VOTE_KEY, vote)
            .map_err(|e| StorageIOError::write_vote(io_err(e)))?;
        self.flush().await
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<NodeId>>> {
        self.read_meta(VOTE_KEY)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StoreResult<()> {
        // Not flushed: a lost committed id is learnt again from the leader.
        self.write_meta(COMMITTED_KEY, &committed)
    }

    async fn read_committed(&mut self) -> StoreResult<Option<LogId<NodeId>>> {
        Ok(self
            .read_meta::<Option<LogId<NodeId>>>(COMMITTED_KEY)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = encode(&entry)
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, io_err(e)))?;
            batch.insert(&entry.log_id.index.to_be_bytes(), bytes);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(io_err(e)))?;
        // "Appended" means on disk: flush before the callback (openraft#618).
        let flushed = self.db.flush_async().await;
        let result = flushed
            .as_ref()
            .map(|_| ())
            .map_err(|e| std::io::Error::other(e.to_string()));
        callback.log_io_completed(result);
        flushed.map_err(|e| StorageIOError::write_logs(io_err(e)))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        tracing::debug!(from = log_id.index, "truncating the Raft log");
        self.remove_range(log_id.index.to_be_bytes()..)?;
        self.flush().await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        tracing::debug!(up_to = log_id.index, "purging the Raft log");
        // The purge mark first: a crash in between leaves entries that are
        // ignored, never a gap that looks like lost entries.
        self.write_meta(PURGED_KEY, &Some(log_id))?;
        self.flush().await?;
        self.remove_range(..=log_id.index.to_be_bytes())?;
        self.flush().await
    }
}

impl LogStore {
    fn remove_range<R: RangeBounds<[u8; 8]>>(&self, range: R) -> StoreResult<()> {
        let mut batch = sled::Batch::default();
        for key in self.log.range(range).keys() {
            batch.remove(key.map_err(|e| StorageIOError::write_logs(io_err(e)))?);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(io_err(e)))?;
        Ok(())
    }
}
