//! Streams that go quiet: a sender that stops sending, and a next vendor of
//! the route that stops reading. Either is cut off (after the idle timeout,
//! after the wait on the next vendor) and leaves no pieces behind; a resend
//! of a portion whose store is still stuck supersedes the stuck one.

mod common;

use std::time::Duration;

use common::*;
use offsite_identity::Role;
use offsite_proto::pb::common::DataFrame;
use offsite_proto::pb::vendor::vendor_server::{Vendor, VendorServer};
use offsite_proto::pb::vendor::{
    AuditRequest, AuditResponse, DeleteRequest, DeleteResponse, FetchRequest, ProbeRequest,
    ProbeResponse, StoreFrame, StoreResponse,
};
use offsite_proto::{VendorId, VendorRef};
use offsite_vendor::testing::test_bytes;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

const SMALL_PIECE: u64 = 64 * 1024;
const IDLE: Duration = Duration::from_millis(500);
/// The hop unit of the vendor before a stuck one: it waits 3 hops for it.
const HOP: Duration = Duration::from_millis(200);
/// Far more than any idle timeout here, far less than a hung call.
const DEADLINE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_sender_is_cut_off_and_nothing_is_left() {
    let v1 = TestVendor::start_with_idle_timeout("v1", 1, IDLE).await;
    let v2 = TestVendor::start("v2", 1).await;
    let acme = tenant("acme");
    let data = test_bytes(1_000_000, 21);
    let h = header(&acme, vec![v1.vref(), v2.vref()], &data, SMALL_PIECE);

    // The header and the first 300 000 bytes, then silence with the stream open.
    let mut all = frames(h.clone(), &data).into_iter();
    let (sender, receiver) = tokio::sync::mpsc::channel(8);
    for frame in all.by_ref().take(2) {
        sender.send(frame).await.unwrap();
    }
    let mut client = v1.client().await;
    let call = client.store(ReceiverStream::new(receiver));
    let err = tokio::time::timeout(DEADLINE, call)
        .await
        .expect("the vendor never aborted the silent store stream")
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(
        err.message().contains(&format!(
            "store stream of portion {} sent nothing for 0.5 s",
            h.portion
        )),
        "{}",
        err.message()
    );
    drop(sender);
    // v1 answers once v2 has answered, so both have cleaned up by now.
    for v in [&v1, &v2] {
        assert_eq!(v.used_bytes().await, 0, "{} kept pieces", v.id);
    }
    // The portion is not left claimed: a resend goes through.
    let response = store(&v1, h.clone(), &data).await.unwrap();
    assert_eq!(response.receipts.len(), 2);
    v1.stop().await;
    v2.stop().await;
}

/// A vendor that accepts a store stream and then never reads it.
struct StuckVendor;

#[tonic::async_trait]
impl Vendor for StuckVendor {
    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        Err(Status::unimplemented("stuck"))
    }

    async fn store(
        &self,
        request: Request<Streaming<StoreFrame>>,
    ) -> Result<Response<StoreResponse>, Status> {
        let _unread = request.into_inner();
        std::future::pending().await
    }

    type FetchStream = ReceiverStream<Result<DataFrame, Status>>;

    async fn fetch(&self, _: Request<FetchRequest>) -> Result<Response<Self::FetchStream>, Status> {
        Err(Status::unimplemented("stuck"))
    }

    async fn delete(&self, _: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        Err(Status::unimplemented("stuck"))
    }

    async fn audit(&self, _: Request<AuditRequest>) -> Result<Response<AuditResponse>, Status> {
        Err(Status::unimplemented("stuck"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_next_vendor_that_stops_reading_is_a_failure_not_a_stall() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stuck = VendorRef {
        id: VendorId::new("stuck").unwrap(),
        address: listener.local_addr().unwrap().to_string(),
    };
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(credentials(Role::Vendor, "stuck").server_tls())
            .unwrap()
            .add_service(VendorServer::new(StuckVendor))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let limits = offsite_vendor::Limits {
        store_idle: IDLE,
        hop: HOP,
        ..offsite_vendor::Limits::default()
    };
    let v1 = TestVendor::start_with_limits("v1", 1, limits).await;
    let acme = tenant("acme");
    // More than the HTTP/2 windows and the forward window can hold.
    let data = test_bytes(24 * 1024 * 1024, 23);
    let h = header(&acme, vec![v1.vref(), stuck], &data, 1024 * 1024);
    let response = tokio::time::timeout(DEADLINE, store(&v1, h.clone(), &data))
        .await
        .expect("a next vendor that stopped reading stalled the upload")
        .unwrap();
    let signers: Vec<&str> = response
        .receipts
        .iter()
        .map(|r| r.vendor_id.as_str())
        .collect();
    assert_eq!(signers, ["v1"]);
    assert_eq!(response.failures.len(), 1);
    assert_eq!(response.failures[0].vendor_id, "stuck");
    assert!(
        response.failures[0]
            .error
            .contains("took no frame for 0.6 s"),
        "{}",
        response.failures[0].error
    );
    assert_eq!(fetch(&v1, &acme, &h.portion, 0, 0).await.unwrap(), data);
    v1.stop().await;
    server.abort();
}

/// A store stuck behind a silent sender holds the portion's lock; a resend
/// of the same portion (the client going around a hung vendor) aborts it and
/// is stored at once, instead of being refused as busy until the stuck
/// store's idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resend_supersedes_a_store_stuck_on_the_same_portion() {
    // The stuck store would hold its lock for a minute.
    let v1 = TestVendor::start("v1", 1).await;
    let acme = tenant("acme");
    let data = test_bytes(1_000_000, 24);
    let h = header(&acme, vec![v1.vref()], &data, SMALL_PIECE);
    let mut all = frames(h.clone(), &data).into_iter();
    let (sender, receiver) = tokio::sync::mpsc::channel(8);
    for frame in all.by_ref().take(2) {
        sender.send(frame).await.unwrap();
    }
    let mut stuck_client = v1.client().await;
    let stuck =
        tokio::spawn(async move { stuck_client.store(ReceiverStream::new(receiver)).await });
    // The stuck store has its header and first frame in before the resend.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while v1.used_bytes().await == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = tokio::time::timeout(DEADLINE, store(&v1, h.clone(), &data))
        .await
        .expect("the resend waited for the stuck store")
        .unwrap();
    assert_eq!(response.receipts.len(), 1);
    let err = tokio::time::timeout(DEADLINE, stuck)
        .await
        .expect("the stuck store was not aborted")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    assert!(err.message().contains("a newer store"), "{}", err.message());
    drop(sender);
    assert_eq!(fetch(&v1, &acme, &h.portion, 0, 0).await.unwrap(), data);
    v1.stop().await;
}
