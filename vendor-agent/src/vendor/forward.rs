//! Forwarding a portion to the next vendor of the route while this vendor
//! stores it: chunks pass through a bounded channel (a window of frames, never
//! the whole portion) into a `Store` stream to `route[1]`. Whatever the next
//! vendor answers becomes receipts and failures for our response; a downstream
//! failure never fails this vendor's own store. A next vendor that takes no
//! frame, or does not answer after the last one, within this vendor's wait
//! for it ([`super::Limits::next_vendor`]) is cut off, so a hung hop cannot
//! stall the upload; dropping the forwarder cuts the call off too, so the
//! rest of the route aborts its store and releases its lock.
//! The next vendor is dialled only at the address its store grant names
//! (the address it registered; see `Vendor::forwarder`), never at one the
//! sender wrote into the route, so a route cannot aim this vendor at an
//! address of the sender's choosing.
//! This is the core's transport edge to the next vendor: the generated
//! client and frames stay inside this module.

use std::time::Duration;

use bytes::Bytes;
use offsite_identity::{Credentials, PeerIdentity, Role};
use offsite_proto::limits::{MAX_MESSAGE_BYTES, MAX_ROUTE_LEN};
use offsite_proto::pb::vendor::{
    store_frame, vendor_client::VendorClient, StoreFrame, StoreResponse,
};
use offsite_proto::{Receipt, RoutingHeader, VendorId, VendorRef};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// Frames in flight to the next vendor.
const FORWARD_WINDOW: usize = 8;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole forwarded portion must be stored downstream within this time.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(900);
/// Longest error text passed back from downstream.
const MAX_FAILURE_TEXT: usize = 1024;

/// A vendor on the route that did not store the portion, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RouteFailure {
    pub vendor: VendorId,
    pub error: String,
}

/// Receipts and failures from the rest of the route.
#[derive(Debug, Default)]
pub(super) struct Downstream {
    pub receipts: Vec<Receipt>,
    pub failures: Vec<RouteFailure>,
}

/// A `Store` call to the next vendor, fed frame by frame.
pub(super) struct Forwarder {
    header: RoutingHeader,
    sender: Option<mpsc::Sender<StoreFrame>>,
    task: JoinHandle<Result<StoreResponse, Status>>,
    /// How long a frame may wait for the next vendor to take it, and how
    /// long its answer may take after the last frame.
    wait: Duration,
    /// Set once the next vendor stopped reading and its call was aborted.
    stalled: bool,
}

impl Drop for Forwarder {
    /// A forward given up (the store aborted, the task dropped) resets the
    /// call, so the next vendor ends its store at once.
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Forwarder {
    /// Starts the call to `next.route[0]` with `next` as its header; `wait`
    /// bounds each frame and the answer. The call presents `credentials`
    /// and expects the next vendor's own certificate (`ID.vendor.offsite`).
    pub fn start(next: RoutingHeader, wait: Duration, credentials: Credentials) -> Self {
        let (sender, receiver) = mpsc::channel(FORWARD_WINDOW);
        let header_frame = StoreFrame {
            frame: Some(store_frame::Frame::Header(next.clone().into())),
        };
        // The channel is empty, so the header always fits.
        let sender = sender.try_send(header_frame).ok().map(|()| sender);
        let target = next.route[0].clone();
        let task = tokio::spawn(call(target, credentials, receiver));
        Self {
            header: next,
            sender,
            task,
            wait,
            stalled: false,
        }
    }

    /// A forward refused before anything is dialled (the next vendor's
    /// grant does not check): the next vendor and every vendor after it get
    /// `why` as their failure, and the chunks are dropped.
    pub fn refused(mut next: RoutingHeader, why: String) -> Self {
        // The address is the sender's, not dialled: it is not echoed back.
        next.route[0].address.clear();
        Self {
            header: next,
            sender: None,
            task: tokio::spawn(async move { Err(Status::permission_denied(why)) }),
            wait: Duration::ZERO,
            stalled: false,
        }
    }

    /// Passes a data chunk on as one frame; once the next vendor has gone
    /// away, or took no frame within the wait (its call is then aborted),
    /// chunks are dropped (its error is collected by
    /// [`Forwarder::finish`]).
    pub async fn send(&mut self, data: Bytes) {
        self.send_frame(StoreFrame {
            frame: Some(store_frame::Frame::Data(data)),
        })
        .await;
    }

    /// Passes on a second routing header, as the sender sent one: the next
    /// vendor then refuses the stream as this vendor does, and keeps nothing.
    pub async fn send_repeated_header(&mut self) {
        self.send_frame(StoreFrame {
            frame: Some(store_frame::Frame::Header(self.header.clone().into())),
        })
        .await;
    }

    async fn send_frame(&mut self, frame: StoreFrame) {
        let Some(sender) = &self.sender else {
            return;
        };
        match tokio::time::timeout(self.wait, sender.send(frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                tracing::debug!(next = %self.header.route[0].id, "next vendor stopped reading");
                self.sender = None;
            }
            Err(_) => {
                tracing::warn!(next = %self.header.route[0].id, wait = ?self.wait, "next vendor took no frame; cutting it off");
                self.task.abort();
                self.stalled = true;
                self.sender = None;
            }
        }
    }

    /// Ends the stream and waits for the next vendor's answer, at most the
    /// wait (then the call is cut off).
    pub async fn finish(mut self) -> Downstream {
        drop(self.sender.take());
        let secs = self.wait.as_secs_f64();
        let result = match tokio::time::timeout(self.wait, &mut self.task).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) if self.stalled => Err(Status::deadline_exceeded(format!(
                "took no frame for {secs} s, so the forward was cut off (a hung vendor; \
                 hop_timeout_secs); store this copy at another vendor"
            ))),
            Ok(Err(join)) => Err(Status::internal(format!("forwarding task failed: {join}"))),
            Err(_) => {
                self.task.abort();
                tracing::warn!(next = %self.header.route[0].id, wait = ?self.wait, "next vendor did not answer after the last frame; cutting it off");
                Err(Status::deadline_exceeded(format!(
                    "did not answer within {secs} s of the last frame, so the forward was cut \
                     off (a hung vendor; hop_timeout_secs); store this copy at another vendor"
                )))
            }
        };
        match result {
            Ok(response) => checked(&self.header, response),
            Err(status) => unreached(&self.header, &status),
        }
    }
}

impl Forwarder {
    /// [`Forwarder::finish`], unless `abort` completes first: then the call
    /// is cut off and the rest of the route counts as not reached.
    pub async fn finish_unless(self, abort: impl std::future::Future<Output = ()>) -> Downstream {
        let header = self.header.clone();
        tokio::select! {
            answer = self.finish() => answer,
            // Dropping the finish future drops the forwarder, which resets the call.
            () = abort => unreached(&header, &Status::aborted("the store was aborted by a newer store of the same portion")),
        }
    }

    /// Cuts the call off at once (this store was aborted): the next vendor
    /// sees its stream reset, aborts its own store and releases its lock.
    pub fn abort(self, why: &str) -> Downstream {
        self.task.abort();
        unreached(&self.header, &Status::aborted(why.to_string()))
    }
}

async fn call(
    target: VendorRef,
    credentials: Credentials,
    frames: mpsc::Receiver<StoreFrame>,
) -> Result<StoreResponse, Status> {
    let address = target.address;
    let expected = PeerIdentity::new(Role::Vendor, target.id.as_str())
        .map_err(|problem| Status::invalid_argument(format!("next vendor: {problem}")))?;
    let endpoint = credentials
        .endpoint(&address, &expected.dns_name())
        .map_err(|e| Status::invalid_argument(format!("next vendor: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(FORWARD_TIMEOUT);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| Status::unavailable(format!("cannot connect to {address}: {e}")))?;
    let mut client = VendorClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let response = client.store(ReceiverStream::new(frames)).await?;
    Ok(response.into_inner())
}

/// Keeps only receipts that match the portion and name a vendor of the rest of
/// the route, and bounded failures.
fn checked(header: &RoutingHeader, response: StoreResponse) -> Downstream {
    let mut out = Downstream::default();
    let on_route = |id: &str| header.route.iter().any(|v| v.id.as_str() == id);
    for wire in response.receipts.into_iter().take(MAX_ROUTE_LEN) {
        match Receipt::try_from(wire) {
            Ok(r)
                if r.tenant == header.tenant
                    && r.portion == header.portion
                    && r.hash == header.hash
                    && r.size == header.size
                    && on_route(r.vendor.as_str()) =>
            {
                out.receipts.push(r)
            }
            other => tracing::warn!(
                ?other,
                "dropping a downstream receipt that does not match the portion"
            ),
        }
    }
    for failure in response.failures.into_iter().take(MAX_ROUTE_LEN) {
        // A vendor of the route has a valid id.
        let vendor = Some(failure.vendor_id)
            .filter(|id| on_route(id))
            .and_then(|id| VendorId::new(id).ok());
        if let Some(vendor) = vendor {
            out.failures.push(RouteFailure {
                vendor,
                error: truncate(&failure.error),
            });
        }
    }
    out
}

/// The next vendor failed: it and every vendor after it hold no copy.
fn unreached(header: &RoutingHeader, status: &Status) -> Downstream {
    let next: &VendorRef = &header.route[0];
    tracing::warn!(next = %next.id, address = %next.address, code = ?status.code(), message = status.message(), "next vendor of the route failed");
    let at = match next.address.as_str() {
        "" => String::new(),
        address => format!(" at {address}"),
    };
    let mut failures = vec![RouteFailure {
        vendor: next.id.clone(),
        error: truncate(&format!(
            "vendor {}{at}: {:?}: {}",
            next.id,
            status.code(),
            status.message()
        )),
    }];
    failures.extend(header.route[1..].iter().map(|v| RouteFailure {
        vendor: v.id.clone(),
        error: format!(
            "not reached: vendor {} before it on the route failed",
            next.id
        ),
    }));
    Downstream {
        receipts: Vec::new(),
        failures,
    }
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_FAILURE_TEXT) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}
