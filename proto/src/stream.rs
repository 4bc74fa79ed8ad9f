//! Data streams on the wire: a sender splits bytes into frames of
//! [`FRAME_BYTES`](crate::limits::FRAME_BYTES) ([`frames`]), and a receiver
//! waits for each next frame at most an idle timeout ([`next_within`]), so a
//! stalled peer cannot hold a call and its buffers forever. A sender watches
//! how its frames are taken ([`watched`]): a peer that takes no frame for a
//! while, or does not answer once it has them all, is stalled ([`Stall`]).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use tokio::time::Instant;

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

/// How a peer stalled a call it was sent frames on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Stall {
    /// It took no frame for this long.
    #[error("took no frame for {:.1} s", .0.as_secs_f64())]
    Frame(Duration),
    /// It took every frame, then did not answer for this long.
    #[error("did not answer for {:.1} s after the last frame", .0.as_secs_f64())]
    Answer(Duration),
}

/// When a watched stream last gave a frame, and whether it has ended.
#[derive(Debug)]
struct Taken {
    last: Instant,
    ended: bool,
}

/// A stream whose frames are watched as the transport takes them; see
/// [`watched`].
pub struct Watched<S> {
    inner: S,
    taken: Arc<Mutex<Taken>>,
}

/// The watch on a [`Watched`] stream, for [`Progress::stalled`].
#[derive(Debug, Clone)]
pub struct Progress {
    taken: Arc<Mutex<Taken>>,
}

/// Wraps the frames of an outgoing call so the sender can tell a peer that
/// stopped taking them (flow control holds the transport back) from one that
/// is merely slow: race the call against [`Progress::stalled`].
pub fn watched<S: Stream + Unpin>(inner: S) -> (Watched<S>, Progress) {
    let taken = Arc::new(Mutex::new(Taken {
        last: Instant::now(),
        ended: false,
    }));
    let progress = Progress {
        taken: Arc::clone(&taken),
    };
    (Watched { inner, taken }, progress)
}

impl<S: Stream + Unpin> Stream for Watched<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(item) = &polled {
            let mut taken = self
                .taken
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            taken.last = Instant::now();
            taken.ended |= item.is_none();
        }
        polled
    }
}

impl Progress {
    /// Completes once the peer has taken no frame for `frame`, or, after the
    /// last frame was taken, has not answered for `answer`; never otherwise.
    pub async fn stalled(&self, frame: Duration, answer: Duration) -> Stall {
        loop {
            let (last, ended) = {
                let taken = self
                    .taken
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner());
                (taken.last, taken.ended)
            };
            let (limit, stall) = match ended {
                false => (frame, Stall::Frame(frame)),
                true => (answer, Stall::Answer(answer)),
            };
            let deadline = last + limit;
            if Instant::now() >= deadline {
                return stall;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
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

    #[tokio::test(start_paused = true)]
    async fn a_stream_nobody_takes_stalls_and_one_taken_waits_for_the_answer() {
        let (frame, answer) = (Duration::from_secs(2), Duration::from_secs(5));
        let (_untaken, progress) = watched(tokio_stream::iter([1, 2]));
        assert_eq!(progress.stalled(frame, answer).await, Stall::Frame(frame));

        let (mut taken, progress) = watched(tokio_stream::iter([1, 2]));
        let start = Instant::now();
        while next_within(&mut taken, frame).await.unwrap().is_some() {}
        assert_eq!(progress.stalled(frame, answer).await, Stall::Answer(answer));
        assert_eq!(start.elapsed(), answer);
    }
}
