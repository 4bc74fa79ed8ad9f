//! Placement: choosing the candidate vendors of a reservation, outside the
//! FAT's `apply`. From the up vendors with free room, candidates are drawn
//! spread over regions first (a region gets a second candidate only when every
//! region has one), weighted by free room. Each candidate holds
//! `min(bytes, free, ceil(overprovision * bytes * R / k))` for k candidates;
//! the choice succeeds only if the holds sum to `bytes * R` over at least R
//! vendors.
//!
//! Prices: vendors above the tenant's most it pays are never chosen, and a
//! vendor's weight is its free room times `(cheapest + 1) / (price + 1)`
//! (storage prices), so of two vendors with equal room one at half the
//! price is drawn about twice as often. A reputation score would multiply
//! the weight the same way.

use std::collections::BTreeMap;

use rand::Rng;

use crate::fat::{FatError, Hold, VendorRoom, MAX_CANDIDATES};

/// The most a tenant pays; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PriceLimits {
    pub max_storage_price: Option<u64>,
    pub max_egress_price: Option<u64>,
}

impl PriceLimits {
    fn admits(&self, room: &VendorRoom) -> bool {
        self.max_storage_price
            .is_none_or(|max| room.prices.storage_micros_per_tib_month <= max)
            && self
                .max_egress_price
                .is_none_or(|max| room.prices.egress_micros_per_tib <= max)
    }

    fn describe(&self) -> String {
        let show = |v: Option<u64>| v.map_or("any".to_string(), |v| v.to_string());
        format!(
            "max_storage_price {} and max_egress_price {}",
            show(self.max_storage_price),
            show(self.max_egress_price)
        )
    }
}

/// Chooses among the vendors within `limits`; when they cannot place the
/// reservation but all vendors could, the refusal says how many are within
/// the limits and what the vendors charge.
pub fn choose_within<R: Rng + ?Sized>(
    rooms: &[VendorRoom],
    limits: &PriceLimits,
    bytes: u64,
    replication: u32,
    policy: &PlacementPolicy,
    rng: &mut R,
) -> Result<Vec<Hold>, FatError> {
    let within: Vec<VendorRoom> = rooms.iter().filter(|r| limits.admits(r)).cloned().collect();
    if within.len() == rooms.len() {
        return choose(rooms, bytes, replication, policy, rng);
    }
    choose(&within, bytes, replication, policy, rng).map_err(|err| {
        if choose(rooms, bytes, replication, policy, rng).is_err() {
            return err;
        }
        let mut charges: Vec<String> = rooms
            .iter()
            .take(16)
            .map(|r| {
                format!(
                    "{} {}/{}",
                    r.vendor, r.prices.storage_micros_per_tib_month, r.prices.egress_micros_per_tib
                )
            })
            .collect();
        if rooms.len() > charges.len() {
            charges.push(format!("and {} more", rooms.len() - charges.len()));
        }
        FatError::LimitReached(format!(
            "too few vendors within your price limits ({}): {} of the {} up vendors with \
             room are within them, and they cannot hold {bytes} bytes at replication \
             {replication}; vendors charge (storage per TiB-month / egress per TiB, \
             micro-units): {}; raise the limits in client.toml or with --max-storage-price",
            limits.describe(),
            within.len(),
            rooms.len(),
            charges.join(", ")
        ))
    })
}

/// How generously to reserve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlacementPolicy {
    /// Reserve this many times the bytes asked (at least 1.0).
    pub overprovision: f64,
    /// At least R + this many candidates where they exist.
    pub extra_vendors: u32,
}

/// Chooses the candidates for `bytes` at `replication` among `rooms` (up
/// vendors with free room), with the bytes each is to hold.
pub fn choose<R: Rng + ?Sized>(
    rooms: &[VendorRoom],
    bytes: u64,
    replication: u32,
    policy: &PlacementPolicy,
    rng: &mut R,
) -> Result<Vec<Hold>, FatError> {
    let order = spread_order(rooms, rng);
    let wanted = replication.saturating_add(policy.extra_vendors) as usize;
    let first_k = wanted.min(order.len()).max(1);
    for k in first_k..=order.len() {
        let holds = holds_for(&order[..k], bytes, replication, policy);
        let total: u128 = holds.iter().map(|h| u128::from(h.bytes)).sum();
        if holds.len() >= replication as usize
            && total >= u128::from(bytes) * u128::from(replication)
        {
            return Ok(holds);
        }
    }
    Err(FatError::NotEnoughCapacity {
        asked_bytes: bytes,
        replication,
        needed_bytes: bytes.saturating_mul(u64::from(replication)),
        free_bytes: rooms
            .iter()
            .map(|r| r.free_bytes)
            .fold(0, u64::saturating_add),
        vendors: rooms.len() as u64,
    })
}

/// The bytes each of the first k candidates holds.
fn holds_for(
    chosen: &[&VendorRoom],
    bytes: u64,
    replication: u32,
    policy: &PlacementPolicy,
) -> Vec<Hold> {
    let k = chosen.len() as u128;
    // Integer arithmetic in thousandths keeps the result exact and the same
    // on every machine.
    let per_mille = (policy.overprovision.max(1.0) * 1000.0).round() as u128;
    let share = (per_mille * u128::from(bytes) * u128::from(replication)).div_ceil(1000 * k);
    let share = u64::try_from(share).unwrap_or(u64::MAX);
    chosen
        .iter()
        .map(|room| Hold {
            vendor: room.vendor.clone(),
            bytes: bytes.min(room.free_bytes).min(share),
        })
        .filter(|h| h.bytes > 0)
        .collect()
}

/// Up to `MAX_CANDIDATES` vendors in the order they are chosen: always from
/// the regions with the fewest chosen so far, weighted by free room.
fn spread_order<'a, R: Rng + ?Sized>(rooms: &'a [VendorRoom], rng: &mut R) -> Vec<&'a VendorRoom> {
    let mut remaining: Vec<&VendorRoom> = rooms.iter().filter(|r| r.free_bytes > 0).collect();
    let mut per_region: BTreeMap<&str, usize> = BTreeMap::new();
    let mut order = Vec::new();
    while !remaining.is_empty() && order.len() < MAX_CANDIDATES {
        let count = |r: &VendorRoom| per_region.get(r.region.as_str()).copied().unwrap_or(0);
        let fewest = remaining.iter().map(|r| count(r)).min().unwrap_or(0);
        let pool: Vec<usize> = (0..remaining.len())
            .filter(|i| count(remaining[*i]) == fewest)
            .collect();
        let pick = weighted_pick(&pool, &remaining, rng);
        let room = remaining.swap_remove(pick);
        *per_region.entry(room.region.as_str()).or_default() += 1;
        order.push(room);
    }
    order
}

/// A vendor's weight: free room, times `(cheapest + 1) / (price + 1)`.
fn weight(room: &VendorRoom, cheapest: u64) -> u128 {
    let price = u128::from(room.prices.storage_micros_per_tib_month) + 1;
    u128::from(room.free_bytes) * (u128::from(cheapest) + 1) / price
}

/// An index from `pool`, drawn with probability proportional to its
/// weight.
fn weighted_pick<R: Rng + ?Sized>(pool: &[usize], rooms: &[&VendorRoom], rng: &mut R) -> usize {
    let cheapest = pool
        .iter()
        .map(|i| rooms[*i].prices.storage_micros_per_tib_month)
        .min()
        .unwrap_or(0);
    let total: u128 = pool.iter().map(|i| weight(rooms[*i], cheapest)).sum();
    let mut ticket = rng.gen_range(0..total.max(1));
    for i in pool {
        let weight = weight(rooms[*i], cheapest);
        if ticket < weight {
            return *i;
        }
        ticket -= weight;
    }
    pool[pool.len() - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use offsite_proto::VendorId;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn room(id: &str, region: &str, free: u64) -> VendorRoom {
        priced(id, region, free, 0)
    }

    fn priced(id: &str, region: &str, free: u64, storage_price: u64) -> VendorRoom {
        VendorRoom {
            vendor: VendorId::new(id).unwrap(),
            region: region.into(),
            free_bytes: free,
            prices: crate::fat::Prices {
                storage_micros_per_tib_month: storage_price,
                egress_micros_per_tib: 0,
            },
        }
    }

    #[test]
    fn vendors_above_the_limit_are_never_chosen_and_cheaper_ones_more_often() {
        let rooms: Vec<_> = [1, 2, 4, 8]
            .iter()
            .map(|p| priced(&format!("p{p}"), "eu", 1 << 30, p * 1_000_000))
            .collect();
        let limits = PriceLimits {
            max_storage_price: Some(4_000_000),
            max_egress_price: None,
        };
        let policy = PlacementPolicy {
            overprovision: 1.0,
            extra_vendors: 0,
        };
        let mut rng = StdRng::seed_from_u64(5);
        let mut counts = BTreeMap::new();
        for _ in 0..600 {
            let holds = choose_within(&rooms, &limits, 10, 1, &policy, &mut rng).unwrap();
            *counts
                .entry(holds[0].vendor.as_str().to_string())
                .or_insert(0) += 1;
        }
        assert!(!counts.contains_key("p8"), "{counts:?}");
        assert!(
            counts["p1"] > counts["p2"] && counts["p2"] > counts["p4"],
            "{counts:?}"
        );

        let err = choose_within(&rooms, &limits, 10, 4, &policy, &mut rng).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("3 of the 4 up vendors"), "{message}");
        assert!(message.contains("p8 8000000/0"), "{message}");
        assert!(!message.contains("  "), "{message}");
    }

    const POLICY: PlacementPolicy = PlacementPolicy {
        overprovision: 1.5,
        extra_vendors: 2,
    };

    #[test]
    fn holds_follow_the_formula_over_r_plus_extra_candidates() {
        let rooms: Vec<_> = (0..8).map(|i| room(&format!("v{i}"), "eu", 1000)).collect();
        let holds = choose(&rooms, 100, 3, &POLICY, &mut StdRng::seed_from_u64(1)).unwrap();
        assert_eq!(holds.len(), 5);
        // ceil(1.5 * 100 * 3 / 5) = 90
        assert!(holds.iter().all(|h| h.bytes == 90), "{holds:?}");
    }

    #[test]
    fn a_candidate_never_holds_more_than_bytes_or_its_free_room() {
        let rooms = vec![
            room("a", "eu", 1000),
            room("b", "us", 1000),
            room("c", "ap", 60),
        ];
        let holds = choose(&rooms, 50, 1, &POLICY, &mut StdRng::seed_from_u64(2)).unwrap();
        assert_eq!(holds.len(), 3);
        assert!(holds.iter().all(|h| h.bytes == 25), "{holds:?}");
        let holds = choose(&rooms, 100, 2, &POLICY, &mut StdRng::seed_from_u64(2)).unwrap();
        let c = holds.iter().find(|h| h.vendor.as_str() == "c").unwrap();
        assert_eq!(c.bytes, 60);
        assert!(holds.iter().all(|h| h.bytes <= 100));
    }

    #[test]
    fn regions_are_spread_before_a_region_gets_a_second_candidate() {
        let mut rooms: Vec<_> = (0..6)
            .map(|i| room(&format!("eu{i}"), "eu", 1_000_000))
            .collect();
        rooms.push(room("us0", "us", 10));
        rooms.push(room("ap0", "ap", 10));
        for seed in 0..20 {
            let holds = choose(&rooms, 5, 1, &POLICY, &mut StdRng::seed_from_u64(seed)).unwrap();
            let names: Vec<_> = holds.iter().map(|h| h.vendor.as_str()).collect();
            assert!(
                names.contains(&"us0") && names.contains(&"ap0"),
                "{names:?}"
            );
        }
    }

    #[test]
    fn free_room_weights_the_choice() {
        let rooms = vec![room("big", "eu", 1_000_000), room("small", "eu", 1_000)];
        let policy = PlacementPolicy {
            overprovision: 1.0,
            extra_vendors: 0,
        };
        let mut rng = StdRng::seed_from_u64(3);
        let big = (0..200)
            .filter(|_| {
                choose(&rooms, 10, 1, &policy, &mut rng).unwrap()[0]
                    .vendor
                    .as_str()
                    == "big"
            })
            .count();
        assert!(big > 180, "big chosen {big} of 200 times");
    }

    #[test]
    fn more_candidates_are_taken_when_the_first_ones_lack_room() {
        let rooms: Vec<_> = (0..10).map(|i| room(&format!("v{i}"), "eu", 30)).collect();
        let holds = choose(&rooms, 100, 2, &POLICY, &mut StdRng::seed_from_u64(4)).unwrap();
        let total: u64 = holds.iter().map(|h| h.bytes).sum();
        assert!(total >= 200 && holds.len() >= 7, "{holds:?}");
    }

    #[test]
    fn too_little_room_names_what_was_asked_and_what_is_free() {
        let rooms = vec![room("a", "eu", 100), room("b", "us", 100)];
        let err = choose(&rooms, 150, 2, &POLICY, &mut StdRng::seed_from_u64(5)).unwrap_err();
        assert!(matches!(
            err,
            FatError::NotEnoughCapacity {
                asked_bytes: 150,
                replication: 2,
                free_bytes: 200,
                vendors: 2,
                ..
            }
        ));
        let err = choose(&rooms, 10, 3, &POLICY, &mut StdRng::seed_from_u64(5)).unwrap_err();
        assert!(err.to_string().contains("at least 3 vendors"), "{err}");
        assert!(choose(&[], 1, 1, &POLICY, &mut StdRng::seed_from_u64(5)).is_err());
    }
}
