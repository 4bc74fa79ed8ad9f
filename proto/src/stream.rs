//! Data streams on the wire: a sender splits bytes into frames of
//! [`FRAME_BYTES`](crate::limits::FRAME_BYTES) ([`frames`]), and a receiver
//! waits for each next frame at most an idle timeout ([`next_within`]), so a
//! stalled peer cannot hold a call and its buffers forever.

use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;

use crate::limits::FRAME_BYTES;

/// `data` as consecutive frames of at most `FRAME_BYTES`, each a cheap
/// slice of it (no copy). Empty data gives no frame.
pub fn frames(data: Bytes) -> impl Iterator<Item = Bytes> + Send + 'static {
    let count = data.len().div_ceil(FRAME_BYTES);
    (0..count).map(move |i| {
        let start = i * FRAME_BYTES;
        data.slice(start..(start + FRAME_BYTES).min(data.len()))
    })
}

/// The peer sent nothing for the idle timeout.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("no frame for {:.1} s", .0.as_secs_f64())]
pub struct Idle(pub Duration);

/// The next item of `stream`, `None` at its end, or [`Idle`] once it has
/// been silent for `idle`.
pub async fn next_within<S>(stream: &mut S, idle: Duration) -> Result<Option<S::Item>, Idle>
where
    S: Stream + Unpin,
{
    let next = std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx));
    tokio::time::timeout(idle, next)
        .await
        .map_err(|_| Idle(idle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cover_the_data_in_order_and_within_the_frame_size() {
        for len in [
            0,
            1,
            FRAME_BYTES - 1,
            FRAME_BYTES,
            FRAME_BYTES + 1,
            3 * FRAME_BYTES + 7,
        ] {
            let data = Bytes::from((0..len).map(|i| i as u8).collect::<Vec<u8>>());
            let parts: Vec<Bytes> = frames(data.clone()).collect();
            assert_eq!(parts.len(), len.div_ceil(FRAME_BYTES), "{len}");
            assert!(parts
                .iter()
                .all(|p| !p.is_empty() && p.len() <= FRAME_BYTES));
            assert_eq!(parts.concat(), data.to_vec(), "{len}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_is_idle_and_a_live_one_is_not() {
        let mut live = tokio_stream::iter([1, 2]);
        let idle = Duration::from_secs(5);
        assert_eq!(next_within(&mut live, idle).await, Ok(Some(1)));
        assert_eq!(next_within(&mut live, idle).await, Ok(Some(2)));
        assert_eq!(next_within(&mut live, idle).await, Ok(None));

        let mut silent = tokio_stream::pending::<u8>();
        assert_eq!(next_within(&mut silent, idle).await, Err(Idle(idle)));
    }
}
