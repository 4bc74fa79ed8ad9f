//! Scrubbing: in the background the vendor re-reads every piece of every
//! portion in its local FAT, one piece at a time, each checked against the
//! hash the local FAT recorded (`PieceStore::get` checks it), so a disk
//! that loses or damages pieces is found before a restore needs them.
//!
//! A pass walks the local FAT in key order and paces its reads (at the
//! bytes held now over 90% of `scrub_period_secs`) so that every piece held
//! when the pass starts is read within the period, never faster than
//! `scrub_bytes_per_sec` (so real
//! fetches are not starved); the next pass starts a period after this one
//! did. A portion stored during a pass, behind its cursor, is read by the
//! next. A piece that is missing or does not match its hash makes that
//! portion's copy bad: it is checked once more under the portion's lock
//! (a deletion may have taken it meanwhile), then kept for the next
//! capacity report ([`BadCopies`]), which has the coordinator make the copy
//! again from a healthy holder and then ask for this one's deletion. A
//! store that cannot answer right now (unreachable, busy) is no finding:
//! the piece is read again in the next pass.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use offsite_proto::{BadCopy, PortionId, TenantId};
use tokio::time::Instant;

use super::claim::ClaimKind;
use super::Vendor;
use crate::local_fat::{PieceRecord, PortionRecord};
use crate::store::StoreError;

/// Share of the period a pass is paced to take, leaving room for reads
/// that take longer than planned.
const PASS_SHARE_PERMILLE: u64 = 900;
/// An empty local FAT is looked at again after at most this.
const EMPTY_RECHECK: Duration = Duration::from_secs(60);
/// Bad copies kept for reports at most; more are found again next pass.
const MAX_PENDING: usize = 4 * offsite_proto::limits::MAX_BAD_COPIES_PER_REPORT;

/// How thoroughly and how gently the vendor scrubs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrubPolicy {
    /// Every piece is read within this (the pace of a pass).
    pub period: Duration,
    /// The read rate never goes above this.
    pub bytes_per_sec: u64,
}

/// The read rate a pass over `held_bytes` uses: enough to finish within
/// [`PASS_SHARE_PERMILLE`] of the period, at most the ceiling, at least 1.
pub(crate) fn pass_rate(held_bytes: u64, policy: &ScrubPolicy) -> u64 {
    let pass_ms = (policy.period.as_millis() as u64).saturating_mul(PASS_SHARE_PERMILLE) / 1000;
    let needed = (held_bytes as u128 * 1000).div_ceil(u128::from(pass_ms.max(1)));
    u64::try_from(needed)
        .unwrap_or(u64::MAX)
        .clamp(1, policy.bytes_per_sec.max(1))
}

/// How long reading `bytes` at `rate` bytes a second takes.
pub(crate) fn time_for(bytes: u64, rate: u64) -> Duration {
    Duration::from_secs_f64(bytes as f64 / rate.max(1) as f64)
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PassSummary {
    pub portions: u64,
    pub pieces: u64,
    pub bytes: u64,
    /// Portions found bad in this pass.
    pub bad: u64,
    /// Pieces not read because their store could not answer.
    pub skipped: u64,
}

/// What reading one piece found.
enum Finding {
    Good,
    /// The piece is missing or damaged (why).
    Bad(String),
    /// Not judged: the store could not answer, or the portion went away.
    Skipped,
}

/// Bad copies found and not yet reported to the coordinator group; kept
/// across failed reports, dropped once a report carried them.
#[derive(Default)]
pub(crate) struct BadCopies {
    pending: Mutex<BTreeMap<(TenantId, PortionId), String>>,
}

impl BadCopies {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(TenantId, PortionId), String>> {
        self.pending
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Keeps a bad copy for the next report; `false` when it was known.
    pub(crate) fn add(&self, tenant: &TenantId, portion: PortionId, reason: String) -> bool {
        let mut pending = self.lock();
        if pending.len() >= MAX_PENDING {
            return false;
        }
        pending.insert((tenant.clone(), portion), reason).is_none()
    }

    /// At most `limit` bad copies for a report (they stay until
    /// [`BadCopies::reported`]).
    pub fn to_report(&self, limit: usize) -> Vec<BadCopy> {
        self.lock()
            .iter()
            .take(limit)
            .map(|((tenant, portion), reason)| BadCopy {
                tenant: tenant.clone(),
                portion: *portion,
                reason: reason.clone(),
            })
            .collect()
    }

    /// A report carrying `reported` was accepted.
    pub fn reported(&self, reported: &[BadCopy]) {
        let mut pending = self.lock();
        for b in reported {
            pending.remove(&(b.tenant.clone(), b.portion));
        }
    }
}

impl Vendor {
    /// Bad copies waiting for a capacity report.
    pub(crate) fn bad_copies(&self) -> &BadCopies {
        &self.bad_copies
    }

    /// Scrubs forever, a pass every period; drop the future to stop.
    pub(crate) async fn scrub_forever(self: Arc<Self>, policy: ScrubPolicy) {
        tracing::info!(period = ?policy.period, bytes_per_sec = policy.bytes_per_sec, "scrubbing every piece within the period");
        loop {
            let started = Instant::now();
            let summary = self.scrub_pass(&policy).await;
            let took = started.elapsed();
            if summary.bad > 0 || summary.skipped > 0 {
                tracing::warn!(
                    ?summary,
                    ?took,
                    "scrub pass done; bad copies go in the next capacity report"
                );
            } else {
                tracing::info!(
                    ?summary,
                    ?took,
                    "scrub pass done; every piece read is whole"
                );
            }
            let next = if summary.pieces == 0 {
                started + policy.period.min(EMPTY_RECHECK)
            } else {
                started + policy.period
            };
            if took > policy.period {
                tracing::warn!(
                    ?took, period = ?policy.period, bytes_per_sec = policy.bytes_per_sec,
                    "a scrub pass took longer than scrub_period_secs; raise scrub_bytes_per_sec \
                     or scrub_period_secs"
                );
            }
            tokio::time::sleep_until(next).await;
        }
    }

    /// One pass over the local FAT, paced by `policy`.
    pub(crate) async fn scrub_pass(self: &Arc<Self>, policy: &ScrubPolicy) -> PassSummary {
        let mut summary = PassSummary::default();
        let rate = pass_rate(self.fat.stored_bytes(), policy);
        if rate >= policy.bytes_per_sec && self.fat.stored_bytes() > 0 {
            let needed = time_for(self.fat.stored_bytes(), rate);
            if needed > policy.period {
                tracing::warn!(
                    held_bytes = self.fat.stored_bytes(), bytes_per_sec = policy.bytes_per_sec, ?needed,
                    "scrubbing everything at scrub_bytes_per_sec takes longer than scrub_period_secs; \
                     raise one of them"
                );
            }
        }
        // Each read waits its share of the pass after the one before began
        // (the first after the pass began), so a long period starts gently
        // and a slow read is never followed by a burst.
        let mut last_read = Instant::now();
        let mut at: Option<(TenantId, PortionId)> = None;
        loop {
            let record = match self.fat.record_after(at.as_ref().map(|(t, p)| (t, p))) {
                Ok(Some(record)) => record,
                Ok(None) => return summary,
                Err(err) => {
                    tracing::warn!(%err, "the scrub cannot read the local FAT; trying again next pass");
                    return summary;
                }
            };
            at = Some((record.tenant.clone(), record.portion));
            summary.portions += 1;
            for piece in &record.pieces {
                // The rate follows what is held now, so a vendor that
                // fills up during a long pass still finishes it in time.
                let rate = pass_rate(self.fat.stored_bytes(), policy);
                tokio::time::sleep_until(last_read + time_for(piece.size, rate)).await;
                last_read = Instant::now();
                let finding = self.scrub_piece(&record, piece).await;
                summary.pieces += 1;
                summary.bytes = summary.bytes.saturating_add(piece.size);
                match finding {
                    Finding::Good => {}
                    Finding::Skipped => summary.skipped += 1,
                    Finding::Bad(reason) => {
                        summary.bad += 1;
                        tracing::warn!(tenant = %record.tenant, portion = %record.portion, piece = %piece.id, %reason, "scrub found a bad copy");
                        self.bad_copies.add(&record.tenant, record.portion, reason);
                        // The copy is bad; its other pieces need no reading.
                        break;
                    }
                }
            }
        }
    }

    /// Reads one piece back; a bad one is read again under the portion's
    /// lock, where no deletion or store can be under way.
    async fn scrub_piece(self: &Arc<Self>, record: &PortionRecord, piece: &PieceRecord) -> Finding {
        match self.read_piece(piece).await {
            Finding::Bad(_) => {}
            other => return other,
        }
        let wait = self.limits().claim_wait();
        let Ok(_claim) = self
            .claim(&record.tenant, &record.portion, ClaimKind::Other, wait)
            .await
        else {
            return Finding::Skipped;
        };
        match self.fat.get(&record.tenant, &record.portion) {
            Ok(Some(now)) if now.pieces.contains(piece) => self.read_piece(piece).await,
            // Deleted, or stored anew, meanwhile.
            _ => Finding::Skipped,
        }
    }

    async fn read_piece(&self, piece: &PieceRecord) -> Finding {
        let Some(store) = self.stores.get(piece.store as usize) else {
            return Finding::Bad(format!(
                "piece {} is on store #{}, which is no longer configured",
                piece.id, piece.store
            ));
        };
        match store.get(&piece.id, &piece.hash).await {
            Ok(_) => Finding::Good,
            Err(err @ (StoreError::NotFound { .. } | StoreError::Corrupt { .. })) => {
                Finding::Bad(err.to_string())
            }
            Err(err) => {
                tracing::debug!(%err, piece = %piece.id, "scrub could not read a piece; reading it next pass");
                Finding::Skipped
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local_fat::{LocalFat, PieceRecord, PortionRecord};
    use crate::store::{random_piece_id, LocalStore, PieceStore};
    use offsite_proto::signing::VendorKey;
    use offsite_proto::{Hash, VendorId};

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn a_pass_is_paced_to_the_period_and_capped_by_the_ceiling() {
        let policy = ScrubPolicy {
            period: Duration::from_secs(100),
            bytes_per_sec: 20 * MIB,
        };
        // 90 MiB over 90 s: 1 MiB/s.
        assert_eq!(pass_rate(90 * MIB, &policy), MIB);
        // Far more than the ceiling allows within the period: the ceiling.
        assert_eq!(pass_rate(1 << 40, &policy), 20 * MIB);
        // Nothing held still gives a rate that divides.
        assert_eq!(pass_rate(0, &policy), 1);
        assert_eq!(time_for(MIB, MIB), Duration::from_secs(1));
        let zero = ScrubPolicy {
            period: Duration::ZERO,
            bytes_per_sec: 0,
        };
        assert_eq!(pass_rate(u64::MAX, &zero), 1);
    }

    /// A vendor with one local store holding `portions` portions of
    /// `pieces` pieces of `piece_bytes` each.
    async fn vendor_with(
        portions: usize,
        pieces: usize,
        piece_bytes: usize,
    ) -> (Arc<Vendor>, Vec<PortionRecord>, [tempfile::TempDir; 2]) {
        let (store_dir, fat_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store = LocalStore::open(store_dir.path(), None, 0.0).unwrap();
        let fat = LocalFat::open(fat_dir.path()).unwrap();
        let mut records = Vec::new();
        for p in 0..portions {
            let mut record = PortionRecord {
                tenant: TenantId::new("t").unwrap(),
                portion: PortionId::random(),
                hash: Hash::of(b"unused here"),
                size: (pieces * piece_bytes) as u64,
                piece_size: piece_bytes as u64,
                pieces: Vec::new(),
                reservation: None,
            };
            for k in 0..pieces {
                let data = crate::testing::test_bytes(piece_bytes, (p * 10 + k) as u8);
                let piece = PieceRecord {
                    id: random_piece_id(),
                    store: 0,
                    size: piece_bytes as u64,
                    hash: Hash::of(&data),
                };
                store.put(&piece.id, data, &piece.hash).await.unwrap();
                record.pieces.push(piece);
            }
            fat.insert(&record).await.unwrap();
            records.push(record);
        }
        let vendor = Arc::new(Vendor::new(
            VendorId::new("v1").unwrap(),
            vec![Arc::new(store)],
            fat,
            crate::testing::throwaway_credentials("v1"),
            VendorKey::from_secret(&[1; 32]),
        ));
        (vendor, records, [store_dir, fat_dir])
    }

    fn piece_path(dir: &std::path::Path, piece: &PieceRecord) -> std::path::PathBuf {
        let id = piece.id.as_str();
        dir.join("pieces").join(&id[..2]).join(id)
    }

    /// Every piece is read within the period (virtual time), a damaged and
    /// a missing piece each make their portion's copy bad, and the report
    /// keeps them until it went through.
    #[tokio::test(start_paused = true)]
    async fn a_pass_reads_every_piece_within_the_period_and_finds_bad_copies() {
        let (vendor, records, dirs) = vendor_with(6, 3, 64 * 1024).await;
        // Damage one piece's last byte, delete another portion's piece.
        let damaged = piece_path(dirs[0].path(), &records[1].pieces[2]);
        let mut bytes = std::fs::read(&damaged).unwrap();
        *bytes.last_mut().unwrap() ^= 0xff;
        std::fs::write(&damaged, bytes).unwrap();
        std::fs::remove_file(piece_path(dirs[0].path(), &records[4].pieces[0])).unwrap();

        let policy = ScrubPolicy {
            period: Duration::from_secs(100),
            bytes_per_sec: 20 * MIB,
        };
        let started = Instant::now();
        let summary = vendor.scrub_pass(&policy).await;
        let took = started.elapsed();
        assert_eq!(summary.portions, 6);
        // Every piece but the two after the missing one (its copy is bad).
        assert_eq!(summary.pieces, 6 * 3 - 2);
        assert_eq!((summary.bad, summary.skipped), (2, 0));
        assert!(took <= policy.period, "the pass took {took:?}");
        assert!(
            took >= policy.period / 2,
            "the pass was not spread over the period: {took:?}"
        );

        let mut found: Vec<PortionId> = vendor
            .bad_copies()
            .to_report(10)
            .iter()
            .map(|b| b.portion)
            .collect();
        found.sort();
        let mut expected = vec![records[1].portion, records[4].portion];
        expected.sort();
        assert_eq!(found, expected);
        // Not reported yet: still there for the next report.
        let first = vendor.bad_copies().to_report(1);
        assert_eq!(vendor.bad_copies().to_report(10).len(), 2);
        vendor.bad_copies().reported(&first);
        assert_eq!(vendor.bad_copies().to_report(10).len(), 1);
    }

    /// With a low ceiling the pass takes at least the bytes over the
    /// ceiling, however short the period.
    #[tokio::test(start_paused = true)]
    async fn the_ceiling_bounds_the_read_rate() {
        let (vendor, _records, _dirs) = vendor_with(4, 2, 64 * 1024).await;
        let policy = ScrubPolicy {
            period: Duration::from_secs(1),
            bytes_per_sec: 64 * 1024,
        };
        let started = Instant::now();
        let summary = vendor.scrub_pass(&policy).await;
        assert_eq!((summary.pieces, summary.bad), (8, 0));
        // 8 pieces of 64 KiB at 64 KiB/s: the last read starts after 8 s.
        assert!(
            started.elapsed() >= Duration::from_secs(8),
            "{:?}",
            started.elapsed()
        );
    }

    /// A piece deleted with its portion while the pass runs is no finding.
    #[tokio::test(start_paused = true)]
    async fn a_portion_deleted_meanwhile_is_not_a_bad_copy() {
        let (vendor, records, dirs) = vendor_with(1, 2, 64 * 1024).await;
        std::fs::remove_file(piece_path(dirs[0].path(), &records[0].pieces[0])).unwrap();
        vendor
            .fat
            .remove(&records[0].tenant, &records[0].portion)
            .await
            .unwrap();
        // The record read before the removal is checked under the lock.
        let finding = vendor.scrub_piece(&records[0], &records[0].pieces[0]).await;
        assert!(matches!(finding, Finding::Skipped));
    }
}
