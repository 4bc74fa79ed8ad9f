//! The room a reservation holds at each candidate vendor, and route
//! selection over it: R distinct vendors with room, chosen by a smooth
//! weighted round-robin in which a candidate's weight falls with its storage
//! price (`(cheapest + 1) / (price + 1)`), so of two candidates one at half
//! the price gets about twice the copies, while consecutive portions still go
//! to different vendors. Ties go to the best-probed; a route lists its vendors
//! best-probed first.

use std::collections::{HashMap, HashSet};

use offsite_proto::{VendorId, VendorRef};

/// The weight of the cheapest candidate; others get a share of it.
const FULL_WEIGHT: u128 = 1 << 16;

/// What the ledger knows of one candidate.
#[derive(Debug)]
pub struct Offer {
    /// Bytes the reservation holds there.
    pub room: u64,
    /// Micro-units per TiB-month.
    pub storage_price: u64,
}

/// Bytes left per candidate in the current reservation.
#[derive(Debug)]
pub struct Ledger {
    /// Candidates that passed the probe, best first.
    order: Vec<VendorRef>,
    room: HashMap<VendorId, u64>,
    weight: HashMap<VendorId, i128>,
    /// How far each candidate is owed a copy: raised by its weight on every
    /// route it could take, lowered by the weights of all when it takes one.
    credit: HashMap<VendorId, i128>,
    bad: HashSet<VendorId>,
}

impl Ledger {
    /// `ranked` in probe order; `offers` what the reservation holds at each
    /// candidate and what it charges.
    pub fn new(ranked: Vec<VendorRef>, offers: HashMap<VendorId, Offer>) -> Self {
        let cheapest = offers.values().map(|o| o.storage_price).min().unwrap_or(0);
        let weight = offers
            .iter()
            .map(|(id, offer)| {
                let share = FULL_WEIGHT * (u128::from(cheapest) + 1)
                    / (u128::from(offer.storage_price) + 1);
                (id.clone(), share.max(1) as i128)
            })
            .collect();
        Self {
            order: ranked,
            room: offers.into_iter().map(|(id, o)| (id, o.room)).collect(),
            weight,
            credit: HashMap::new(),
            bad: HashSet::new(),
        }
    }

    /// Picks `count` distinct usable vendors outside `exclude` with room for
    /// `size`, and charges them; `None` (nothing charged) when there are too few.
    pub fn route(
        &mut self,
        size: u64,
        count: usize,
        exclude: &HashSet<VendorId>,
    ) -> Option<Vec<VendorRef>> {
        if count == 0 {
            return None;
        }
        let eligible: Vec<usize> = (0..self.order.len())
            .filter(|i| {
                let id = &self.order[*i].id;
                !self.bad.contains(id)
                    && !exclude.contains(id)
                    && self.room.get(id).is_some_and(|room| *room >= size)
            })
            .collect();
        if eligible.len() < count {
            return None;
        }
        let weight = |id: &VendorId| self.weight.get(id).copied().unwrap_or(1);
        let total: i128 = eligible.iter().map(|i| weight(&self.order[*i].id)).sum();
        for i in &eligible {
            let id = &self.order[*i].id;
            let raise = weight(id) * count as i128;
            let credit = self.credit.entry(id.clone()).or_default();
            // Bounded, so a candidate that waited long does not then take
            // every route.
            *credit = (*credit + raise).min(total * count as i128);
        }
        let mut chosen = eligible;
        // Stable: among equal credits the best-probed comes first.
        chosen.sort_by_key(|i| std::cmp::Reverse(self.credit[&self.order[*i].id]));
        chosen.truncate(count);
        chosen.sort_unstable();
        let route: Vec<VendorRef> = chosen.iter().map(|i| self.order[*i].clone()).collect();
        for vendor in &route {
            if let Some(room) = self.room.get_mut(&vendor.id) {
                *room -= size;
            }
            if let Some(credit) = self.credit.get_mut(&vendor.id) {
                *credit -= total;
            }
        }
        Some(route)
    }

    /// Gives back room charged to a vendor that did not store the portion.
    pub fn refund(&mut self, vendor: &VendorId, size: u64) {
        if let Some(room) = self.room.get_mut(vendor) {
            *room += size;
        }
    }

    /// Takes a vendor that failed out of every later route.
    pub fn mark_bad(&mut self, vendor: &VendorId) {
        self.bad.insert(vendor.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vendors(n: usize) -> Vec<VendorRef> {
        (0..n)
            .map(|i| VendorRef {
                id: VendorId::new(format!("v{i}")).unwrap(),
                address: format!("127.0.0.1:{}", 7100 + i),
            })
            .collect()
    }

    fn priced(room: u64, prices: &[u64]) -> Ledger {
        let order = vendors(prices.len());
        let offers = order
            .iter()
            .zip(prices)
            .map(|(v, price)| {
                let offer = Offer {
                    room,
                    storage_price: *price,
                };
                (v.id.clone(), offer)
            })
            .collect();
        Ledger::new(order, offers)
    }

    fn ledger(n: usize, room: u64) -> Ledger {
        priced(room, &vec![0; n])
    }

    fn ids(route: &[VendorRef]) -> Vec<&str> {
        route.iter().map(|v| v.id.as_str()).collect()
    }

    #[test]
    fn routes_are_distinct_rotated_and_charged() {
        let mut ledger = ledger(4, 100);
        let none = HashSet::new();
        let a = ledger.route(40, 3, &none).unwrap();
        let b = ledger.route(40, 3, &none).unwrap();
        assert_eq!(ids(&a), vec!["v0", "v1", "v2"]);
        // v3 waited, so it is in the next route.
        assert_eq!(ids(&b), vec!["v0", "v1", "v3"]);
        // v0 and v1 have 20 left; only v2 and v3 fit another 40.
        assert!(ledger.route(40, 3, &none).is_none());
        assert_eq!(ids(&ledger.route(40, 2, &none).unwrap()), vec!["v2", "v3"]);
        ledger.refund(&VendorId::new("v1").unwrap(), 40);
        assert_eq!(ids(&ledger.route(40, 1, &none).unwrap()), vec!["v1"]);
    }

    #[test]
    fn equal_prices_share_the_copies_evenly() {
        let mut ledger = ledger(3, u64::MAX);
        let none = HashSet::new();
        let mut copies: HashMap<String, usize> = HashMap::new();
        for _ in 0..300 {
            for v in ledger.route(1, 2, &none).unwrap() {
                *copies.entry(v.id.to_string()).or_default() += 1;
            }
        }
        assert_eq!(
            copies.values().copied().collect::<HashSet<_>>(),
            [200].into()
        );
    }

    #[test]
    fn cheaper_candidates_get_more_copies_in_proportion() {
        // Weights 4 : 2 : 1 (prices 0, 1, 3); R = 1 over 700 portions.
        let mut ledger = priced(u64::MAX, &[0, 1, 3]);
        let none = HashSet::new();
        let mut copies = [0usize; 3];
        for _ in 0..700 {
            let route = ledger.route(1, 1, &none).unwrap();
            copies[ids(&route)[0][1..].parse::<usize>().unwrap()] += 1;
        }
        assert_eq!(copies, [400, 200, 100]);
        // With R = 2 the cheapest is on nearly every route, never twice.
        let mut ledger = priced(u64::MAX, &[0, 1, 3]);
        let mut copies = [0usize; 3];
        for _ in 0..700 {
            let route = ledger.route(1, 2, &none).unwrap();
            assert_ne!(route[0].id, route[1].id);
            for v in ids(&route) {
                copies[v[1..].parse::<usize>().unwrap()] += 1;
            }
        }
        assert!(copies[0] > copies[1] && copies[1] > copies[2], "{copies:?}");
    }

    #[test]
    fn a_full_candidate_leaves_its_share_to_the_others() {
        let mut ledger = priced(2, &[0, 100]);
        let none = HashSet::new();
        let routes: Vec<String> = (0..4)
            .map(|_| ids(&ledger.route(1, 1, &none).unwrap())[0].to_string())
            .collect();
        assert_eq!(routes, vec!["v0", "v0", "v1", "v1"]);
        assert!(ledger.route(1, 1, &none).is_none());
    }

    #[test]
    fn bad_and_excluded_vendors_are_skipped() {
        let mut ledger = ledger(4, 100);
        ledger.mark_bad(&VendorId::new("v0").unwrap());
        let exclude: HashSet<VendorId> = [VendorId::new("v1").unwrap()].into();
        assert_eq!(
            ids(&ledger.route(10, 2, &exclude).unwrap()),
            vec!["v2", "v3"]
        );
        assert!(ledger.route(10, 3, &exclude).is_none());
    }
}
