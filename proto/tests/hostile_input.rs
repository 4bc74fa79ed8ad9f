//! Hostile input at the edge: arbitrary and mutated bytes fed to the decoders
//! of the messages a daemon accepts from the network (the routing header of a
//! store stream, the FAT records a client sends), then to their checked
//! conversions. Nothing may panic, and whatever is accepted must satisfy every
//! limit the conversion promises. Proptest runs a bounded number of cases, so
//! this is a fuzz run with a fixed budget that CI can afford.

use std::collections::HashSet;

use offsite_proto::limits::{
    MAX_PIECE_BYTES, MAX_PORTIONS_PER_CALL, MAX_PORTION_BYTES, MAX_ROUTE_LEN, MAX_SNAPSHOT_LIST,
    MAX_SNAPSHOT_STRING, MIN_PIECE_BYTES,
};
use offsite_proto::pb::common as pbc;
use offsite_proto::pb::coordinator as pbk;
use offsite_proto::pb::vendor as pbv;
use offsite_proto::{
    BlobLocation, Hash, PortionId, PortionLocation, PortionPlacement, Receipt, ReservationId,
    RoutingHeader, SnapshotId, SnapshotRecord, TenantId, VendorId,
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
    fn arbitrary_fat_records_are_refused_or_within_limits(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        check_fat_records(&bytes)?;
    }

    #[test]
    fn placements_are_accepted_exactly_when_their_size_is_legal(
        size in prop_oneof![Just(0u64), Just(u64::MAX), 1..=MAX_PORTION_BYTES, any::<u64>()],
    ) {
        let mut placement = valid_commit().portions.remove(0);
        placement.size = size;
        let fine = (1..=MAX_PORTION_BYTES).contains(&size);
        let result = PortionPlacement::try_from(placement);
        prop_assert_eq!(result.is_ok(), fine, "{}: {:?}", size, result);
        if let Ok(p) = result {
            assert_placement_limits(&p)?;
        }
    }

    #[test]
    fn mutated_commits_are_refused_or_within_limits(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = valid_commit().encode_to_vec();
        for (at, mask) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= mask;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        check_fat_records(&bytes)?;
    }
}

fn valid_commit() -> pbk::CommitRequest {
    let portion = PortionId::random();
    let hash = Hash::of(b"portion");
    let receipt = Receipt {
        vendor: VendorId::new("v1").unwrap(),
        tenant: TenantId::new("acme").unwrap(),
        portion,
        hash,
        size: 1024,
        signature: vec![7; 64],
    };
    let record = SnapshotRecord {
        id: SnapshotId::random(),
        host: "laptop".into(),
        time_unix_ms: 1_764_000_000_000,
        paths: vec!["/home".into(), "/etc".into()],
        tags: vec!["nightly".into()],
        manifest: BlobLocation {
            portion,
            offset: 0,
            length: 100,
        },
        portions: vec![portion],
        logical_bytes: 4096,
        file_count: 3,
    };
    pbk::CommitRequest {
        reservation_id: ReservationId::random().to_string(),
        portions: vec![PortionPlacement {
            portion,
            hash,
            size: 1024,
            receipts: vec![receipt],
        }
        .into()],
        snapshot: Some(record.into()),
        ..Default::default()
    }
}

/// Every promise the checked conversions make about a snapshot record they
/// accept, and that it survives the trip back to the wire unchanged.
fn assert_record_limits(r: &SnapshotRecord) -> Result<(), TestCaseError> {
    prop_assert!(r.host.len() <= MAX_SNAPSHOT_STRING);
    for list in [&r.paths, &r.tags] {
        prop_assert!(list.len() <= MAX_SNAPSHOT_LIST);
        prop_assert!(list.iter().all(|s| s.len() <= MAX_SNAPSHOT_STRING));
    }
    prop_assert!(r.portions.len() <= MAX_PORTIONS_PER_CALL);
    let again = SnapshotRecord::try_from(pbk::SnapshotRecord::from(r.clone()));
    prop_assert_eq!(again.as_ref(), Ok(r));
    Ok(())
}

/// The same for a placement of the final FAT.
fn assert_placement_limits(p: &PortionPlacement) -> Result<(), TestCaseError> {
    prop_assert!((1..=MAX_PORTION_BYTES).contains(&p.size), "size {}", p.size);
    prop_assert!(p.receipts.len() <= 4 * MAX_ROUTE_LEN);
    let again = PortionPlacement::try_from(pbk::PortionPlacement::from(p.clone()));
    prop_assert_eq!(again.as_ref(), Ok(p));
    Ok(())
}

/// Decodes `bytes` as a commit and as a snapshot's answer, and checks
/// whatever their conversions accept.
fn check_fat_records(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(commit) = pbk::CommitRequest::decode(bytes) {
        for placement in commit.portions {
            if let Ok(p) = PortionPlacement::try_from(placement) {
                assert_placement_limits(&p)?;
            }
        }
        if let Some(record) = commit.snapshot {
            if let Ok(r) = SnapshotRecord::try_from(record) {
                assert_record_limits(&r)?;
            }
        }
    }
    if let Ok(got) = pbk::GetSnapshotResponse::decode(bytes) {
        for location in got.portions {
            if let Ok(l) = PortionLocation::try_from(location) {
                let again = PortionLocation::try_from(pbk::PortionLocation::from(l.clone()));
                prop_assert_eq!(again.as_ref(), Ok(&l));
            }
        }
        if let Some(record) = got.snapshot {
            if let Ok(r) = SnapshotRecord::try_from(record) {
                assert_record_limits(&r)?;
            }
        }
    }
    Ok(())
}

#[test]
fn the_valid_commit_of_these_tests_is_accepted() {
    let commit = valid_commit();
    let placement = PortionPlacement::try_from(commit.portions[0].clone()).unwrap();
    assert_eq!(placement.size, 1024);
    SnapshotRecord::try_from(commit.snapshot.unwrap()).unwrap();
}

#[test]
fn the_valid_header_of_these_tests_is_accepted() {
    let h = RoutingHeader::try_from(valid_header()).expect("a valid header");
    assert_eq!(h.route.len(), 3);
}
