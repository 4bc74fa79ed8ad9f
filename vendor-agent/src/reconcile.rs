//! Garbage collection's rhythm: every `reconcile_interval_secs` the vendor
//! reconciles its local FAT with the coordinator group
//! (`offsite_proto::reconcile`: digests, then the buckets that differ) and
//! sweeps its stores for pieces no record names. Something found to be
//! garbage is deleted only when a later round finds it so again, at least
//! `gc_grace_secs` after the first, and (for a copy) still stored under
//! the same reservation: a copy stored again meanwhile starts over.
//! Portions the group places here that the vendor lacks are reported as
//! bad copies with the next capacity report (see `vendor::scrub`), so they
//! are made again elsewhere.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use offsite_proto::limits::MAX_RECONCILE_HELD;
use offsite_proto::pb::coordinator::ReconcileRequest;
use offsite_proto::reconcile::Held;
use offsite_proto::{PieceId, PortionDeletion, PortionId, ReservationId, TenantId};
use tokio::time::Instant;
use tonic::Status;

use crate::registration::{connect, Client};
use crate::vendor::Vendor;

/// A reconciliation reads the whole FAT on the leader; it may take longer
/// than a report.
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a garbage copy's deletion waits for a store of it under way.
const DELETE_WAIT: Duration = Duration::from_secs(5);

/// When the vendor collects garbage.
#[derive(Debug, Clone)]
pub(crate) struct Collection {
    pub coordinators: Vec<String>,
    pub every: Duration,
    pub grace: Duration,
}

/// What one round found and did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    /// Buckets whose digests differed from the group's.
    pub differing: usize,
    /// Copies the group found unneeded (deleted or waiting out the grace).
    pub unneeded: usize,
    pub copies_deleted: usize,
    /// Portions placed here that the vendor does not hold.
    pub missing: usize,
    pub strays: usize,
    pub strays_deleted: usize,
}

/// Garbage seen, with when first, kept between rounds.
#[derive(Default)]
struct Seen {
    copies: HashMap<(TenantId, PortionId), (Option<ReservationId>, Instant)>,
    strays: HashMap<(u32, PieceId), Instant>,
    /// Rounds so far: where round two starts among the differing buckets.
    rounds: usize,
}

/// Reconciles every `collection.every`, forever; drop it to stop.
pub(crate) async fn run(vendor: Arc<Vendor>, collection: Collection) {
    let mut seen = Seen::default();
    let mut client: Option<Client> = None;
    let mut next = 0usize;
    let mut ticks = tokio::time::interval_at(Instant::now() + collection.every, collection.every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if client.is_none() {
            let coordinator = &collection.coordinators[next % collection.coordinators.len()];
            next += 1;
            match connect(&vendor, coordinator, RECONCILE_TIMEOUT).await {
                Ok(c) => client = Some(c),
                Err(status) => {
                    tracing::warn!(%coordinator, message = status.message(), "cannot reach a coordinator to reconcile; trying the next one next round");
                    continue;
                }
            }
        }
        let Some(c) = client.as_mut() else { continue };
        match round(&vendor, c, &mut seen, collection.grace).await {
            Ok(done) if done != Collected::default() => {
                tracing::info!(?done, "reconciled with the coordinator group");
            }
            Ok(_) => tracing::debug!("reconciled: nothing to collect"),
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "reconciliation failed; trying again next round");
                client = None;
            }
        }
    }
}

/// One round: copies, then stray pieces.
async fn round(
    vendor: &Arc<Vendor>,
    client: &mut Client,
    seen: &mut Seen,
    grace: Duration,
) -> Result<Collected, Status> {
    let mut done = Collected::default();
    // Stray pieces are swept whether or not the group answers.
    let copies = collect_copies_round(vendor, client, seen, grace, &mut done).await;
    collect_strays(vendor, seen, grace, &mut done).await;
    copies.map(|()| done)
}

/// Rounds one and two for the copies.
async fn collect_copies_round(
    vendor: &Arc<Vendor>,
    client: &mut Client,
    seen: &mut Seen,
    grace: Duration,
    done: &mut Collected,
) -> Result<(), Status> {
    let local = Arc::clone(vendor);
    let digests = tokio::task::spawn_blocking(move || local.holding_digests())
        .await
        .map_err(|e| Status::internal(format!("digest task failed: {e}")))?
        .map_err(|e| Status::internal(e.to_string()))?;
    let differing = client
        .reconcile(ReconcileRequest {
            vendor_id: vendor.id().to_string(),
            digests: digests.to_wire(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .differing;
    done.differing = differing.len();
    if differing.is_empty() {
        seen.copies.clear();
        return Ok(());
    }
    collect_copies(vendor, client, seen, grace, differing, done).await
}

async fn collect_copies(
    vendor: &Arc<Vendor>,
    client: &mut Client,
    seen: &mut Seen,
    grace: Duration,
    differing: Vec<u32>,
    done: &mut Collected,
) -> Result<(), Status> {
    let local = Arc::clone(vendor);
    let start = seen.rounds;
    seen.rounds = seen.rounds.wrapping_add(1);
    let holdings = tokio::task::spawn_blocking(move || local.holdings_in(&differing, start))
        .await
        .map_err(|e| Status::internal(format!("holdings task failed: {e}")))?
        .map_err(|e| Status::internal(e.to_string()))?;
    let stored_under: HashMap<(TenantId, PortionId), Option<ReservationId>> = holdings
        .held
        .iter()
        .map(|h| ((h.tenant.clone(), h.portion), h.reservation))
        .collect();
    let answer = client
        .reconcile(ReconcileRequest {
            vendor_id: vendor.id().to_string(),
            buckets: holdings.buckets.into_iter().collect(),
            partial_buckets: holdings.partial.into_iter().collect(),
            held: holdings.held.into_iter().map(Held::into).collect(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let unneeded = parse_answer("unneeded", answer.unneeded)?;
    let missing = parse_answer("missing", answer.missing)?;
    if answer.missing_cut {
        tracing::warn!(
            listed = missing.len(),
            "the group places more portions here that this vendor lacks than one answer lists; \
             the rest follow in later rounds"
        );
    }
    done.unneeded = unneeded.len();
    for m in &missing {
        match vendor.report_missing(&m.tenant, m.portion) {
            Ok(true) => {
                done.missing += 1;
                tracing::warn!(tenant = %m.tenant, portion = %m.portion, "the coordinator group places a portion here that this vendor does not hold; reported as a bad copy");
            }
            Ok(false) => {}
            Err(err) => tracing::warn!(%err, "cannot check a portion reported missing"),
        }
    }
    let now = Instant::now();
    let mut still = HashMap::new();
    for d in unneeded {
        let key = (d.tenant.clone(), d.portion);
        let Some(reservation) = stored_under.get(&key).copied() else {
            continue;
        };
        match seen.copies.get(&key) {
            Some((r, since)) if *r == reservation && now.duration_since(*since) >= grace => {
                match vendor
                    .delete_garbage(&d.tenant, &d.portion, reservation, DELETE_WAIT)
                    .await
                {
                    Ok(true) => {
                        done.copies_deleted += 1;
                        tracing::info!(tenant = %d.tenant, portion = %d.portion, "deleted a copy nothing needs");
                    }
                    Ok(false) => {}
                    Err(err) => {
                        tracing::warn!(tenant = %d.tenant, portion = %d.portion, %err, "could not delete a copy nothing needs; trying again next round");
                        still.insert(key, (reservation, *since));
                    }
                }
            }
            Some((r, since)) if *r == reservation => {
                still.insert(key, (reservation, *since));
            }
            _ => {
                still.insert(key, (reservation, now));
            }
        }
    }
    seen.copies = still;
    Ok(())
}

/// The coordinator answers at most as many portions as were listed.
fn parse_answer(
    field: &'static str,
    list: Vec<offsite_proto::pb::coordinator::PortionDeletion>,
) -> Result<Vec<PortionDeletion>, Status> {
    if list.len() > MAX_RECONCILE_HELD {
        return Err(Status::invalid_argument(format!(
            "the coordinator answered {} {field} portions, more than were listed",
            list.len()
        )));
    }
    list.into_iter()
        .map(PortionDeletion::try_from)
        .collect::<Result<_, _>>()
        .map_err(|e| Status::invalid_argument(format!("the coordinator's {field}: {e}")))
}

async fn collect_strays(vendor: &Vendor, seen: &mut Seen, grace: Duration, done: &mut Collected) {
    let strays = vendor.stray_pieces().await;
    done.strays = strays.len();
    let now = Instant::now();
    let mut still = HashMap::new();
    for piece in strays {
        match seen.strays.get(&piece) {
            Some(since) if now.duration_since(*since) >= grace => {
                match vendor.delete_stray(piece.0, &piece.1).await {
                    Ok(true) => {
                        done.strays_deleted += 1;
                        tracing::info!(store = piece.0, piece = %piece.1, "deleted a piece no record names");
                    }
                    Ok(false) => {}
                    Err(err) => {
                        tracing::warn!(store = piece.0, piece = %piece.1, %err, "could not delete a stray piece; trying again next round");
                        still.insert(piece, *since);
                    }
                }
            }
            Some(since) => {
                still.insert(piece, *since);
            }
            None => {
                still.insert(piece, now);
            }
        }
    }
    seen.strays = still;
}
