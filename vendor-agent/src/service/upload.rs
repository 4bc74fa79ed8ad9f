//! `Vendor.Store`: checks the store grant of the routing header, receives the
//! portion behind it, forwards it to the next vendor of the route while
//! re-chunking it into pieces on this vendor's stores, checks the portion
//! hash, records the pieces in the local FAT and answers with this vendor's
//! signed receipt plus every downstream one. On any
//! failure the pieces written here are deleted and no local FAT entry is left.
//! A stream that sends nothing for the idle timeout is such a failure.

use std::sync::Arc;
use std::time::Duration;

use offsite_proto::limits::MAX_FRAME_BYTES;
use offsite_proto::pb::vendor::{store_frame, StoreFrame, StoreResponse};
use offsite_proto::signing::{Expected, GrantOp, GrantSubject};
use offsite_proto::{Hash, PortionId, Receipt, RoutingHeader, TenantId};
use tonic::Streaming;

use super::error::VendorError;
use super::forward::{Downstream, Forwarder};
use super::placement::PieceWriter;
use super::Shared;
use crate::local_fat::PortionRecord;

/// Runs one upload to its end.
/// `owner` is the tenant of the caller's tenant certificate (none when a
/// vendor forwards): a tenant stores only under its own name.
pub(crate) async fn store(
    shared: Arc<Shared>,
    owner: Option<TenantId>,
    mut inbound: Streaming<StoreFrame>,
) -> Result<StoreResponse, VendorError> {
    let idle = shared.idle_timeout();
    let header = read_header(&mut inbound, idle).await?;
    if let Some(caller) = owner.filter(|caller| *caller != header.tenant) {
        return Err(VendorError::NotYourTenant {
            caller,
            named: header.tenant.to_string(),
        });
    }
    if header.route[0].id != shared.vendor {
        return Err(VendorError::Misrouted {
            to: header.route[0].id.clone(),
            me: shared.vendor.clone(),
        });
    }
    let grant = shared.grants.check(
        header.grants.first(),
        &Expected {
            op: GrantOp::Store,
            tenant: &header.tenant,
            vendor: &shared.vendor,
            subject: GrantSubject::Reservation(header.reservation),
            bytes: header.size,
        },
    )?;
    let _claim = shared.claim(&header.tenant, &header.portion)?;
    let already_held = held(&shared, &header)?;
    // A repeat of a stored portion takes no more room.
    let charge = match already_held {
        true => None,
        false => Some(
            shared
                .grants
                .charge(&grant, header.reservation, header.size)?,
        ),
    };
    let writer = match already_held {
        true => None,
        false => Some(
            PieceWriter::new(
                Arc::clone(&shared),
                header.portion,
                header.size,
                header.piece_size,
            )
            .await?,
        ),
    };
    let forwarder = header
        .forwarded()
        .map(|next| Forwarder::start(next, idle, shared.credentials.clone()));
    let mut upload = Upload {
        header,
        writer,
        forwarder,
    };
    let received = upload.receive(&mut inbound, idle).await;
    let result = upload.conclude(&shared, received).await;
    if let (Ok(_), Some(charge)) = (&result, charge) {
        charge.keep();
    }
    result
}

async fn read_header(
    inbound: &mut Streaming<StoreFrame>,
    idle: Duration,
) -> Result<RoutingHeader, VendorError> {
    let first = next_frame(inbound, idle, None).await?;
    match first.and_then(|f| f.frame) {
        Some(store_frame::Frame::Header(header)) => Ok(RoutingHeader::try_from(header)?),
        _ => Err(VendorError::HeaderMissing),
    }
}

/// The next frame of the inbound stream, or [`VendorError::Idle`] once the
/// sender has been silent for `idle` (so a stalled sender cannot hold the
/// portion's claim and buffers forever).
async fn next_frame(
    inbound: &mut Streaming<StoreFrame>,
    idle: Duration,
    portion: Option<PortionId>,
) -> Result<Option<StoreFrame>, VendorError> {
    match tokio::time::timeout(idle, inbound.message()).await {
        Ok(frame) => frame.map_err(VendorError::Inbound),
        Err(_) => Err(VendorError::Idle {
            portion,
            secs: idle.as_secs_f64(),
        }),
    }
}

/// Whether the portion is already held with this hash (an idempotent repeat).
fn held(shared: &Shared, header: &RoutingHeader) -> Result<bool, VendorError> {
    match shared.fat.get(&header.tenant, &header.portion)? {
        None => Ok(false),
        Some(record) if record.hash == header.hash && record.size == header.size => Ok(true),
        Some(record) => Err(VendorError::HeldWithOtherHash {
            tenant: header.tenant.clone(),
            portion: header.portion,
            held: record.hash,
        }),
    }
}

struct Upload {
    header: RoutingHeader,
    /// `None` when the portion is already held: the bytes are only checked
    /// and forwarded.
    writer: Option<PieceWriter>,
    forwarder: Option<Forwarder>,
}

impl Upload {
    /// Reads every data frame: forward it, check it, hash it, store it.
    async fn receive(
        &mut self,
        inbound: &mut Streaming<StoreFrame>,
        idle: Duration,
    ) -> Result<(), VendorError> {
        let mut hasher = blake3::Hasher::new();
        let mut received = 0u64;
        let portion = Some(self.header.portion);
        while let Some(frame) = next_frame(inbound, idle, portion).await? {
            // Forwarded before our own checks: the next vendor applies the same
            // checks, so a stream bad here is refused there too.
            if let Some(forwarder) = &mut self.forwarder {
                forwarder.send(frame.clone()).await;
            }
            let data = match frame.frame {
                Some(store_frame::Frame::Data(data)) if !data.is_empty() => data,
                Some(store_frame::Frame::Data(_)) | None => return Err(VendorError::EmptyFrame),
                Some(store_frame::Frame::Header(_)) => return Err(VendorError::HeaderRepeated),
            };
            if data.len() > MAX_FRAME_BYTES {
                return Err(VendorError::FrameTooLarge {
                    len: data.len(),
                    max: MAX_FRAME_BYTES,
                });
            }
            received += data.len() as u64;
            if received > self.header.size {
                return Err(VendorError::TooManyBytes {
                    portion: self.header.portion,
                    size: self.header.size,
                });
            }
            hasher.update(&data);
            if let Some(writer) = &mut self.writer {
                writer.push(&data).await?;
            }
        }
        self.check_complete(received, Hash::from(*hasher.finalize().as_bytes()))
    }

    fn check_complete(&self, received: u64, actual: Hash) -> Result<(), VendorError> {
        if received < self.header.size {
            return Err(VendorError::ShortStream {
                portion: self.header.portion,
                received,
                size: self.header.size,
            });
        }
        if actual != self.header.hash {
            return Err(VendorError::HashMismatch {
                portion: self.header.portion,
                expected: self.header.hash,
                actual,
            });
        }
        Ok(())
    }

    /// Finishes locally and downstream at once, or cleans up after a failure.
    async fn conclude(
        mut self,
        shared: &Shared,
        received: Result<(), VendorError>,
    ) -> Result<StoreResponse, VendorError> {
        if let Err(err) = received {
            return Err(self.fail(err).await);
        }
        let header = self.header.clone();
        let forwarder = self.forwarder.take();
        let mut writer = self.writer.take();
        let downstream = async move {
            match forwarder {
                Some(forwarder) => forwarder.finish().await,
                None => Downstream::default(),
            }
        };
        let local = async {
            match writer.as_mut() {
                Some(writer) => record_pieces(shared, &header, writer).await,
                None => Ok(()),
            }
        };
        let (local, downstream) = tokio::join!(local, downstream);
        if let Err(err) = local {
            if let Some(writer) = writer {
                writer.clean_up().await;
            }
            tracing::warn!(portion = %header.portion, %err, "store failed; pieces deleted");
            return Err(err);
        }
        tracing::info!(
            tenant = %header.tenant, portion = %header.portion, size = header.size,
            downstream_receipts = downstream.receipts.len(), downstream_failures = downstream.failures.len(),
            "portion stored"
        );
        Ok(response(shared, &header, downstream))
    }

    async fn fail(mut self, err: VendorError) -> VendorError {
        tracing::warn!(portion = %self.header.portion, %err, "store failed; cleaning up");
        // The next vendor saw the same bytes (a bad stream is bad there too);
        // waiting for its answer means that when this call fails, the rest of
        // the route has already cleaned up as well.
        let (forwarder, writer) = (self.forwarder.take(), self.writer.take());
        let downstream = async move {
            if let Some(forwarder) = forwarder {
                let answer = forwarder.finish().await;
                tracing::debug!(
                    receipts = answer.receipts.len(),
                    failures = answer.failures.len(),
                    "downstream answer after a local failure"
                );
            }
        };
        let local = async move {
            if let Some(writer) = writer {
                writer.clean_up().await;
            }
        };
        tokio::join!(downstream, local);
        err
    }
}

/// Waits for every piece and records the portion in the local FAT (flushed).
async fn record_pieces(
    shared: &Shared,
    header: &RoutingHeader,
    writer: &mut PieceWriter,
) -> Result<(), VendorError> {
    let pieces = writer.finish().await?;
    let record = PortionRecord {
        tenant: header.tenant.clone(),
        portion: header.portion,
        hash: header.hash,
        size: header.size,
        piece_size: header.piece_size,
        pieces,
    };
    if let Err(err) = shared.fat.insert(&record).await {
        // The pieces are about to be deleted: leave no entry pointing at them.
        if let Err(undo) = shared.fat.remove(&header.tenant, &header.portion).await {
            tracing::error!(portion = %header.portion, %undo, "cannot undo a failed local FAT write");
        }
        return Err(err.into());
    }
    Ok(())
}

fn response(shared: &Shared, header: &RoutingHeader, downstream: Downstream) -> StoreResponse {
    let mut own = Receipt {
        vendor: shared.vendor.clone(),
        tenant: header.tenant.clone(),
        portion: header.portion,
        hash: header.hash,
        size: header.size,
        signature: Vec::new(),
    };
    shared.identity.sign(&mut own);
    let mut receipts = vec![own.into()];
    receipts.extend(downstream.receipts);
    StoreResponse {
        receipts,
        failures: downstream.failures,
    }
}
