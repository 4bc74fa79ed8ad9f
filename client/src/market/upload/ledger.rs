//! The room a reservation holds at each candidate vendor, and route
//! selection over it: R distinct vendors with room, best-probed first, with
//! the starting vendor rotated so consecutive portions go to different vendors.

use std::collections::{HashMap, HashSet};

use offsite_proto::{VendorId, VendorRef};

/// Bytes left per candidate in the current reservation.
#[derive(Debug)]
pub struct Ledger {
    /// Candidates that passed the probe, best first.
    order: Vec<VendorRef>,
    room: HashMap<VendorId, u64>,
    bad: HashSet<VendorId>,
    next: usize,
}

impl Ledger {
    /// `ranked` in probe order; `room` what the reservation holds at each.
    pub fn new(ranked: Vec<VendorRef>, room: HashMap<VendorId, u64>) -> Self {
        Self {
            order: ranked,
            room,
            bad: HashSet::new(),
            next: 0,
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
        let n = self.order.len();
        if n == 0 || count == 0 {
            return None;
        }
        let start = self.next % n;
        let route: Vec<VendorRef> = (0..n)
            .map(|i| &self.order[(start + i) % n])
            .filter(|v| !self.bad.contains(&v.id) && !exclude.contains(&v.id))
            .filter(|v| self.room.get(&v.id).is_some_and(|room| *room >= size))
            .take(count)
            .cloned()
            .collect();
        if route.len() < count {
            return None;
        }
        for vendor in &route {
            if let Some(room) = self.room.get_mut(&vendor.id) {
                *room -= size;
            }
        }
        self.next = self.next.wrapping_add(1);
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

    fn ledger(n: usize, room: u64) -> Ledger {
        let order = vendors(n);
        let rooms = order.iter().map(|v| (v.id.clone(), room)).collect();
        Ledger::new(order, rooms)
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
        assert_eq!(ids(&b), vec!["v1", "v2", "v3"]);
        // v1 and v2 have 20 left; only v0 and v3 fit another 40.
        assert!(ledger.route(40, 3, &none).is_none());
        assert_eq!(ids(&ledger.route(40, 2, &none).unwrap()), vec!["v3", "v0"]);
        ledger.refund(&VendorId::new("v1").unwrap(), 40);
        assert_eq!(ids(&ledger.route(40, 1, &none).unwrap()), vec!["v1"]);
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
