//! Receiving a piece over a `Put` stream: the header frame first (piece id,
//! 32-byte hash, size within `MAX_PIECE_BYTES`), then non-empty data frames of
//! at most `MAX_FRAME_BYTES` totalling exactly `size`. The bytes are buffered,
//! under a memory budget shared by all puts, until the piece store writes them;
//! a stream silent for longer than the idle timeout is aborted, so a stalled
//! sender cannot hold its share of the budget.

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use offsite_proto::limits::{MAX_FRAME_BYTES, MAX_PIECE_BYTES};
use offsite_proto::pb::nas::{put_frame::Frame, PieceHeader, PutFrame};
use offsite_proto::stream::{next_within, Idle};
use offsite_proto::{Hash, PieceId};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

/// Bytes of piece data all puts in flight may buffer together.
pub(crate) const BUFFER_BUDGET_BYTES: u64 = 256 * 1024 * 1024;
/// The budget is counted in units of this many bytes.
const BUDGET_UNIT: u64 = 1024 * 1024;

/// Permits of the buffer budget semaphore.
pub(crate) fn buffer_budget() -> Arc<Semaphore> {
    Arc::new(Semaphore::new((BUFFER_BUDGET_BYTES / BUDGET_UNIT) as usize))
}

/// A piece received whole, with its share of the buffer budget.
pub(crate) struct IncomingPiece {
    pub id: PieceId,
    pub hash: Hash,
    pub data: Vec<u8>,
    pub _budget: OwnedSemaphorePermit,
}

/// Reads a whole `Put` stream, checking every frame; `idle` bounds the wait
/// for each frame.
pub(crate) async fn receive<S>(
    mut frames: S,
    budget: Arc<Semaphore>,
    idle: Duration,
) -> Result<IncomingPiece, Status>
where
    S: Stream<Item = Result<PutFrame, Status>> + Unpin,
{
    let header = match next_frame(&mut frames, idle, None).await? {
        None => {
            return Err(invalid(
                "the Put stream is empty; send the piece header frame first",
            ))
        }
        Some(frame) => match frame.frame {
            Some(Frame::Header(header)) => header,
            _ => {
                return Err(invalid(
                    "the first Put frame must be the piece header (piece_id, hash, size); \
                     send it before any data",
                ))
            }
        },
    };
    let (id, hash, size) = check_header(header)?;
    let units = size.div_ceil(BUDGET_UNIT).max(1) as u32;
    let permit = budget
        .acquire_many_owned(units)
        .await
        .map_err(|_| Status::unavailable("the device is shutting down; retry on another device"))?;
    let data = receive_data(&mut frames, &id, size, idle).await?;
    Ok(IncomingPiece {
        id,
        hash,
        data,
        _budget: permit,
    })
}

fn check_header(header: PieceHeader) -> Result<(PieceId, Hash, u64), Status> {
    let id = PieceId::new(header.piece_id)?;
    let hash = Hash::from_wire("hash", &header.hash)?;
    if header.size > MAX_PIECE_BYTES {
        return Err(invalid(format!(
            "piece {id}: size {} is more than the {MAX_PIECE_BYTES} bytes a piece may have; \
             re-chunk into smaller pieces",
            header.size
        )));
    }
    Ok((id, hash, header.size))
}

/// The next frame, or an abort once the sender has been silent for `idle`.
async fn next_frame<S>(
    frames: &mut S,
    idle: Duration,
    id: Option<&PieceId>,
) -> Result<Option<PutFrame>, Status>
where
    S: Stream<Item = Result<PutFrame, Status>> + Unpin,
{
    match next_within(frames, idle).await {
        Ok(frame) => frame.transpose(),
        Err(Idle(idle)) => {
            let what = id.map_or_else(|| "the Put stream".to_string(), |id| format!("piece {id}"));
            Err(Status::deadline_exceeded(format!(
                "{what}: no frame for {} s, so the device aborted the put (put_idle_timeout_secs); \
                 resend the piece without pausing",
                idle.as_secs_f64()
            )))
        }
    }
}

async fn receive_data<S>(
    frames: &mut S,
    id: &PieceId,
    size: u64,
    idle: Duration,
) -> Result<Vec<u8>, Status>
where
    S: Stream<Item = Result<PutFrame, Status>> + Unpin,
{
    // The header's size was checked against MAX_PIECE_BYTES.
    let mut data: Vec<u8> = Vec::with_capacity(size as usize);
    while let Some(frame) = next_frame(frames, idle, Some(id)).await? {
        let chunk = match frame.frame {
            Some(Frame::Data(chunk)) if chunk.is_empty() => {
                return Err(invalid(format!(
                    "piece {id}: an empty data frame; send only data frames with bytes"
                )))
            }
            Some(Frame::Data(chunk)) => chunk,
            Some(Frame::Header(_)) => {
                return Err(invalid(format!(
                    "piece {id}: a second header frame; send one header, then only data frames"
                )))
            }
            None => {
                return Err(invalid(format!(
                    "piece {id}: a frame with neither header nor data"
                )))
            }
        };
        check_frame(id, chunk.len(), data.len() as u64, size)?;
        data.extend_from_slice(&chunk);
    }
    if data.len() as u64 != size {
        return Err(invalid(format!(
            "piece {id}: the stream ended after {} bytes but the header announced {size}; \
             send exactly size bytes",
            data.len()
        )));
    }
    Ok(data)
}

fn check_frame(id: &PieceId, frame_len: usize, received: u64, size: u64) -> Result<(), Status> {
    if frame_len > MAX_FRAME_BYTES {
        return Err(invalid(format!(
            "piece {id}: a data frame of {frame_len} bytes is more than the \
             {MAX_FRAME_BYTES} allowed; send smaller frames"
        )));
    }
    let total = received + frame_len as u64;
    if total > size {
        return Err(invalid(format!(
            "piece {id}: {total} bytes received but the header announced {size}; \
             send exactly size bytes"
        )));
    }
    Ok(())
}

fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use tonic::Code;

    const IDLE: Duration = Duration::from_secs(5);

    fn header(id: &str, data: &[u8], size: u64) -> Result<PutFrame, Status> {
        Ok(PutFrame {
            frame: Some(Frame::Header(PieceHeader {
                piece_id: id.into(),
                hash: Hash::of(data).to_vec(),
                size,
            })),
        })
    }

    fn data(bytes: &[u8]) -> Result<PutFrame, Status> {
        Ok(PutFrame {
            frame: Some(Frame::Data(bytes.to_vec().into())),
        })
    }

    async fn run(frames: Vec<Result<PutFrame, Status>>) -> Result<IncomingPiece, Status> {
        receive(futures::stream::iter(frames), buffer_budget(), IDLE).await
    }

    #[tokio::test]
    async fn frames_are_joined() {
        let piece = run(vec![header("p", b"abcdef", 6), data(b"abc"), data(b"def")])
            .await
            .unwrap();
        assert_eq!(piece.data, b"abcdef");
        assert_eq!(piece.hash, Hash::of(b"abcdef"));
        assert_eq!(piece.id.as_str(), "p");
    }

    #[tokio::test]
    async fn bad_headers_are_refused() {
        let err = run(vec![]).await.err().unwrap();
        assert!(err.message().contains("empty"));
        let err = run(vec![data(b"x")]).await.err().unwrap();
        assert!(err
            .message()
            .contains("first Put frame must be the piece header"));
        let err = run(vec![header("a/b", b"", 0)]).await.err().unwrap();
        assert!(err.message().contains("piece_id"), "{}", err.message());
        let err = run(vec![header("p", b"", MAX_PIECE_BYTES + 1)])
            .await
            .err()
            .unwrap();
        assert!(err.message().contains("re-chunk"), "{}", err.message());
        let mut short = header("p", b"", 0).unwrap();
        if let Some(Frame::Header(h)) = &mut short.frame {
            h.hash.truncate(31);
        }
        let err = run(vec![Ok(short)]).await.err().unwrap();
        assert!(err.message().contains("31 bytes"), "{}", err.message());
    }

    #[tokio::test]
    async fn sizes_must_match_exactly() {
        let err = run(vec![header("p", b"abcd", 4), data(b"abc")])
            .await
            .err()
            .unwrap();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err
            .message()
            .contains("after 3 bytes but the header announced 4"));
        let err = run(vec![header("p", b"ab", 2), data(b"abc")])
            .await
            .err()
            .unwrap();
        assert!(err
            .message()
            .contains("3 bytes received but the header announced 2"));
        let err = run(vec![header("p", b"ab", 2), header("p", b"ab", 2)])
            .await
            .err()
            .unwrap();
        assert!(err.message().contains("second header"));
    }

    #[tokio::test]
    async fn oversize_frames_are_refused() {
        let big = vec![0u8; MAX_FRAME_BYTES + 1];
        let err = run(vec![header("p", &big, big.len() as u64), data(&big)])
            .await
            .err()
            .unwrap();
        assert!(err.message().contains("more than the"), "{}", err.message());
    }

    #[tokio::test]
    async fn empty_data_frames_are_refused() {
        let err = run(vec![header("p", b"ab", 2), data(b""), data(b"ab")])
            .await
            .err()
            .unwrap();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().contains("empty data frame"),
            "{}",
            err.message()
        );
    }

    #[tokio::test]
    async fn a_silent_stream_is_aborted_and_frees_its_budget() {
        let budget = buffer_budget();
        let before = budget.available_permits();
        // The header, then nothing: the sender never closes the stream.
        let frames = futures::stream::iter(vec![header("p-idle", b"abcd", 4)])
            .chain(futures::stream::pending());
        let idle = Duration::from_millis(200);
        let err = receive(Box::pin(frames), budget.clone(), idle)
            .await
            .err()
            .unwrap();
        assert_eq!(err.code(), Code::DeadlineExceeded);
        assert!(
            err.message().contains("piece p-idle: no frame for 0.2 s"),
            "{}",
            err.message()
        );
        assert_eq!(budget.available_permits(), before);
    }
}
