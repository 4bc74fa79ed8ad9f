//! Test harness: real vendor agents on 127.0.0.1 port 0 with local stores in
//! temporary directories, and a small client for the vendor service. Every
//! party presents a certificate of one test CA (over mutual TLS); a client
//! of the vendor service presents the certificate of the tenant it acts for.

#![allow(dead_code)]

use std::path::Path;
use std::sync::{Arc, OnceLock};

use offsite_identity::pki::CertificateAuthority;
use offsite_identity::{Credentials, PeerIdentity, Role};

use offsite_proto::limits::{FRAME_BYTES, MAX_MESSAGE_BYTES};
use offsite_proto::pb::vendor::{
    store_frame, vendor_client::VendorClient, DeleteRequest, FetchRequest, StoreFrame,
    StoreResponse,
};
use offsite_proto::signing::{GrantBody, GrantOp, GrantSubject, GroupKey};
use offsite_proto::{
    Grant, Hash, PortionId, ReservationId, RoutingHeader, TenantId, VendorId, VendorRef,
};
use offsite_vendor::{LocalStore, PieceStore, VendorAgent};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::Status;

/// The CA of every certificate in these tests.
pub fn test_ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| CertificateAuthority::generate().unwrap())
}

/// The test coordinator group's grant key (every test vendor knows it).
pub fn group_key() -> GroupKey {
    GroupKey::from_secret(1, &[42; 32])
}

/// A grant of the test group for `op` by `tenant` at `vendor` on `subject`.
pub fn grant(op: GrantOp, tenant: &TenantId, vendor: &VendorId, subject: GrantSubject) -> Grant {
    group_key().grant(&GrantBody {
        op,
        tenant: tenant.clone(),
        vendor: vendor.clone(),
        subject,
        max_bytes: 1 << 40,
        expires_unix_ms: u64::MAX,
        address: String::new(),
    })
}

/// A store grant for `vendor` at its address, as the coordinators sign one.
pub fn store_grant(tenant: &TenantId, vendor: &VendorRef, reservation: ReservationId) -> Grant {
    group_key().grant(&GrantBody {
        op: GrantOp::Store,
        tenant: tenant.clone(),
        vendor: vendor.id.clone(),
        subject: GrantSubject::Reservation(reservation),
        max_bytes: 1 << 40,
        expires_unix_ms: u64::MAX,
        address: vendor.address.clone(),
    })
}

/// Credentials of `role`/`name` from the test CA.
pub fn credentials(role: Role, name: &str) -> Credentials {
    test_ca()
        .credentials(&PeerIdentity::new(role, name).unwrap())
        .unwrap()
}

/// A mutual-TLS channel to `address` as `role`/`name`, expecting a
/// `server` certificate.
pub async fn channel_as(role: Role, name: &str, address: &str, server: Role) -> Channel {
    credentials(role, name)
        .endpoint(address, &server.dns_name())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A vendor agent serving in this process.
pub struct TestVendor {
    pub id: VendorId,
    /// The public half of its identity key (its receipts' key).
    pub identity: [u8; 32],
    pub address: String,
    pub stores: Vec<Arc<LocalStore>>,
    pub store_dirs: Vec<TempDir>,
    _data_dir: TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestVendor {
    pub async fn start(id: &str, store_count: usize) -> Self {
        Self::start_with_idle_timeout(id, store_count, std::time::Duration::from_secs(60)).await
    }

    /// A vendor whose store streams are aborted after `idle` without a frame.
    pub async fn start_with_idle_timeout(
        id: &str,
        store_count: usize,
        idle: std::time::Duration,
    ) -> Self {
        let limits = offsite_vendor::Limits {
            store_idle: idle,
            ..offsite_vendor::Limits::default()
        };
        Self::start_with_limits(id, store_count, limits).await
    }

    /// A vendor with these waits and read buffers.
    pub async fn start_with_limits(
        id: &str,
        store_count: usize,
        limits: offsite_vendor::Limits,
    ) -> Self {
        let store_dirs: Vec<TempDir> = (0..store_count)
            .map(|_| tempfile::tempdir().unwrap())
            .collect();
        let stores: Vec<Arc<LocalStore>> = store_dirs
            .iter()
            .map(|d| Arc::new(LocalStore::open(d.path(), Some(1 << 30), 0.0).unwrap()))
            .collect();
        let dyn_stores: Vec<Arc<dyn PieceStore>> = stores
            .iter()
            .map(|s| Arc::clone(s) as Arc<dyn PieceStore>)
            .collect();
        let data_dir = tempfile::tempdir().unwrap();
        let vendor = VendorId::new(id).unwrap();
        let agent = VendorAgent::new(
            vendor.clone(),
            dyn_stores,
            data_dir.path(),
            credentials(Role::Vendor, id),
        )
        .unwrap()
        .with_limits(limits);
        agent
            .set_grant_keys(&[(1, group_key().public_key().to_vec())])
            .unwrap();
        let identity = agent.identity_public_key();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            agent
                .serve(listener, async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Self {
            id: vendor,
            identity,
            address,
            stores,
            store_dirs,
            _data_dir: data_dir,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn vref(&self) -> VendorRef {
        VendorRef {
            id: self.id.clone(),
            address: self.address.clone(),
        }
    }

    /// Bytes of pieces held over all its stores.
    pub async fn used_bytes(&self) -> u64 {
        let mut used = 0;
        for store in &self.stores {
            used += store.capacity().await.unwrap().used_bytes;
        }
        used
    }

    /// A client acting for tenant `acme`.
    pub async fn client(&self) -> VendorClient<Channel> {
        self.client_as(&tenant("acme")).await
    }

    /// A client presenting `tenant`'s certificate.
    pub async fn client_as(&self, tenant: &TenantId) -> VendorClient<Channel> {
        let channel = channel_as(Role::Tenant, tenant.as_str(), &self.address, Role::Vendor).await;
        VendorClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

/// A `host:port` nobody listens on.
pub async fn dead_address() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().to_string()
}

pub fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

pub fn header(
    tenant: &TenantId,
    route: Vec<VendorRef>,
    data: &[u8],
    piece_size: u64,
) -> RoutingHeader {
    let reservation = ReservationId::random();
    let grants = route
        .iter()
        .map(|v| store_grant(tenant, v, reservation))
        .collect();
    RoutingHeader {
        tenant: tenant.clone(),
        portion: PortionId::random(),
        hash: Hash::of(data),
        size: data.len() as u64,
        route,
        piece_size,
        grants,
        reservation,
    }
}

/// The header frame, then `data` in frames of `FRAME_BYTES`.
pub fn frames(header: RoutingHeader, data: &[u8]) -> Vec<StoreFrame> {
    let mut out = vec![StoreFrame {
        frame: Some(store_frame::Frame::Header(header.into())),
    }];
    out.extend(data.chunks(FRAME_BYTES).map(|chunk| StoreFrame {
        frame: Some(store_frame::Frame::Data(chunk.to_vec().into())),
    }));
    out
}

pub async fn store(
    vendor: &TestVendor,
    header: RoutingHeader,
    data: &[u8],
) -> Result<StoreResponse, Status> {
    store_frames(vendor, frames(header, data)).await
}

pub async fn store_frames(
    vendor: &TestVendor,
    frames: Vec<StoreFrame>,
) -> Result<StoreResponse, Status> {
    // The tenant of the header, if the first frame is one.
    let owner = match frames.first().and_then(|f| f.frame.as_ref()) {
        Some(store_frame::Frame::Header(h)) => TenantId::new(h.tenant_id.clone()).ok(),
        _ => None,
    };
    let mut client = vendor
        .client_as(&owner.unwrap_or_else(|| tenant("acme")))
        .await;
    client
        .store(tokio_stream::iter(frames))
        .await
        .map(|r| r.into_inner())
}

pub async fn fetch(
    vendor: &TestVendor,
    tenant: &TenantId,
    portion: &PortionId,
    offset: u64,
    length: u64,
) -> Result<Vec<u8>, Status> {
    let grant = grant(
        GrantOp::Fetch,
        tenant,
        &vendor.id,
        GrantSubject::Portion(*portion),
    );
    fetch_with(vendor, tenant, portion, offset, length, Some(grant)).await
}

/// A fetch carrying `grant`.
pub async fn fetch_with(
    vendor: &TestVendor,
    tenant: &TenantId,
    portion: &PortionId,
    offset: u64,
    length: u64,
    grant: Option<Grant>,
) -> Result<Vec<u8>, Status> {
    let mut client = vendor.client_as(tenant).await;
    let mut stream = client
        .fetch(FetchRequest {
            tenant_id: tenant.to_string(),
            portion_id: portion.to_string(),
            offset,
            length,
            grant: grant.map(Into::into),
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(frame) = stream.message().await? {
        out.extend_from_slice(&frame.data);
    }
    Ok(out)
}

pub async fn delete(
    vendor: &TestVendor,
    tenant: &TenantId,
    portion: &PortionId,
) -> Result<bool, Status> {
    let mut client = vendor.client_as(tenant).await;
    let response = client
        .delete(DeleteRequest {
            tenant_id: tenant.to_string(),
            portion_id: portion.to_string(),
            grant: Some(
                grant(
                    GrantOp::Delete,
                    tenant,
                    &vendor.id,
                    GrantSubject::Portion(*portion),
                )
                .into(),
            ),
        })
        .await?;
    Ok(response.into_inner().existed)
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}
