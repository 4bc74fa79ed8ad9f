//! The limits every server of the marketplace (coordinator, vendor, NAS
//! device) runs under, in one place: how many connections it accepts at once
//! (more wait in the listen backlog), how many streams one connection may
//! have open and in flight, how long one call may take, and HTTP/2 and TCP
//! keepalives, so a peer that hangs (stopped, cut off) has its connection
//! and every stream on it closed instead of holding them forever.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};
use tonic::transport::Server;

/// Connections a server holds open at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Streams one connection may have open, and requests it may have in flight.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// How often a server pings a connection that is otherwise quiet...
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// ...and how long it waits for the answer before closing the connection.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Idle time before TCP keepalive probes start.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// A tonic server with the marketplace's limits; `call_timeout` bounds
/// every call (a streamed answer's body is bounded by its own frame
/// timeouts instead).
pub fn server(call_timeout: Duration) -> Server {
    Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .concurrency_limit_per_connection(MAX_STREAMS_PER_CONNECTION as usize)
        .timeout(call_timeout)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
}

/// The connections a server accepts on `listener`: at most
/// [`MAX_CONNECTIONS`] at once, each with TCP_NODELAY and TCP keepalive set.
/// tonic's own `tcp_nodelay` setting does not reach connections from a
/// listener we bound ourselves; without it a reply written in more than one
/// segment waits for the caller's delayed ACK (40 ms on Linux).
pub fn incoming(
    listener: TcpListener,
) -> impl Stream<Item = io::Result<LimitedConnection>> + Send + 'static {
    limited(listener, MAX_CONNECTIONS)
}

fn limited(
    listener: TcpListener,
    max: usize,
) -> impl Stream<Item = io::Result<LimitedConnection>> + Send + 'static {
    let accepted = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(TCP_KEEPALIVE));
    let permits = Arc::new(Semaphore::new(max));
    futures::stream::unfold(
        (accepted, permits),
        move |(mut accepted, permits)| async move {
            if permits.available_permits() == 0 {
                tracing::warn!(
                    max,
                    "at the connection limit; new connections wait until one closes"
                );
            }
            let permit = Arc::clone(&permits).acquire_owned().await.ok()?;
            let next = accepted.next().await?;
            let connection = next.map(|stream| LimitedConnection {
                stream,
                _permit: permit,
            });
            Some((connection, (accepted, permits)))
        },
    )
}

/// An accepted connection holding its place under [`MAX_CONNECTIONS`].
#[derive(Debug)]
pub struct LimitedConnection {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl Connected for LimitedConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for LimitedConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every accepted connection has Nagle's algorithm off, so a reply
    /// written in several segments goes out at once.
    #[tokio::test]
    async fn accepted_connections_have_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut accepted = Box::pin(incoming(listener));
        let _client = TcpStream::connect(address).await.unwrap();
        let connection = accepted.next().await.unwrap().unwrap();
        assert!(connection.stream.nodelay().unwrap());
    }

    /// Past the limit a connection is accepted only once another closes.
    #[tokio::test]
    async fn connections_past_the_limit_wait_for_one_to_close() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut accepted = Box::pin(limited(listener, 1));
        let _first = TcpStream::connect(address).await.unwrap();
        let _second = TcpStream::connect(address).await.unwrap();
        let held = accepted.next().await.unwrap().unwrap();
        let wait = Duration::from_millis(200);
        assert!(tokio::time::timeout(wait, accepted.next()).await.is_err());
        drop(held);
        let next = tokio::time::timeout(Duration::from_secs(5), accepted.next()).await;
        assert!(matches!(next, Ok(Some(Ok(_)))));
    }
}
