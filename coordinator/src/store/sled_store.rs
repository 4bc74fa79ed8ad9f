//! The FAT on one disk with sled: every command is appended to the `fat-log`
//! tree under its index (big-endian u64, so keys sort by index) and flushed
//! before it is acknowledged; every `snapshot_every` commands the state is
//! written to the `fat-meta` tree (postcard, behind a format version byte) and
//! the log up to it removed. Opening loads the snapshot and replays the log.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, RwLock};

use super::{FatStore, ProposeError, StoreError};
use crate::fat::{Command, Fat, Outcome};

/// Version byte in front of every stored log entry and snapshot.
pub const FORMAT_VERSION: u8 = 1;

const LOG_TREE: &str = "fat-log";
const META_TREE: &str = "fat-meta";
const SNAPSHOT_KEY: &str = "snapshot";

/// The FAT persisted in a sled database.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    snapshot_every: u64,
    /// Serialises writes; holds the index of the last snapshot.
    writer: Mutex<u64>,
    state: RwLock<Applied>,
}

struct Applied {
    fat: Fat,
    index: u64,
}

/// The stored snapshot: the state after applying the log up to `index`.
#[derive(Deserialize)]
struct SnapshotFile {
    index: u64,
    fat: Fat,
}

/// The same, borrowed for writing.
#[derive(Serialize)]
struct SnapshotRef<'a> {
    index: u64,
    fat: &'a Fat,
}

impl SledStore {
    /// Opens (or creates) the store in `dir`, loading the last snapshot and
    /// replaying the log after it. `snapshot_every` is how many commands go
    /// between snapshots.
    pub fn open(dir: &Path, snapshot_every: u64) -> Result<Self, StoreError> {
        let io = |action| {
            let path = dir.to_path_buf();
            move |source| StoreError::Io {
                path,
                action,
                source,
            }
        };
        let db = sled::Config::new()
            .path(dir)
            .open()
            .map_err(io("open the database"))?;
        let log = db.open_tree(LOG_TREE).map_err(io("open the log"))?;
        let meta = db
            .open_tree(META_TREE)
            .map_err(io("open the snapshot tree"))?;
        let inner = Inner {
            path: dir.to_path_buf(),
            db,
            log,
            meta,
            snapshot_every: snapshot_every.max(1),
            writer: Mutex::new(0),
            state: RwLock::new(Applied {
                fat: Fat::default(),
                index: 0,
            }),
        };
        let (applied, snapshot_index) = inner.recover()?;
        tracing::info!(
            path = %dir.display(),
            snapshot_index,
            applied_index = applied.index,
            "FAT store opened"
        );
        let inner = Inner {
            writer: Mutex::new(snapshot_index),
            state: RwLock::new(applied),
            ..inner
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }
}

impl FatStore for SledStore {
    async fn propose(&self, command: Command) -> Result<Outcome, ProposeError> {
        // A spawned task runs to the end even if the caller gives up, so the
        // log and the state in memory never part ways.
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move { inner.propose(command).await })
            .await
            .map_err(|_| StoreError::Stopped)?
    }

    async fn read<T, F>(&self, f: F) -> T
    where
        F: FnOnce(&Fat) -> T + Send,
        T: Send,
    {
        let applied = self.inner.state.read().await;
        f(&applied.fat)
    }

    async fn applied_index(&self) -> u64 {
        self.inner.state.read().await.index
    }
}

impl Inner {
    fn io(&self, action: &'static str) -> impl FnOnce(sled::Error) -> StoreError + '_ {
        move |source| StoreError::Io {
            path: self.path.clone(),
            action,
            source,
        }
    }

    fn corrupt(&self, what: String, problem: impl ToString) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            what,
            problem: problem.to_string(),
        }
    }

    /// Loads the snapshot and replays the log after it.
    fn recover(&self) -> Result<(Applied, u64), StoreError> {
        let mut applied = match self
            .meta
            .get(SNAPSHOT_KEY)
            .map_err(self.io("read the snapshot"))?
        {
            Some(bytes) => {
                let file: SnapshotFile =
                    decode(&bytes).map_err(|e| self.corrupt("snapshot".into(), e))?;
                Applied {
                    fat: file.fat,
                    index: file.index,
                }
            }
            None => Applied {
                fat: Fat::default(),
                index: 0,
            },
        };
        let snapshot_index = applied.index;
        self.truncate_log(snapshot_index)?;
        for entry in self.log.iter() {
            let (key, value) = entry.map_err(self.io("read the log"))?;
            let index =
                key_index(&key).ok_or_else(|| self.corrupt("log key".into(), "not 8 bytes"))?;
            if index != applied.index + 1 {
                return Err(self.corrupt(
                    format!("log entry {index}"),
                    format!("expected entry {} next", applied.index + 1),
                ));
            }
            let command: Command =
                decode(&value).map_err(|e| self.corrupt(format!("log entry {index}"), e))?;
            // A refused command is refused again on replay and changes nothing.
            let _ = applied.fat.apply(command);
            applied.index = index;
        }
        Ok((applied, snapshot_index))
    }

    async fn propose(&self, command: Command) -> Result<Outcome, ProposeError> {
        let mut snapshot_index = self.writer.lock().await;
        let index = self.state.read().await.index + 1;
        let kind = command.kind();
        let bytes = encode(&command).map_err(|e| self.corrupt(format!("command {kind}"), e))?;
        let key = index.to_be_bytes();
        self.log
            .insert(key, bytes)
            .map_err(self.io("append to the log"))?;
        if let Err(source) = self.db.flush_async().await {
            // Not acknowledged, so not applied; the next command takes this index.
            let _ = self.log.remove(key);
            return Err(self.io("flush the log")(source).into());
        }
        let outcome = {
            let mut applied = self.state.write().await;
            applied.index = index;
            applied.fat.apply(command)
        };
        tracing::debug!(index, kind, ok = outcome.is_ok(), "command applied");
        if index - *snapshot_index >= self.snapshot_every {
            match self.snapshot(index).await {
                Ok(()) => *snapshot_index = index,
                Err(e) => {
                    tracing::warn!(index, error = %e, "FAT snapshot failed; the log keeps growing until one succeeds")
                }
            }
        }
        Ok(outcome?)
    }

    /// Writes the state at `index` and removes the log up to it.
    async fn snapshot(&self, index: u64) -> Result<(), StoreError> {
        let bytes = {
            let applied = self.state.read().await;
            let file = SnapshotRef {
                index,
                fat: &applied.fat,
            };
            encode(&file).map_err(|e| self.corrupt("snapshot".into(), e))?
        };
        self.meta
            .insert(SNAPSHOT_KEY, bytes)
            .map_err(self.io("write the snapshot"))?;
        self.db
            .flush_async()
            .await
            .map_err(self.io("flush the snapshot"))?;
        self.truncate_log(index)?;
        self.db
            .flush_async()
            .await
            .map_err(self.io("flush the log"))?;
        tracing::info!(index, "FAT snapshot written, log truncated");
        Ok(())
    }

    fn truncate_log(&self, up_to: u64) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for key in self.log.range(..=up_to.to_be_bytes()).keys() {
            batch.remove(key.map_err(self.io("read the log"))?);
        }
        self.log
            .apply_batch(batch)
            .map_err(self.io("truncate the log"))
    }
}

fn key_index(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    let mut bytes = vec![FORMAT_VERSION];
    bytes.extend(postcard::to_stdvec(value)?);
    Ok(bytes)
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, body)) => postcard::from_bytes(body).map_err(|e| e.to_string()),
        Some((version, _)) => Err(format!(
            "format version {version}, but this build reads version {FORMAT_VERSION}"
        )),
        None => Err("empty record".into()),
    }
}
