//! The routing header that opens every upload, the vendors on a route, grants
//! and receipts.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::limits::{
    MAX_ADDRESS_LEN, MAX_GRANT_BYTES, MAX_PIECE_BYTES, MAX_PORTION_BYTES, MAX_ROUTE_LEN,
    MIN_PIECE_BYTES,
};
use crate::pb;
use crate::{Hash, PortionId, ReservationId, TenantId, VendorId, WireError};

/// A vendor and where to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VendorRef {
    pub id: VendorId,
    /// `host:port` of the vendor agent.
    pub address: String,
}

impl TryFrom<pb::common::VendorRef> for VendorRef {
    type Error = WireError;
    fn try_from(v: pb::common::VendorRef) -> Result<Self, WireError> {
        Ok(Self {
            id: VendorId::new(v.vendor_id)?,
            address: check_address(v.address)?,
        })
    }
}

impl From<VendorRef> for pb::common::VendorRef {
    fn from(v: VendorRef) -> Self {
        Self {
            vendor_id: v.id.into(),
            address: v.address,
        }
    }
}

/// Checks a `host:port` address: bounded, with a port.
pub(crate) fn check_address(address: String) -> Result<String, WireError> {
    if address.is_empty() {
        return Err(WireError::missing("address"));
    }
    if address.len() > MAX_ADDRESS_LEN {
        return Err(WireError::new("address", "longer than 255 characters"));
    }
    let port_ok = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !port_ok || address.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(WireError::new(
            "address",
            format!("{address:?} is not host:port"),
        ));
    }
    Ok(address)
}

/// A coordinator-signed permission for one vendor operation; its body and
/// verification are in [`crate::signing`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub body: Vec<u8>,
    pub signature: Vec<u8>,
    pub key_id: u32,
}

impl TryFrom<pb::common::Grant> for Grant {
    type Error = WireError;
    fn try_from(g: pb::common::Grant) -> Result<Self, WireError> {
        if g.body.len() > MAX_GRANT_BYTES || g.signature.len() > MAX_GRANT_BYTES {
            return Err(WireError::new("grant", "larger than 4 KiB"));
        }
        Ok(Self {
            body: g.body,
            signature: g.signature,
            key_id: g.key_id,
        })
    }
}

impl From<Grant> for pb::common::Grant {
    fn from(g: Grant) -> Self {
        Self {
            body: g.body,
            signature: g.signature,
            key_id: g.key_id,
        }
    }
}

/// "I hold portion P with hash H for tenant T", from one vendor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub vendor: VendorId,
    pub tenant: TenantId,
    pub portion: PortionId,
    pub hash: Hash,
    pub size: u64,
    pub signature: Vec<u8>,
}

impl TryFrom<pb::common::Receipt> for Receipt {
    type Error = WireError;
    fn try_from(r: pb::common::Receipt) -> Result<Self, WireError> {
        if r.signature.len() > MAX_GRANT_BYTES {
            return Err(WireError::new("receipt.signature", "larger than 4 KiB"));
        }
        Ok(Self {
            vendor: VendorId::new(r.vendor_id)?,
            tenant: TenantId::new(r.tenant_id)?,
            portion: PortionId::parse(&r.portion_id)?,
            hash: Hash::from_wire("receipt.hash", &r.hash)?,
            size: r.size,
            signature: r.signature,
        })
    }
}

impl From<Receipt> for pb::common::Receipt {
    fn from(r: Receipt) -> Self {
        Self {
            vendor_id: r.vendor.into(),
            tenant_id: r.tenant.into(),
            portion_id: r.portion.to_string(),
            hash: r.hash.to_vec(),
            size: r.size,
            signature: r.signature,
        }
    }
}

/// The first frame of an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingHeader {
    pub tenant: TenantId,
    pub portion: PortionId,
    pub hash: Hash,
    pub size: u64,
    /// The vendors still to store the portion; the receiver is the first.
    pub route: Vec<VendorRef>,
    pub piece_size: u64,
    /// One store grant per vendor on the route, same order.
    pub grants: Vec<Grant>,
    pub reservation: ReservationId,
}

impl RoutingHeader {
    /// The header to forward: the same with the first vendor (and its grant) taken
    /// out, or `None` at the end of the route.
    pub fn forwarded(&self) -> Option<RoutingHeader> {
        if self.route.len() < 2 {
            return None;
        }
        let mut next = self.clone();
        next.route.remove(0);
        if !next.grants.is_empty() {
            next.grants.remove(0);
        }
        Some(next)
    }
}

impl TryFrom<pb::vendor::RoutingHeader> for RoutingHeader {
    type Error = WireError;
    fn try_from(h: pb::vendor::RoutingHeader) -> Result<Self, WireError> {
        if h.route.is_empty() {
            return Err(WireError::new(
                "route",
                "empty; name at least the receiving vendor",
            ));
        }
        if h.route.len() > MAX_ROUTE_LEN {
            return Err(WireError::new(
                "route",
                format!(
                    "{} vendors, more than the {MAX_ROUTE_LEN} allowed",
                    h.route.len()
                ),
            ));
        }
        let route = h
            .route
            .into_iter()
            .map(VendorRef::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let mut seen = HashSet::new();
        if let Some(twice) = route.iter().find(|v| !seen.insert(&v.id)) {
            return Err(WireError::new(
                "route",
                format!(
                    "names vendor {} twice; a route holds distinct vendors",
                    twice.id
                ),
            ));
        }
        if h.size == 0 || h.size > MAX_PORTION_BYTES {
            return Err(WireError::new(
                "size",
                format!(
                    "{} bytes; a portion holds 1 to {MAX_PORTION_BYTES} bytes",
                    h.size
                ),
            ));
        }
        if !(MIN_PIECE_BYTES..=MAX_PIECE_BYTES).contains(&h.piece_size) {
            return Err(WireError::new(
                "piece_size",
                format!(
                    "{} bytes; use {MIN_PIECE_BYTES} to {MAX_PIECE_BYTES}",
                    h.piece_size
                ),
            ));
        }
        if !h.grants.is_empty() && h.grants.len() != route.len() {
            return Err(WireError::new(
                "grants",
                format!(
                    "{} grants for {} vendors; send one per vendor on the route",
                    h.grants.len(),
                    route.len()
                ),
            ));
        }
        let grants = h
            .grants
            .into_iter()
            .map(Grant::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            tenant: TenantId::new(h.tenant_id)?,
            portion: PortionId::parse(&h.portion_id)?,
            hash: Hash::from_wire("hash", &h.hash)?,
            size: h.size,
            route,
            piece_size: h.piece_size,
            grants,
            reservation: ReservationId::parse(&h.reservation_id)?,
        })
    }
}

impl From<RoutingHeader> for pb::vendor::RoutingHeader {
    fn from(h: RoutingHeader) -> Self {
        Self {
            tenant_id: h.tenant.into(),
            portion_id: h.portion.to_string(),
            hash: h.hash.to_vec(),
            size: h.size,
            route: h.route.into_iter().map(Into::into).collect(),
            piece_size: h.piece_size,
            grants: h.grants.into_iter().map(Into::into).collect(),
            reservation_id: h.reservation.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::DEFAULT_PIECE_BYTES;

    fn vendor(id: &str, port: u16) -> VendorRef {
        VendorRef {
            id: VendorId::new(id).unwrap(),
            address: format!("127.0.0.1:{port}"),
        }
    }

    fn header() -> RoutingHeader {
        RoutingHeader {
            tenant: TenantId::new("acme").unwrap(),
            portion: PortionId::random(),
            hash: Hash::of(b"portion"),
            size: 7,
            route: vec![vendor("v1", 7001), vendor("v2", 7002), vendor("v3", 7003)],
            piece_size: DEFAULT_PIECE_BYTES,
            grants: vec![],
            reservation: ReservationId::random(),
        }
    }

    #[test]
    fn header_round_trips_through_the_wire() {
        let h = header();
        let wire: pb::vendor::RoutingHeader = h.clone().into();
        assert_eq!(RoutingHeader::try_from(wire).unwrap(), h);
    }

    #[test]
    fn forwarding_takes_the_receiver_out_of_the_route() {
        let h = header();
        let next = h.forwarded().unwrap();
        assert_eq!(next.route, h.route[1..]);
        let last = next.forwarded().unwrap();
        assert_eq!(last.route.len(), 1);
        assert!(last.forwarded().is_none());
    }

    #[test]
    fn malformed_headers_are_refused_with_the_field_named() {
        let mut dup: pb::vendor::RoutingHeader = header().into();
        dup.route[2] = dup.route[0].clone();
        let err = RoutingHeader::try_from(dup).unwrap_err();
        assert_eq!(err.field, "route");
        assert!(err.problem.contains("twice"));

        let mut empty: pb::vendor::RoutingHeader = header().into();
        empty.route.clear();
        assert_eq!(RoutingHeader::try_from(empty).unwrap_err().field, "route");

        let mut huge: pb::vendor::RoutingHeader = header().into();
        huge.size = MAX_PORTION_BYTES + 1;
        assert_eq!(RoutingHeader::try_from(huge).unwrap_err().field, "size");

        let mut short_hash: pb::vendor::RoutingHeader = header().into();
        short_hash.hash.pop();
        assert_eq!(
            RoutingHeader::try_from(short_hash).unwrap_err().field,
            "hash"
        );

        let mut bad_addr: pb::vendor::RoutingHeader = header().into();
        bad_addr.route[1].address = "nowhere".into();
        assert_eq!(
            RoutingHeader::try_from(bad_addr).unwrap_err().field,
            "address"
        );

        let mut tiny_piece: pb::vendor::RoutingHeader = header().into();
        tiny_piece.piece_size = 1;
        assert_eq!(
            RoutingHeader::try_from(tiny_piece).unwrap_err().field,
            "piece_size"
        );
    }
}
