//! The shape of a devnet and the knobs of its daemons ([`DevnetOptions`]),
//! and the short waits of tests that hang a process on purpose.

use std::time::Duration;

use anyhow::Result;

/// The vendors' scrub period under [`DevnetOptions::fast`].
pub const FAST_SCRUB_PERIOD_SECS: u64 = 5;

/// The shape of a devnet and the knobs of its daemons.
#[derive(Debug, Clone)]
pub struct DevnetOptions {
    /// Coordinators in the group (3 survive losing one).
    pub coordinators: usize,
    pub vendors: usize,
    pub nas_per_vendor: usize,
    /// Reservation lease of the coordinator.
    pub lease_secs: u64,
    pub suspect_after_secs: u64,
    pub down_after_secs: u64,
    /// How long a vendor stays down before its copies are made elsewhere.
    pub repair_after_secs: u64,
    /// The coordinators' audit rate (3600: one audit of each vendor a
    /// second, for tests that wait for audits).
    pub audits_per_vendor_per_hour: u32,
    pub report_interval_secs: u64,
    /// How long after its lease an uncommitted reservation is collected
    /// (the coordinators' `collect_expired_after_secs`).
    pub collect_expired_after_secs: u64,
    /// The vendors' garbage collection: how often they reconcile with the
    /// group, and how long garbage must stay garbage before it goes.
    pub reconcile_interval_secs: u64,
    pub gc_grace_secs: u64,
    /// The vendors' `scrub_period_secs` (every piece re-read within it; 0:
    /// no scrub); None: their default, 7 days.
    pub scrub_period_secs: Option<u64>,
    /// Cap of each NAS device; None: what its filesystem has.
    pub nas_cap_bytes: Option<u64>,
    /// The client's replication factor.
    pub replication: u32,
    pub portion_bytes: u64,
    pub piece_bytes: u64,
    /// The vendors' waits on a hung peer (`store_idle_timeout_secs`,
    /// `hop_timeout_secs`, `fetch_idle_timeout_secs`); None: their defaults.
    pub vendor_waits: VendorWaits,
    /// The client's `vendor_stall_timeout_secs`; None: its default.
    pub client_stall_secs: Option<u64>,
    /// How long the start may take before it is given up.
    pub ready_timeout: Duration,
    /// Start every process in its own session so it outlives the launcher.
    pub detach: bool,
    /// Each vendor's storage price (micro-units per TiB-month), in vendor
    /// order; empty: every vendor charges 0. Otherwise one per vendor.
    pub vendor_prices: Vec<u64>,
    /// Each vendor's egress price (micro-units per TiB), likewise.
    pub vendor_egress_prices: Vec<u64>,
    /// The coordinators' `fee_ppm` (the marketplace's share of every charge).
    pub fee_ppm: u32,
    /// The client's `max_storage_price`; None: no limit.
    pub max_storage_price: Option<u64>,
    /// Run each coordinator in its own network namespace (see
    /// [`crate::netns`]; needs root and `ip netns`), so a test can
    /// partition it.
    pub coordinator_namespaces: bool,
    /// Run each vendor agent and each NAS device in its own network
    /// namespace likewise, so a test can partition them. What stays in the
    /// test's namespace listens on 127.0.0.1, or on the bridge when any
    /// process runs in a namespace.
    pub vendor_namespaces: bool,
}

impl DevnetOptions {
    /// A small marketplace for client tests: three vendors with one NAS
    /// device each, R = 2, 4 MiB portions.
    pub fn small() -> Self {
        Self {
            vendors: 3,
            nas_per_vendor: 1,
            replication: 2,
            portion_bytes: 4 * 1024 * 1024,
            ..Self::default()
        }
    }

    /// `offsite-devnet up --fast`: audits, scrubs, repairs, leases and
    /// garbage collection short enough to watch happen (one audit of each
    /// vendor a second, every piece scrubbed every 5 s, repairs 10 s after
    /// a vendor is down, 30 s leases, expired reservations collected 5 s
    /// after their lease, vendors reconciling every 2 s and deleting
    /// garbage found again 3 s later).
    pub fn fast(self) -> Self {
        Self {
            audits_per_vendor_per_hour: 3600,
            scrub_period_secs: Some(FAST_SCRUB_PERIOD_SECS),
            repair_after_secs: 10,
            lease_secs: 30,
            collect_expired_after_secs: 5,
            reconcile_interval_secs: 2,
            gc_grace_secs: 3,
            ..self
        }
    }
}

impl Default for DevnetOptions {
    fn default() -> Self {
        Self {
            coordinators: 3,
            vendors: 4,
            nas_per_vendor: 2,
            lease_secs: 120,
            // Longer than a report that meets an isolated coordinator takes
            // to fail over (the vendor's 6 s wait, just past a coordinator's
            // 5 s write timeout, then the next coordinator), so a partition
            // of one coordinator makes no vendor suspect.
            suspect_after_secs: 10,
            down_after_secs: 15,
            repair_after_secs: 3600,
            audits_per_vendor_per_hour: 12,
            report_interval_secs: 1,
            collect_expired_after_secs: 3600,
            reconcile_interval_secs: 3600,
            gc_grace_secs: 3600,
            scrub_period_secs: None,
            nas_cap_bytes: None,
            replication: 3,
            portion_bytes: 16 * 1024 * 1024,
            piece_bytes: 5 * 1024 * 1024,
            vendor_waits: VendorWaits::default(),
            client_stall_secs: None,
            ready_timeout: Duration::from_secs(60),
            detach: false,
            vendor_prices: Vec::new(),
            vendor_egress_prices: Vec::new(),
            fee_ppm: 0,
            max_storage_price: None,
            coordinator_namespaces: false,
            vendor_namespaces: false,
        }
    }
}

/// How long the vendors of a devnet wait on a hung peer, in seconds (see
/// the vendor config in the README); None: the vendor's default.
#[derive(Debug, Clone, Copy, Default)]
pub struct VendorWaits {
    pub store_idle: Option<u64>,
    pub hop: Option<u64>,
    pub fetch_idle: Option<u64>,
}

impl VendorWaits {
    /// Short waits, for tests that hang a process on purpose: a hung hop is
    /// cut off within seconds, and a client (see [`HUNG_CLIENT_STALL_SECS`])
    /// still waits longer than any vendor of a route of 3. The idle timeout
    /// of a store's sender stays at its default (a minute), longer than the
    /// client takes to resend around a hung vendor: a store stuck behind the
    /// hung vendor still holds its lock when the resend arrives.
    pub fn short() -> Self {
        Self {
            store_idle: None,
            hop: Some(2),
            fetch_idle: Some(5),
        }
    }
}

/// The client's stall timeout that goes with [`VendorWaits::short`]: above
/// the 16 s the first vendor of a route of 3 may stall (3 hops per vendor
/// after it, plus a NAS answer).
pub const HUNG_CLIENT_STALL_SECS: u64 = 20;

/// The price of vendor `v` (counted from 1) in `prices`: 0 when the list is
/// empty, else its entry, which a list of another length than `vendors`
/// does not give.
pub(super) fn vendor_price(prices: &[u64], field: &str, vendors: usize, v: usize) -> Result<u64> {
    if prices.is_empty() {
        return Ok(0);
    }
    anyhow::ensure!(
        prices.len() == vendors,
        "{field} lists {} prices for {vendors} vendors; give one per vendor (or none: all 0)",
        prices.len()
    );
    Ok(prices[v - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_prices_are_none_or_one_per_vendor() {
        assert_eq!(vendor_price(&[], "vendor_prices", 4, 3).unwrap(), 0);
        assert_eq!(vendor_price(&[5, 6, 7], "vendor_prices", 3, 2).unwrap(), 6);
        let err = vendor_price(&[5, 6], "vendor_egress_prices", 4, 1)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("vendor_egress_prices") && err.contains("2 prices for 4 vendors"),
            "the error names the list and both numbers: {err}"
        );
        assert!(vendor_price(&[1, 2, 3], "vendor_prices", 2, 1).is_err());
    }
}
