//! Rewriting snapshot records after a repack: the portions a snapshot needs
//! (and where its manifest lives) change in one command, for several
//! snapshots at once, so no snapshot ever points at a mix of old and new
//! locations. Everything else about a snapshot stays as it was. The old
//! portions are released afterwards, once no record names them.

use std::collections::BTreeSet;

use offsite_proto::limits::MAX_SNAPSHOT_REWRITES;
use offsite_proto::SnapshotRecord;

use super::command::RewriteSnapshots;
use super::{Fat, FatError, Outcome};

/// True when two records differ only in where the snapshot's data lives.
fn same_snapshot(a: &SnapshotRecord, b: &SnapshotRecord) -> bool {
    a.id == b.id
        && a.host == b.host
        && a.time_unix_ms == b.time_unix_ms
        && a.paths == b.paths
        && a.tags == b.tags
        && a.logical_bytes == b.logical_bytes
        && a.file_count == b.file_count
}

impl Fat {
    pub(super) fn check_rewrite(&self, r: &RewriteSnapshots) -> Result<(), FatError> {
        if r.snapshots.len() > MAX_SNAPSHOT_REWRITES {
            return Err(FatError::invalid(format!(
                "{} snapshots in one rewrite, more than {MAX_SNAPSHOT_REWRITES}",
                r.snapshots.len()
            )));
        }
        let stored = self.snapshots.get(&r.tenant);
        let held = self.portions.get(&r.tenant);
        let mut seen = BTreeSet::new();
        for new in &r.snapshots {
            if !seen.insert(new.id) {
                return Err(FatError::invalid(format!(
                    "snapshot {} is rewritten twice in one call",
                    new.id
                )));
            }
            let old = stored.and_then(|s| s.get(&new.id)).ok_or_else(|| {
                FatError::NotFound(format!("tenant {} has no snapshot {}", r.tenant, new.id))
            })?;
            if !same_snapshot(old, new) {
                return Err(FatError::invalid(format!(
                    "the rewrite of snapshot {} changes more than its portions and manifest; \
                     a rewrite only moves a snapshot's data",
                    new.id
                )));
            }
            for id in new.portions.iter().chain([&new.manifest.portion]) {
                if !held.is_some_and(|h| h.contains_key(id)) {
                    return Err(FatError::invalid(format!(
                        "snapshot {} would need portion {id}, which is not a committed portion \
                         of tenant {}; commit the portion first",
                        new.id, r.tenant
                    )));
                }
            }
            let size = held
                .and_then(|h| h.get(&new.manifest.portion))
                .map_or(0, |p| p.size);
            let end = new.manifest.offset.checked_add(new.manifest.length);
            if new.manifest.length == 0 || end.is_none_or(|end| end > size) {
                return Err(FatError::invalid(format!(
                    "the manifest of snapshot {} lies outside portion {} ({size} bytes)",
                    new.id, new.manifest.portion
                )));
            }
        }
        Ok(())
    }

    pub(super) fn rewrite_snapshots(&mut self, r: RewriteSnapshots) -> Result<Outcome, FatError> {
        self.check_rewrite(&r)?;
        let count = r.snapshots.len() as u64;
        if let Some(stored) = self.snapshots.get_mut(&r.tenant) {
            for new in r.snapshots {
                stored.insert(new.id, new);
            }
        }
        Ok(Outcome::SnapshotsRewritten { snapshots: count })
    }
}
