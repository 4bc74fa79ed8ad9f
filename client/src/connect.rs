//! Connection setup for every gRPC peer (coordinators and vendors), in one
//! place so mutual TLS can replace plaintext `http://` without touching callers.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// How long to wait for a TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a channel to `host:port`.
pub async fn connect(address: &str) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect()
        .await
}
