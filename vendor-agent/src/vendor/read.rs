//! Reading a portion back (`Vendor.Fetch`): reassembles it (or a byte range
//! of it) from its pieces, each checked against the hash the local FAT
//! recorded, under a fetch grant; a damaged or missing piece ends the stream
//! with [`VendorError::PieceLost`] so the client falls back to another replica.
//! Each piece read holds its size of the read budget ([`super::budget`])
//! until its last frame is dropped; a reader that takes no frame for the
//! fetch idle timeout is cut off and the frames waiting for it are dropped,
//! so a stream nobody reads holds no memory.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;

use offsite_proto::signing::{GrantOp, SignatureError};
use offsite_proto::stream::frames;
use offsite_proto::{Grant, PortionId, TenantId};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::SendTimeoutError;

use super::budget::budgeted;
use super::error::VendorError;
use super::grants::portion_grant;
use super::Vendor;
use crate::local_fat::{PieceRecord, PortionRecord};
use crate::store::StoreError;

/// Chunks read ahead of the caller.
const FETCH_WINDOW: usize = 4;

type Chunk = Result<Bytes, VendorError>;

/// Where the chunks of a read wait for their reader, until it is cut off.
enum Slot {
    Open(mpsc::Receiver<Chunk>),
    /// The reader was cut off: what is left to tell it.
    Cut(Option<VendorError>),
}

/// The chunks of a read: at most `FRAME_BYTES` each, ended by an error if
/// the portion cannot be read to the end of the range.
pub(crate) struct Chunks {
    slot: Arc<Mutex<Slot>>,
}

/// The sending end of [`Chunks`]: a send waits at most `idle` for the
/// reader, then cuts it off.
pub(crate) struct ChunkSink {
    sender: mpsc::Sender<Chunk>,
    slot: Arc<Mutex<Slot>>,
    idle: Duration,
}

/// The reader is gone or was cut off: stop reading.
#[derive(Debug)]
pub(crate) struct ReaderGone;

/// A window of `window` chunks between a read and its reader.
pub(crate) fn chunk_channel(window: usize, idle: Duration) -> (ChunkSink, Chunks) {
    let (sender, receiver) = mpsc::channel(window);
    let slot = Arc::new(Mutex::new(Slot::Open(receiver)));
    let sink = ChunkSink {
        sender,
        slot: Arc::clone(&slot),
        idle,
    };
    (sink, Chunks { slot })
}

fn lock(slot: &Mutex<Slot>) -> std::sync::MutexGuard<'_, Slot> {
    slot.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl Stream for Chunks {
    type Item = Chunk;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Chunk>> {
        match &mut *lock(&self.slot) {
            Slot::Open(receiver) => receiver.poll_recv(cx),
            Slot::Cut(left) => Poll::Ready(left.take().map(Err)),
        }
    }
}

impl ChunkSink {
    /// Hands a chunk to the reader; a reader that takes none within the idle
    /// timeout is cut off: the chunks waiting for it are dropped (and the
    /// budget they hold released) and it is told why when it next reads.
    pub async fn send(&self, chunk: Chunk, portion: PortionId) -> Result<(), ReaderGone> {
        match self.sender.send_timeout(chunk, self.idle).await {
            Ok(()) => Ok(()),
            Err(SendTimeoutError::Closed(_)) => Err(ReaderGone),
            Err(SendTimeoutError::Timeout(_)) => {
                tracing::warn!(%portion, idle = ?self.idle, "the reader took no frame; cutting the fetch off");
                let cut = VendorError::ReaderIdle {
                    portion,
                    secs: self.idle.as_secs_f64(),
                };
                // The old slot, with its waiting chunks, is dropped here.
                drop(std::mem::replace(
                    &mut *lock(&self.slot),
                    Slot::Cut(Some(cut)),
                ));
                Err(ReaderGone)
            }
        }
    }
}

/// A read of `length` bytes from `offset` of a tenant's portion (a length
/// of 0 means to the end), under a fetch grant.
#[derive(Debug, Clone)]
pub(crate) struct ReadRequest {
    pub tenant: TenantId,
    pub portion: PortionId,
    pub offset: u64,
    pub length: u64,
    pub grant: Option<Grant>,
}

impl Vendor {
    /// Starts streaming the requested range of a portion.
    pub fn read(self: &Arc<Self>, request: ReadRequest) -> Result<Chunks, VendorError> {
        let ReadRequest {
            tenant,
            portion,
            offset,
            length,
            grant,
        } = request;
        let body = self.grants.check(
            grant.as_ref(),
            &portion_grant(GrantOp::Fetch, &tenant, &self.id, portion),
        )?;
        let record = self
            .fat
            .get(&tenant, &portion)?
            .ok_or(VendorError::NotHeld { tenant, portion })?;
        let (start, end) = range(&record, offset, length)?;
        if end - start > body.max_bytes {
            return Err(VendorError::Grant {
                vendor: self.id.clone(),
                source: SignatureError::Mismatch(format!(
                    "{} bytes asked, the grant allows {}",
                    end - start,
                    body.max_bytes
                )),
            });
        }
        let (sink, chunks) = chunk_channel(FETCH_WINDOW, self.limits().fetch_idle);
        let vendor = Arc::clone(self);
        // Checked above: a fetch always carries its grant.
        let grant = grant.unwrap_or_default();
        tokio::spawn(async move {
            match stream_range(&vendor, &record, start, end, &sink).await {
                Ok(sent) => vendor.egress().record(&grant, sent),
                Err(err) => {
                    tracing::warn!(portion = %record.portion, %err, "fetch failed");
                    // The caller may have gone; nothing more to do then.
                    let _ = sink.send(Err(err), record.portion).await;
                }
            }
        });
        Ok(chunks)
    }
}

/// `[start, end)` of the portion; a length of 0 means to the end.
fn range(record: &PortionRecord, offset: u64, length: u64) -> Result<(u64, u64), VendorError> {
    let end = match length {
        0 => Some(record.size),
        n => offset.checked_add(n),
    };
    match end {
        Some(end) if offset <= record.size && end <= record.size => Ok((offset, end)),
        _ => Err(VendorError::OutOfRange {
            portion: record.portion,
            offset,
            length,
            size: record.size,
        }),
    }
}

pub(super) async fn stream_range(
    vendor: &Vendor,
    record: &PortionRecord,
    start: u64,
    end: u64,
    sink: &ChunkSink,
) -> Result<u64, VendorError> {
    let lost = |detail: String| VendorError::PieceLost {
        portion: record.portion,
        source: StoreError::Failed {
            store: "local FAT".into(),
            detail,
        },
    };
    let budget = vendor.fetch_budget();
    let wait = vendor.limits().fetch_idle;
    let mut piece_start = 0u64;
    let mut sent = 0u64;
    for piece in &record.pieces {
        let piece_end = piece_start.saturating_add(piece.size);
        if piece_end > start && piece_start < end {
            let held = budget.take(&record.tenant, piece.size, wait).await?;
            let data = budgeted(read_piece(vendor, record, piece).await?, held);
            let from = start.saturating_sub(piece_start) as usize;
            let to = (end.min(piece_end) - piece_start) as usize;
            for chunk in frames(data.slice(from..to)) {
                let len = chunk.len() as u64;
                if sink.send(Ok(chunk), record.portion).await.is_err() {
                    return Ok(sent); // the caller hung up or was cut off
                }
                sent += len;
            }
        }
        piece_start = piece_end;
        if piece_start >= end {
            break;
        }
    }
    // A stream that ends without an error must have carried the whole range.
    if sent != end - start {
        return Err(lost(format!(
            "its pieces hold {sent} of the {} bytes asked for",
            end - start
        )));
    }
    Ok(sent)
}

/// One piece from its store, checked against the local FAT's hash and size.
async fn read_piece(
    vendor: &Vendor,
    record: &PortionRecord,
    piece: &PieceRecord,
) -> Result<Bytes, VendorError> {
    let lost = |source| VendorError::PieceLost {
        portion: record.portion,
        source,
    };
    let store = vendor.stores.get(piece.store as usize).ok_or_else(|| {
        lost(StoreError::Failed {
            store: format!("#{}", piece.store),
            detail: "the local FAT names a store no longer configured".into(),
        })
    })?;
    let data = store.get(&piece.id, &piece.hash).await.map_err(lost)?;
    if data.len() as u64 != piece.size {
        return Err(lost(StoreError::Corrupt {
            store: store.name().to_owned(),
            piece: piece.id.clone(),
            detail: format!(
                "it holds {} bytes, the local FAT says {}",
                data.len(),
                piece.size
            ),
        }));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use offsite_proto::signing::GrantSubject;
    use offsite_proto::Hash;

    fn record(size: u64) -> PortionRecord {
        PortionRecord {
            tenant: TenantId::new("t").unwrap(),
            portion: PortionId::random(),
            hash: Hash::of(b""),
            size,
            piece_size: 10,
            pieces: vec![],
            reservation: None,
        }
    }

    #[test]
    fn ranges_stay_inside_the_portion() {
        let r = record(100);
        assert_eq!(range(&r, 0, 0).unwrap(), (0, 100));
        assert_eq!(range(&r, 10, 0).unwrap(), (10, 100));
        assert_eq!(range(&r, 10, 20).unwrap(), (10, 30));
        assert_eq!(range(&r, 100, 0).unwrap(), (100, 100));
        assert!(range(&r, 101, 0).is_err());
        assert!(range(&r, 90, 11).is_err());
        assert!(range(&r, u64::MAX, 2).is_err());
    }

    /// A local FAT entry whose pieces hold less than the portion (a damaged
    /// record) must end the fetch with DataLoss, never a short OK stream.
    #[tokio::test]
    async fn pieces_shorter_than_the_portion_are_data_loss_not_a_short_read() {
        use crate::store::{random_piece_id, LocalStore, PieceStore};
        use futures::StreamExt;
        let (store_dir, fat_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store = LocalStore::open(store_dir.path(), None, 0.0).unwrap();
        let data = crate::testing::test_bytes(100_000, 5);
        let piece = PieceRecord {
            id: random_piece_id(),
            store: 0,
            size: data.len() as u64,
            hash: Hash::of(&data),
        };
        store.put(&piece.id, data, &piece.hash).await.unwrap();
        let mut damaged = record(200_000);
        damaged.pieces = vec![piece];
        let fat = crate::local_fat::LocalFat::open(fat_dir.path()).unwrap();
        fat.insert(&damaged).await.unwrap();
        let id = offsite_proto::VendorId::new("v1").unwrap();
        let credentials = crate::testing::throwaway_credentials("v1");
        let identity = offsite_proto::signing::VendorKey::from_secret(&[1; 32]);
        let vendor = Arc::new(Vendor::new(
            id,
            vec![Arc::new(store)],
            fat,
            credentials,
            identity,
        ));
        let group = offsite_proto::signing::GroupKey::from_secret(1, &[2; 32]);
        vendor
            .set_grant_keys(&[(1, group.public_key().to_vec())])
            .unwrap();
        let grant = group.grant(&offsite_proto::signing::GrantBody {
            op: GrantOp::Fetch,
            tenant: damaged.tenant.clone(),
            vendor: vendor.id.clone(),
            subject: GrantSubject::Portion(damaged.portion),
            max_bytes: damaged.size,
            expires_unix_ms: u64::MAX,
            address: String::new(),
        });
        let request = ReadRequest {
            tenant: damaged.tenant.clone(),
            portion: damaged.portion,
            offset: 0,
            length: 0,
            grant: Some(grant),
        };
        let mut chunks: Vec<_> = vendor.read(request).unwrap().collect().await;
        // As the adapter answers it.
        let status = tonic::Status::from(chunks.pop().unwrap().unwrap_err());
        assert_eq!(status.code(), tonic::Code::DataLoss);
        assert!(
            status.message().contains("hold 100000 of the 200000 bytes"),
            "{}",
            status.message()
        );
    }
}
