//! Hostile input at the edge: arbitrary and mutated bytes fed to the decoders
//! of the messages a daemon accepts from the network (the routing header of a
//! store stream, the FAT records a client sends), then to their checked
//! conversions. Nothing may panic, and whatever is accepted must satisfy every
//! limit the conversion promises. Proptest runs a bounded number of cases, so
//! this is a fuzz run with a fixed budget that CI can afford.

use std::collections::HashSet;

use offsite_proto::limits::{MAX_PIECE_BYTES, MAX_PORTION_BYTES, MAX_ROUTE_LEN, MIN_PIECE_BYTES};
use offsite_proto::pb::common as pbc;
use offsite_proto::pb::coordinator as pbk;
use offsite_proto::pb::vendor as pbv;
use offsite_proto::{
    Hash, PortionId, PortionLocation, PortionPlacement, ReservationId, RoutingHeader,
    SnapshotRecord,
};
use proptest::prelude::*;
use prost::Message;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 2_000,
        ..ProptestConfig::default()
    }
}

fn vendor(id: &str) -> pbc::VendorRef {
    pbc::VendorRef {
        vendor_id: id.to_string(),
        address: "127.0.0.1:7100".to_string(),
    }
}

fn valid_header() -> pbv::RoutingHeader {
    pbv::RoutingHeader {
        tenant_id: "acme".into(),
        portion_id: PortionId::random().to_string(),
        hash: Hash::of(b"portion").to_vec(),
        size: 1024,
        route: vec![vendor("v1"), vendor("v2"), vendor("v3")],
        piece_size: MIN_PIECE_BYTES,
        grants: vec![],
        reservation_id: ReservationId::random().to_string(),
    }
}

/// Every promise the checked conversion makes about a header it accepts.
fn assert_header_limits(h: &RoutingHeader) -> Result<(), TestCaseError> {
    prop_assert!(!h.route.is_empty() && h.route.len() <= MAX_ROUTE_LEN);
    let distinct: HashSet<_> = h.route.iter().map(|v| &v.id).collect();
    prop_assert_eq!(distinct.len(), h.route.len(), "a vendor twice on a route");
    prop_assert!(h.size >= 1 && h.size <= MAX_PORTION_BYTES);
    prop_assert!((MIN_PIECE_BYTES..=MAX_PIECE_BYTES).contains(&h.piece_size));
    prop_assert!(h.grants.is_empty() || h.grants.len() == h.route.len());
    // What was accepted survives the trip back to the wire unchanged.
    let again = RoutingHeader::try_from(pbv::RoutingHeader::from(h.clone()));
    prop_assert_eq!(again.as_ref(), Ok(h));
    Ok(())
}

/// Decodes `bytes` as a store stream's frame and checks a header it carries.
fn check_store_frame(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(frame) = pbv::StoreFrame::decode(bytes) {
        if let Some(pbv::store_frame::Frame::Header(header)) = frame.frame {
            if let Ok(h) = RoutingHeader::try_from(header) {
                assert_header_limits(&h)?;
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic_a_store_frame_decoder(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        check_store_frame(&bytes)?;
    }

    #[test]
    fn mutated_headers_are_refused_or_within_limits(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let frame = pbv::StoreFrame {
            frame: Some(pbv::store_frame::Frame::Header(valid_header())),
        };
        let mut bytes = frame.encode_to_vec();
        for (at, mask) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= mask;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        check_store_frame(&bytes)?;
    }

    #[test]
    fn routes_are_accepted_exactly_when_short_and_distinct(
        ids in proptest::collection::vec("[a-d]{1,2}", 0..24),
    ) {
        let mut header = valid_header();
        header.route = ids.iter().map(|id| vendor(id)).collect();
        let distinct: HashSet<_> = ids.iter().collect();
        let fine = !ids.is_empty() && ids.len() <= MAX_ROUTE_LEN && distinct.len() == ids.len();
        let result = RoutingHeader::try_from(header);
        prop_assert_eq!(result.is_ok(), fine, "{:?}: {:?}", ids, result);
    }

    #[test]
    fn sizes_outside_the_limits_are_refused(size in any::<u64>(), piece in any::<u64>()) {
        let mut header = valid_header();
        header.size = size;
        header.piece_size = piece;
        let fine = (1..=MAX_PORTION_BYTES).contains(&size)
            && (MIN_PIECE_BYTES..=MAX_PIECE_BYTES).contains(&piece);
        prop_assert_eq!(RoutingHeader::try_from(header).is_ok(), fine);
    }

    #[test]
    fn arbitrary_fat_records_never_panic_their_conversions(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        if let Ok(commit) = pbk::CommitRequest::decode(bytes.as_slice()) {
            for placement in commit.portions {
                let _ = PortionPlacement::try_from(placement);
            }
            if let Some(record) = commit.snapshot {
                let _ = SnapshotRecord::try_from(record);
            }
        }
        if let Ok(got) = pbk::GetSnapshotResponse::decode(bytes.as_slice()) {
            for location in got.portions {
                let _ = PortionLocation::try_from(location);
            }
            if let Some(record) = got.snapshot {
                let _ = SnapshotRecord::try_from(record);
            }
        }
    }
}

#[test]
fn the_valid_header_of_these_tests_is_accepted() {
    let h = RoutingHeader::try_from(valid_header()).expect("a valid header");
    assert_eq!(h.route.len(), 3);
}
