//! How long a vendor waits on its peers, and how much memory its reads may
//! hold. A vendor never waits on a hung hop (the next vendor of a route, a
//! NAS device, a reader that stopped reading) for longer than these bounds;
//! the waits grow along a route so that a vendor upstream of a hung one
//! always waits longer than the vendor that is stuck behind it, and the
//! hung hop, not a healthy one before it, is the one that is cut off.

use std::time::Duration;

use crate::store::NasTimeouts;

/// Default of `store_idle_timeout_secs`.
pub(crate) const DEFAULT_STORE_IDLE: Duration = Duration::from_secs(60);
/// Default of `hop_timeout_secs`.
pub(crate) const DEFAULT_HOP: Duration = Duration::from_secs(5);
/// Default of `fetch_idle_timeout_secs`.
pub(crate) const DEFAULT_FETCH_IDLE: Duration = Duration::from_secs(30);
/// Default of `fetch_buffer_bytes`.
pub(crate) const DEFAULT_FETCH_BUFFER_BYTES: u64 = 256 * 1024 * 1024;
/// The longest a capacity call may take: probes answer with it, so it must
/// stay well inside a client's ping timeout.
const CAPACITY_ANSWER_MAX: Duration = Duration::from_secs(2);

/// A vendor's waits and buffers (from its config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long a `Store` stream may go without a frame from its sender.
    pub store_idle: Duration,
    /// The unit of every wait on a hop: a NAS device taking a frame, the
    /// next vendor taking a frame (a multiple of it, see
    /// [`Limits::next_vendor`]).
    pub hop: Duration,
    /// How long a fetch waits for its reader to take a frame.
    pub fetch_idle: Duration,
    /// Bytes of piece data every fetch (and repair copy) together may hold;
    /// one tenant at most [`TENANT_SHARE`] of it.
    pub fetch_buffer_bytes: u64,
}

/// The share of `fetch_buffer_bytes` one tenant's reads may hold at once
/// (one over this), so a tenant that opens many reads and never reads them
/// leaves room for the others.
pub(crate) const TENANT_SHARE: u64 = 4;

impl Default for Limits {
    fn default() -> Self {
        Self {
            store_idle: DEFAULT_STORE_IDLE,
            hop: DEFAULT_HOP,
            fetch_idle: DEFAULT_FETCH_IDLE,
            fetch_buffer_bytes: DEFAULT_FETCH_BUFFER_BYTES,
        }
    }
}

impl Limits {
    /// How long a NAS device may take to accept (or send) one frame, and
    /// to answer a call (a put once it has every frame: it writes and syncs
    /// the piece first).
    pub fn nas(&self) -> NasTimeouts {
        NasTimeouts {
            frame: self.hop,
            answer: self.nas_answer(),
        }
    }

    fn nas_answer(&self) -> Duration {
        self.hop * 2
    }

    /// How long a store's capacity may take to answer.
    pub fn capacity_answer(&self) -> Duration {
        self.hop.min(CAPACITY_ANSWER_MAX)
    }

    /// How long this vendor waits for the next vendor of a route to take a
    /// frame or, after the last frame, to answer, when `after_next` vendors
    /// follow the next one. The next vendor itself stalls for at most a NAS
    /// answer plus its own wait on the vendor after it, so each vendor up
    /// the route waits a step longer: 3, 6, 9... hops.
    pub fn next_vendor(&self, after_next: usize) -> Duration {
        let hops = u32::try_from(after_next.saturating_add(1)).unwrap_or(u32::MAX);
        self.hop.saturating_mul(3).saturating_mul(hops)
    }

    /// How long a store waits for an older call on the same portion to
    /// finish (an older store is aborted first: its puts end within a NAS
    /// answer and its deletes within another).
    pub fn claim_wait(&self) -> Duration {
        self.hop * 5
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_vendor_up_a_route_outwaits_the_one_stuck_below_it() {
        let limits = Limits {
            hop: Duration::from_secs(2),
            ..Limits::default()
        };
        // The last vendor stalls its sender for at most a NAS answer.
        let mut stall = limits.nas_answer();
        for after_next in 0..4 {
            let wait = limits.next_vendor(after_next);
            assert!(
                wait > stall,
                "{after_next}: waits {wait:?}, stall {stall:?}"
            );
            stall = wait + limits.nas_answer();
        }
        assert!(limits.capacity_answer() <= CAPACITY_ANSWER_MAX);
    }
}
