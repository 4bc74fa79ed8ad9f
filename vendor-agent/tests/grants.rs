//! Grants at a real vendor agent: a store, fetch or delete without a grant
//! the coordinator group signed for exactly that call is refused with
//! PermissionDenied and a message naming the problem, and nothing is kept.

mod common;

use common::*;
use offsite_proto::signing::{GrantBody, GrantOp, GrantSubject, GroupKey};
use offsite_proto::{Grant, PortionId, ReservationId, RoutingHeader};
use offsite_vendor::testing::test_bytes;
use tonic::Code;

const PIECE: u64 = 64 * 1024;

fn body(h: &RoutingHeader, vendor: &TestVendor) -> GrantBody {
    GrantBody {
        op: GrantOp::Store,
        tenant: h.tenant.clone(),
        vendor: vendor.id.clone(),
        subject: GrantSubject::Reservation(h.reservation),
        max_bytes: h.size,
        expires_unix_ms: u64::MAX,
        address: String::new(),
    }
}

async fn refused(vendor: &TestVendor, h: RoutingHeader, data: &[u8], needle: &str) {
    let err = store(vendor, h, data).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(
        err.message().contains(needle),
        "{:?} lacks {needle:?}",
        err.message()
    );
    assert_eq!(vendor.used_bytes().await, 0, "a refused store kept bytes");
}

#[tokio::test]
async fn stores_without_the_right_grant_are_refused() {
    let vendor = TestVendor::start("v1", 1).await;
    let acme = tenant("acme");
    let data = test_bytes(100_000, 3);
    let good = header(&acme, vec![vendor.vref()], &data, PIECE);
    let with = |grant: Grant| {
        let mut h = good.clone();
        h.grants = vec![grant];
        h
    };
    let key = group_key();

    let mut none = good.clone();
    none.grants.clear();
    refused(&vendor, none, &data, "no grant was sent").await;

    let expired = GrantBody {
        expires_unix_ms: 1_000,
        ..body(&good, &vendor)
    };
    refused(
        &vendor,
        with(key.grant(&expired)),
        &data,
        "the grant expired at 1000",
    )
    .await;

    let other_vendor = GrantBody {
        vendor: offsite_proto::VendorId::new("v2").unwrap(),
        ..body(&good, &vendor)
    };
    refused(
        &vendor,
        with(key.grant(&other_vendor)),
        &data,
        "it is for vendor v2",
    )
    .await;

    let other_tenant = GrantBody {
        tenant: tenant("globex"),
        ..body(&good, &vendor)
    };
    refused(
        &vendor,
        with(key.grant(&other_tenant)),
        &data,
        "it is for tenant globex",
    )
    .await;

    let other_reservation = GrantBody {
        subject: GrantSubject::Reservation(ReservationId::random()),
        ..body(&good, &vendor)
    };
    refused(
        &vendor,
        with(key.grant(&other_reservation)),
        &data,
        "it is for Reservation",
    )
    .await;

    let fetch_grant = GrantBody {
        op: GrantOp::Fetch,
        ..body(&good, &vendor)
    };
    refused(
        &vendor,
        with(key.grant(&fetch_grant)),
        &data,
        "Fetch grant, not Store",
    )
    .await;

    let foreign = GroupKey::from_secret(1, &[7; 32]).grant(&body(&good, &vendor));
    refused(&vendor, with(foreign), &data, "does not verify").await;

    let unknown = GroupKey::from_secret(9, &[7; 32]).grant(&body(&good, &vendor));
    refused(&vendor, with(unknown), &data, "signed by key 9").await;

    let small = GrantBody {
        max_bytes: 10,
        ..body(&good, &vendor)
    };
    refused(&vendor, with(key.grant(&small)), &data, "grant allows 10").await;

    // The right grant stores.
    store(&vendor, with(key.grant(&body(&good, &vendor))), &data)
        .await
        .unwrap();
    vendor.stop().await;
}

#[tokio::test]
async fn the_portions_of_one_reservation_stay_within_its_grant() {
    let vendor = TestVendor::start("v1", 1).await;
    let acme = tenant("acme");
    let data = test_bytes(100_000, 4);
    let first = header(&acme, vec![vendor.vref()], &data, PIECE);
    let grant = group_key().grant(&GrantBody {
        max_bytes: 150_000,
        ..body(&first, &vendor)
    });
    let mut h = first.clone();
    h.grants = vec![grant.clone()];
    store(&vendor, h.clone(), &data).await.unwrap();
    // The same portion again is a repeat, not more bytes.
    store(&vendor, h, &data).await.unwrap();
    let mut second = first.clone();
    second.portion = PortionId::random();
    second.grants = vec![grant];
    let err = store(&vendor, second, &data).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message()
            .contains("already stored 100000 of the 150000"),
        "{}",
        err.message()
    );
    vendor.stop().await;
}

#[tokio::test]
async fn fetches_and_deletes_need_a_grant_for_their_portion() {
    let vendor = TestVendor::start("v1", 1).await;
    let acme = tenant("acme");
    let data = test_bytes(100_000, 5);
    let h = header(&acme, vec![vendor.vref()], &data, PIECE);
    store(&vendor, h.clone(), &data).await.unwrap();

    let other_portion = grant(
        GrantOp::Fetch,
        &acme,
        &vendor.id,
        GrantSubject::Portion(PortionId::random()),
    );
    for (why, grant, needle) in [
        ("none", None, "no grant was sent"),
        (
            "another portion's",
            Some(other_portion),
            "it is for Portion",
        ),
    ] {
        let err = fetch_with(&vendor, &acme, &h.portion, 0, 0, grant)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{why}");
        assert!(err.message().contains(needle), "{why}: {}", err.message());
    }
    let small = group_key().grant(&GrantBody {
        op: GrantOp::Fetch,
        tenant: acme.clone(),
        vendor: vendor.id.clone(),
        subject: GrantSubject::Portion(h.portion),
        max_bytes: 10,
        expires_unix_ms: u64::MAX,
        address: String::new(),
    });
    let err = fetch_with(&vendor, &acme, &h.portion, 0, 0, Some(small.clone()))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("grant allows 10"),
        "{}",
        err.message()
    );
    assert_eq!(
        fetch_with(&vendor, &acme, &h.portion, 5, 10, Some(small))
            .await
            .unwrap(),
        data[5..15]
    );

    // A fetch grant does not delete.
    let mut client = vendor.client().await;
    let err = client
        .delete(offsite_proto::pb::vendor::DeleteRequest {
            tenant_id: acme.to_string(),
            portion_id: h.portion.to_string(),
            grant: Some(
                grant(
                    GrantOp::Fetch,
                    &acme,
                    &vendor.id,
                    GrantSubject::Portion(h.portion),
                )
                .into(),
            ),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("Fetch grant, not Delete"),
        "{}",
        err.message()
    );
    assert!(delete(&vendor, &acme, &h.portion).await.unwrap());
    vendor.stop().await;
}

/// A grant valid when the stream starts but expired by its end: the vendor
/// checks it again before it signs the receipt, refuses the store and
/// keeps nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_that_runs_out_during_the_stream_gets_no_receipt() {
    use offsite_proto::clock::now_unix_ms;
    use offsite_proto::signing::GRANT_CLOCK_SKEW_MS;
    use tokio_stream::wrappers::ReceiverStream;

    let vendor = TestVendor::start("v1", 1).await;
    let acme = tenant("acme");
    let data = test_bytes(300_000, 5);
    let mut h = header(&acme, vec![vendor.vref()], &data, PIECE);
    let short = GrantBody {
        expires_unix_ms: now_unix_ms() + 1_000 - GRANT_CLOCK_SKEW_MS,
        ..body(&h, &vendor)
    };
    h.grants = vec![group_key().grant(&short)];
    let mut frames = frames(h, &data).into_iter();
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    // The header and a first frame while the grant is valid.
    for frame in frames.by_ref().take(2) {
        sender.send(frame).await.unwrap();
    }
    let mut client = vendor.client().await;
    let call = tokio::spawn(async move { client.store(ReceiverStream::new(receiver)).await });
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    for frame in frames {
        sender.send(frame).await.unwrap();
    }
    drop(sender);
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(err.message().contains("expired"), "{}", err.message());
    assert_eq!(vendor.used_bytes().await, 0, "the expired store kept bytes");
}
