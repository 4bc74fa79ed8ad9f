//! The vendor's local FAT: for every portion it holds, which pieces it was
//! re-chunked into, on which store, with each piece's size and hash, and the
//! reservation (or repair) it was last stored under, which garbage
//! collection asks the coordinator group about. Kept in sled, keyed by
//! (tenant, portion), each record versioned; a write is flushed before a
//! receipt is given for it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use offsite_proto::{Hash, PieceId, PortionId, ReservationId, TenantId};
use serde::{Deserialize, Serialize};

/// Version byte in front of every stored record. Version 2 added the
/// reservation; version 1 records are read with none.
const RECORD_VERSION: u8 = 2;
const RECORD_VERSION_1: u8 = 1;
const PORTIONS_TREE: &str = "portions";

/// Where one piece of a portion lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceRecord {
    pub id: PieceId,
    /// Index into the config's `[[stores]]`.
    pub store: u32,
    pub size: u64,
    pub hash: Hash,
}

/// A portion this vendor holds for a tenant, and its pieces in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortionRecord {
    pub tenant: TenantId,
    pub portion: PortionId,
    pub hash: Hash,
    pub size: u64,
    pub piece_size: u64,
    pub pieces: Vec<PieceRecord>,
    /// The reservation, or the repair, the portion was last stored under
    /// (`None` in records written before version 2).
    pub reservation: Option<ReservationId>,
}

/// A record of version 1, before the reservation.
#[derive(Deserialize)]
struct PortionRecordV1 {
    tenant: TenantId,
    portion: PortionId,
    hash: Hash,
    size: u64,
    piece_size: u64,
    pieces: Vec<PieceRecord>,
}

impl From<PortionRecordV1> for PortionRecord {
    fn from(r: PortionRecordV1) -> Self {
        Self {
            tenant: r.tenant,
            portion: r.portion,
            hash: r.hash,
            size: r.size,
            piece_size: r.piece_size,
            pieces: r.pieces,
            reservation: None,
        }
    }
}

/// The local FAT cannot be read or written; an operator should check the disk.
#[derive(Debug, thiserror::Error)]
pub enum LocalFatError {
    #[error("local FAT at {path}: {source}; check the disk and the data_dir permissions")]
    Db { path: PathBuf, source: sled::Error },
    #[error("local FAT record {key} is unreadable: {detail}; restore data_dir from a backup or remove the record")]
    Corrupt { key: String, detail: String },
}

/// The local FAT: (tenant, portion) -> [`PortionRecord`].
pub struct LocalFat {
    path: PathBuf,
    tree: sled::Tree,
    stored_bytes: AtomicU64,
}

impl LocalFat {
    /// Opens (creating if needed) the local FAT under `dir` and totals what it holds.
    pub fn open(dir: &Path) -> Result<Self, LocalFatError> {
        let path = dir.join("local-fat");
        let db = sled::open(&path).map_err(|source| LocalFatError::Db {
            path: path.clone(),
            source,
        })?;
        let tree = db
            .open_tree(PORTIONS_TREE)
            .map_err(|source| LocalFatError::Db {
                path: path.clone(),
                source,
            })?;
        let fat = Self {
            path,
            tree,
            stored_bytes: AtomicU64::new(0),
        };
        let mut total = 0u64;
        for entry in fat.tree.iter() {
            let (key, value) = entry.map_err(|e| fat.db_error(e))?;
            total = total.saturating_add(decode(&key, &value)?.size);
        }
        fat.stored_bytes.store(total, Ordering::Relaxed);
        Ok(fat)
    }

    fn db_error(&self, source: sled::Error) -> LocalFatError {
        LocalFatError::Db {
            path: self.path.clone(),
            source,
        }
    }

    /// The record of `portion` held for `tenant`, if any.
    pub fn get(
        &self,
        tenant: &TenantId,
        portion: &PortionId,
    ) -> Result<Option<PortionRecord>, LocalFatError> {
        let key = key(tenant, portion);
        match self.tree.get(&key).map_err(|e| self.db_error(e))? {
            Some(value) => Ok(Some(decode(&key, &value)?)),
            None => Ok(None),
        }
    }

    /// Records a portion and flushes it to disk before returning.
    pub async fn insert(&self, record: &PortionRecord) -> Result<(), LocalFatError> {
        let key = key(&record.tenant, &record.portion);
        let mut value = vec![RECORD_VERSION];
        let body = postcard::to_stdvec(record).map_err(|e| LocalFatError::Corrupt {
            key: display_key(&key),
            detail: format!("cannot encode: {e}"),
        })?;
        value.extend_from_slice(&body);
        let old = self
            .tree
            .insert(&key, value)
            .map_err(|e| self.db_error(e))?;
        self.adjust(
            old.as_deref().map(|v| decode(&key, v)).transpose()?,
            Some(record.size),
        );
        self.flush().await
    }

    /// Removes a portion's record, flushed; returns what it was.
    pub async fn remove(
        &self,
        tenant: &TenantId,
        portion: &PortionId,
    ) -> Result<Option<PortionRecord>, LocalFatError> {
        let key = key(tenant, portion);
        let old = self.tree.remove(&key).map_err(|e| self.db_error(e))?;
        let old = old.as_deref().map(|v| decode(&key, v)).transpose()?;
        self.adjust(old.clone(), None);
        self.flush().await?;
        Ok(old)
    }

    /// Every record, in key order (tenant, then portion), read as the
    /// iteration reaches it: records written meanwhile may or may not be
    /// seen. An unreadable record ends the iteration with its error.
    pub fn records(&self) -> impl Iterator<Item = Result<PortionRecord, LocalFatError>> + '_ {
        self.tree.iter().map(|entry| {
            let (key, value) = entry.map_err(|e| self.db_error(e))?;
            decode(&key, &value)
        })
    }

    /// The first record after `after` in key order (the first of all for
    /// `None`): a cursor that survives records coming and going between
    /// calls, as the scrub walks the local FAT.
    pub fn record_after(
        &self,
        after: Option<(&TenantId, &PortionId)>,
    ) -> Result<Option<PortionRecord>, LocalFatError> {
        let entry = match after {
            None => self.tree.iter().next(),
            Some((tenant, portion)) => {
                let from = key(tenant, portion);
                self.tree
                    .range::<&[u8], _>((
                        std::ops::Bound::Excluded(from.as_slice()),
                        std::ops::Bound::Unbounded,
                    ))
                    .next()
            }
        };
        match entry {
            None => Ok(None),
            Some(entry) => {
                let (key, value) = entry.map_err(|e| self.db_error(e))?;
                decode(&key, &value).map(Some)
            }
        }
    }

    /// Where the local FAT lives on disk.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of portions held, over all tenants.
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes.load(Ordering::Relaxed)
    }

    fn adjust(&self, old: Option<PortionRecord>, new: Option<u64>) {
        if let Some(old) = old {
            self.stored_bytes.fetch_sub(old.size, Ordering::Relaxed);
        }
        if let Some(new) = new {
            self.stored_bytes.fetch_add(new, Ordering::Relaxed);
        }
    }

    async fn flush(&self) -> Result<(), LocalFatError> {
        self.tree
            .flush_async()
            .await
            .map(|_| ())
            .map_err(|e| self.db_error(e))
    }
}

/// `tenant` then `/` (never in a tenant id) then the portion's 16 bytes.
fn key(tenant: &TenantId, portion: &PortionId) -> Vec<u8> {
    let mut key = tenant.as_str().as_bytes().to_vec();
    key.push(b'/');
    key.extend_from_slice(portion.as_bytes());
    key
}

fn display_key(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

fn decode(key: &[u8], value: &[u8]) -> Result<PortionRecord, LocalFatError> {
    let corrupt = |detail: String| LocalFatError::Corrupt {
        key: display_key(key),
        detail,
    };
    match value.split_first() {
        Some((&RECORD_VERSION, body)) => {
            postcard::from_bytes(body).map_err(|e| corrupt(format!("cannot decode: {e}")))
        }
        Some((&RECORD_VERSION_1, body)) => postcard::from_bytes::<PortionRecordV1>(body)
            .map(PortionRecord::from)
            .map_err(|e| corrupt(format!("cannot decode a version 1 record: {e}"))),
        Some((version, _)) => Err(corrupt(format!(
            "record version {version}, this vendor reads version {RECORD_VERSION}; upgrade offsite-vendor"
        ))),
        None => Err(corrupt("empty record".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(tenant: &str, size: u64) -> PortionRecord {
        PortionRecord {
            tenant: TenantId::new(tenant).unwrap(),
            portion: PortionId::random(),
            hash: Hash::of(b"portion"),
            size,
            piece_size: 100,
            pieces: vec![PieceRecord {
                id: PieceId::new("abcd").unwrap(),
                store: 1,
                size,
                hash: Hash::of(b"piece"),
            }],
            reservation: Some(ReservationId::random()),
        }
    }

    #[tokio::test]
    async fn records_survive_a_reopen_and_are_totalled() {
        let dir = tempfile::tempdir().unwrap();
        let a = record("acme", 70);
        let b = record("globex", 30);
        {
            let fat = LocalFat::open(dir.path()).unwrap();
            fat.insert(&a).await.unwrap();
            fat.insert(&b).await.unwrap();
            fat.insert(&b).await.unwrap();
            assert_eq!(fat.stored_bytes(), 100);
        }
        let fat = LocalFat::open(dir.path()).unwrap();
        assert_eq!(fat.stored_bytes(), 100);
        assert_eq!(fat.get(&a.tenant, &a.portion).unwrap(), Some(a.clone()));
        // Keys are per tenant: another tenant does not see it.
        assert_eq!(fat.get(&b.tenant, &a.portion).unwrap(), None);
        assert_eq!(
            fat.remove(&a.tenant, &a.portion).await.unwrap(),
            Some(a.clone())
        );
        assert_eq!(fat.stored_bytes(), 30);
        assert_eq!(fat.remove(&a.tenant, &a.portion).await.unwrap(), None);
    }

    /// A record as version 1 wrote it: the same fields without the
    /// reservation.
    #[derive(Serialize)]
    struct WrittenByVersion1<'a> {
        tenant: &'a TenantId,
        portion: &'a PortionId,
        hash: &'a Hash,
        size: u64,
        piece_size: u64,
        pieces: &'a [PieceRecord],
    }

    #[tokio::test]
    async fn version_1_records_are_read_without_a_reservation() {
        let dir = tempfile::tempdir().unwrap();
        let mut old = record("acme", 70);
        old.reservation = None;
        let body = postcard::to_stdvec(&WrittenByVersion1 {
            tenant: &old.tenant,
            portion: &old.portion,
            hash: &old.hash,
            size: old.size,
            piece_size: old.piece_size,
            pieces: &old.pieces,
        })
        .unwrap();
        {
            let db = sled::open(dir.path().join("local-fat")).unwrap();
            let tree = db.open_tree(PORTIONS_TREE).unwrap();
            tree.insert(key(&old.tenant, &old.portion), [&[1u8][..], &body].concat())
                .unwrap();
            tree.flush().unwrap();
        }
        let fat = LocalFat::open(dir.path()).unwrap();
        assert_eq!(fat.stored_bytes(), 70);
        assert_eq!(
            fat.get(&old.tenant, &old.portion).unwrap(),
            Some(old.clone())
        );
        let all: Vec<PortionRecord> = fat.records().map(Result::unwrap).collect();
        assert_eq!(all, vec![old]);
    }

    #[tokio::test]
    async fn the_cursor_visits_every_record_once_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let fat = LocalFat::open(dir.path()).unwrap();
        let records: Vec<PortionRecord> = (0..5)
            .map(|i| record(if i % 2 == 0 { "acme" } else { "globex" }, 10))
            .collect();
        for r in &records {
            fat.insert(r).await.unwrap();
        }
        let mut seen = Vec::new();
        let mut at = fat.record_after(None).unwrap();
        while let Some(r) = at {
            at = fat.record_after(Some((&r.tenant, &r.portion))).unwrap();
            seen.push(r);
        }
        assert_eq!(seen.len(), records.len());
        let mut keys: Vec<_> = seen.iter().map(|r| key(&r.tenant, &r.portion)).collect();
        let sorted = {
            let mut k = keys.clone();
            k.sort();
            k
        };
        assert_eq!(keys, sorted, "in key order");
        keys.dedup();
        assert_eq!(keys.len(), records.len(), "each once");
    }

    #[test]
    fn unknown_record_versions_are_refused() {
        let err = decode(b"k", &[9, 1, 2]).unwrap_err();
        assert!(err.to_string().contains("version 9"), "{err}");
        assert!(decode(b"k", &[]).is_err());
    }
}
