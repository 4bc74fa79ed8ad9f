//! gRPC helpers over the generated clients, as the harness calls a
//! marketplace: over mutual TLS with certificates of that marketplace's CA
//! (kept in its directory's `pki/`), with bounded timeouts, and the few
//! calls the harness polls (the coordinator's `Admin.MarketplaceStatus`,
//! `Vendor.Probe`, `Nas.Capacity`).
//!
//! [`Rpc`] holds the CA of one marketplace and issues (or reuses) the
//! certificates the harness presents: the devnet tenant's for tenant calls,
//! an admin's for status and group status, a vendor's for its NAS devices.
//! Every marketplace the harness starts enters its addresses in an address
//! book, so the free functions ([`fat`], [`vendor`], [`status`], ...) find
//! the right certificates from an address alone.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use offsite_identity::pki::{CertificateAuthority, CA_CERT_FILE, DEFAULT_VALIDITY_DAYS};
use offsite_identity::{Credentials, PeerIdentity, Role, TlsConfig};
use offsite_proto::pb::admin::{
    admin_client::AdminClient, GroupStatusRequest, GroupStatusResponse, MarketplaceStatusRequest,
    MarketplaceStatusResponse,
};
use offsite_proto::pb::coordinator::fat_client::FatClient;
use offsite_proto::pb::nas::{nas_client::NasClient, CapacityRequest, CapacityResponse};
use offsite_proto::pb::vendor::{vendor_client::VendorClient, ProbeRequest, ProbeResponse};
use tonic::transport::Channel;

/// Tenant of the devnet's client (and of the harness's tenant calls).
pub const DEVNET_TENANT: &str = "devnet";
/// Name of the admin certificate the harness uses for status calls.
pub const HARNESS_ADMIN: &str = "harness";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The `pki/` directory of a marketplace directory.
pub fn pki_dir(dir: &Path) -> PathBuf {
    dir.join("pki")
}

/// The certificates of one marketplace, as the harness uses them. Cheap to
/// clone.
#[derive(Clone)]
pub struct Rpc {
    inner: Arc<Inner>,
}

struct Inner {
    pki: PathBuf,
    ca: CertificateAuthority,
    tenant: Credentials,
    admin: Credentials,
    /// One issue at a time, so two threads never write the same files.
    issuing: Mutex<()>,
}

impl std::fmt::Debug for Rpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rpc").field("pki", &self.inner.pki).finish()
    }
}

impl Rpc {
    /// The marketplace CA in `pki` (created there if absent), with the
    /// devnet tenant's and the harness admin's certificates.
    pub fn open(pki: &Path) -> Result<Rpc> {
        let ca = if pki.join(CA_CERT_FILE).exists() {
            CertificateAuthority::load(pki)?
        } else {
            CertificateAuthority::init(pki)?
        };
        Ok(Rpc {
            inner: Arc::new(Inner {
                pki: pki.to_path_buf(),
                tenant: issue_or_load(pki, &ca, Role::Tenant, DEVNET_TENANT)?,
                admin: issue_or_load(pki, &ca, Role::Admin, HARNESS_ADMIN)?,
                ca,
                issuing: Mutex::new(()),
            }),
        })
    }

    /// The `[tls]` section for `role`/`name` in this marketplace: its files
    /// under `pki/`, issued on first use.
    pub fn tls(&self, role: Role, name: &str) -> Result<TlsConfig> {
        let _one = self
            .inner
            .issuing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        tls_files(&self.inner.pki, &self.inner.ca, role, name)
    }

    /// Credentials for `role`/`name`, issued on first use.
    pub fn credentials(&self, role: Role, name: &str) -> Result<Credentials> {
        Ok(Credentials::load(&self.tls(role, name)?)?)
    }

    /// The devnet tenant's credentials.
    pub fn tenant(&self) -> &Credentials {
        &self.inner.tenant
    }

    /// The harness admin's credentials.
    pub fn admin(&self) -> &Credentials {
        &self.inner.admin
    }

    /// This marketplace's CA (tests issue odd certificates with it).
    pub fn ca(&self) -> &CertificateAuthority {
        &self.inner.ca
    }

    /// A `Fat` client of the coordinator at `addr`, as the devnet tenant.
    pub async fn fat(&self, addr: SocketAddr) -> Result<FatClient<Channel>> {
        Ok(FatClient::new(
            channel_as(self.tenant(), addr, Role::Coordinator).await?,
        ))
    }

    /// A `Vendor` client of the vendor agent at `addr`, as the devnet tenant.
    pub async fn vendor(&self, addr: SocketAddr) -> Result<VendorClient<Channel>> {
        Ok(VendorClient::new(
            channel_as(self.tenant(), addr, Role::Vendor).await?,
        ))
    }

    /// The coordinator's marketplace status, asked as the harness admin.
    pub async fn status(&self, coordinator: SocketAddr) -> Result<MarketplaceStatusResponse> {
        let channel = channel_as(self.admin(), coordinator, Role::Coordinator).await?;
        let response = AdminClient::new(channel)
            .max_decoding_message_size(offsite_proto::limits::MAX_MESSAGE_BYTES)
            .marketplace_status(MarketplaceStatusRequest {})
            .await
            .with_context(|| format!("Admin.MarketplaceStatus at {coordinator} failed"))?;
        Ok(response.into_inner())
    }

    /// The coordinator group as the coordinator at `addr` sees it (members,
    /// leader, term, last applied index, FAT digest), asked as the admin.
    pub async fn group_status(&self, coordinator: SocketAddr) -> Result<GroupStatusResponse> {
        let channel = channel_as(self.admin(), coordinator, Role::Coordinator).await?;
        let response = AdminClient::new(channel)
            .group_status(GroupStatusRequest {})
            .await
            .with_context(|| format!("Admin.GroupStatus at {coordinator} failed"))?;
        Ok(response.into_inner())
    }

    /// Probes the vendor at `addr` with a small payload and checks the echo.
    pub async fn probe(&self, addr: SocketAddr) -> Result<ProbeResponse> {
        let payload = b"devnet-probe".to_vec();
        let response = self
            .vendor(addr)
            .await?
            .probe(ProbeRequest {
                payload: payload.clone(),
            })
            .await
            .with_context(|| format!("Vendor.Probe at {addr} failed"))?
            .into_inner();
        anyhow::ensure!(
            response.payload == payload,
            "vendor at {addr} echoed a different probe payload"
        );
        Ok(response)
    }

    /// The capacity of the NAS device at `addr`, asked as its vendor `vendor`
    /// (a device answers its own vendor only).
    pub async fn nas_capacity(&self, addr: SocketAddr, vendor: &str) -> Result<CapacityResponse> {
        let credentials = self.credentials(Role::Vendor, vendor)?;
        let channel = channel_as(&credentials, addr, Role::Nas).await?;
        let response = NasClient::new(channel)
            .capacity(CapacityRequest {})
            .await
            .with_context(|| format!("Nas.Capacity at {addr} failed"))?;
        Ok(response.into_inner())
    }
}

/// The marketplace of every address the harness started a process at.
fn address_book() -> &'static Mutex<HashMap<SocketAddr, Rpc>> {
    static BOOK: OnceLock<Mutex<HashMap<SocketAddr, Rpc>>> = OnceLock::new();
    BOOK.get_or_init(Mutex::default)
}

/// Enters `addrs` as processes of `rpc`'s marketplace.
pub fn register(rpc: &Rpc, addrs: impl IntoIterator<Item = SocketAddr>) {
    let mut book = address_book()
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    for addr in addrs {
        book.insert(addr, rpc.clone());
    }
}

/// The marketplace the process at `addr` belongs to.
pub fn marketplace_of(addr: SocketAddr) -> Result<Rpc> {
    address_book()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&addr)
        .cloned()
        .with_context(|| {
            format!("{addr} is no process of a marketplace this harness started, so it has no certificate for it")
        })
}

/// `message` as a request of `tenant`. The tenant is the one of the
/// certificate the channel presents (the harness's clients present tenant
/// `devnet`'s), so only that tenant can be named here.
pub fn as_tenant<T>(message: T, tenant: &str) -> Result<tonic::Request<T>> {
    anyhow::ensure!(
        tenant == DEVNET_TENANT,
        "the harness's clients present tenant {DEVNET_TENANT:?}'s certificate; \
         for tenant {tenant:?} connect with Rpc::credentials(Role::Tenant, {tenant:?})"
    );
    Ok(tonic::Request::new(message))
}

/// A `Fat` client of the coordinator at `addr`, as the devnet tenant.
pub async fn fat(addr: SocketAddr) -> Result<FatClient<Channel>> {
    marketplace_of(addr)?.fat(addr).await
}

/// A `Vendor` client of the vendor agent at `addr`, as the devnet tenant.
pub async fn vendor(addr: SocketAddr) -> Result<VendorClient<Channel>> {
    marketplace_of(addr)?.vendor(addr).await
}

/// The coordinator's marketplace status, asked as the harness admin.
pub async fn status(coordinator: SocketAddr) -> Result<MarketplaceStatusResponse> {
    marketplace_of(coordinator)?.status(coordinator).await
}

/// The coordinator group as the coordinator at `addr` sees it.
pub async fn group_status(coordinator: SocketAddr) -> Result<GroupStatusResponse> {
    marketplace_of(coordinator)?.group_status(coordinator).await
}

/// Probes the vendor at `addr` with a small payload and checks the echo.
pub async fn probe(addr: SocketAddr) -> Result<ProbeResponse> {
    marketplace_of(addr)?.probe(addr).await
}

/// A mutual-TLS channel to `addr` presenting `credentials`, expecting any
/// certificate of `server_role` from the same CA (`ROLE.offsite`), with
/// bounded connect and call timeouts.
pub async fn channel_as(
    credentials: &Credentials,
    addr: SocketAddr,
    server_role: Role,
) -> Result<Channel> {
    credentials
        .endpoint(&addr.to_string(), &server_role.dns_name())?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("{}", error_chain(&e)))
        .with_context(|| format!("cannot connect to {addr} over mutual TLS"))
}

pub use offsite_identity::error_chain;

/// A plaintext channel to `addr` (only to show that it is refused).
pub async fn plaintext_channel(addr: SocketAddr) -> Result<Channel> {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {addr}"))
}

/// The files of `role`/`name` under `pki`, issued by `ca` unless both exist.
fn tls_files(pki: &Path, ca: &CertificateAuthority, role: Role, name: &str) -> Result<TlsConfig> {
    let who = PeerIdentity::new(role, name).map_err(anyhow::Error::msg)?;
    let base = pki.join(format!("{role}-{name}"));
    let config = TlsConfig {
        ca: pki.join(CA_CERT_FILE),
        cert: base.with_extension("pem"),
        key: base.with_extension("key"),
    };
    if !(config.cert.exists() && config.key.exists()) {
        let _ = std::fs::remove_file(&config.cert);
        let _ = std::fs::remove_file(&config.key);
        ca.issue(&who, &[], DEFAULT_VALIDITY_DAYS)?
            .write(&base)
            .with_context(|| format!("issuing a certificate for {who}"))?;
    }
    Ok(config)
}

fn issue_or_load(
    pki: &Path,
    ca: &CertificateAuthority,
    role: Role,
    name: &str,
) -> Result<Credentials> {
    let files = tls_files(pki, ca, role, name)?;
    Ok(Credentials::load(&files)?)
}

/// Runs `future` to completion on a fresh single-threaded runtime. Not for use
/// inside another runtime.
pub fn block_on<F: Future>(future: F) -> Result<F::Output> {
    Ok(runtime()?.block_on(future))
}

/// A single-threaded runtime for the harness's blocking calls.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a tokio runtime")
}
