//! Starting the NAS device: open the piece store named by the config and serve
//! the `Nas` gRPC service on a bound listener until shutdown.

use std::future::Future;
use std::time::Duration;

use offsite_identity::{require_role, Credentials, PeerIdentity, Role, TlsError};
use offsite_piece_store::{PieceDir, PieceError};
use offsite_proto::limits::MAX_STREAM_MESSAGE_BYTES;
use offsite_proto::pb::nas::nas_server::NasServer;
use tokio::net::TcpListener;
use tonic::service::interceptor::{InterceptedService, Interceptor};
use tonic::{Request, Status};

use crate::service::NasService;
use crate::NasConfig;

/// The longest one call to a NAS device may take (a put of the largest
/// piece from a slow vendor; its frames are bounded by the idle timeout
/// too); see `offsite_identity::server` for the other limits.
const NAS_CALL_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Why the device could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the piece store: {0}")]
    Open(#[from] PieceError),
    #[error("opening the piece store did not finish: {0}; restart the device")]
    OpenTask(#[from] tokio::task::JoinError),
    #[error("the gRPC server failed: {0}; restart the device")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Lets through only calls from the device's own vendor's certificate.
#[derive(Clone)]
struct OnlyVendor(PeerIdentity);

impl Interceptor for OnlyVendor {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let peer = require_role(&request, &[Role::Vendor])?;
        if peer != self.0 {
            tracing::warn!(caller = %peer, "refused a vendor that is not this device's");
            return Err(Status::permission_denied(format!(
                "this NAS device serves vendor {:?} only; the caller is {peer}",
                self.0.name
            )));
        }
        Ok(request)
    }
}

/// Opens the piece store of `config` and serves it on `listener` until
/// `shutdown` completes; in-flight calls finish before it returns.
pub async fn serve(
    config: &NasConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let credentials = Credentials::load(&config.tls)?.expect_role(Role::Nas, "a NAS device")?;
    let (root, cap) = (config.data_dir.clone(), config.cap_bytes);
    let dir = tokio::task::spawn_blocking(move || PieceDir::open(&root, cap)).await??;
    let service = NasServer::new(NasService::new(dir, config.put_idle_timeout()))
        .max_decoding_message_size(MAX_STREAM_MESSAGE_BYTES);
    let service = InterceptedService::new(
        service,
        OnlyVendor(PeerIdentity {
            role: Role::Vendor,
            name: config.allowed_vendor.clone(),
        }),
    );
    let address = listener.local_addr().ok();
    let name = &credentials.identity().name;
    tracing::info!(?address, %name, vendor = %config.allowed_vendor, data_dir = %config.data_dir.display(), "NAS device serving its vendor over mutual TLS");
    offsite_identity::server::server(NAS_CALL_TIMEOUT)
        .tls_config(credentials.server_tls())?
        .add_service(service)
        .serve_with_incoming_shutdown(offsite_identity::incoming(listener), shutdown)
        .await?;
    tracing::info!("NAS device stopped");
    Ok(())
}
