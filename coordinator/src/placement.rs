//! Placement: choosing the candidate vendors of a reservation, outside the
//! FAT's `apply`. From the up vendors with free room, candidates are drawn
//! spread over regions first (a region gets a second candidate only when every
//! region has one), weighted by free room. Each candidate holds
//! `min(bytes, free, ceil(overprovision * bytes * R / k))` for k candidates;
//! the choice succeeds only if the holds sum to `bytes * R` over at least R
//! vendors.

use std::collections::BTreeMap;

use rand::Rng;

use crate::fat::{FatError, Hold, VendorRoom, MAX_CANDIDATES};

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

/// An index from `pool`, drawn with probability proportional to free room.
fn weighted_pick<R: Rng + ?Sized>(pool: &[usize], rooms: &[&VendorRoom], rng: &mut R) -> usize {
    let total: u128 = pool.iter().map(|i| u128::from(rooms[*i].free_bytes)).sum();
    let mut ticket = rng.gen_range(0..total.max(1));
    for i in pool {
        let weight = u128::from(rooms[*i].free_bytes);
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
        VendorRoom {
            vendor: VendorId::new(id).unwrap(),
            region: region.into(),
            free_bytes: free,
        }
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
