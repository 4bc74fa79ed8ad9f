//! Where a restore gets portions from: the `PortionSource` seam, and its
//! network implementation that fetches from the best replica by probe and
//! falls back to the next on error, corruption (DataLoss) or a hash mismatch.
//! A vendor that hangs or cannot be reached during the restore is tried
//! last from then on, so one hung vendor costs one stall, not one per portion.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Mutex;

use offsite_proto::limits::MAX_PORTION_BYTES;
use offsite_proto::{Hash, PortionId, PortionLocation, TenantId, VendorId, VendorRef};

use crate::format::portion::check_header;
use crate::market::probe::{probe_all, rank};
use crate::market::vendor::{FetchRange, VendorError, VendorPool};

/// No replica of a portion could be read.
#[derive(Debug, thiserror::Error)]
#[error("no replica of portion {portion} could be read ({tried} tried): {errors}; check that its vendors are up, then retry")]
pub struct FetchError {
    pub portion: PortionId,
    pub tried: usize,
    pub errors: String,
}

/// Fetches portions, or byte ranges of them, by their locations.
pub trait PortionSource: Sync {
    /// The whole portion, its hash and header checked, fetched into `buffer`
    /// (cleared first) so a caller can reuse one buffer for many portions.
    fn portion(
        &self,
        location: &PortionLocation,
        buffer: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>, FetchError>> + Send;

    /// A blob's bytes; `check` says whether a copy is good (else the next replica is tried).
    fn blob(
        &self,
        location: &PortionLocation,
        offset: u64,
        length: u64,
        check: &(dyn Fn(&[u8]) -> bool + Sync),
    ) -> impl Future<Output = Result<Vec<u8>, FetchError>> + Send;
}

/// Checks a fetched portion against its location.
pub fn verify_portion(location: &PortionLocation, bytes: &[u8]) -> Result<(), String> {
    if bytes.len() as u64 != location.size {
        return Err(format!(
            "{} bytes where {} were expected",
            bytes.len(),
            location.size
        ));
    }
    if Hash::of(bytes) != location.hash {
        return Err("hash mismatch".into());
    }
    check_header(location.portion, bytes).map_err(|e| e.to_string())
}

/// Fetches from vendors, best-probed replica first.
pub struct VendorSource {
    pool: VendorPool,
    tenant: TenantId,
    rank: HashMap<VendorId, usize>,
    /// Vendors that hung or could not be reached during this restore.
    set_aside: Mutex<HashSet<VendorId>>,
}

impl VendorSource {
    /// Probes every vendor holding one of `locations` to rank them.
    pub async fn probe(pool: VendorPool, tenant: TenantId, locations: &[PortionLocation]) -> Self {
        let mut vendors: Vec<VendorRef> =
            locations.iter().flat_map(|l| l.vendors.clone()).collect();
        vendors.sort_by(|a, b| a.id.cmp(&b.id));
        vendors.dedup_by(|a, b| a.id == b.id);
        let ranked = rank(probe_all(&pool, &vendors).await, false);
        let rank = ranked
            .into_iter()
            .enumerate()
            .map(|(i, p)| (p.vendor.id, i))
            .collect();
        Self {
            pool,
            tenant,
            rank,
            set_aside: Mutex::default(),
        }
    }

    fn set_aside(&self) -> std::sync::MutexGuard<'_, HashSet<VendorId>> {
        self.set_aside
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The location's vendors (with their grants): those that answered the
    /// probe and have not hung since first, rotated by portion so parallel
    /// fetches spread over the vendors, then the rest.
    fn order<'a>(&self, location: &'a PortionLocation) -> Vec<(usize, &'a VendorRef)> {
        let set_aside = self.set_aside().clone();
        let rank = |v: &VendorRef| match set_aside.contains(&v.id) {
            true => None,
            false => self.rank.get(&v.id).copied(),
        };
        let mut order: Vec<(usize, &VendorRef)> = location.vendors.iter().enumerate().collect();
        order.sort_by_key(|(_, v)| rank(v).unwrap_or(usize::MAX));
        let answered = order.iter().filter(|(_, v)| rank(v).is_some()).count();
        if answered > 1 {
            let turn = usize::from(location.portion.as_bytes()[0]) % answered;
            order[..answered].rotate_left(turn);
        }
        order
    }

    async fn fetch_checked(
        &self,
        location: &PortionLocation,
        offset: u64,
        length: u64,
        check: &(dyn Fn(&[u8]) -> Result<(), String> + Sync),
        mut buffer: Vec<u8>,
    ) -> Result<Vec<u8>, FetchError> {
        let mut errors = Vec::new();
        let order = self.order(location);
        for (index, vendor) in &order {
            let range = FetchRange {
                vendor,
                tenant: &self.tenant,
                portion: location.portion,
                offset,
                length,
                grant: location.fetch_grants.get(*index),
            };
            let result = self.pool.fetch_into(range, &mut buffer).await;
            if let Err(
                VendorError::Stalled { .. }
                | VendorError::Timeout { .. }
                | VendorError::Unreachable { .. },
            ) = &result
            {
                self.set_aside().insert(vendor.id.clone());
            }
            match result
                .map_err(|e| e.to_string())
                .and_then(|()| check(&buffer))
            {
                Ok(()) => return Ok(buffer),
                Err(e) => {
                    tracing::warn!(vendor = %vendor.id, portion = %location.portion, error = %e, "replica failed; trying the next");
                    errors.push(format!("{}: {e}", vendor.id));
                }
            }
        }
        Err(FetchError {
            portion: location.portion,
            tried: order.len(),
            errors: if errors.is_empty() {
                "no vendor holds it".into()
            } else {
                errors.join("; ")
            },
        })
    }
}

impl PortionSource for VendorSource {
    async fn portion(
        &self,
        location: &PortionLocation,
        buffer: Vec<u8>,
    ) -> Result<Vec<u8>, FetchError> {
        if location.size > MAX_PORTION_BYTES {
            return Err(FetchError {
                portion: location.portion,
                tried: 0,
                errors: format!("its size {} is beyond any portion", location.size),
            });
        }
        let check = |bytes: &[u8]| verify_portion(location, bytes);
        self.fetch_checked(location, 0, location.size, &check, buffer)
            .await
    }

    async fn blob(
        &self,
        location: &PortionLocation,
        offset: u64,
        length: u64,
        check: &(dyn Fn(&[u8]) -> bool + Sync),
    ) -> Result<Vec<u8>, FetchError> {
        let in_bounds = offset
            .checked_add(length)
            .is_some_and(|end| end <= location.size);
        if !in_bounds {
            return Err(FetchError {
                portion: location.portion,
                tried: 0,
                errors: format!("blob at {offset}+{length} lies outside the portion"),
            });
        }
        let check = |bytes: &[u8]| {
            if check(bytes) {
                Ok(())
            } else {
                Err("the blob does not open: corrupt copy".to_string())
            }
        };
        self.fetch_checked(location, offset, length, &check, Vec::new())
            .await
    }
}
