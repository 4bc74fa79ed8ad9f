//! Oversize input to a vendor: a data frame over `MAX_FRAME_BYTES` is refused
//! by the store path with the limit named, a message over
//! `MAX_STREAM_MESSAGE_BYTES` is refused by the transport before it is read
//! into memory, and neither leaves anything behind or stops the vendor from
//! serving the next, well-formed upload.

mod common;

use common::*;
use offsite_proto::limits::{MAX_FRAME_BYTES, MAX_STREAM_MESSAGE_BYTES};
use offsite_proto::pb::vendor::{store_frame, StoreFrame};
use tonic::Code;

const SMALL_PIECE: u64 = 64 * 1024;

fn with_frame(header: offsite_proto::RoutingHeader, frame: Vec<u8>) -> Vec<StoreFrame> {
    vec![
        StoreFrame {
            frame: Some(store_frame::Frame::Header(header.into())),
        },
        StoreFrame {
            frame: Some(store_frame::Frame::Data(frame.into())),
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frames_and_messages_are_refused_and_leave_nothing() {
    let v1 = TestVendor::start("v1", 1).await;
    let acme = tenant("acme");

    let over_frame = vec![5u8; MAX_FRAME_BYTES + 1];
    let h = header(&acme, vec![v1.vref()], &over_frame, SMALL_PIECE);
    let err = store_frames(&v1, with_frame(h.clone(), over_frame))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains(&MAX_FRAME_BYTES.to_string()),
        "{}",
        err.message()
    );

    let over_message = vec![6u8; MAX_STREAM_MESSAGE_BYTES + 1];
    let h2 = header(&acme, vec![v1.vref()], &over_message, SMALL_PIECE);
    let err = store_frames(&v1, with_frame(h2.clone(), over_message))
        .await
        .unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    assert!(
        err.message().contains("message length too large")
            || err.message().contains("too large")
            || err.code() == Code::OutOfRange
            || err.code() == Code::ResourceExhausted,
        "{err:?}"
    );

    assert_eq!(v1.used_bytes().await, 0, "an oversize upload kept pieces");
    for portion in [&h.portion, &h2.portion] {
        let err = fetch(&v1, &acme, portion, 0, 0).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }

    let data = vec![7u8; 300_000];
    let fine = header(&acme, vec![v1.vref()], &data, SMALL_PIECE);
    store(&v1, fine.clone(), &data).await.unwrap();
    assert_eq!(fetch(&v1, &acme, &fine.portion, 0, 0).await.unwrap(), data);
    v1.stop().await;
}
