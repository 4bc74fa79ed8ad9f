//! Keeping the coordinator group informed: the vendor registers (trying each
//! coordinator address in turn, with capped backoff) and then reports its
//! capacity every `report_interval_secs`; offered = the sum over its stores,
//! stored = what its local FAT holds. A failed report sends it back to
//! registering, which also finds another coordinator if this one went away.

use std::sync::Arc;
use std::time::Duration;

use offsite_proto::limits::MAX_MESSAGE_BYTES;
use offsite_proto::pb::coordinator::{
    vendor_registry_client::VendorRegistryClient, CapacityReport, RegisterVendorRequest,
};
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use crate::service::Shared;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What the vendor tells the coordinator about itself.
#[derive(Debug, Clone)]
pub(crate) struct Registration {
    pub address: String,
    pub region: String,
    pub network_bytes_per_sec: u64,
    pub coordinators: Vec<String>,
    pub report_interval: Duration,
}

type Client = VendorRegistryClient<Channel>;

/// Registers and reports forever; stop it by dropping the future.
pub(crate) async fn run(shared: Arc<Shared>, registration: Registration) {
    loop {
        let (mut client, coordinator) = register(&shared, &registration).await;
        loop {
            tokio::time::sleep(registration.report_interval).await;
            if let Err(status) = report(&shared, &mut client).await {
                tracing::warn!(
                    %coordinator, code = ?status.code(), message = status.message(),
                    "capacity report failed; registering again"
                );
                break;
            }
        }
    }
}

/// Offered bytes (sum over stores) and stored bytes (local FAT total).
async fn capacity(shared: &Shared) -> (u64, u64) {
    let offered = shared
        .capacities()
        .await
        .iter()
        .map(|c| c.offered_bytes)
        .fold(0u64, u64::saturating_add);
    (offered, shared.fat.stored_bytes())
}

async fn register(shared: &Shared, registration: &Registration) -> (Client, String) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        for coordinator in &registration.coordinators {
            match register_at(shared, registration, coordinator).await {
                Ok(client) => {
                    tracing::info!(%coordinator, vendor = %shared.vendor, "registered with the coordinator");
                    return (client, coordinator.clone());
                }
                Err(status) => tracing::warn!(
                    %coordinator, code = ?status.code(), message = status.message(),
                    "registration failed; trying the next coordinator"
                ),
            }
        }
        tracing::warn!(retry_in = ?backoff, "no coordinator accepted the registration");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn register_at(
    shared: &Shared,
    registration: &Registration,
    coordinator: &str,
) -> Result<Client, Status> {
    let endpoint = Endpoint::from_shared(format!("http://{coordinator}"))
        .map_err(|e| Status::invalid_argument(format!("bad coordinator address: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| Status::unavailable(format!("cannot connect: {e}")))?;
    let mut client =
        VendorRegistryClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let (offered_bytes, _) = capacity(shared).await;
    client
        .register(RegisterVendorRequest {
            vendor_id: shared.vendor.to_string(),
            address: registration.address.clone(),
            region: registration.region.clone(),
            offered_bytes,
            network_bytes_per_sec: registration.network_bytes_per_sec,
            // Filled with the vendor's ed25519 key in the trust issue.
            identity_key: Vec::new(),
        })
        .await?;
    Ok(client)
}

async fn report(shared: &Shared, client: &mut Client) -> Result<(), Status> {
    let (offered_bytes, stored_bytes) = capacity(shared).await;
    client
        .report_capacity(CapacityReport {
            vendor_id: shared.vendor.to_string(),
            offered_bytes,
            stored_bytes,
        })
        .await?;
    tracing::debug!(offered_bytes, stored_bytes, "capacity reported");
    Ok(())
}
