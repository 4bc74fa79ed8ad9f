//! Starting the NAS device: open the piece store named by the config and serve
//! the `Nas` gRPC service on a bound listener until shutdown.

use std::future::Future;

use offsite_piece_store::{PieceDir, PieceError};
use offsite_proto::limits::MAX_MESSAGE_BYTES;
use offsite_proto::pb::nas::nas_server::NasServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::service::NasService;
use crate::NasConfig;

/// Why the device could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the piece store: {0}")]
    Open(#[from] PieceError),
    #[error("opening the piece store did not finish: {0}; restart the device")]
    OpenTask(#[from] tokio::task::JoinError),
    #[error("the gRPC server failed: {0}; restart the device")]
    Transport(#[from] tonic::transport::Error),
}

/// Opens the piece store of `config` and serves it on `listener` until
/// `shutdown` completes; in-flight calls finish before it returns.
pub async fn serve(
    config: &NasConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (root, cap) = (config.data_dir.clone(), config.cap_bytes);
    let dir = tokio::task::spawn_blocking(move || PieceDir::open(&root, cap)).await??;
    let service = NasServer::new(NasService::new(dir, config.put_idle_timeout()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let address = listener.local_addr().ok();
    tracing::info!(?address, data_dir = %config.data_dir.display(), "NAS device serving");
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    tracing::info!("NAS device stopped");
    Ok(())
}
