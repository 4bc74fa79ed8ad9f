//! The running coordinator: opens its replica of the FAT (the Raft node),
//! binds the gRPC listener, serves `VendorRegistry`, `Fat`, `Admin` and
//! `Raft` until shut down, initialises the group once if it is the first
//! member, and, on
//! the leader only, releases expired reservation leases and marks vendors
//! whose reports stopped suspect, then down.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use offsite_identity::{Credentials, Role, TlsError};
use offsite_proto::limits::{
    MAX_CONTROL_REQUEST_BYTES, MAX_MESSAGE_BYTES, MAX_TENANT_REQUEST_BYTES,
};
use offsite_proto::pb::admin::admin_server::AdminServer;
use offsite_proto::pb::coordinator::fat_server::FatServer;
use offsite_proto::pb::coordinator::vendor_registry_server::VendorRegistryServer;
use offsite_proto::pb::raft::raft_server::RaftServer;
use offsite_proto::ReservationId;
use tokio::net::TcpListener;

use offsite_identity::config::Invalid;

use offsite_proto::clock::now_unix_ms;

use crate::config::{ConfigError, CoordinatorConfig};

/// The longest one call to a coordinator may take (a forwarded proposal, a
/// Raft snapshot); see `offsite_identity::server` for the other limits.
const COORDINATOR_CALL_TIMEOUT: Duration = Duration::from_secs(300);
use crate::bad_copy_audit::BadCopyAuditor;
use crate::fat::{
    CollectReservations, Command, Departure, LivenessPolicy, Outcome, PlanRepairs, RepairPolicy,
    SetMarketFee, UpdateLiveness,
};
use crate::raft::{RaftService, RaftStore, MAX_RAFT_MESSAGE_BYTES};
use crate::service::{grants, AdminService, FatService, FatServiceConfig, RegistryService};
use crate::store::{FatStore, StoreError};

/// Why the coordinator could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("coordinator config: {0}")]
    InvalidConfig(#[from] Invalid),
    #[error("cannot create the data dir {path}: {source}; check the path and its permissions")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {address}: {source}; is another process using that address?")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// A coordinator whose replica is open and whose listener is bound.
pub struct Coordinator {
    config: CoordinatorConfig,
    store: Arc<RaftStore>,
    listener: TcpListener,
    address: SocketAddr,
    credentials: Credentials,
}

impl Coordinator {
    /// Validates the config, binds the listener and opens the replica.
    pub async fn start(config: CoordinatorConfig) -> Result<Self, CoordinatorError> {
        config.validate()?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| CoordinatorError::Bind {
                    address: config.listen,
                    source,
                })?;
        Self::start_on(config, listener).await
    }

    /// Like [`Coordinator::start`], on a listener the caller bound (tests
    /// bind port 0 first to learn every member's address).
    pub async fn start_on(
        config: CoordinatorConfig,
        listener: TcpListener,
    ) -> Result<Self, CoordinatorError> {
        config.validate()?;
        let address = listener
            .local_addr()
            .map_err(|source| CoordinatorError::Bind {
                address: config.listen,
                source,
            })?;
        let credentials =
            Credentials::load(&config.tls)?.expect_role(Role::Coordinator, "a coordinator")?;
        let dir = config.data_dir.clone();
        offsite_identity::private::create_private_dir(&dir).map_err(|source| {
            CoordinatorError::DataDir {
                path: dir.clone(),
                source,
            }
        })?;
        let store = RaftStore::open(&dir, &config.group(), credentials.clone()).await?;
        Ok(Self {
            config,
            store: Arc::new(store),
            listener,
            address,
            credentials,
        })
    }

    /// The address the listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// This coordinator's replica (for status and tests).
    pub fn store(&self) -> RaftStore {
        (*self.store).clone()
    }

    /// Serves until `shutdown` completes, then finishes in-flight calls and
    /// stops the Raft node.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), CoordinatorError> {
        let sweep_every = Duration::from_secs(self.config.sweep_interval_secs);
        let sweeper = tokio::spawn(sweep(
            Arc::clone(&self.store),
            Sweep {
                every: sweep_every,
                liveness: self.config.liveness(),
                repair: self.config.repair(),
                fee_ppm: self.config.fee_ppm,
                collect_after_ms: self.config.collect_expired_after_ms(),
            },
        ));
        let auditor = self.config.audit().map(|policy| {
            tokio::spawn(crate::audit::audit_loop(
                Arc::clone(&self.store),
                self.credentials.clone(),
                policy,
            ))
        });
        let members = self.config.members(&self.config.advertised(self.address));
        let init_store = Arc::clone(&self.store);
        let init = tokio::spawn(async move {
            if let Err(e) = init_store.initialize(&members).await {
                tracing::error!(error = %e, "cannot initialise the coordinator group");
            }
        });
        let fat_config = FatServiceConfig {
            lease_ms: self.config.lease_ms(),
            placement: self.config.placement(),
        };
        // Each service decodes at most what its largest legal request needs
        // (offsite_proto::limits); answers may be larger.
        let registry = VendorRegistryServer::new(RegistryService::new(Arc::clone(&self.store)))
            .max_decoding_message_size(MAX_CONTROL_REQUEST_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let judge = Arc::new(BadCopyAuditor::new(
            self.credentials.clone(),
            self.config.audit_timeout(),
            crate::audit::SLICE_BYTES,
        ));
        let fat = FatServer::new(FatService::new(Arc::clone(&self.store), fat_config, judge))
            .max_decoding_message_size(MAX_TENANT_REQUEST_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let admin = AdminServer::new(AdminService::new(Arc::clone(&self.store)))
            .max_decoding_message_size(MAX_CONTROL_REQUEST_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let raft = RaftServer::new(RaftService::new((*self.store).clone(), now_unix_ms))
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES);
        let address = self.address;
        let name = &self.credentials.identity().name;
        tracing::info!(%address, node_id = self.config.node_id, %name, data_dir = %self.config.data_dir.display(), "coordinator serving over mutual TLS");
        let result = offsite_identity::server::server(COORDINATOR_CALL_TIMEOUT)
            .tls_config(self.credentials.server_tls())?
            .add_service(registry)
            .add_service(fat)
            .add_service(admin)
            .add_service(raft)
            .serve_with_incoming_shutdown(offsite_identity::incoming(self.listener), shutdown)
            .await;
        for task in [Some(sweeper), Some(init), auditor].into_iter().flatten() {
            task.abort();
            let _ = task.await;
        }
        self.store.shutdown().await;
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

/// What the leader's sweep does, and how often.
struct Sweep {
    every: Duration,
    liveness: LivenessPolicy,
    repair: RepairPolicy,
    fee_ppm: u32,
    /// How long after its lease an expired reservation is collected.
    collect_after_ms: u64,
}

/// On the leader, every `every`: releases reservations whose lease ran out
/// and collects those that ran out long enough ago, proposes the liveness
/// of vendors whose report age crossed a threshold, opens repairs and sets
/// the fee, stamping the leader's time into each command.
async fn sweep<S: FatStore>(store: Arc<S>, policy: Sweep) {
    let Sweep {
        every,
        liveness,
        repair,
        fee_ppm,
        collect_after_ms,
    } = policy;
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if !store.is_leader() {
            continue;
        }
        if let Err(e) = grants::ensure_key(&*store).await {
            tracing::warn!(error = %e, "could not install the first grant key; trying again at the next sweep");
        }
        expire_leases(&*store).await;
        collect_reservations(&*store, collect_after_ms).await;
        update_liveness(&*store, liveness).await;
        settle_departures(&*store).await;
        plan_repairs(&*store, repair).await;
        set_market_fee(&*store, fee_ppm).await;
    }
}

/// Writes the leader's configured fee into the FAT when it differs.
async fn set_market_fee<S: FatStore>(store: &S, fee_ppm: u32) {
    if store.read_local(|fat| fat.market_fee_ppm()) == fee_ppm {
        return;
    }
    let command = Command::SetMarketFee(SetMarketFee {
        fee_ppm,
        now_unix_ms: now_unix_ms(),
    });
    match store.propose(command).await {
        Ok(_) => tracing::info!(
            fee_ppm,
            "the marketplace's fee is set from this leader's config"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "could not set the marketplace's fee; trying again at the next sweep")
        }
    }
}

/// Completes the exits and burst reliefs whose vendors the FAT needs no
/// more of (exits) or that hold no more than asked (reliefs).
async fn settle_departures<S: FatStore>(store: &S) {
    if !store.read_local(|fat| fat.settle_due()) {
        return;
    }
    let command = Command::Departure(Departure::Settle {
        now_unix_ms: now_unix_ms(),
    });
    match store.propose(command).await {
        Ok(Outcome::Settled(settled)) => {
            for vendor in settled.exits {
                tracing::info!(%vendor, "exit completed: the vendor holds nothing the FAT needs");
            }
            for vendor in settled.reliefs {
                tracing::info!(%vendor, "burst relief done: the vendor holds no more than asked");
            }
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "could not settle exits and reliefs; trying again at the next sweep")
        }
    }
}

/// Opens repairs for copies on vendors down too long or offering less than
/// they hold.
async fn plan_repairs<S: FatStore>(store: &S, policy: RepairPolicy) {
    let now = now_unix_ms();
    let repairs = store.read_local(move |fat| fat.repairs_due(now, &policy, ReservationId::random));
    if repairs.is_empty() {
        return;
    }
    let command = Command::PlanRepairs(PlanRepairs {
        repairs,
        now_unix_ms: now,
    });
    match store.propose(command).await {
        Ok(Outcome::RepairsPlanned { opened }) => {
            tracing::info!(
                opened,
                "repairs opened: copies on leaving vendors are made again elsewhere"
            );
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "could not open repairs; planning again at the next sweep")
        }
    }
}

async fn expire_leases<S: FatStore>(store: &S) {
    let now = now_unix_ms();
    if !store.read_local(move |fat| fat.has_expired_leases(now)) {
        return;
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

/// Ends the late-commit chance of reservations that expired `after_ms` ago,
/// so vendors may delete what they stored (`fat::gc`).
async fn collect_reservations<S: FatStore>(store: &S, after_ms: u64) {
    let now = now_unix_ms();
    let ids = store.read_local(move |fat| fat.collectable(now, after_ms));
    if ids.is_empty() {
        return;
    }
    let command = Command::CollectReservations(CollectReservations {
        ids,
        now_unix_ms: now,
    });
    match store.propose(command).await {
        Ok(Outcome::ReservationsCollected { collected }) if collected > 0 => {
            tracing::info!(
                collected,
                "collected expired reservations: vendors delete what they stored"
            );
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "could not collect expired reservations; trying again at the next sweep")
        }
    }
}

async fn update_liveness<S: FatStore>(store: &S, policy: LivenessPolicy) {
    let now = now_unix_ms();
    let changes = store.read_local(move |fat| fat.liveness_changes(now, &policy));
    if changes.is_empty() {
        return;
    }
    let command = Command::UpdateLiveness(UpdateLiveness {
        changes,
        now_unix_ms: now,
    });
    match store.propose(command).await {
        Ok(Outcome::LivenessUpdated { changed }) => {
            for (vendor, liveness) in changed {
                tracing::info!(%vendor, liveness = liveness.as_str(), "vendor reports stopped; liveness changed");
            }
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "could not update vendor liveness; trying again at the next sweep")
        }
    }
}
