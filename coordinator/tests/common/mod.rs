//! What the coordinator's in-process tests share: one test CA, the `[tls]`
//! files of a coordinator, and clients presenting a tenant's or a vendor's
//! certificate (mutual TLS, as every caller of a coordinator does).

#![allow(dead_code)]

use std::path::Path;
use std::sync::OnceLock;

use offsite_identity::pki::CertificateAuthority;
use offsite_identity::{Credentials, PeerIdentity, Role, TlsConfig};
use offsite_proto::pb::admin::admin_client::AdminClient;
use offsite_proto::pb::coordinator as pb;
use offsite_proto::pb::coordinator::fat_client::FatClient;
use offsite_proto::pb::coordinator::vendor_registry_client::VendorRegistryClient;
use tonic::transport::Channel;
use tonic::{Response, Status};

/// The CA of every certificate in these tests.
pub fn test_ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| CertificateAuthority::generate().unwrap())
}

pub fn credentials(role: Role, name: &str) -> Credentials {
    test_ca()
        .credentials(&PeerIdentity::new(role, name).unwrap())
        .unwrap()
}

/// The `[tls]` files of coordinator `name` in `dir`, written on first use
/// (a restarted coordinator keeps its certificate).
pub fn coordinator_tls(dir: &Path, name: &str) -> TlsConfig {
    let existing = TlsConfig {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("coordinator-{name}.pem")),
        key: dir.join(format!("coordinator-{name}.key")),
    };
    if existing.cert.exists() {
        return existing;
    }
    std::fs::create_dir_all(dir).unwrap();
    test_ca()
        .write_tls(dir, &PeerIdentity::new(Role::Coordinator, name).unwrap())
        .unwrap()
}

/// A channel to the coordinator at `addr` presenting `role`/`name`.
pub async fn channel_as(addr: &str, role: Role, name: &str) -> Channel {
    credentials(role, name)
        .endpoint(addr, &Role::Coordinator.dns_name())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A `Fat` client acting for `tenant`.
pub async fn fat_as(addr: &str, tenant: &str) -> FatClient<Channel> {
    FatClient::new(channel_as(addr, Role::Tenant, tenant).await)
}

/// An `Admin` client presenting `role`/`name`.
pub async fn admin_as(addr: &str, role: Role, name: &str) -> AdminClient<Channel> {
    AdminClient::new(channel_as(addr, role, name).await)
}

/// The `VendorRegistry` of a coordinator, each call made with the
/// certificate of the vendor it names (a vendor speaks only for itself).
#[derive(Clone)]
pub struct Registry {
    addr: String,
}

impl Registry {
    pub fn new(addr: impl Into<String>) -> Self {
        Self { addr: addr.into() }
    }

    async fn client(&self, vendor: &str) -> VendorRegistryClient<Channel> {
        VendorRegistryClient::new(channel_as(&self.addr, Role::Vendor, vendor).await)
    }

    pub async fn register(
        &mut self,
        request: pb::RegisterVendorRequest,
    ) -> Result<Response<pb::RegisterVendorResponse>, Status> {
        self.client(&request.vendor_id)
            .await
            .register(request)
            .await
    }

    pub async fn report_capacity(
        &mut self,
        request: pb::CapacityReport,
    ) -> Result<Response<pb::CapacityReportResponse>, Status> {
        self.client(&request.vendor_id)
            .await
            .report_capacity(request)
            .await
    }
}

/// The identity key of test vendor `name` (derived from its name).
pub fn vendor_key(name: &str) -> offsite_proto::signing::VendorKey {
    offsite_proto::signing::VendorKey::from_secret(blake3::hash(name.as_bytes()).as_bytes())
}

/// `receipt` signed by its vendor's test identity key, for what it stored
/// under `reservation`.
pub fn signed(
    receipt: offsite_proto::pb::common::Receipt,
    reservation: &str,
) -> offsite_proto::pb::common::Receipt {
    let mut domain = offsite_proto::Receipt::try_from(receipt).unwrap();
    let reservation = offsite_proto::ReservationId::parse(reservation).unwrap();
    vendor_key(domain.vendor.as_str()).sign(&mut domain, &reservation);
    domain.into()
}
