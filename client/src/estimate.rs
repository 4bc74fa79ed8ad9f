//! How much a backup (or a repack) has left to read: the estimate (a stat
//! walk of the tree, run on its own thread alongside the backup) less what
//! the backup has read so far. The uploader sizes its reservations from it
//! and the progress bar shows it; it sits beside both, so neither the
//! pipeline (`backup`) nor the uploader (`upload`) borrows from the other.
//! The walk starts at once; a reservation waits at most a second for the
//! estimate before it sizes itself on a guess.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::filter::Filter;
use crate::progress::Progress;

/// Bytes a backup (or a repack) still has to upload, before compression.
pub struct Remaining {
    /// `None` until the estimate is known. The sender's end belongs to the
    /// estimating thread: if that thread gives up, panics or never starts,
    /// the channel closes and no one is left waiting.
    estimate: watch::Receiver<Option<u64>>,
    done: AtomicU64,
}

impl Remaining {
    /// An amount known up front (a repack knows what it will copy).
    pub fn known(bytes: u64) -> Arc<Self> {
        let (_, estimate) = watch::channel(Some(bytes));
        Arc::new(Self {
            estimate,
            done: AtomicU64::new(0),
        })
    }

    /// Starts estimating `paths` on a thread of its own, which also sets the
    /// progress bar's total. The thread gives up as soon as every clone of
    /// the returned value is dropped (the backup ended before it).
    pub fn estimate(paths: Vec<PathBuf>, filter: Arc<Filter>, progress: Progress) -> Arc<Self> {
        let (sender, estimate) = watch::channel(None);
        let started = std::thread::Builder::new()
            .name("offsite-estimate".into())
            .spawn(move || {
                let total = estimate_until(&paths, &filter, || sender.is_closed());
                if let Some(total) = total {
                    progress.set_total(total);
                    sender.send_replace(Some(total));
                }
            });
        if let Err(e) = started {
            // The sender went with the closure: waiters see no estimate.
            tracing::warn!(error = %e, "cannot start the size estimate; reservations will grow as needed");
        }
        Arc::new(Self {
            estimate,
            done: AtomicU64::new(0),
        })
    }

    /// Counts `bytes` as done (read, or unchanged since the parent).
    pub fn done(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The bytes left. Waits up to `patience` for the estimate; without it
    /// (a tree too large to stat in that time, or no estimate at all) the
    /// guess is as much again as was done so far.
    pub async fn left(&self, patience: Duration) -> u64 {
        let mut estimate = self.estimate.clone();
        let known = tokio::time::timeout(patience, estimate.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(|total| total.ok().and_then(|total| *total));
        // Read after the wait: the walk went on meanwhile.
        let done = self.done.load(Ordering::Relaxed);
        known.map_or(done, |total| total.saturating_sub(done))
    }
}

/// Sums the sizes of the regular files the walk will back up under `paths`
/// (symlinks not followed; excludes, `--exclude-if-present` and
/// `--one-file-system` applied as the walk applies them).
#[cfg(test)]
pub fn estimate_bytes(paths: &[PathBuf], filter: &Filter) -> u64 {
    estimate_until(paths, filter, || false).unwrap_or(0)
}

/// [`estimate_bytes`], or `None` once `give_up` says so (asked per directory).
fn estimate_until(paths: &[PathBuf], filter: &Filter, give_up: impl Fn() -> bool) -> Option<u64> {
    let mut total = 0u64;
    for root in paths {
        let root = std::path::absolute(root).unwrap_or_else(|_| root.clone());
        let Ok(meta) = root.symlink_metadata() else {
            continue;
        };
        let device = meta.dev();
        let mut stack = vec![(root, meta)];
        while let Some((path, meta)) = stack.pop() {
            if meta.is_file() {
                total = total.saturating_add(meta.len());
                continue;
            }
            if !meta.is_dir() {
                continue;
            }
            if give_up() {
                return None;
            }
            let Ok(list) = std::fs::read_dir(&path) else {
                continue;
            };
            for entry in list.filter_map(|e| e.ok()) {
                let child = entry.path();
                if filter.excludes(&child) {
                    continue;
                }
                // Through the directory's handle, like the walk.
                let Ok(meta) = entry.metadata() else {
                    continue;
                };
                if !(meta.is_dir() && filter.leaves_out_dir(&child, meta.dev(), device)) {
                    stack.push((child, meta));
                }
            }
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn what_is_left_is_the_estimate_less_what_is_done() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![0u8; 1000]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b"), vec![0u8; 500]).unwrap();
        let remaining = Remaining::estimate(
            vec![dir.path().to_path_buf()],
            Arc::new(Filter::default()),
            Progress::hidden(),
        );
        // Counted before the estimate is known, and still subtracted.
        remaining.done(300);
        let patience = Duration::from_secs(30);
        assert_eq!(remaining.left(patience).await, 1200);
        remaining.done(2000);
        assert_eq!(remaining.left(patience).await, 0, "never below zero");
        assert_eq!(Remaining::known(77).left(patience).await, 77);
    }

    #[tokio::test]
    async fn without_the_estimate_the_guess_is_what_was_done() {
        let (sender, estimate) = watch::channel(None);
        let remaining = Remaining {
            estimate,
            done: AtomicU64::new(0),
        };
        remaining.done(500);
        assert_eq!(remaining.left(Duration::from_millis(10)).await, 500);
        drop(sender);
        assert_eq!(remaining.left(Duration::from_secs(30)).await, 500);
    }

    #[test]
    fn an_estimate_nobody_waits_for_gives_up() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b"), vec![0u8; 500]).unwrap();
        let paths = [dir.path().to_path_buf()];
        assert_eq!(estimate_until(&paths, &Filter::default(), || true), None);
        assert_eq!(
            estimate_until(&paths, &Filter::default(), || false),
            Some(500)
        );
    }
}
