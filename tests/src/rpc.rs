//! gRPC helpers over the generated clients: a connected channel with bounded
//! timeouts, requests that name the calling tenant, and the few calls the
//! harness polls (the coordinator's `Fat.Status`, `Vendor.Probe`,
//! `Nas.Capacity`).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use offsite_proto::pb::coordinator::{fat_client::FatClient, StatusRequest, StatusResponse};
use offsite_proto::pb::nas::{nas_client::NasClient, CapacityRequest, CapacityResponse};
use offsite_proto::pb::vendor::{vendor_client::VendorClient, ProbeRequest, ProbeResponse};
use offsite_proto::TENANT_METADATA_KEY;
use tonic::transport::{Channel, Endpoint};

/// Tenant the harness names when it calls the coordinator.
pub const DEVNET_TENANT: &str = "devnet";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A channel to `addr` with bounded connect and call timeouts.
pub async fn channel(addr: SocketAddr) -> Result<Channel> {
    Endpoint::from_shared(format!("http://{addr}"))
        .context("bad endpoint")?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {addr}"))
}

/// `message` as a request made on behalf of `tenant`.
pub fn as_tenant<T>(message: T, tenant: &str) -> Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    let value = tenant
        .parse()
        .with_context(|| format!("tenant {tenant:?} is not a metadata value"))?;
    request.metadata_mut().insert(TENANT_METADATA_KEY, value);
    Ok(request)
}

/// A `Fat` client of the coordinator at `addr`.
pub async fn fat(addr: SocketAddr) -> Result<FatClient<Channel>> {
    Ok(FatClient::new(channel(addr).await?))
}

/// A `Vendor` client of the vendor agent at `addr`.
pub async fn vendor(addr: SocketAddr) -> Result<VendorClient<Channel>> {
    Ok(VendorClient::new(channel(addr).await?))
}

/// The coordinator's marketplace status.
pub async fn status(coordinator: SocketAddr) -> Result<StatusResponse> {
    let response = fat(coordinator)
        .await?
        .status(as_tenant(StatusRequest {}, DEVNET_TENANT)?)
        .await
        .with_context(|| format!("Fat.Status at {coordinator} failed"))?;
    Ok(response.into_inner())
}

/// Probes the vendor at `addr` with a small payload and checks the echo.
pub async fn probe(addr: SocketAddr) -> Result<ProbeResponse> {
    let payload = b"devnet-probe".to_vec();
    let response = vendor(addr)
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

/// The NAS device's capacity.
pub async fn nas_capacity(addr: SocketAddr) -> Result<CapacityResponse> {
    let response = NasClient::new(channel(addr).await?)
        .capacity(CapacityRequest {})
        .await
        .with_context(|| format!("Nas.Capacity at {addr} failed"))?;
    Ok(response.into_inner())
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

/// The coordinator group as the coordinator at `addr` sees it (members,
/// leader, term, last applied index, FAT digest).
pub async fn group_status(
    coordinator: SocketAddr,
) -> Result<offsite_proto::pb::raft::GroupStatusResponse> {
    let mut client =
        offsite_proto::pb::raft::raft_client::RaftClient::new(channel(coordinator).await?);
    let response = client
        .group_status(offsite_proto::pb::raft::GroupStatusRequest {})
        .await
        .with_context(|| format!("Raft.GroupStatus at {coordinator} failed"))?;
    Ok(response.into_inner())
}
