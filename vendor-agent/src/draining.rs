//! The agent's drain loop: while a store of the config is draining, every
//! report interval it moves a bounded number of pieces to the other stores
//! (`vendor::drain`), and when they lack room it asks the coordinator group
//! for burst relief of the bytes that do not fit (once, and again only
//! after that relief is done), so portions move to other vendors and free
//! the room.

use std::sync::Arc;
use std::time::Duration;

use offsite_identity::Role;
use offsite_proto::pb::coordinator::vendor_registry_client::VendorRegistryClient;
use offsite_proto::pb::coordinator::{DepartureStatusRequest, RelieveRequest};

use crate::vendor::Vendor;

/// Pieces moved per round at most (a round is one report interval).
const PIECES_PER_ROUND: u64 = 64;
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Drains until every draining store is empty; stop it by dropping it.
pub(crate) async fn run(vendor: Arc<Vendor>, coordinators: Vec<String>, every: Duration) {
    if vendor.draining().is_empty() {
        return;
    }
    let mut relief_asked = false;
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let round = match vendor.drain_round(PIECES_PER_ROUND).await {
            Ok(round) => round,
            Err(err) => {
                tracing::warn!(%err, "cannot drain stores this round; trying again");
                continue;
            }
        };
        if round.moved_pieces > 0 {
            tracing::info!(
                moved_pieces = round.moved_pieces,
                moved_bytes = round.moved_bytes,
                left_pieces = round.left_pieces,
                "pieces moved off draining stores"
            );
        }
        if round.left_pieces == 0 {
            tracing::info!("every draining store is empty; mark it kind = \"removed\" in the config and restart the agent");
            return;
        }
        if round.stuck_bytes == 0 {
            continue;
        }
        if relief_asked {
            relief_asked = !relief_done(&vendor, &coordinators).await;
            continue;
        }
        match relieve(&vendor, &coordinators, round.stuck_bytes).await {
            Ok(()) => {
                tracing::info!(
                    bytes = round.stuck_bytes,
                    "the other stores lack room for a draining store's pieces; burst relief asked"
                );
                relief_asked = true;
            }
            Err(err) => {
                tracing::warn!(%err, bytes = round.stuck_bytes, "could not ask for burst relief; trying again next round")
            }
        }
    }
}

async fn client(
    vendor: &Vendor,
    coordinator: &str,
) -> anyhow::Result<VendorRegistryClient<tonic::transport::Channel>> {
    let channel = vendor
        .credentials()
        .endpoint(coordinator, &Role::Coordinator.dns_name())?
        .connect_timeout(CALL_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .connect()
        .await?;
    Ok(VendorRegistryClient::new(channel))
}

async fn relieve(vendor: &Vendor, coordinators: &[String], bytes: u64) -> anyhow::Result<()> {
    let mut last = anyhow::anyhow!("no coordinator is configured");
    for coordinator in coordinators {
        let asked = async {
            client(vendor, coordinator)
                .await?
                .relieve(RelieveRequest { bytes })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))
        };
        match asked.await {
            Ok(_) => return Ok(()),
            Err(err) => last = err,
        }
    }
    Err(last)
}

/// Whether the relief asked is done (or gone); unknown counts as not done.
async fn relief_done(vendor: &Vendor, coordinators: &[String]) -> bool {
    for coordinator in coordinators {
        let asked = async {
            client(vendor, coordinator)
                .await?
                .departure_status(DepartureStatusRequest {})
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))
        };
        if let Ok(answer) = asked.await {
            return answer
                .into_inner()
                .relief
                .is_none_or(|r| r.done_unix_ms != 0);
        }
    }
    false
}
