//! Store, forward, fetch and delete across real vendor agents on 127.0.0.1.

mod common;

use common::*;
use offsite_proto::limits::DEFAULT_PIECE_BYTES;
use offsite_proto::pb::vendor::{store_frame, ProbeRequest, StoreFrame};
use offsite_proto::{Hash, Receipt};
use offsite_vendor::testing::test_bytes;
use tonic::Code;

const SMALL_PIECE: u64 = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_route_of_three_vendors_stores_three_copies() {
    let vendors = [
        TestVendor::start("v1", 1).await,
        TestVendor::start("v2", 1).await,
        TestVendor::start("v3", 1).await,
    ];
    let acme = tenant("acme");
    let data = test_bytes(1_500_000, 7);
    let route = vendors.iter().map(TestVendor::vref).collect();
    let h = header(&acme, route, &data, 256 * 1024);
    let response = store(&vendors[0], h.clone(), &data).await.unwrap();
    assert!(response.failures.is_empty(), "{:?}", response.failures);
    let receipts: Vec<Receipt> = response
        .receipts
        .into_iter()
        .map(|r| Receipt::try_from(r).unwrap())
        .collect();
    let signers: Vec<&str> = receipts.iter().map(|r| r.vendor.as_str()).collect();
    assert_eq!(signers, ["v1", "v2", "v3"]);
    for (r, v) in receipts.iter().zip(&vendors) {
        assert_eq!(
            (r.tenant.clone(), r.portion, r.hash, r.size),
            (acme.clone(), h.portion, h.hash, h.size)
        );
        // Each vendor signs its own receipt with its identity key, for the
        // reservation it stored under.
        offsite_proto::signing::verify_receipt(
            r,
            &h.reservation,
            &v.identity,
            offsite_proto::signing::ReceiptRule::Fresh,
        )
        .unwrap();
    }
    for v in &vendors {
        assert_eq!(
            fetch(v, &acme, &h.portion, 0, 0).await.unwrap(),
            data,
            "{}",
            v.id
        );
        assert!(v.used_bytes().await >= data.len() as u64);
    }
    let range = fetch(&vendors[1], &acme, &h.portion, 300_000, 500_000)
        .await
        .unwrap();
    assert_eq!(range, data[300_000..800_000]);
    let tail = fetch(&vendors[2], &acme, &h.portion, 1_400_000, 0)
        .await
        .unwrap();
    assert_eq!(tail, data[1_400_000..]);
    let err = fetch(&vendors[2], &acme, &h.portion, 1_000_000, 600_000)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);

    // Storing the same portion again is idempotent.
    let used: Vec<u64> = futures::future::join_all(vendors.iter().map(|v| v.used_bytes())).await;
    let again = store(&vendors[0], h.clone(), &data).await.unwrap();
    assert_eq!(again.receipts.len(), 3);
    let used_after: Vec<u64> =
        futures::future::join_all(vendors.iter().map(|v| v.used_bytes())).await;
    assert_eq!(used, used_after);
    for v in vendors {
        v.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_portion_is_spread_over_two_stores() {
    let vendor = TestVendor::start("v1", 2).await;
    let acme = tenant("acme");
    let data = test_bytes(20 * 1024 * 1024, 9);
    let h = header(&acme, vec![vendor.vref()], &data, DEFAULT_PIECE_BYTES);
    let response = store(&vendor, h.clone(), &data).await.unwrap();
    assert_eq!(response.receipts.len(), 1);
    for store in &vendor.stores {
        use offsite_vendor::PieceStore;
        let used = store.capacity().await.unwrap().used_bytes;
        assert!(
            used >= 2 * DEFAULT_PIECE_BYTES,
            "each store holds two pieces: {used}"
        );
    }
    assert_eq!(fetch(&vendor, &acme, &h.portion, 0, 0).await.unwrap(), data);
    let across = fetch(&vendor, &acme, &h.portion, DEFAULT_PIECE_BYTES - 10, 20)
        .await
        .unwrap();
    let start = (DEFAULT_PIECE_BYTES - 10) as usize;
    assert_eq!(across, data[start..start + 20]);
    vendor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hash_mismatch_leaves_nothing_on_any_vendor() {
    let vendors = [
        TestVendor::start("v1", 2).await,
        TestVendor::start("v2", 1).await,
        TestVendor::start("v3", 1).await,
    ];
    let acme = tenant("acme");
    let data = test_bytes(1_000_000, 3);
    let route = vendors.iter().map(TestVendor::vref).collect();
    let mut h = header(&acme, route, &data, SMALL_PIECE);
    h.hash = Hash::of(b"some other portion");
    let err = store(&vendors[0], h.clone(), &data).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("portion hash mismatch"),
        "{}",
        err.message()
    );
    // The first vendor answers only once the rest of the route has answered.
    for v in &vendors {
        assert_eq!(v.used_bytes().await, 0, "{} kept pieces", v.id);
        let err = fetch(v, &acme, &h.portion, 0, 0).await.unwrap_err();
        assert_eq!(
            err.code(),
            Code::NotFound,
            "{} kept a local FAT entry",
            v.id
        );
    }
    for v in vendors {
        v.stop().await;
    }
}

#[tokio::test]
async fn malformed_routes_are_refused() {
    let v1 = TestVendor::start("v1", 1).await;
    let v2 = TestVendor::start("v2", 1).await;
    let acme = tenant("acme");
    let data = test_bytes(100_000, 1);

    let twice = header(
        &acme,
        vec![v1.vref(), v2.vref(), v1.vref()],
        &data,
        SMALL_PIECE,
    );
    let err = store(&v1, twice, &data).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("twice"), "{}", err.message());

    let elsewhere = header(&acme, vec![v2.vref()], &data, SMALL_PIECE);
    let err = store(&v1, elsewhere, &data).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("routed to vendor v2 but this is v1"),
        "{}",
        err.message()
    );

    let no_header = vec![StoreFrame {
        frame: Some(store_frame::Frame::Data(data.to_vec().into())),
    }];
    let err = store_frames(&v1, no_header).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("routing header"),
        "{}",
        err.message()
    );

    assert_eq!(v1.used_bytes().await + v2.used_bytes().await, 0);
    v1.stop().await;
    v2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_longer_or_shorter_than_the_header_are_refused_everywhere() {
    let v1 = TestVendor::start("v1", 1).await;
    let v2 = TestVendor::start("v2", 1).await;
    let acme = tenant("acme");
    let data = test_bytes(600_000, 5);

    // The first 600 000 bytes match the header; 1 000 more follow.
    let h = header(&acme, vec![v1.vref(), v2.vref()], &data, SMALL_PIECE);
    let mut longer = data.to_vec();
    longer.extend_from_slice(&[7u8; 1000]);
    let err = store(&v1, h.clone(), &longer).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("more than the 600000 bytes"),
        "{}",
        err.message()
    );

    let short = header(&acme, vec![v1.vref(), v2.vref()], &data, SMALL_PIECE);
    let err = store(&v1, short.clone(), &data[..400_000])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("ended after 400000 of 600000"),
        "{}",
        err.message()
    );

    for v in [&v1, &v2] {
        assert_eq!(v.used_bytes().await, 0, "{} kept pieces", v.id);
        for portion in [&h.portion, &short.portion] {
            let err = fetch(v, &acme, portion, 0, 0).await.unwrap_err();
            assert_eq!(err.code(), Code::NotFound);
        }
    }
    v1.stop().await;
    v2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_last_vendor_is_a_failure_not_an_error() {
    let v1 = TestVendor::start("v1", 1).await;
    let v2 = TestVendor::start("v2", 1).await;
    let dead = offsite_proto::VendorRef {
        id: offsite_proto::VendorId::new("v3").unwrap(),
        address: dead_address().await,
    };
    let acme = tenant("acme");
    let data = test_bytes(300_000, 11);
    let h = header(&acme, vec![v1.vref(), v2.vref(), dead], &data, SMALL_PIECE);
    let response = store(&v1, h.clone(), &data).await.unwrap();
    let signers: Vec<String> = response
        .receipts
        .iter()
        .map(|r| r.vendor_id.clone())
        .collect();
    assert_eq!(signers, ["v1", "v2"]);
    assert_eq!(response.failures.len(), 1);
    assert_eq!(response.failures[0].vendor_id, "v3");
    assert!(!response.failures[0].error.is_empty());
    assert_eq!(fetch(&v1, &acme, &h.portion, 0, 0).await.unwrap(), data);
    assert_eq!(fetch(&v2, &acme, &h.portion, 0, 0).await.unwrap(), data);
    v1.stop().await;
    v2.stop().await;
}

#[tokio::test]
async fn a_corrupt_piece_makes_fetch_report_data_loss() {
    let vendor = TestVendor::start("v1", 1).await;
    let acme = tenant("acme");
    let data = test_bytes(200_000, 13);
    let h = header(&acme, vec![vendor.vref()], &data, SMALL_PIECE);
    store(&vendor, h.clone(), &data).await.unwrap();
    let pieces = files_under(&vendor.store_dirs[0].path().join("pieces"));
    assert_eq!(pieces.len(), 4, "200 000 bytes in 64 KiB pieces");
    for path in pieces {
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
    }
    let err = fetch(&vendor, &acme, &h.portion, 0, 0).await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss);
    assert!(
        err.message().contains(&h.portion.to_string()),
        "{}",
        err.message()
    );
    vendor.stop().await;
}

#[tokio::test]
async fn another_tenant_can_neither_fetch_nor_delete() {
    let vendor = TestVendor::start("v1", 1).await;
    let (acme, globex) = (tenant("acme"), tenant("globex"));
    let data = test_bytes(100_000, 17);
    let h = header(&acme, vec![vendor.vref()], &data, SMALL_PIECE);
    store(&vendor, h.clone(), &data).await.unwrap();
    let err = fetch(&vendor, &globex, &h.portion, 0, 0).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(!delete(&vendor, &globex, &h.portion).await.unwrap());
    assert_eq!(fetch(&vendor, &acme, &h.portion, 0, 0).await.unwrap(), data);
    vendor.stop().await;
}

#[tokio::test]
async fn delete_frees_the_pieces() {
    let vendor = TestVendor::start("v1", 2).await;
    let acme = tenant("acme");
    let data = test_bytes(500_000, 19);
    let h = header(&acme, vec![vendor.vref()], &data, SMALL_PIECE);
    store(&vendor, h.clone(), &data).await.unwrap();
    assert!(vendor.used_bytes().await >= data.len() as u64);
    assert!(delete(&vendor, &acme, &h.portion).await.unwrap());
    assert_eq!(vendor.used_bytes().await, 0);
    let err = fetch(&vendor, &acme, &h.portion, 0, 0).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(!delete(&vendor, &acme, &h.portion).await.unwrap());
    vendor.stop().await;
}

#[tokio::test]
async fn probe_echoes_the_payload_within_bounds() {
    let vendor = TestVendor::start("v1", 1).await;
    let mut client = vendor.client().await;
    let response = client
        .probe(ProbeRequest {
            payload: b"ping".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.vendor_id, "v1");
    assert_eq!(response.payload, b"ping");
    assert!(response.free_bytes > 0);
    let too_big = vec![0u8; offsite_proto::limits::MAX_PROBE_BYTES + 1];
    let err = client
        .probe(ProbeRequest { payload: too_big })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    drop(client);
    vendor.stop().await;
}
