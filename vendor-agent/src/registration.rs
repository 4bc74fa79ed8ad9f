//! Keeping the coordinator group informed: the vendor registers (trying each
//! coordinator address in turn, with capped backoff) and then reports its
//! capacity every `report_interval_secs`; offered = the sum over its stores,
//! stored = what its local FAT holds. A failed report sends it back to
//! registering, with the next coordinator first, so a coordinator that went
//! away (or lost its majority) is left within about one write timeout,
//! before the group turns the vendor suspect.
//! The answer to a report names released portions to delete; the vendor
//! deletes them (pieces, then local FAT entry) and acknowledges them in its
//! next report. It also names copies to send to other vendors
//! (re-replication, see `vendor::copy`); how each ended goes in a later
//! report, and so do the bad copies the scrub found (`vendor::scrub`).

use std::sync::Arc;
use std::time::Duration;

use offsite_identity::Role;
use offsite_proto::limits::{
    MAX_BAD_COPIES_PER_REPORT, MAX_COPIES_PER_REPORT, MAX_MESSAGE_BYTES, MAX_SERVED_PER_REPORT,
};
use offsite_proto::pb::common::GroupKey;
use offsite_proto::pb::coordinator::{
    vendor_registry_client::VendorRegistryClient, CapacityReport, Prices, RegisterVendorRequest,
    ServedFetch,
};
use offsite_proto::{parse_copies, parse_deletions, CopyResult, CopyTask, PortionDeletion};
use tonic::transport::Channel;
use tonic::Status;

use crate::vendor::{Copies, Vendor};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A coordinator answers a registration or a report within its write
/// timeout (5 s by default), with a refusal if it has no majority; one
/// silent a little longer is cut off, and the vendor moves on while it is
/// still up (suspect after 15 s by default).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(6);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What the vendor tells the coordinator about itself.
#[derive(Debug, Clone)]
pub(crate) struct Registration {
    pub address: String,
    pub region: String,
    pub network_bytes_per_sec: u64,
    /// Storage per TiB-month and egress per TiB, in micro-units.
    pub prices: Prices,
    pub coordinators: Vec<String>,
    pub report_interval: Duration,
}

pub(crate) type Client = VendorRegistryClient<Channel>;

/// Registers and reports forever; stop it by dropping the future.
pub(crate) async fn run(vendor: Arc<Vendor>, registration: Registration) {
    // Deletions done and copies ended but not yet acknowledged; kept across
    // failed reports.
    let mut done = Done::default();
    let copies = Copies::default();
    let mut first = 0;
    loop {
        let (mut client, at) = register(&vendor, &registration, first).await;
        let coordinator = &registration.coordinators[at];
        first = at + 1;
        // Reports keep their rhythm however long a report (and the deletions
        // it asks for) takes; a late tick is not followed by a burst.
        let mut ticks = tokio::time::interval_at(
            tokio::time::Instant::now() + registration.report_interval,
            registration.report_interval,
        );
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(status) =
                report(&vendor, &mut client, &mut done, &copies, &registration).await
            {
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
async fn capacity(vendor: &Vendor) -> (u64, u64) {
    let offered = vendor
        .capacities()
        .await
        .iter()
        .map(|c| c.offered_bytes)
        .fold(0u64, u64::saturating_add);
    (offered, vendor.stored_bytes())
}

/// Registers with the first coordinator that accepts, trying them in turn
/// from the one at `first` (wrapping around); returns the client and the
/// index of that coordinator.
async fn register(vendor: &Vendor, registration: &Registration, first: usize) -> (Client, usize) {
    let mut backoff = FIRST_BACKOFF;
    let count = registration.coordinators.len();
    loop {
        for at in (0..count).map(|k| (first + k) % count) {
            let coordinator = &registration.coordinators[at];
            match register_at(vendor, registration, coordinator).await {
                Ok(client) => {
                    tracing::info!(%coordinator, vendor = %vendor.id(), "registered with the coordinator");
                    return (client, at);
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

/// A mutual-TLS client of the coordinator at `coordinator`, whose calls
/// each take at most `timeout`.
pub(crate) async fn connect(
    vendor: &Vendor,
    coordinator: &str,
    timeout: Duration,
) -> Result<Client, Status> {
    let endpoint = vendor
        .credentials()
        .endpoint(coordinator, &Role::Coordinator.dns_name())
        .map_err(|e| Status::invalid_argument(format!("bad coordinator address: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(timeout);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| Status::unavailable(format!("cannot connect: {e}")))?;
    Ok(VendorRegistryClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES))
}

async fn register_at(
    vendor: &Vendor,
    registration: &Registration,
    coordinator: &str,
) -> Result<Client, Status> {
    let mut client = connect(vendor, coordinator, REQUEST_TIMEOUT).await?;
    let (offered_bytes, _) = capacity(vendor).await;
    let answer = client
        .register(RegisterVendorRequest {
            vendor_id: vendor.id().to_string(),
            address: registration.address.clone(),
            region: registration.region.clone(),
            offered_bytes,
            network_bytes_per_sec: registration.network_bytes_per_sec,
            identity_key: vendor.identity_public_key().to_vec(),
            prices: Some(registration.prices),
        })
        .await?
        .into_inner();
    learn_grant_keys(vendor, answer.grant_keys)?;
    Ok(client)
}

/// Most grant keys an answer may carry.
const MAX_GRANT_KEYS: usize = 16;

/// Takes the group's grant keys from an answer (an answer without keys
/// leaves the known ones: the group installs its first key moments after it
/// starts, and the next report brings it).
fn learn_grant_keys(vendor: &Vendor, keys: Vec<GroupKey>) -> Result<(), Status> {
    if keys.is_empty() {
        return Ok(());
    }
    if keys.len() > MAX_GRANT_KEYS {
        return Err(Status::invalid_argument(format!(
            "the coordinator sent {} grant keys, more than {MAX_GRANT_KEYS}",
            keys.len()
        )));
    }
    let keys: Vec<(u32, Vec<u8>)> = keys.into_iter().map(|k| (k.key_id, k.public_key)).collect();
    match vendor.set_grant_keys(&keys) {
        Ok(true) => {
            let ids: Vec<u32> = keys.iter().map(|(id, _)| *id).collect();
            tracing::info!(key_ids = ?ids, "the coordinator group's grant keys changed");
            Ok(())
        }
        Ok(false) => Ok(()),
        Err(e) => Err(Status::invalid_argument(format!(
            "the coordinator's grant keys: {e}"
        ))),
    }
}

/// What the next report acknowledges.
#[derive(Default)]
struct Done {
    deleted: Vec<PortionDeletion>,
    copied: Vec<CopyResult>,
}

/// Reports capacity with the deletions done and copies ended since the last
/// report, starts the copies the coordinator asks for, then does the
/// deletions it asks for (for at most `budget`); they are acknowledged next
/// time.
async fn report(
    vendor: &Arc<Vendor>,
    client: &mut Client,
    done: &mut Done,
    copies: &Copies,
    registration: &Registration,
) -> Result<(), Status> {
    let (budget, prices) = (registration.report_interval, registration.prices);
    let room = MAX_COPIES_PER_REPORT.saturating_sub(done.copied.len());
    done.copied.extend(copies.take_ended(room));
    let (offered_bytes, stored_bytes) = capacity(vendor).await;
    let served = vendor.egress().pending(MAX_SERVED_PER_REPORT);
    // Kept until a report carrying them goes through.
    let bad = vendor.bad_copies().to_report(MAX_BAD_COPIES_PER_REPORT);
    let response = client
        .report_capacity(CapacityReport {
            vendor_id: vendor.id().to_string(),
            offered_bytes,
            stored_bytes,
            deleted: done.deleted.iter().cloned().map(Into::into).collect(),
            copied: done.copied.iter().cloned().map(Into::into).collect(),
            prices: Some(prices),
            served: served
                .iter()
                .map(|(grant, bytes)| ServedFetch {
                    grant: Some(grant.clone().into()),
                    bytes: *bytes,
                })
                .collect(),
            bad_copies: bad.iter().cloned().map(Into::into).collect(),
        })
        .await?
        .into_inner();
    vendor.egress().reported(&served);
    vendor.bad_copies().reported(&bad);
    tracing::debug!(
        offered_bytes,
        stored_bytes,
        acknowledged = done.deleted.len(),
        copied = done.copied.len(),
        "capacity reported"
    );
    done.deleted.clear();
    done.copied.clear();
    learn_grant_keys(vendor, response.grant_keys)?;
    match parse_copies::<_, CopyTask>("copy", response.copy) {
        Ok(tasks) => copies.start(vendor, tasks),
        Err(err) => {
            tracing::warn!(%err, "the coordinator asked for malformed copies; ignoring them")
        }
    }
    let deleted = &mut done.deleted;
    let asked = match parse_deletions("delete", response.delete) {
        Ok(asked) => asked,
        Err(err) => {
            tracing::warn!(%err, "the coordinator asked for malformed deletions; ignoring them");
            return Ok(());
        }
    };
    // Deleting stops after `budget` so the next report (the heartbeat) is
    // not late; what is left is asked again.
    let deadline = tokio::time::Instant::now() + budget;
    for d in asked {
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        // A portion busy with a store is waited for only within the budget.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match vendor.delete_portion(&d.tenant, &d.portion, left).await {
            Ok(held) => {
                tracing::info!(tenant = %d.tenant, portion = %d.portion, held, "released portion deleted");
                deleted.push(d);
            }
            // Left unacknowledged: the coordinator asks again next report.
            Err(err) => tracing::warn!(
                tenant = %d.tenant, portion = %d.portion, %err,
                "released portion not deleted yet; retrying at the next report"
            ),
        }
    }
    Ok(())
}
