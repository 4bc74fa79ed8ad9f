//! The running coordinator: opens the FAT store, binds the gRPC listener,
//! serves `VendorRegistry` and `Fat` until shut down, and sweeps expired
//! reservation leases in the background.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use offsite_proto::limits::MAX_MESSAGE_BYTES;
use offsite_proto::pb::coordinator::fat_server::FatServer;
use offsite_proto::pb::coordinator::vendor_registry_server::VendorRegistryServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use crate::config::{ConfigError, CoordinatorConfig};
use crate::fat::{Command, Outcome};
use crate::service::{now_unix_ms, FatService, FatServiceConfig, RegistryService};
use crate::store::{FatStore, SledStore, StoreError};

/// Why the coordinator could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot create the data dir {path}: {source}; check the path and its permissions")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {address}: {source}; is another process using that address?")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// A coordinator whose store is open and whose listener is bound.
pub struct Coordinator {
    config: CoordinatorConfig,
    store: Arc<SledStore>,
    listener: TcpListener,
}

impl Coordinator {
    /// Validates the config, opens the FAT store and binds the listener.
    pub async fn start(config: CoordinatorConfig) -> Result<Self, CoordinatorError> {
        config.validate()?;
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| CoordinatorError::DataDir {
            path: dir.clone(),
            source,
        })?;
        let every = config.snapshot_every;
        let store = tokio::task::spawn_blocking(move || SledStore::open(&dir, every))
            .await
            .map_err(|_| StoreError::Stopped)??;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| CoordinatorError::Bind {
                    address: config.listen,
                    source,
                })?;
        Ok(Self {
            config,
            store: Arc::new(store),
            listener,
        })
    }

    /// The address the listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, CoordinatorError> {
        self.listener
            .local_addr()
            .map_err(|source| CoordinatorError::Bind {
                address: self.config.listen,
                source,
            })
    }

    /// Serves until `shutdown` completes, then finishes in-flight calls.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), CoordinatorError> {
        let sweep_every = Duration::from_secs(self.config.sweep_interval_secs);
        let sweeper = tokio::spawn(sweep_leases(Arc::clone(&self.store), sweep_every));
        let fat_config = FatServiceConfig {
            lease_ms: self.config.lease_ms(),
            liveness: self.config.liveness(),
            placement: self.config.placement(),
        };
        let registry = VendorRegistryServer::new(RegistryService::new(Arc::clone(&self.store)))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let fat = FatServer::new(FatService::new(Arc::clone(&self.store), fat_config))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let address = self.local_addr()?;
        tracing::info!(%address, data_dir = %self.config.data_dir.display(), "coordinator serving");
        let result = Server::builder()
            .add_service(registry)
            .add_service(fat)
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), shutdown)
            .await;
        sweeper.abort();
        let _ = sweeper.await;
        tracing::info!(%address, "coordinator stopped");
        Ok(result?)
    }
}

/// Starts a coordinator from `config` and serves until `shutdown` completes.
pub async fn serve(
    config: CoordinatorConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), CoordinatorError> {
    Coordinator::start(config).await?.serve(shutdown).await
}

/// Releases reservations whose lease ran out, every `every`.
async fn sweep_leases<S: FatStore>(store: Arc<S>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = now_unix_ms();
        if !store.read(move |fat| fat.has_expired_leases(now)).await {
            continue;
        }
        match store
            .propose(Command::ExpireLeases { now_unix_ms: now })
            .await
        {
            Ok(Outcome::LeasesExpired { released }) if !released.is_empty() => {
                tracing::info!(
                    count = released.len(),
                    "released reservations whose lease ran out"
                );
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not release expired leases; trying again at the next sweep")
            }
        }
    }
}
