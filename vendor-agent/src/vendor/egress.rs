//! The fetches this vendor served and has not yet reported: what the
//! coordinator group books as egress. Each entry is a fetch grant with the
//! bytes sent under it; the report carries at most
//! `MAX_SERVED_PER_REPORT` and the entries leave the journal once a report
//! with them was answered. In memory: a vendor that restarts loses what it
//! had not reported (it earns less, no tenant pays more).

use std::collections::BTreeMap;
use std::sync::Mutex;

use offsite_proto::Grant;

/// Most unreported fetches kept; beyond it the newest are not recorded
/// (and a warning says so), so a flood of fetches cannot grow the vendor's
/// memory without bound.
pub const MAX_UNREPORTED_FETCHES: usize = 100_000;

/// Served fetches by their grant's signature.
#[derive(Debug, Default)]
pub(crate) struct EgressJournal {
    served: Mutex<BTreeMap<Vec<u8>, (Grant, u64)>>,
}

impl EgressJournal {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, (Grant, u64)>> {
        self.served.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes `bytes` sent under `grant`.
    pub fn record(&self, grant: &Grant, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let mut served = self.lock();
        if let Some((_, sent)) = served.get_mut(&grant.signature) {
            *sent = sent.saturating_add(bytes);
            return;
        }
        if served.len() >= MAX_UNREPORTED_FETCHES {
            tracing::warn!(
                limit = MAX_UNREPORTED_FETCHES,
                "too many fetches not yet reported; this one is not booked as egress"
            );
            return;
        }
        served.insert(grant.signature.clone(), (grant.clone(), bytes));
    }

    /// Up to `limit` fetches to report.
    pub fn pending(&self, limit: usize) -> Vec<(Grant, u64)> {
        self.lock().values().take(limit).cloned().collect()
    }

    /// Forgets fetches a report carried and the coordinator answered.
    pub fn reported(&self, fetches: &[(Grant, u64)]) {
        let mut served = self.lock();
        for (grant, bytes) in fetches {
            if let Some((_, sent)) = served.get_mut(&grant.signature) {
                // Bytes sent after the report was made stay for the next.
                *sent = sent.saturating_sub(*bytes);
                if *sent == 0 {
                    served.remove(&grant.signature);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(n: u8) -> Grant {
        Grant {
            body: vec![n],
            signature: vec![n; 64],
            key_id: 1,
        }
    }

    #[test]
    fn fetches_add_up_per_grant_and_leave_once_reported() {
        let journal = EgressJournal::default();
        journal.record(&grant(1), 100);
        journal.record(&grant(1), 50);
        journal.record(&grant(2), 7);
        journal.record(&grant(3), 0);
        let pending = journal.pending(10);
        assert_eq!(pending, vec![(grant(1), 150), (grant(2), 7)]);
        journal.record(&grant(2), 3);
        journal.reported(&pending);
        assert_eq!(journal.pending(10), vec![(grant(2), 3)]);
        assert_eq!(journal.pending(0), vec![]);
    }
}
