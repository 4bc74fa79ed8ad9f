//! The coordinator group with the local cache as its fallback, for the
//! commands that may answer offline (`snapshots`, `ls`, `restore`, `diff`,
//! `find`): each answer from the group is recorded in the cache, and when
//! no coordinator answers, the last one recorded is used instead and
//! [`CachedCoordinator::answered_from_cache`] says so. Commands whose answer
//! must be the group's (prune, check, commits) call the [`Coordinator`]
//! itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use offsite_proto::{PortionLocation, SnapshotId, SnapshotRecord};

use crate::local::cache::Cache;
use crate::market::coordinator::{Coordinator, CoordinatorError};

/// Why neither the group nor the cache could answer.
#[derive(Debug, thiserror::Error)]
pub enum CachedError {
    /// The group refused, or none answered and nothing is cached.
    #[error(transparent)]
    Coordinator(#[from] CoordinatorError),
    #[error("no coordinator answered and the final FAT of snapshot {0} is not cached; retry when the coordinators are reachable")]
    NotCached(SnapshotId),
}

/// The coordinator group, answered from the cache when it is unreachable.
pub struct CachedCoordinator {
    coordinator: Arc<Coordinator>,
    cache: Cache,
    /// Set once an answer came from the cache.
    from_cache: AtomicBool,
}

impl CachedCoordinator {
    pub fn new(coordinator: Arc<Coordinator>, cache: Cache) -> Self {
        Self {
            coordinator,
            cache,
            from_cache: AtomicBool::new(false),
        }
    }

    /// True when some answer came from the cache because no coordinator
    /// answered.
    pub fn answered_from_cache(&self) -> bool {
        self.from_cache.load(Ordering::Relaxed)
    }

    fn fell_back(&self) {
        self.from_cache.store(true, Ordering::Relaxed);
    }

    /// The tenant's snapshots, oldest first, recorded in the cache; the list
    /// last recorded when no coordinator answers.
    pub async fn list_snapshots(&self) -> Result<Vec<SnapshotRecord>, CachedError> {
        let mut list = match self.coordinator.list_snapshots().await {
            Ok(list) => list,
            Err(e @ CoordinatorError::Unreachable { .. }) => match self.cache.snapshots() {
                Some(list) => {
                    tracing::warn!(error = %e, "using the cached snapshot list");
                    self.fell_back();
                    list
                }
                None => return Err(e.into()),
            },
            Err(e) => return Err(e.into()),
        };
        list.sort_by_key(|s| (s.time_unix_ms, s.id));
        self.put_snapshots(&list);
        Ok(list)
    }

    /// A snapshot's final FAT (where each of its portions lives), recorded
    /// in the cache; the one recorded when no coordinator answers.
    pub async fn locations(&self, id: SnapshotId) -> Result<Vec<PortionLocation>, CachedError> {
        match self.coordinator.get_snapshot(id).await {
            Ok((_, locations)) => {
                if let Err(e) = self.cache.put_locations(id, &locations) {
                    tracing::warn!(error = %e, "final FAT not cached");
                }
                Ok(locations)
            }
            Err(e @ CoordinatorError::Unreachable { .. }) => {
                let cached = self.cache.locations(id).ok_or(CachedError::NotCached(id))?;
                tracing::warn!(error = %e, snapshot = %id, "using the cached final FAT");
                self.fell_back();
                Ok(cached)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Records a snapshot just committed in the cached list.
    pub fn committed(&self, record: SnapshotRecord) {
        let mut list = self.cache.snapshots().unwrap_or_default();
        list.push(record);
        self.put_snapshots(&list);
    }

    /// Forgets snapshots at the group (never offline), then drops what the
    /// cache holds about each and leaves them out of the cached list.
    pub async fn forget(&self, ids: &[SnapshotId]) -> Result<(), CachedError> {
        for id in ids {
            self.coordinator.forget(*id).await?;
            self.cache.forget(*id);
            tracing::info!(snapshot = %id, "forgot snapshot");
        }
        if let Some(list) = self.cache.snapshots() {
            let left: Vec<SnapshotRecord> =
                list.into_iter().filter(|s| !ids.contains(&s.id)).collect();
            self.put_snapshots(&left);
        }
        Ok(())
    }

    fn put_snapshots(&self, list: &[SnapshotRecord]) {
        if let Err(e) = self.cache.put_snapshots(list) {
            tracing::warn!(error = %e, "snapshot list not cached");
        }
    }
}

#[cfg(test)]
mod tests {
    use offsite_identity::pki::CertificateAuthority;
    use offsite_identity::{PeerIdentity, Role};

    use super::*;

    /// A group none of whose coordinators answers (nothing listens on
    /// port 1), over the cache in `dir`.
    fn unreachable(dir: &std::path::Path) -> CachedCoordinator {
        let tenant = PeerIdentity {
            role: Role::Tenant,
            name: "acme".into(),
        };
        let credentials = CertificateAuthority::generate()
            .unwrap()
            .credentials(&tenant)
            .unwrap();
        let coordinator = Coordinator::new(vec!["127.0.0.1:1".into()], credentials);
        CachedCoordinator::new(Arc::new(coordinator), Cache::new(dir.to_path_buf()))
    }

    /// Offline, the snapshot list and a final FAT come from the cache and
    /// say so; what was never cached is the group's error.
    #[tokio::test]
    async fn without_a_coordinator_answers_come_from_the_cache_or_say_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let group = unreachable(dir.path());
        let id = SnapshotId::random();
        assert!(matches!(
            group.list_snapshots().await,
            Err(CachedError::Coordinator(
                CoordinatorError::Unreachable { .. }
            ))
        ));
        assert!(matches!(group.locations(id).await, Err(CachedError::NotCached(i)) if i == id));
        assert!(!group.answered_from_cache());

        let cache = Cache::new(dir.path().to_path_buf());
        cache.put_snapshots(&[]).unwrap();
        cache.put_locations(id, &[]).unwrap();
        assert!(group.list_snapshots().await.unwrap().is_empty());
        assert!(group.answered_from_cache());
        assert!(group.locations(id).await.unwrap().is_empty());
    }
}
