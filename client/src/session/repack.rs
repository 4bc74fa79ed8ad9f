//! Repack, the second half of `prune`: the live blobs of mostly unused
//! portions are fetched (each portion hash-checked, each blob opened, so a
//! damaged blob is never copied), packed into new portions, uploaded along
//! routes like a backup's and committed; then the snapshots that used the
//! old portions get new manifests (same snapshot id and root, the moved
//! blobs at their new locations) and their records are rewritten at the
//! coordinator in one command. Only after that can the old portions be
//! released, so a crash at any point leaves every snapshot pointing at
//! committed data: before the rewrite at the old portions, after it at the
//! new ones (the portions left unneeded are released by the next prune).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use offsite_proto::limits::MAX_SNAPSHOT_REWRITES;
use offsite_proto::{BlobLocation, PortionId, SnapshotRecord};

use super::{Session, SessionError};
use crate::estimate::Remaining;
use crate::format::blob::{kind_of, open, seal, BlobId, BlobKind};
use crate::format::keys::Keys;
use crate::format::manifest::Manifest;
use crate::format::portion::{blob_at, SplitPacker};
use crate::market::fetch::{PortionSource, VendorSource};
use crate::market::upload::{UploadSettings, Uploader};
use crate::session::restore::RestoreError;

/// What a repack did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Repacked {
    pub new_portions: u64,
    pub snapshots: u64,
}

/// Blob id by (portion, offset) for every moved blob, from the manifests.
type Moving = BTreeMap<PortionId, BTreeMap<(u64, u64), BlobId>>;

/// True when the snapshot uses one of the moved portions: its record or its
/// manifest names one.
fn affected(record: &SnapshotRecord, manifest: &Manifest, moved: &BTreeSet<PortionId>) -> bool {
    moved.contains(&record.manifest.portion)
        || record.portions.iter().any(|p| moved.contains(p))
        || manifest.index.values().any(|l| moved.contains(&l.portion))
}

impl Session {
    /// Moves the live blobs of `moved` into new portions and rewrites the
    /// snapshots that used them; the old portions are then unneeded.
    pub(super) async fn repack(
        &self,
        keys: &Keys,
        snapshots: &[SnapshotRecord],
        moved: &BTreeSet<PortionId>,
    ) -> Result<Repacked, SessionError> {
        let mut touched = Vec::new();
        let mut moving = Moving::new();
        for record in snapshots {
            let manifest = self.manifest_of(keys, record).await?;
            if !affected(record, &manifest, moved) {
                continue;
            }
            touched.push(record);
            for (id, l) in manifest.index {
                if moved.contains(&l.portion) {
                    moving
                        .entry(l.portion)
                        .or_default()
                        .insert((l.offset, l.length), id);
                }
            }
        }
        let bytes: u64 = moving.values().flat_map(|m| m.keys()).map(|(_, l)| l).sum();
        let settings = UploadSettings {
            tenant: self.config.tenant.clone(),
            replication: self.config.replication as usize,
            piece_bytes: self.config.piece_bytes,
            checkpoint_bytes: self.config.checkpoint_bytes,
            limits: self.config.price_limits(),
            journal: None,
        };
        let remaining = Remaining::known(bytes);
        let mut uploader = Uploader::new(
            self.coordinator.clone(),
            self.pool.clone(),
            settings,
            remaining.clone(),
        );
        let mut packer = SplitPacker::new(self.config.portion_bytes);
        let written = self
            .copy_and_rewrite(
                keys,
                &touched,
                &moving,
                &mut packer,
                &mut uploader,
                &remaining,
            )
            .await;
        let rewritten = match written {
            Ok(rewritten) => rewritten,
            Err(e) => {
                uploader.abort().await;
                return Err(e);
            }
        };
        uploader.finish_portions().await?;
        let records: Vec<SnapshotRecord> = rewritten.iter().map(|(r, _)| r.clone()).collect();
        for batch in records.chunks(MAX_SNAPSHOT_REWRITES) {
            self.coordinator.rewrite_snapshots(batch).await?;
        }
        for (record, sealed) in &rewritten {
            self.cache_manifest(record.id, sealed);
            if let Err(e) = self.locations(record.id).await {
                tracing::warn!(snapshot = %record.id, error = %e, "final FAT of the rewritten snapshot not cached");
            }
        }
        if let Err(e) = self.snapshots().await {
            tracing::warn!(error = %e, "snapshot list not cached after the repack");
        }
        tracing::info!(
            portions = moved.len(),
            bytes,
            new_portions = packer.finished,
            snapshots = rewritten.len(),
            "repacked"
        );
        Ok(Repacked {
            new_portions: packer.finished,
            snapshots: rewritten.len() as u64,
        })
    }

    /// Copies the moved blobs into new portions (uploading each as it
    /// closes), then seals each touched snapshot's new manifest; the new
    /// records with their sealed manifests.
    async fn copy_and_rewrite(
        &self,
        keys: &Keys,
        touched: &[&SnapshotRecord],
        moving: &Moving,
        packer: &mut SplitPacker,
        uploader: &mut Uploader,
        remaining: &Remaining,
    ) -> Result<Vec<(SnapshotRecord, Vec<u8>)>, SessionError> {
        let mut relocated: HashMap<(PortionId, u64), BlobLocation> = HashMap::new();
        let ids: Vec<PortionId> = moving.keys().copied().collect();
        let locations = self.coordinator.locate_portions(&ids).await?;
        let source =
            VendorSource::probe(self.pool.clone(), self.config.tenant.clone(), &locations).await;
        let mut bytes = Vec::new();
        for (portion, blobs) in moving {
            let at = locations
                .iter()
                .find(|l| l.portion == *portion)
                .ok_or(SessionError::NoLocation(*portion))?;
            bytes = source
                .portion(at, std::mem::take(&mut bytes))
                .await
                .map_err(RestoreError::from)?;
            for ((offset, length), id) in blobs {
                let sealed =
                    blob_at(*portion, &bytes, *offset, *length).map_err(RestoreError::from)?;
                let kind = kind_of(sealed).ok_or(RestoreError::NotInManifest(*id))?;
                open(keys, kind, id, sealed).map_err(RestoreError::from)?;
                let (location, closed) = packer.add(kind, *id, sealed);
                relocated.insert((*portion, *offset), location);
                if let Some(closed) = closed {
                    uploader.put(closed).await?;
                }
                remaining.done(*length);
            }
        }
        let mut rewritten = Vec::with_capacity(touched.len());
        for record in touched {
            let old = self.manifest_of(keys, record).await?;
            let mut index = old.index;
            for (id, l) in index.iter_mut() {
                if moving.contains_key(&l.portion) {
                    *l = *relocated
                        .get(&(l.portion, l.offset))
                        .ok_or(RestoreError::NotInManifest(*id))?;
                }
            }
            let manifest = Manifest {
                snapshot: record.id,
                root: old.root,
                time_unix_ms: old.time_unix_ms,
                index,
            };
            let id = BlobId::manifest(keys, record.id);
            let sealed = seal(keys, BlobKind::Manifest, &id, &manifest.encode())
                .map_err(RestoreError::from)?;
            let (at, closed) = packer.add(BlobKind::Manifest, id, &sealed);
            if let Some(closed) = closed {
                uploader.put(closed).await?;
            }
            let mut new = (*record).clone();
            new.manifest = at;
            new.portions = manifest.portions(at.portion);
            rewritten.push((new, sealed));
        }
        for portion in packer.take_rest() {
            uploader.put(portion).await?;
        }
        Ok(rewritten)
    }
}
