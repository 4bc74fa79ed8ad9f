//! Receiving a portion (`Vendor.Store`): checks the store grant of the
//! routing header, receives the portion's data chunks behind it, forwards them
//! to the next vendor of the route while re-chunking them into pieces on this
//! vendor's stores, checks the portion hash, records the pieces in the local
//! FAT and answers with this vendor's signed receipt plus every downstream
//! one. On any failure the pieces written here are deleted and no local FAT
//! entry is left. A stream that sends nothing for the idle timeout is such a
//! failure, and so is a newer store of the same portion (a resend): it
//! aborts this one, which cuts its forward off so the rest of the route
//! aborts too and every lock on the route is released.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use offsite_proto::limits::MAX_FRAME_BYTES;
use offsite_proto::signing::{Expected, GrantBody, GrantOp, GrantSubject};
use offsite_proto::stream::{next_within, Idle};
use offsite_proto::{Hash, PortionId, Receipt, RoutingHeader};

use super::claim::{Claim, ClaimKind};
use super::error::VendorError;
use super::forward::{Downstream, Forwarder, RouteFailure};
use super::place::PieceWriter;
use super::Vendor;
use crate::local_fat::PortionRecord;

/// What a stored portion answers: this vendor's receipt first, then those of
/// the rest of the route, and the vendors of the route that did not store it.
#[derive(Debug, Default)]
pub(crate) struct Stored {
    pub receipts: Vec<Receipt>,
    pub failures: Vec<RouteFailure>,
}

impl Vendor {
    /// Receives one portion to its end: `header` (already checked as a wire
    /// message) and then `chunks`, the portion's bytes in data frames. An
    /// error in `chunks` fails the store; [`VendorError::HeaderRepeated`] is
    /// passed on to the next vendor as the frame it was, so it refuses too.
    /// Run it to its end (in its own task): a dropped call cannot clean up.
    pub async fn receive(
        self: &Arc<Self>,
        header: RoutingHeader,
        chunks: impl Stream<Item = Result<Bytes, VendorError>> + Send,
    ) -> Result<Stored, VendorError> {
        if header.route[0].id != self.id {
            return Err(VendorError::Misrouted {
                to: header.route[0].id.clone(),
                me: self.id.clone(),
            });
        }
        let grant = self.check_store_grant(&header)?;
        let limits = self.limits();
        let claim = self
            .claim(
                &header.tenant,
                &header.portion,
                ClaimKind::Store,
                limits.claim_wait(),
            )
            .await?;
        let already_held = self.held(&header)?;
        // A repeat of a stored portion takes no more room.
        let charge = match already_held {
            true => None,
            false => Some(
                self.grants
                    .charge(&grant, header.reservation, header.size)?,
            ),
        };
        let writer = match already_held {
            true => None,
            false => Some(
                PieceWriter::new(
                    Arc::clone(self),
                    header.portion,
                    header.size,
                    header.piece_size,
                )
                .await?,
            ),
        };
        let forwarder = header.forwarded().map(|next| {
            let wait = limits.next_vendor(next.route.len().saturating_sub(1));
            self.forwarder(next, wait)
        });
        let portion = header.portion;
        let mut upload = Upload {
            header,
            writer,
            forwarder,
        };
        let chunks = std::pin::pin!(chunks);
        let received = tokio::select! {
            received = upload.receive(chunks, limits.store_idle) => received,
            () = claim.aborted() => Err(VendorError::Superseded { portion }),
        };
        let result = upload.conclude(self, received, &claim).await;
        if let (Ok(_), Some(charge)) = (&result, charge) {
            charge.keep();
        }
        result
    }

    /// The store grant of the first vendor of `header`'s route, checked
    /// now. For this vendor's own header it is checked when the stream
    /// starts and again when it has ended, before the receipt is signed (a
    /// long stream's grant may run out, or its key be rotated away, while
    /// it lasts); for the header forwarded to the next vendor, before that
    /// vendor is dialled.
    fn check_store_grant(&self, header: &RoutingHeader) -> Result<GrantBody, VendorError> {
        self.grants.check(
            header.grants.first(),
            &Expected {
                op: GrantOp::Store,
                tenant: &header.tenant,
                vendor: &header.route[0].id,
                subject: GrantSubject::Reservation(header.reservation),
                bytes: header.size,
            },
        )
    }

    /// The forward to the next vendor of the route, checked before anything
    /// is dialled: the next vendor's store grant must be valid for it, and
    /// its address is the one that grant names (the coordinators signed the
    /// address the vendor registered), whatever the route says.
    fn forwarder(&self, mut next: RoutingHeader, wait: Duration) -> Forwarder {
        let to = next.route[0].id.clone();
        match self.check_store_grant(&next) {
            Ok(grant) if !grant.address.is_empty() => {
                next.route[0].address = grant.address;
                Forwarder::start(next, wait, self.credentials.clone())
            }
            Ok(_) => Forwarder::refused(
                next,
                format!(
                    "not forwarded to vendor {to}: its store grant names no address (a \
                     coordinator of an older release signed it); upgrade the coordinators"
                ),
            ),
            Err(e) => Forwarder::refused(
                next,
                format!("not forwarded to vendor {to}: its store grant does not check: {e}"),
            ),
        }
    }

    /// Whether the portion is already held with this hash (an idempotent repeat).
    fn held(&self, header: &RoutingHeader) -> Result<bool, VendorError> {
        match self.fat.get(&header.tenant, &header.portion)? {
            None => Ok(false),
            Some(record) if record.hash == header.hash && record.size == header.size => Ok(true),
            Some(record) => Err(VendorError::HeldWithOtherHash {
                tenant: header.tenant.clone(),
                portion: header.portion,
                held: record.hash,
            }),
        }
    }
}

/// The next item of a store stream, or [`VendorError::Idle`] once the
/// sender has been silent for `idle` (so a stalled sender cannot hold the
/// portion's claim and buffers forever).
pub(crate) async fn next_within_idle<S: Stream + Unpin>(
    stream: &mut S,
    idle: Duration,
    portion: Option<PortionId>,
) -> Result<Option<S::Item>, VendorError> {
    next_within(stream, idle)
        .await
        .map_err(|Idle(idle)| VendorError::Idle {
            portion,
            secs: idle.as_secs_f64(),
        })
}

struct Upload {
    header: RoutingHeader,
    /// `None` when the portion is already held: the bytes are only checked
    /// and forwarded.
    writer: Option<PieceWriter>,
    forwarder: Option<Forwarder>,
}

impl Upload {
    /// Reads every data chunk: forward it, check it, hash it, store it.
    async fn receive(
        &mut self,
        mut chunks: std::pin::Pin<&mut (impl Stream<Item = Result<Bytes, VendorError>> + Send)>,
        idle: Duration,
    ) -> Result<(), VendorError> {
        let mut hasher = blake3::Hasher::new();
        let mut received = 0u64;
        let portion = Some(self.header.portion);
        while let Some(chunk) = next_within_idle(&mut chunks, idle, portion).await? {
            let data = match chunk {
                Ok(data) => data,
                Err(VendorError::HeaderRepeated) => {
                    if let Some(forwarder) = &mut self.forwarder {
                        forwarder.send_repeated_header().await;
                    }
                    return Err(VendorError::HeaderRepeated);
                }
                Err(err) => return Err(err),
            };
            // Forwarded before our own checks: the next vendor applies the same
            // checks, so a stream bad here is refused there too.
            if let Some(forwarder) = &mut self.forwarder {
                forwarder.send(data.clone()).await;
            }
            if data.is_empty() {
                return Err(VendorError::EmptyFrame);
            }
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
    /// A newer store of the portion (`claim` aborted) cuts the wait for
    /// the rest of the route short.
    async fn conclude(
        mut self,
        vendor: &Vendor,
        received: Result<(), VendorError>,
        claim: &Claim,
    ) -> Result<Stored, VendorError> {
        let received = received.and_then(|()| vendor.check_store_grant(&self.header).map(drop));
        if let Err(err) = received {
            return Err(self.fail(err).await);
        }
        let header = self.header.clone();
        let forwarder = self.forwarder.take();
        let mut writer = self.writer.take();
        let downstream = async move {
            match forwarder {
                Some(forwarder) => forwarder.finish_unless(claim.aborted()).await,
                None => Downstream::default(),
            }
        };
        let local = async {
            match writer.as_mut() {
                Some(writer) => record_pieces(vendor, &header, writer).await,
                None => note_reservation(vendor, &header).await,
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
        Ok(stored(vendor, &header, downstream))
    }

    async fn fail(mut self, err: VendorError) -> VendorError {
        tracing::warn!(portion = %self.header.portion, %err, "store failed; cleaning up");
        // The next vendor saw the same bytes (a bad stream is bad there too);
        // waiting for its answer (bounded) means that when this call fails,
        // the rest of the route has already cleaned up as well. An aborted
        // store cuts the route off at once instead.
        let (forwarder, writer) = (self.forwarder.take(), self.writer.take());
        let superseded = matches!(err, VendorError::Superseded { .. });
        let downstream = async move {
            if let Some(forwarder) = forwarder {
                let answer = match superseded {
                    true => forwarder.abort(
                        "the store upstream was aborted by a newer store of the same portion",
                    ),
                    false => forwarder.finish().await,
                };
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

/// A portion held already, stored again under another reservation (or
/// repair): its record names the newest, so garbage collection keeps it
/// while that one may still commit it.
async fn note_reservation(vendor: &Vendor, header: &RoutingHeader) -> Result<(), VendorError> {
    match vendor.fat.get(&header.tenant, &header.portion)? {
        Some(mut record) if record.reservation != Some(header.reservation) => {
            record.reservation = Some(header.reservation);
            Ok(vendor.fat.insert(&record).await?)
        }
        _ => Ok(()),
    }
}

/// Waits for every piece and records the portion in the local FAT (flushed).
async fn record_pieces(
    vendor: &Vendor,
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
        reservation: Some(header.reservation),
    };
    if let Err(err) = vendor.fat.insert(&record).await {
        // The pieces are about to be deleted: leave no entry pointing at them.
        if let Err(undo) = vendor.fat.remove(&header.tenant, &header.portion).await {
            tracing::error!(portion = %header.portion, %undo, "cannot undo a failed local FAT write");
        }
        return Err(err.into());
    }
    Ok(())
}

fn stored(vendor: &Vendor, header: &RoutingHeader, downstream: Downstream) -> Stored {
    let mut own = Receipt {
        vendor: vendor.id.clone(),
        tenant: header.tenant.clone(),
        portion: header.portion,
        hash: header.hash,
        size: header.size,
        signature: Vec::new(),
    };
    vendor.identity.sign(&mut own, &header.reservation);
    let mut receipts = vec![own];
    receipts.extend(downstream.receipts);
    Stored {
        receipts,
        failures: downstream.failures,
    }
}
