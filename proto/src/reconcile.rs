//! Reconciliation, the exact half of garbage collection: a vendor and the
//! coordinator group compare what the vendor holds with what the FAT needs
//! of it, without sending either list whole.
//!
//! Both sides put each (tenant, portion) into one of [`BUCKETS`] buckets by
//! the portion id's first 12 bits, and digest a bucket as the XOR of a
//! keyed blake3 of each member: the same set gives the same digest in any
//! order, and a set that differs by one member gives another. The vendor
//! sends its digests; the coordinator answers the buckets that differ from
//! the FAT's (placements on the vendor and its deletion queue); the vendor
//! then lists what it holds in those, with the reservation each was stored
//! under, and the coordinator answers which the FAT does not need and which
//! it places there that the vendor lacks.

use std::collections::BTreeSet;

use crate::limits::MAX_RECONCILE_HELD;
use crate::pb::coordinator as pb;
use crate::{PortionId, ReservationId, TenantId, WireError};

/// Buckets a holding is split into (the portion id's first 12 bits).
pub const BUCKETS: usize = 4096;
/// Bytes of one bucket's digest.
pub const DIGEST_BYTES: usize = 16;

const DIGEST_CONTEXT: &str = "offsite reconcile bucket digest v1";

/// The bucket of `portion`.
pub fn bucket_of(portion: &PortionId) -> u32 {
    let b = portion.as_bytes();
    (u32::from(b[0]) << 4) | (u32::from(b[1]) >> 4)
}

/// One digest per bucket.
#[derive(Clone, PartialEq, Eq)]
pub struct Digests(Vec<[u8; DIGEST_BYTES]>);

impl Default for Digests {
    fn default() -> Self {
        Self(vec![[0; DIGEST_BYTES]; BUCKETS])
    }
}

impl std::fmt::Debug for Digests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let filled = self.0.iter().filter(|d| **d != [0; DIGEST_BYTES]).count();
        write!(f, "Digests({filled} of {BUCKETS} buckets filled)")
    }
}

impl Digests {
    /// Adds `(tenant, portion)` to its bucket (adding it twice takes it out
    /// again: add each member once).
    pub fn add(&mut self, tenant: &TenantId, portion: &PortionId) {
        let mut hasher = blake3::Hasher::new_derive_key(DIGEST_CONTEXT);
        hasher.update(tenant.as_str().as_bytes());
        hasher.update(b"/");
        hasher.update(portion.as_bytes());
        let member = hasher.finalize();
        let digest = &mut self.0[bucket_of(portion) as usize];
        for (d, m) in digest.iter_mut().zip(member.as_bytes()) {
            *d ^= m;
        }
    }

    /// The buckets where `self` and `other` differ, in order.
    pub fn differing(&self, other: &Digests) -> Vec<u32> {
        (0..BUCKETS as u32)
            .filter(|b| self.0[*b as usize] != other.0[*b as usize])
            .collect()
    }

    pub fn to_wire(&self) -> Vec<Vec<u8>> {
        self.0.iter().map(|d| d.to_vec()).collect()
    }

    /// Reads round one's digests: exactly [`BUCKETS`] of [`DIGEST_BYTES`].
    pub fn from_wire(field: &'static str, wire: &[Vec<u8>]) -> Result<Self, WireError> {
        if wire.len() != BUCKETS {
            return Err(WireError::new(
                field,
                format!(
                    "{} digests; send one for each of the {BUCKETS} buckets",
                    wire.len()
                ),
            ));
        }
        wire.iter()
            .map(|d| {
                <[u8; DIGEST_BYTES]>::try_from(d.as_slice()).map_err(|_| {
                    WireError::new(
                        field,
                        format!("a digest of {} bytes; each is {DIGEST_BYTES}", d.len()),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Digests)
    }
}

/// A portion a vendor holds, with the reservation (or repair) it was last
/// stored under, if its record names one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Held {
    pub tenant: TenantId,
    pub portion: PortionId,
    pub reservation: Option<ReservationId>,
}

impl TryFrom<pb::HeldPortion> for Held {
    type Error = WireError;
    fn try_from(h: pb::HeldPortion) -> Result<Self, WireError> {
        Ok(Self {
            tenant: TenantId::new(h.tenant_id)?,
            portion: PortionId::parse(&h.portion_id)?,
            reservation: match h.reservation_id.is_empty() {
                true => None,
                false => Some(ReservationId::parse(&h.reservation_id)?),
            },
        })
    }
}

impl From<Held> for pb::HeldPortion {
    fn from(h: Held) -> Self {
        Self {
            tenant_id: h.tenant.into(),
            portion_id: h.portion.to_string(),
            reservation_id: h.reservation.map(|r| r.to_string()).unwrap_or_default(),
        }
    }
}

/// Round two of a request, checked: the buckets it covers whole, those it
/// covers in part, and what the vendor holds in them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Holdings {
    pub buckets: BTreeSet<u32>,
    pub partial: BTreeSet<u32>,
    pub held: Vec<Held>,
}

impl Holdings {
    /// Checks round two: buckets in range and named once (whole or in
    /// part), at most [`MAX_RECONCILE_HELD`] portions, each in a listed
    /// bucket and listed once.
    pub fn from_wire(
        buckets: Vec<u32>,
        partial: Vec<u32>,
        held: Vec<pb::HeldPortion>,
    ) -> Result<Self, WireError> {
        if held.len() > MAX_RECONCILE_HELD {
            return Err(WireError::new(
                "held",
                format!(
                    "{} portions, more than {MAX_RECONCILE_HELD}; send fewer buckets at once",
                    held.len()
                ),
            ));
        }
        let (mut set, mut part) = (BTreeSet::new(), BTreeSet::new());
        for (field, list, into) in [
            ("buckets", buckets, &mut set),
            ("partial_buckets", partial, &mut part),
        ] {
            for b in list {
                if b as usize >= BUCKETS || !into.insert(b) {
                    return Err(WireError::new(
                        field,
                        format!(
                            "bucket {b} is out of range (0 to {}) or named twice",
                            BUCKETS - 1
                        ),
                    ));
                }
            }
        }
        if let Some(b) = set.intersection(&part).next() {
            return Err(WireError::new(
                "partial_buckets",
                format!("bucket {b} is named whole and in part; name it once"),
            ));
        }
        let held: Vec<Held> = held
            .into_iter()
            .map(Held::try_from)
            .collect::<Result<_, _>>()?;
        let mut seen = BTreeSet::new();
        for h in &held {
            let bucket = bucket_of(&h.portion);
            if !set.contains(&bucket) && !part.contains(&bucket) {
                return Err(WireError::new(
                    "held",
                    format!(
                        "portion {} is in bucket {}, which `buckets` does not name",
                        h.portion,
                        bucket_of(&h.portion)
                    ),
                ));
            }
            if !seen.insert((&h.tenant, h.portion)) {
                return Err(WireError::new(
                    "held",
                    format!(
                        "portion {} of tenant {} is listed twice",
                        h.portion, h.tenant
                    ),
                ));
            }
        }
        Ok(Self {
            buckets: set,
            partial: part,
            held,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> TenantId {
        TenantId::new(name).unwrap()
    }

    #[test]
    fn the_same_set_in_any_order_digests_the_same() {
        let ids: Vec<PortionId> = (0..50).map(|_| PortionId::random()).collect();
        let (mut forward, mut backward) = (Digests::default(), Digests::default());
        for p in &ids {
            forward.add(&tenant("acme"), p);
        }
        for p in ids.iter().rev() {
            backward.add(&tenant("acme"), p);
        }
        assert_eq!(forward, backward);
        assert!(forward.differing(&backward).is_empty());
        // One more member, or the same portion of another tenant, differs
        // in exactly that portion's bucket.
        let extra = PortionId::random();
        backward.add(&tenant("acme"), &extra);
        assert_eq!(forward.differing(&backward), vec![bucket_of(&extra)]);
        let mut other_tenant = forward.clone();
        other_tenant.add(&tenant("globex"), &ids[0]);
        assert_eq!(forward.differing(&other_tenant), vec![bucket_of(&ids[0])]);
    }

    #[test]
    fn buckets_spread_over_the_whole_range() {
        assert_eq!(bucket_of(&PortionId::from_bytes([0; 16])), 0);
        assert_eq!(
            bucket_of(&PortionId::from_bytes([0xff; 16])),
            BUCKETS as u32 - 1
        );
        let mut b = [0u8; 16];
        b[1] = 0x10;
        assert_eq!(bucket_of(&PortionId::from_bytes(b)), 1);
    }

    #[test]
    fn digests_round_trip_and_bad_ones_are_refused() {
        let mut d = Digests::default();
        d.add(&tenant("acme"), &PortionId::random());
        assert_eq!(Digests::from_wire("digests", &d.to_wire()).unwrap(), d);
        assert!(Digests::from_wire("digests", &d.to_wire()[1..]).is_err());
        let mut short = d.to_wire();
        short[5] = vec![1, 2, 3];
        assert!(Digests::from_wire("digests", &short).is_err());
    }

    #[test]
    fn holdings_must_fall_in_their_buckets_once() {
        let p = PortionId::random();
        let held = |p: PortionId| Held {
            tenant: tenant("acme"),
            portion: p,
            reservation: Some(ReservationId::random()),
        };
        let one = held(p);
        let good =
            Holdings::from_wire(vec![bucket_of(&p)], vec![], vec![one.clone().into()]).unwrap();
        assert_eq!(good.held, vec![one]);
        let elsewhere = (bucket_of(&p) + 1) % BUCKETS as u32;
        assert!(Holdings::from_wire(vec![elsewhere], vec![], vec![held(p).into()]).is_err());
        assert!(Holdings::from_wire(vec![1, 1], vec![], vec![]).is_err());
        assert!(Holdings::from_wire(vec![BUCKETS as u32], vec![], vec![]).is_err());
        let twice = vec![held(p).into(), held(p).into()];
        assert!(Holdings::from_wire(vec![bucket_of(&p)], vec![], twice).is_err());
        let no_reservation = pb::HeldPortion {
            tenant_id: "acme".into(),
            portion_id: p.to_string(),
            reservation_id: String::new(),
        };
        let old = Holdings::from_wire(vec![bucket_of(&p)], vec![], vec![no_reservation]).unwrap();
        assert_eq!(old.held[0].reservation, None);
        // A bucket too large for one request goes in part; never both ways.
        let part = Holdings::from_wire(vec![], vec![bucket_of(&p)], vec![held(p).into()]).unwrap();
        assert_eq!(part.partial.len(), 1);
        let b = bucket_of(&p);
        assert!(Holdings::from_wire(vec![b], vec![b], vec![]).is_err());
    }
}
