//! The lock on a portion: one store, delete or copy of a tenant's portion at
//! a time. A newer store of a portion supersedes an older one still running
//! (the older is aborted: it is stuck behind a hung hop, or its sender gave
//! up and is resending), so a resend is never refused because of a store
//! nobody waits for any more. Any other wait for the lock is bounded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use offsite_proto::{PortionId, TenantId};
use tokio::sync::watch;

use super::error::VendorError;
use super::Vendor;

type Key = (TenantId, PortionId);

/// What holds a portion's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClaimKind {
    /// A `Store`: a newer store of the portion aborts it.
    Store,
    /// A delete or a repair copy: it runs to its end.
    Other,
}

/// One holder of a portion's lock.
struct Holder {
    id: u64,
    kind: ClaimKind,
    /// Set to `true` to ask the holder to abort.
    abort: watch::Sender<bool>,
    /// Closed when the holder's guard is dropped.
    released: watch::Receiver<()>,
}

/// The portions with a call under way.
#[derive(Default)]
pub(super) struct Claims {
    held: Mutex<HashMap<Key, Holder>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Claims {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Holder>> {
        self.held
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

impl Vendor {
    /// Takes the lock on a tenant's portion for one call, waiting at most
    /// `wait` for the call holding it (a store asks an older store to abort
    /// first); [`VendorError::Busy`] when it is not released in time.
    pub(super) async fn claim(
        self: &Arc<Self>,
        tenant: &TenantId,
        portion: &PortionId,
        kind: ClaimKind,
        wait: Duration,
    ) -> Result<Claim, VendorError> {
        let key = (tenant.clone(), *portion);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut released = {
                let mut held = self.claims.lock();
                match held.get(&key) {
                    None => return Ok(self.hold(&mut held, key, kind)),
                    Some(holder) => {
                        if kind == ClaimKind::Store && holder.kind == ClaimKind::Store {
                            tracing::info!(%tenant, %portion, "a newer store of the portion arrived; aborting the older one");
                            holder.abort.send_replace(true);
                        }
                        holder.released.clone()
                    }
                }
            };
            // Err once the holder's guard is dropped: the lock is free.
            let freed = tokio::time::timeout_at(deadline, released.changed()).await;
            if freed.is_err() {
                return Err(VendorError::Busy {
                    tenant: tenant.clone(),
                    portion: *portion,
                    waited: wait.as_secs_f64(),
                });
            }
        }
    }

    fn hold(self: &Arc<Self>, held: &mut HashMap<Key, Holder>, key: Key, kind: ClaimKind) -> Claim {
        let id = self
            .claims
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (abort, aborted) = watch::channel(false);
        let (release, released) = watch::channel(());
        held.insert(
            key.clone(),
            Holder {
                id,
                kind,
                abort,
                released,
            },
        );
        Claim {
            vendor: Arc::clone(self),
            key,
            id,
            aborted,
            _release: release,
        }
    }
}

/// A held lock on a portion; released when dropped, however the call ends.
pub(super) struct Claim {
    vendor: Arc<Vendor>,
    key: Key,
    id: u64,
    aborted: watch::Receiver<bool>,
    /// Dropped with the claim, which wakes every waiter.
    _release: watch::Sender<()>,
}

impl Claim {
    /// Completes when a newer call asks this one to abort; never otherwise.
    pub async fn aborted(&self) {
        let mut aborted = self.aborted.clone();
        if aborted.wait_for(|abort| *abort).await.is_err() {
            // The holder entry is gone only once this claim is dropped.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut held = self.vendor.claims.lock();
        if held.get(&self.key).is_some_and(|h| h.id == self.id) {
            held.remove(&self.key);
        }
    }
}
