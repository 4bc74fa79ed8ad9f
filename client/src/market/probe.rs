//! Path probing: ping every candidate vendor a few times with a payload,
//! discard the unreachable, the full and those far slower than the median,
//! and rank the rest by round-trip time.

use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use offsite_proto::VendorRef;

use crate::market::vendor::VendorPool;

/// Pings per vendor.
const PINGS: usize = 3;
/// Bytes echoed by each ping: a small throughput sample.
const PAYLOAD_BYTES: usize = 32 * 1024;
/// Time allowed for one ping.
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// Vendors probed at once.
const PARALLEL: usize = 16;

/// A vendor that answered its probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probed {
    pub vendor: VendorRef,
    /// Median round-trip time.
    pub rtt: Duration,
    pub free_bytes: u64,
}

/// Probes every vendor; `None` for one that failed any ping.
pub async fn probe_all(
    pool: &VendorPool,
    vendors: &[VendorRef],
) -> Vec<(VendorRef, Option<Probed>)> {
    stream::iter(vendors.iter().cloned())
        .map(|vendor| async move {
            let result = probe_one(pool, &vendor).await;
            (vendor, result)
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await
}

async fn probe_one(pool: &VendorPool, vendor: &VendorRef) -> Option<Probed> {
    let mut rtts = Vec::with_capacity(PINGS);
    let mut free_bytes = 0;
    for _ in 0..PINGS {
        let payload = vec![0x5a; PAYLOAD_BYTES];
        let start = Instant::now();
        match pool.probe(vendor, payload, PING_TIMEOUT).await {
            Ok(reply) => {
                rtts.push(start.elapsed());
                free_bytes = reply.free_bytes;
            }
            Err(e) => {
                tracing::warn!(vendor = %vendor.id, error = %e, "probe failed; vendor set aside");
                return None;
            }
        }
    }
    rtts.sort();
    Some(Probed {
        vendor: vendor.clone(),
        rtt: rtts[rtts.len() / 2],
        free_bytes,
    })
}

/// Keeps the vendors worth using, best first. `need_room` drops those with no
/// free bytes (for uploads; a full vendor still serves fetches).
pub fn rank(results: Vec<(VendorRef, Option<Probed>)>, need_room: bool) -> Vec<Probed> {
    let mut alive: Vec<Probed> = results
        .into_iter()
        .filter_map(|(_, probed)| probed)
        .filter(|p| !need_room || p.free_bytes > 0)
        .collect();
    alive.sort_by_key(|p| p.rtt);
    if alive.is_empty() {
        return alive;
    }
    let median = alive[alive.len() / 2].rtt;
    let limit = (median * 5).max(median + Duration::from_millis(50));
    alive.retain(|p| {
        let keep = p.rtt <= limit;
        if !keep {
            tracing::warn!(vendor = %p.vendor.id, rtt = ?p.rtt, ?median, "vendor far slower than the rest; set aside");
        }
        keep
    });
    alive
}

#[cfg(test)]
mod tests {
    use super::*;
    use offsite_proto::VendorId;

    fn result(id: &str, rtt_ms: Option<u64>, free: u64) -> (VendorRef, Option<Probed>) {
        let vendor = VendorRef {
            id: VendorId::new(id).unwrap(),
            address: "127.0.0.1:1".into(),
        };
        let probed = rtt_ms.map(|ms| Probed {
            vendor: vendor.clone(),
            rtt: Duration::from_millis(ms),
            free_bytes: free,
        });
        (vendor, probed)
    }

    #[test]
    fn ranks_by_rtt_and_drops_dead_full_and_slow() {
        let results = vec![
            result("slow", Some(2000), 10),
            result("b", Some(20), 10),
            result("dead", None, 0),
            result("a", Some(5), 10),
            result("full", Some(1), 0),
            result("c", Some(30), 10),
        ];
        let ids: Vec<String> = rank(results.clone(), true)
            .into_iter()
            .map(|p| p.vendor.id.to_string())
            .collect();
        assert_eq!(ids, vec!["a", "b", "c"]);
        let for_fetch: Vec<String> = rank(results, false)
            .into_iter()
            .map(|p| p.vendor.id.to_string())
            .collect();
        assert_eq!(for_fetch, vec!["full", "a", "b", "c"]);
    }
}
