//! The wire at the edge: generated request types into the core's domain
//! types and the core's answers back. The checks of the shared types
//! (`RoutingHeader`, `Grant`, ids, receipts) are their `TryFrom`s in
//! `offsite_proto`; what is only the vendor's is here.

use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use offsite_proto::pb::vendor::{self as pb, store_frame, StoreFrame};
use offsite_proto::{Grant, PortionId, RoutingHeader, TenantId};
use tonic::Streaming;

use crate::vendor::{
    next_within_idle, DeleteRequest, ReadRequest, RouteFailure, Stored, VendorError,
};

/// The routing header, which must be the first frame of a store stream;
/// [`VendorError::Idle`] if the sender sends nothing for `idle`.
pub(super) async fn read_header(
    frames: &mut Streaming<StoreFrame>,
    idle: Duration,
) -> Result<RoutingHeader, VendorError> {
    let first = next_within_idle(frames, idle, None)
        .await?
        .transpose()
        .map_err(inbound)?;
    match first.and_then(|f| f.frame) {
        Some(store_frame::Frame::Header(header)) => Ok(RoutingHeader::try_from(header)?),
        _ => Err(VendorError::HeaderMissing),
    }
}

/// The frames after the header as the portion's data chunks. A frame
/// without content is an empty chunk (refused by the core like an empty
/// data frame); a second header is [`VendorError::HeaderRepeated`].
pub(super) fn chunks(
    frames: Streaming<StoreFrame>,
) -> impl Stream<Item = Result<Bytes, VendorError>> + Send {
    frames.map(|frame| match frame.map_err(inbound)?.frame {
        Some(store_frame::Frame::Data(data)) => Ok(data),
        None => Ok(Bytes::new()),
        Some(store_frame::Frame::Header(_)) => Err(VendorError::HeaderRepeated),
    })
}

/// The sender's stream broke (its code reaches the caller through
/// `status`).
fn inbound(status: tonic::Status) -> VendorError {
    VendorError::Inbound(Box::new(status))
}

impl TryFrom<pb::FetchRequest> for ReadRequest {
    type Error = VendorError;
    fn try_from(request: pb::FetchRequest) -> Result<Self, VendorError> {
        Ok(Self {
            tenant: TenantId::new(request.tenant_id)?,
            portion: PortionId::parse(&request.portion_id)?,
            offset: request.offset,
            length: request.length,
            grant: request.grant.map(Grant::try_from).transpose()?,
        })
    }
}

impl TryFrom<pb::DeleteRequest> for DeleteRequest {
    type Error = VendorError;
    fn try_from(request: pb::DeleteRequest) -> Result<Self, VendorError> {
        Ok(Self {
            tenant: TenantId::new(request.tenant_id)?,
            portion: PortionId::parse(&request.portion_id)?,
            grant: request.grant.map(Grant::try_from).transpose()?,
        })
    }
}

impl From<Stored> for pb::StoreResponse {
    fn from(stored: Stored) -> Self {
        Self {
            receipts: stored.receipts.into_iter().map(Into::into).collect(),
            failures: stored.failures.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<RouteFailure> for pb::RouteFailure {
    fn from(failure: RouteFailure) -> Self {
        Self {
            vendor_id: failure.vendor.into(),
            error: failure.error,
        }
    }
}
