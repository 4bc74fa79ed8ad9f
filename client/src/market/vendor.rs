//! Calls to vendor agents: probe, store (a routing header frame, then data
//! frames of `offsite_proto::limits::FRAME_BYTES`) and fetch (a stream gathered into memory bounded by
//! the expected size), each under a timeout. A vendor that stops taking the
//! frames of a store, or answering it after the last one, or sending the
//! frames of a fetch, for the stall timeout is cut off as hung
//! ([`VendorError::Stalled`]), so the caller goes to another vendor long
//! before the whole call's timeout. Channels are kept per address.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use offsite_proto::limits::{MAX_FRAME_BYTES, MAX_MESSAGE_BYTES};
use offsite_proto::pb::vendor as pb;
use offsite_proto::pb::vendor::vendor_client::VendorClient;
use offsite_proto::stream::{next_within, watched};
use offsite_proto::{Grant, PortionId, Receipt, RoutingHeader, TenantId, VendorId, VendorRef};
use tonic::transport::Channel;
use tonic::Code;

use crate::market::connect::connect;
use offsite_identity::{Credentials, PeerIdentity, Role};

/// Time allowed for a store: a base plus the portion at this slow a rate.
const STORE_BASE: Duration = Duration::from_secs(30);
const SLOWEST_BYTES_PER_SEC: u64 = 256 * 1024;
/// Default of `vendor_stall_timeout_secs`: longer than a vendor's default
/// wait on a hung vendor after it on a route of up to 5 (3 hops of 5 s per
/// vendor after it, plus its NAS device's answer), so the vendor that hangs,
/// not one before it, is the one cut off.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(75);

/// What went wrong with one vendor; the caller tries another replica or vendor.
#[derive(Debug, thiserror::Error)]
pub enum VendorError {
    #[error("vendor {vendor} at {address} is unreachable: {reason}")]
    Unreachable {
        vendor: VendorId,
        address: String,
        reason: String,
    },
    #[error("vendor {vendor} did not answer {what} within {after:?}")]
    Timeout {
        vendor: VendorId,
        what: &'static str,
        after: Duration,
    },
    #[error("vendor {vendor} {detail} in a {what}, so it was cut off as hung (vendor_stall_timeout_secs)")]
    Stalled {
        vendor: VendorId,
        what: &'static str,
        detail: String,
    },
    #[error("vendor {vendor} holds a corrupt copy of portion {portion}: {message}")]
    Corrupt {
        vendor: VendorId,
        portion: PortionId,
        message: String,
    },
    #[error("vendor {vendor} refused {what}: {code:?}: {message}")]
    Refused {
        vendor: VendorId,
        what: &'static str,
        code: Code,
        message: String,
    },
    #[error("vendor {vendor} answered {what} with a malformed message: {problem}")]
    Malformed {
        vendor: VendorId,
        what: &'static str,
        problem: String,
    },
}

/// A vendor's answer to a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeReply {
    pub free_bytes: u64,
}

/// A store's outcome: receipts from the vendors that stored the portion, and
/// the vendors downstream that said they did not.
#[derive(Debug, Clone, Default)]
pub struct StoreOutcome {
    pub receipts: Vec<Receipt>,
    pub failures: Vec<(String, String)>,
}

/// Open channels to vendors, by vendor id and address: the vendor's identity
/// (`ID.vendor.offsite`) is checked when a channel is made, so a channel is
/// reused only for the vendor it was checked for. Each presents the tenant's
/// certificate.
#[derive(Clone)]
pub struct VendorPool {
    channels: Arc<Mutex<HashMap<(VendorId, String), Channel>>>,
    credentials: Credentials,
    /// How long a vendor may stall a store or fetch before it is cut off.
    stall: Duration,
}

impl VendorPool {
    pub fn new(credentials: Credentials) -> Self {
        Self {
            channels: Arc::default(),
            credentials,
            stall: DEFAULT_STALL_TIMEOUT,
        }
    }

    /// Sets how long a vendor may take no frame of a store (or not answer
    /// it after the last frame), or send no frame of a fetch.
    pub fn with_stall_timeout(mut self, stall: Duration) -> Self {
        self.stall = stall;
        self
    }

    async fn client(&self, vendor: &VendorRef) -> Result<VendorClient<Channel>, VendorError> {
        let cached = self
            .channels
            .lock()
            .map_err(|_| unreachable_err(vendor, "connection table poisoned"))?
            .get(&(vendor.id.clone(), vendor.address.clone()))
            .cloned();
        let channel = match cached {
            Some(channel) => channel,
            None => {
                let expected = PeerIdentity::new(Role::Vendor, vendor.id.as_str())
                    .map_err(|problem| unreachable_err(vendor, &problem))?;
                let channel = connect(&self.credentials, &vendor.address, &expected.dns_name())
                    .await
                    .map_err(|e| unreachable_err(vendor, &e.to_string()))?;
                if let Ok(mut table) = self.channels.lock() {
                    table.insert((vendor.id.clone(), vendor.address.clone()), channel.clone());
                }
                channel
            }
        };
        Ok(VendorClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// Echoes `payload` off the vendor; checks the echo and the vendor's identity.
    pub async fn probe(
        &self,
        vendor: &VendorRef,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<ProbeReply, VendorError> {
        let what = "probe";
        let call = async {
            let mut client = self.client(vendor).await?;
            let sent = payload.clone();
            client
                .probe(pb::ProbeRequest { payload })
                .await
                .map(|r| (r.into_inner(), sent))
                .map_err(|s| status_err(vendor, what, None, s))
        };
        let (reply, sent) = with_timeout(vendor, what, timeout, call).await?;
        if reply.vendor_id != vendor.id.as_str() || reply.payload != sent {
            return Err(VendorError::Malformed {
                vendor: vendor.id.clone(),
                what,
                problem: format!(
                    "answered as {:?} or echoed a different payload",
                    reply.vendor_id
                ),
            });
        }
        Ok(ProbeReply {
            free_bytes: reply.free_bytes,
        })
    }

    /// Streams a portion to `header.route[0]`, which forwards it down the route.
    pub async fn store(
        &self,
        header: RoutingHeader,
        data: bytes::Bytes,
    ) -> Result<StoreOutcome, VendorError> {
        let what = "store";
        let Some(first) = header.route.first().cloned() else {
            return Ok(StoreOutcome::default());
        };
        let timeout = STORE_BASE + Duration::from_secs(data.len() as u64 / SLOWEST_BYTES_PER_SEC);
        let portion = header.portion;
        let head = pb::StoreFrame {
            frame: Some(pb::store_frame::Frame::Header(header.into())),
        };
        let frames = offsite_proto::stream::frames(data).map(|data| pb::StoreFrame {
            frame: Some(pb::store_frame::Frame::Data(data)),
        });
        let stream = futures::stream::iter(std::iter::once(head).chain(frames));
        let stall = self.stall;
        let call = async {
            let mut client = self.client(&first).await?;
            // Watched from the first frame taken: connecting has its own timeout.
            let (stream, progress) = watched(stream);
            tokio::select! {
                reply = client.store(stream) => reply
                    .map(tonic::Response::into_inner)
                    .map_err(|s| status_err(&first, what, Some(portion), s)),
                stall = progress.stalled(stall, stall) => Err(VendorError::Stalled {
                    vendor: first.id.clone(),
                    what,
                    detail: stall.to_string(),
                }),
            }
        };
        let reply = with_timeout(&first, what, timeout, call).await?;
        let mut outcome = StoreOutcome::default();
        for receipt in reply.receipts {
            match Receipt::try_from(receipt) {
                Ok(receipt) => outcome.receipts.push(receipt),
                Err(e) => {
                    tracing::warn!(vendor = %first.id, error = %e, "malformed receipt ignored")
                }
            }
        }
        outcome.failures = reply
            .failures
            .into_iter()
            .map(|f| (f.vendor_id, f.error.chars().take(1024).collect()))
            .collect();
        Ok(outcome)
    }

    /// Fetches `length` bytes of a portion at `offset` (the whole portion when
    /// `offset` is 0 and `length` its size); more or fewer bytes is an error.
    pub async fn fetch(&self, request: FetchRange<'_>) -> Result<Vec<u8>, VendorError> {
        let mut out = Vec::new();
        self.fetch_into(request, &mut out).await?;
        Ok(out)
    }

    /// [`Self::fetch`] into `out` (cleared first), reusing its memory.
    pub async fn fetch_into(
        &self,
        request: FetchRange<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), VendorError> {
        let what = "fetch";
        let vendor = request.vendor;
        let expected = usize::try_from(request.length).map_err(|_| VendorError::Malformed {
            vendor: vendor.id.clone(),
            what,
            problem: "range larger than memory".into(),
        })?;
        let message = pb::FetchRequest {
            tenant_id: request.tenant.to_string(),
            portion_id: request.portion.to_string(),
            offset: request.offset,
            length: request.length,
            grant: request.grant.cloned().map(Into::into),
        };
        let timeout = STORE_BASE + Duration::from_secs(request.length / SLOWEST_BYTES_PER_SEC);
        let portion = request.portion;
        let stall = self.stall;
        let stalled = |after: Duration| VendorError::Stalled {
            vendor: vendor.id.clone(),
            what,
            detail: format!("sent nothing for {:.1} s", after.as_secs_f64()),
        };
        let call = async {
            let mut client = self.client(vendor).await?;
            let status = |s| status_err(vendor, what, Some(portion), s);
            let answer = tokio::time::timeout(stall, client.fetch(message));
            let mut stream = answer
                .await
                .map_err(|_| stalled(stall))?
                .map_err(status)?
                .into_inner();
            out.clear();
            out.reserve_exact(expected);
            loop {
                let next = next_within(&mut stream, stall).await;
                let next = next
                    .map_err(|_| stalled(stall))?
                    .transpose()
                    .map_err(status)?;
                let Some(frame) = next else { break };
                if frame.data.len() > MAX_FRAME_BYTES || out.len() + frame.data.len() > expected {
                    return Err(VendorError::Malformed {
                        vendor: vendor.id.clone(),
                        what,
                        problem: format!("sent more than the {expected} bytes asked for"),
                    });
                }
                out.extend_from_slice(&frame.data);
            }
            if out.len() != expected {
                return Err(VendorError::Malformed {
                    vendor: vendor.id.clone(),
                    what,
                    problem: format!("sent {} bytes where {expected} were asked for", out.len()),
                });
            }
            Ok(())
        };
        with_timeout(vendor, what, timeout, call).await
    }
}

/// A byte range of a portion to fetch from one vendor.
pub struct FetchRange<'a> {
    pub vendor: &'a VendorRef,
    pub tenant: &'a TenantId,
    pub portion: PortionId,
    pub offset: u64,
    pub length: u64,
    pub grant: Option<&'a Grant>,
}

async fn with_timeout<T>(
    vendor: &VendorRef,
    what: &'static str,
    after: Duration,
    call: impl std::future::Future<Output = Result<T, VendorError>>,
) -> Result<T, VendorError> {
    tokio::time::timeout(after, call)
        .await
        .map_err(|_| VendorError::Timeout {
            vendor: vendor.id.clone(),
            what,
            after,
        })?
}

fn unreachable_err(vendor: &VendorRef, reason: &str) -> VendorError {
    VendorError::Unreachable {
        vendor: vendor.id.clone(),
        address: vendor.address.clone(),
        reason: reason.to_string(),
    }
}

fn status_err(
    vendor: &VendorRef,
    what: &'static str,
    portion: Option<PortionId>,
    status: tonic::Status,
) -> VendorError {
    let message: String = status.message().chars().take(1024).collect();
    match (status.code(), portion) {
        (Code::DataLoss, Some(portion)) => VendorError::Corrupt {
            vendor: vendor.id.clone(),
            portion,
            message,
        },
        (Code::Unavailable, _) => unreachable_err(vendor, &message),
        (code, _) => VendorError::Refused {
            vendor: vendor.id.clone(),
            what,
            code,
            message,
        },
    }
}
