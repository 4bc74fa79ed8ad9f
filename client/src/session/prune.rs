//! `prune`: releases in the FAT every committed portion of the tenant that no
//! remaining snapshot needs; the coordinator then queues its deletion at the
//! vendors holding it. A portion is needed when a snapshot record names it
//! or the snapshot's manifest indexes a blob in it (both are read, so a
//! record that misses a portion its manifest uses cannot lose data). The
//! coordinator refuses to release a portion a snapshot record names, so a
//! snapshot saved meanwhile is safe too.
//!
//! Needed portions whose live blobs fill less than `repack_below` percent of
//! them are repacked first ([`super::repack`]): their live blobs move into
//! new portions, the snapshots that used them are rewritten to the new
//! locations, and the old portions, now unneeded, are released with the rest.
//!
//! An unneeded portion committed after the newest remaining snapshot started
//! may belong to a backup still running (its snapshot is not saved yet); it
//! is kept for a later prune (unless this prune repacked it). A backup that
//! saves its snapshot while a prune runs makes the coordinator refuse the
//! release of what it needs; the prune then plans again.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use offsite_proto::limits::MAX_RELEASE_PER_CALL;
use offsite_proto::{ListedPortion, PortionId, SnapshotRecord};

use super::{Session, SessionError};
use crate::format::keys::Keys;
use crate::format::manifest::Manifest;
use crate::format::portion::HEADER_BYTES;
use crate::market::coordinator::{CoordinatorError, Refusal};
use crate::market::fetch::VendorSource;
use crate::session::restore::fetch_manifest;

/// How often a prune is planned again when a snapshot saved meanwhile
/// needs a portion it meant to release.
const PRUNE_ATTEMPTS: usize = 3;

/// Default of `--repack-below`.
pub const DEFAULT_REPACK_BELOW: u8 = 50;

/// The blob ranges (offset -> length) the remaining snapshots use in each
/// portion they need.
pub(super) type Live = HashMap<PortionId, HashMap<u64, u64>>;

/// What to prune.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Say what would be released and repacked; change nothing.
    pub dry_run: bool,
    /// Repack needed portions whose live blobs fill less than this percent
    /// of them (0: never, 100: any portion with an unused byte).
    pub repack_below: u8,
}

impl Default for PruneOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            repack_below: DEFAULT_REPACK_BELOW,
        }
    }
}

/// What a prune did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneSummary {
    pub dry_run: bool,
    /// Remaining snapshots.
    pub snapshots: u64,
    /// The tenant's committed portions before the prune, and their bytes.
    pub portions_total: u64,
    pub bytes_total: u64,
    /// Portions some remaining snapshot needs (after a repack: the new set).
    pub portions_needed: u64,
    pub bytes_needed: u64,
    /// Unneeded portions kept because they are newer than the newest snapshot.
    pub portions_kept_recent: u64,
    /// Portions released (dry: that would be, repacked ones not counted),
    /// and their bytes before replication.
    pub portions_released: u64,
    pub bytes_released: u64,
    /// Mostly unused portions repacked, and the live bytes copied out of them.
    pub portions_repacked: u64,
    pub bytes_repacked: u64,
    /// New portions the repack wrote, and the snapshots moved onto them.
    pub new_portions: u64,
    pub snapshots_rewritten: u64,
    /// Why the repack was skipped (no room for its copies), if it was.
    pub repack_skipped: Option<String>,
}

/// The tenant's portions sorted by what a prune does with them (id -> size).
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    needed: BTreeMap<PortionId, u64>,
    release: BTreeMap<PortionId, u64>,
    recent: BTreeMap<PortionId, u64>,
    /// Needed portions to repack, with their live bytes.
    repack: BTreeMap<PortionId, u64>,
}

impl Session {
    /// A snapshot's manifest, from the cache or else fetched (and cached). A
    /// manifest that cannot be read stops the prune, since what it needs is
    /// then unknown.
    pub(super) async fn manifest_of(
        &self,
        keys: &Keys,
        record: &SnapshotRecord,
    ) -> Result<Manifest, SessionError> {
        if let Some(manifest) = self.cached_manifest(keys, record) {
            return Ok(manifest);
        }
        let locations = self
            .coordinator
            .locate_portions(&[record.manifest.portion])
            .await?;
        let at = locations
            .first()
            .ok_or(SessionError::NoLocation(record.manifest.portion))?;
        let source =
            VendorSource::probe(self.pool.clone(), self.config.tenant.clone(), &locations).await;
        let (manifest, sealed) = fetch_manifest(&source, keys, record, at).await?;
        self.cache_manifest(record.id, &sealed);
        Ok(manifest)
    }

    /// Every portion the remaining snapshots need, with the blob ranges in
    /// it they use: what their records name, their manifests' indexes and
    /// the manifests themselves.
    async fn live_ranges(
        &self,
        keys: &Keys,
        snapshots: &[SnapshotRecord],
    ) -> Result<Live, SessionError> {
        let mut live = Live::new();
        self.visit_manifests(keys, snapshots, |record, manifest| {
            for p in &record.portions {
                live.entry(*p).or_default();
            }
            let m = record.manifest;
            live.entry(m.portion)
                .or_default()
                .insert(m.offset, m.length);
            for l in manifest?.index.values() {
                live.entry(l.portion)
                    .or_default()
                    .insert(l.offset, l.length);
            }
            Ok(())
        })
        .await?;
        Ok(live)
    }

    /// Every committed portion of the tenant, page by page.
    async fn all_portions(&self) -> Result<Vec<ListedPortion>, SessionError> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let (page, more) = self.coordinator.list_portions(after).await?;
            after = page.last().map(|p| p.portion);
            all.extend(page);
            if !more || after.is_none() {
                return Ok(all);
            }
        }
    }

    /// What the tenant's portions are now: the remaining snapshots (oldest
    /// first), the summary of a prune and its plan.
    async fn prune_plan(
        &self,
        keys: &Keys,
        repack_below: u8,
    ) -> Result<(Vec<SnapshotRecord>, PruneSummary, Plan), SessionError> {
        // Straight from the coordinator: a cached list could miss a snapshot.
        let mut snapshots = self.coordinator.list_snapshots().await?;
        snapshots.sort_by_key(|s| (s.time_unix_ms, s.id));
        let live = self.live_ranges(keys, &snapshots).await?;
        let portions = self.all_portions().await?;
        let newest = snapshots.last().map(|s| s.time_unix_ms);
        let plan = plan(&portions, &live, newest, repack_below);
        let summary = PruneSummary {
            snapshots: snapshots.len() as u64,
            portions_total: portions.len() as u64,
            bytes_total: portions.iter().map(|p| p.size).sum(),
            portions_needed: plan.needed.len() as u64,
            bytes_needed: plan.needed.values().sum(),
            portions_kept_recent: plan.recent.len() as u64,
            portions_released: plan.release.len() as u64,
            bytes_released: plan.release.values().sum(),
            portions_repacked: plan.repack.len() as u64,
            bytes_repacked: plan.repack.values().sum(),
            ..PruneSummary::default()
        };
        Ok((snapshots, summary, plan))
    }

    /// Repacks mostly unused portions, then releases every portion no
    /// remaining snapshot needs (or, dry, counts both). When the coordinator
    /// refuses a release because a snapshot saved meanwhile needs one of its
    /// portions, the plan is made again.
    pub async fn prune(
        &self,
        keys: &Keys,
        options: &PruneOptions,
    ) -> Result<PruneSummary, SessionError> {
        let (snapshots, mut summary, mut plan) =
            self.prune_plan(keys, options.repack_below).await?;
        summary.dry_run = options.dry_run;
        if options.dry_run {
            return Ok(summary);
        }
        let mut moved: BTreeSet<PortionId> = plan.repack.keys().copied().collect();
        if !moved.is_empty() {
            match self.repack(keys, &snapshots, &moved).await {
                Ok(repacked) => {
                    summary.new_portions = repacked.new_portions;
                    summary.snapshots_rewritten = repacked.snapshots;
                }
                // A full marketplace (or a tenant at its quota) has no room
                // for the repacked copies; what no snapshot needs is still
                // released, which is what frees the room.
                Err(e) if e.is_out_of_room() => {
                    tracing::warn!(error = %e, "no room to repack; releasing only the portions no snapshot needs");
                    summary.repack_skipped = Some(e.to_string());
                    summary.portions_repacked = 0;
                    summary.bytes_repacked = 0;
                    moved.clear();
                }
                Err(e) => return Err(e),
            }
            // The snapshots may have changed (or a failed repack left new,
            // unneeded portions): what is needed now, without repacking again.
            plan = self.prune_plan(keys, 0).await?.2.releasing(&moved);
        }
        let (mut released, mut bytes) = (0u64, 0u64);
        let mut attempt = 1;
        loop {
            let ids: Vec<PortionId> = plan.release.keys().copied().collect();
            let mut refused = None;
            for batch in ids.chunks(MAX_RELEASE_PER_CALL) {
                match self.coordinator.release_portions(batch).await {
                    Ok((portions, size)) => {
                        released += portions;
                        bytes += size;
                        tracing::info!(portions, bytes = size, "portions released");
                    }
                    Err(
                        e @ CoordinatorError::Refused {
                            refusal: Refusal::Conflict,
                            ..
                        },
                    ) if attempt < PRUNE_ATTEMPTS => {
                        refused = Some(e);
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let Some(e) = refused else { break };
            tracing::warn!(error = %e, attempt, "a snapshot was saved meanwhile; planning the prune again");
            attempt += 1;
            plan = self.prune_plan(keys, 0).await?.2.releasing(&moved);
        }
        summary.portions_needed = plan.needed.len() as u64;
        summary.bytes_needed = plan.needed.values().sum();
        summary.portions_kept_recent = plan.recent.len() as u64;
        summary.portions_released = released;
        summary.bytes_released = bytes;
        Ok(summary)
    }
}

impl Plan {
    /// Also releases the portions this prune repacked, however recent: they
    /// are unneeded because the prune itself moved their blobs away.
    fn releasing(mut self, repacked: &BTreeSet<PortionId>) -> Self {
        for p in repacked {
            if let Some(size) = self.recent.remove(p) {
                self.release.insert(*p, size);
            }
        }
        self
    }
}

/// Needed portions stay (and are repacked when their live blobs fill less
/// than `repack_below` percent of them); unneeded ones committed at or after
/// `newest` (the start of the newest remaining snapshot) may be a running
/// backup's and stay too; the rest are released.
fn plan(portions: &[ListedPortion], live: &Live, newest: Option<u64>, repack_below: u8) -> Plan {
    let mut plan = Plan::default();
    for p in portions {
        if let Some(ranges) = live.get(&p.portion) {
            plan.needed.insert(p.portion, p.size);
            let used: u64 = ranges.values().sum();
            let room = p.size.saturating_sub(HEADER_BYTES as u64);
            if u128::from(used) * 100 < u128::from(room) * u128::from(repack_below.min(100)) {
                plan.repack.insert(p.portion, used);
            }
        } else if newest.is_some_and(|t| p.committed_unix_ms >= t) {
            plan.recent.insert(p.portion, p.size);
        } else {
            plan.release.insert(p.portion, p.size);
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(size: u64, committed_unix_ms: u64) -> ListedPortion {
        ListedPortion {
            portion: PortionId::random(),
            size,
            committed_unix_ms,
        }
    }

    #[test]
    fn the_plan_keeps_needed_and_recent_portions() {
        let (needed, old, recent) = (listed(10, 100), listed(20, 150), listed(30, 250));
        let live: Live = [(needed.portion, HashMap::from([(8, 2)]))].into();
        let all = [needed.clone(), old.clone(), recent.clone()];
        let p = plan(&all, &live, Some(200), 0);
        assert_eq!(p.needed, [(needed.portion, 10)].into());
        assert_eq!(p.release, [(old.portion, 20)].into());
        assert_eq!(p.recent, [(recent.portion, 30)].into());
        // A portion this prune repacked goes, however recent.
        let p = p.releasing(&[recent.portion].into());
        assert!(p.recent.is_empty());
        assert_eq!(p.release.len(), 2);
        assert!(p.repack.is_empty());
        // With no snapshot left nothing is needed and nothing is recent.
        let p = plan(&all, &Live::new(), None, 50);
        assert_eq!(p.release.len(), 3);
        assert!(p.recent.is_empty());
    }

    #[test]
    fn portions_mostly_unused_are_repacked() {
        let (full, half, sparse) = (listed(108, 1), listed(108, 1), listed(108, 1));
        let live: Live = [
            (full.portion, HashMap::from([(8, 60), (68, 40)])),
            (half.portion, HashMap::from([(8, 50)])),
            (sparse.portion, HashMap::from([(50, 10)])),
        ]
        .into();
        let all = [full.clone(), half.clone(), sparse.clone()];
        let p = plan(&all, &live, None, 50);
        assert_eq!(p.repack, [(sparse.portion, 10)].into());
        let p = plan(&all, &live, None, 100);
        assert_eq!(p.repack, [(half.portion, 50), (sparse.portion, 10)].into());
        assert!(plan(&all, &live, None, 0).repack.is_empty());
        assert_eq!(plan(&all, &live, None, 100).needed.len(), 3);
    }
}
