//! Keeping a round's lease: a task renews it a third of the way through
//! each lease for as long as the round is open, whatever the backup is busy
//! with (reading, chunking, waiting on a slow vendor), and keeps the fresh
//! store grants each renewal brings. The lease length comes from the
//! coordinator's answer and is counted on this machine's monotonic clock, so
//! a clock that is off does not matter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use offsite_proto::clock::now_unix_ms;
use offsite_proto::{Grant, ReservationId, VendorId};
use tokio::task::JoinHandle;

use crate::market::coordinator::{Coordinator, Reservation};

/// Shortest wait between renewals, and before a failed one is tried again.
const MIN_RENEW_WAIT: Duration = Duration::from_millis(100);
/// Longest wait before a failed renewal is tried again.
const MAX_RENEW_RETRY: Duration = Duration::from_secs(5);

/// The lease of one open round; renewing stops when it is dropped.
pub(super) struct Lease {
    held: Arc<Mutex<Held>>,
    task: JoinHandle<()>,
}

/// What the renewals keep up to date.
struct Held {
    grants: HashMap<VendorId, Grant>,
    /// A renewal was refused (the lease ran out first): the grants will not
    /// be honoured for long, so no new portion should start under them.
    lapsed: bool,
}

impl Lease {
    /// Starts renewing `reservation`'s lease.
    pub fn keep(coordinator: Arc<Coordinator>, reservation: &Reservation) -> Self {
        let held = Arc::new(Mutex::new(Held {
            grants: grants_of(reservation),
            lapsed: false,
        }));
        let task = tokio::spawn(renew_while_open(
            coordinator,
            reservation.id,
            length_of(reservation),
            Arc::clone(&held),
        ));
        Self { held, task }
    }

    /// The store grant for `vendor` (an empty one, which the vendor refuses,
    /// for a vendor that is no candidate).
    pub fn grant(&self, vendor: &VendorId) -> Grant {
        self.lock().grants.get(vendor).cloned().unwrap_or_default()
    }

    /// Whether a renewal was refused because the lease had run out.
    pub fn lapsed(&self) -> bool {
        self.lock().lapsed
    }

    fn lock(&self) -> MutexGuard<'_, Held> {
        lock(&self.held)
    }
}

/// The held state, locked (a panic while it was held left it whole: each
/// change is one assignment).
fn lock(held: &Mutex<Held>) -> MutexGuard<'_, Held> {
    held.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn grants_of(reservation: &Reservation) -> HashMap<VendorId, Grant> {
    reservation
        .candidates
        .iter()
        .map(|c| (c.vendor.id.clone(), c.store_grant.clone()))
        .collect()
}

/// How long the lease lasts from the answer. A coordinator too old to say
/// gives only the end, read by this machine's clock.
fn length_of(reservation: &Reservation) -> Duration {
    match reservation.lease_ms {
        0 => Duration::from_millis(
            reservation
                .lease_expires_unix_ms
                .saturating_sub(now_unix_ms()),
        ),
        ms => Duration::from_millis(ms),
    }
}

fn renew_wait(length: Duration) -> Duration {
    (length / 3).max(MIN_RENEW_WAIT)
}

fn retry_wait(length: Duration) -> Duration {
    (length / 10).clamp(MIN_RENEW_WAIT, MAX_RENEW_RETRY)
}

async fn renew_while_open(
    coordinator: Arc<Coordinator>,
    id: ReservationId,
    mut length: Duration,
    held: Arc<Mutex<Held>>,
) {
    let mut wait = renew_wait(length);
    loop {
        tokio::time::sleep(wait).await;
        match coordinator.renew_lease(id).await {
            Ok(renewed) => {
                length = length_of(&renewed);
                wait = renew_wait(length);
                let grants = grants_of(&renewed);
                lock(&held).grants = grants;
                tracing::debug!(reservation = %id, lease_expires_unix_ms = renewed.lease_expires_unix_ms, "lease renewed");
            }
            Err(e) if e.refusal().is_some() => {
                tracing::warn!(reservation = %id, error = %e, "the lease could not be renewed; committing what the round stored and reserving again");
                lock(&held).lapsed = true;
                return;
            }
            Err(e) => {
                tracing::warn!(reservation = %id, error = %e, "could not renew the lease; trying again shortly");
                wait = retry_wait(length);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewals_come_a_third_of_the_way_through_and_retries_sooner() {
        let lease = Duration::from_secs(600);
        assert_eq!(renew_wait(lease), Duration::from_secs(200));
        assert_eq!(retry_wait(lease), MAX_RENEW_RETRY);
        let short = Duration::from_millis(150);
        assert_eq!(renew_wait(short), MIN_RENEW_WAIT);
        assert_eq!(retry_wait(short), MIN_RENEW_WAIT);
    }
}
