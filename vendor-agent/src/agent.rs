//! The vendor agent assembled: its stores, its local FAT and its gRPC server,
//! plus the registration loop and the scrub. `main.rs` and the tests start
//! it from here.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use offsite_identity::{Credentials, Role, TlsError};
use offsite_proto::limits::{MAX_MESSAGE_BYTES, MAX_STREAM_MESSAGE_BYTES};
use offsite_proto::pb::vendor::vendor_admin_server::VendorAdminServer;
use offsite_proto::pb::vendor::vendor_server::VendorServer;
use offsite_proto::VendorId;
use tokio::net::TcpListener;

use offsite_identity::config::Invalid;

use crate::config::{ConfigError, StoreConfig, VendorConfig};
use crate::draining;
use crate::identity_key::{self, IdentityKeyError};
use crate::local_fat::{LocalFat, LocalFatError};
use crate::registration::{self, Registration};
use crate::service::{AdminService, VendorService};
use crate::store::{open_stores, PieceStore, StoreError};
use crate::vendor::{Limits, Retired, Vendor};

/// The longest one call to a vendor may take: a store of the largest
/// portion from a slow sender (its frames are bounded by the idle timeout
/// too); see `offsite_identity::server` for the other limits.
const VENDOR_CALL_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The vendor admin calls carry no payload.
const MAX_ADMIN_REQUEST_BYTES: usize = 4096;

/// Why the vendor agent cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("vendor config: {0}")]
    InvalidConfig(#[from] Invalid),
    #[error("cannot open a store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    LocalFat(#[from] LocalFatError),
    #[error("cannot create the data dir {}: {source}; check the path and its permissions", path.display())]
    DataDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no stores; configure at least one [[stores]]")]
    NoStores,
    #[error("the local FAT still places {pieces} pieces on store #{index}, which the config marks kind = \"removed\"; put the store back with drain = true and wait until `offsite-vendor stores` shows it empty")]
    PiecesOnRemovedStore { index: u32, pieces: u64 },
    #[error("cannot read the local FAT: {0}")]
    Vendor(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    IdentityKey(#[from] IdentityKeyError),
    #[error("the certificate in [tls] cert is vendor {certificate:?}'s but vendor_id is {configured:?}; issue a certificate for {configured:?} (`offsite-coordinator pki issue --role vendor --name {configured}`)")]
    NotOurCertificate {
        certificate: String,
        configured: String,
    },
}

/// The config indexes of the stores that `pick` selects.
fn indexes(config: &VendorConfig, pick: fn(&StoreConfig) -> bool) -> BTreeSet<u32> {
    (0u32..)
        .zip(&config.stores)
        .filter(|(_, s)| pick(s))
        .map(|(i, _)| i)
        .collect()
}

/// A vendor agent: stores, local FAT and service, ready to serve.
#[derive(Clone)]
pub struct VendorAgent {
    vendor: Arc<Vendor>,
}

impl VendorAgent {
    /// Opens the stores and the local FAT named by a validated config.
    pub fn open(config: &VendorConfig) -> Result<Self, AgentError> {
        config.validate()?;
        let credentials =
            Credentials::load(&config.tls)?.expect_role(Role::Vendor, "a vendor agent")?;
        if credentials.identity().name != config.vendor_id {
            return Err(AgentError::NotOurCertificate {
                certificate: credentials.identity().name.clone(),
                configured: config.vendor_id.clone(),
            });
        }
        let stores = open_stores(config, &credentials)?;
        let agent = Self::new(config.vendor()?, stores, &config.data_dir, credentials)?;
        let retired = Retired {
            draining: indexes(config, StoreConfig::draining),
            removed: indexes(config, StoreConfig::is_removed),
        };
        agent.vendor.set_retired(retired);
        let on_removed = agent
            .vendor
            .pieces_on_removed()
            .map_err(|e| AgentError::Vendor(e.to_string()))?;
        if let Some((index, pieces)) = on_removed.first() {
            return Err(AgentError::PiecesOnRemovedStore {
                index: *index,
                pieces: *pieces,
            });
        }
        Ok(agent.with_limits(config.limits()))
    }

    /// Assembles an agent from stores already opened (their order is the
    /// local FAT's store index), the local FAT under `data_dir`, and the
    /// vendor's TLS credentials (its server and its calls).
    pub fn new(
        vendor: VendorId,
        stores: Vec<Arc<dyn PieceStore>>,
        data_dir: &Path,
        credentials: Credentials,
    ) -> Result<Self, AgentError> {
        if stores.is_empty() {
            return Err(AgentError::NoStores);
        }
        offsite_identity::private::create_private_dir(data_dir).map_err(|source| {
            AgentError::DataDir {
                path: data_dir.to_path_buf(),
                source,
            }
        })?;
        let fat = LocalFat::open(data_dir)?;
        let identity = identity_key::load_or_create(data_dir)?;
        Ok(Self {
            vendor: Arc::new(Vendor::new(vendor, stores, fat, credentials, identity)),
        })
    }

    /// Sets every wait and the read buffers (`VendorConfig::limits`).
    pub fn with_limits(self, limits: Limits) -> Self {
        self.vendor.set_limits(limits);
        self
    }

    /// Serves `offsite.vendor.Vendor` on `listener` until `shutdown` resolves.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let service = VendorServer::new(VendorService::new(Arc::clone(&self.vendor)))
            .max_decoding_message_size(MAX_STREAM_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let admin = VendorAdminServer::new(AdminService::new(Arc::clone(&self.vendor)))
            .max_decoding_message_size(MAX_ADMIN_REQUEST_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        tracing::info!(vendor = %self.vendor.id(), address = ?listener.local_addr().ok(), "vendor agent serving over mutual TLS");
        offsite_identity::server::server(VENDOR_CALL_TIMEOUT)
            .tls_config(self.vendor.credentials().server_tls())?
            .add_service(service)
            .add_service(admin)
            .serve_with_incoming_shutdown(offsite_identity::incoming(listener), shutdown)
            .await
    }

    /// Registers with the coordinator group and reports capacity forever;
    /// drop the future to stop.
    pub fn registration(&self, config: &VendorConfig) -> impl Future<Output = ()> + Send + 'static {
        let registration = Registration {
            address: config.advertised_address(),
            region: config.region.clone(),
            network_bytes_per_sec: config.network_bytes_per_sec,
            prices: offsite_proto::pb::coordinator::Prices {
                storage_micros_per_tib_month: config.storage_price_micros_per_tib_month,
                egress_micros_per_tib: config.egress_price_micros_per_tib,
            },
            coordinators: config.coordinators.clone(),
            report_interval: Duration::from_secs(config.report_interval_secs),
        };
        let drain = draining::run(
            Arc::clone(&self.vendor),
            config.coordinators.clone(),
            Duration::from_secs(config.report_interval_secs),
        );
        let reports = registration::run(Arc::clone(&self.vendor), registration);
        async move {
            // Draining ends when the stores are empty; reporting never does.
            tokio::join!(drain, reports);
        }
    }

    /// Reconciles with the coordinator group and collects garbage forever
    /// (see `crate::reconcile`); `None` when `reconcile_interval_secs` is 0.
    pub fn collection(
        &self,
        config: &VendorConfig,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        (config.reconcile_interval_secs > 0).then(|| {
            let collection = crate::reconcile::Collection {
                coordinators: config.coordinators.clone(),
                every: Duration::from_secs(config.reconcile_interval_secs),
                grace: Duration::from_secs(config.gc_grace_secs),
            };
            crate::reconcile::run(Arc::clone(&self.vendor), collection)
        })
    }

    /// Scrubs the stores forever (`scrub_period_secs`); `None` when
    /// scrubbing is off. Drop the future to stop.
    pub fn scrubber(
        &self,
        config: &VendorConfig,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        let policy = config.scrub()?;
        Some(Arc::clone(&self.vendor).scrub_forever(policy))
    }

    /// Sets the coordinator group's grant keys `(key_id, public key)`, as
    /// the registration loop does from the group's answers (tests without a
    /// coordinator call it directly).
    pub fn set_grant_keys(
        &self,
        keys: &[(u32, Vec<u8>)],
    ) -> Result<(), offsite_proto::signing::SignatureError> {
        self.vendor.set_grant_keys(keys).map(drop)
    }

    /// The public half of the identity key that signs this vendor's receipts.
    pub fn identity_public_key(&self) -> [u8; 32] {
        self.vendor.identity_public_key()
    }

    /// Bytes of portions this vendor holds, as its local FAT counts them.
    pub fn stored_bytes(&self) -> u64 {
        self.vendor.stored_bytes()
    }
}
