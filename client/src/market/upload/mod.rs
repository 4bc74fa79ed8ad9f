//! Uploading portions: reservations, routes, resends and the final FAT.
//!
//! The uploader reserves a round of bytes (estimated from what the backup
//! still has to read), probes the candidates, and streams each portion to a
//! route of R distinct vendors, a bounded number of portions in flight. Each
//! missing receipt sends that copy to another candidate (a route of 1), up to
//! a bounded number of attempts. When a portion no longer fits the room left,
//! the portions so far are committed without a snapshot and a new round is
//! reserved; the last commit carries the snapshot record. A round is also
//! committed once it holds `checkpoint_bytes`, and the blob index of its
//! portions appended to the resume journal, so an interrupted backup resumes
//! without sending them again.
//!
//! While a round is open a task renews its lease (see [`lease`]), whatever
//! the backup is busy with. If a renewal is refused because the lease
//! already ran out (the machine slept, say), no new portion starts in the
//! round; the coordinators still commit what it stored while the vendors
//! have room for it.

mod copies;
mod lease;
mod ledger;

use offsite_proto::limits::MAX_PORTIONS_PER_COMMIT;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use offsite_proto::{
    PortionId, PortionPlacement, Receipt, RequestId, ReservationId, RoutingHeader, SnapshotRecord,
    TenantId, VendorId, VendorRef,
};
use tokio::task::JoinSet;

use crate::config::PriceLimits;
use crate::estimate::Remaining;
use crate::format::portion::Portion;
use crate::local::resume::{Committed, Journal};
use crate::market::coordinator::{Coordinator, CoordinatorError};
use crate::market::probe::{probe_all, rank};
use crate::market::vendor::{StoreOutcome, VendorError, VendorPool};
use lease::Lease;
use ledger::{Ledger, Offer};

/// Portions being uploaded at once.
const MAX_IN_FLIGHT: usize = 2;
/// Largest round reserved at once.
const ROUND_MAX_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Sends of one portion (first route plus resends) beyond its replication.
const EXTRA_SENDS: usize = 4;
/// Times a round is re-reserved larger when it cannot route one portion.
const GROW_ATTEMPTS: u32 = 4;
/// How long a round waits for the backup's size estimate before sizing
/// itself on a guess (a round that turns out too small is committed and
/// another reserved).
const ESTIMATE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

/// Why an upload could not finish; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Coordinator(#[from] CoordinatorError),
    #[error("only {usable} of the {offered} candidate vendors answered the probe with room; {needed} are needed at replication {needed}; retry later or lower `replication`")]
    TooFewVendors {
        usable: usize,
        offered: usize,
        needed: usize,
    },
    #[error("the reservation cannot hold a portion of {size} bytes on {replication} vendors even after growing it; the marketplace is too full, retry later")]
    NoRoom { size: u64, replication: usize },
    #[error("portion {portion} has {held} of {replication} copies after {sends} sends; last error: {last}; retry the backup later")]
    CopiesMissing {
        portion: PortionId,
        held: usize,
        replication: usize,
        sends: usize,
        last: String,
    },
    #[error("an upload task failed: {0}")]
    Task(String),
}

/// How to upload.
#[derive(Debug, Clone)]
pub struct UploadSettings {
    pub tenant: TenantId,
    pub replication: usize,
    pub piece_bytes: u64,
    /// Commit the round once its portions hold this many bytes.
    pub checkpoint_bytes: u64,
    /// The most the tenant pays; every round's reservation carries it.
    pub limits: PriceLimits,
    /// Where committed portions are recorded until the snapshot is committed.
    pub journal: Option<Journal>,
}

/// What the upload did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadStats {
    /// Portion bytes sent, once per copy.
    pub bytes_uploaded: u64,
    pub portions: u64,
    pub reservations: u64,
}

/// One open reservation.
struct Round {
    id: ReservationId,
    /// Renews the lease until the round is dropped; holds its store grants.
    lease: Lease,
    ledger: Ledger,
    used: bool,
    /// Bytes of the portions started in this round.
    started: u64,
    /// Portions started in this round: its commit names at most
    /// `MAX_PORTIONS_PER_COMMIT`.
    portions: usize,
}

/// A portion not yet held by R vendors.
struct Pending {
    portion: Portion,
    receipts: Vec<Receipt>,
    tried: HashSet<VendorId>,
    in_flight: usize,
    sends: usize,
    last_error: String,
}

/// The outcome of one send to one route.
struct Sent {
    portion: PortionId,
    route: Vec<VendorRef>,
    result: Result<StoreOutcome, VendorError>,
}

/// Uploads portions and commits them; see the module docs.
pub struct Uploader {
    coordinator: Arc<Coordinator>,
    pool: VendorPool,
    settings: UploadSettings,
    /// Bytes the backup still expects to read, to size the next round.
    remaining: Arc<Remaining>,
    round: Option<Round>,
    tasks: JoinSet<Sent>,
    pending: HashMap<PortionId, Pending>,
    placed: Vec<PortionPlacement>,
    /// The blobs of each placed portion, for the resume journal.
    placed_blobs: Vec<Committed>,
    bad: HashSet<VendorId>,
    stats: UploadStats,
}

fn request_id() -> RequestId {
    // 32 hex digits are always a valid request id.
    RequestId::new(hex::encode(rand::random::<[u8; 16]>()))
        .unwrap_or_else(|_| unreachable!("hex is a valid request id"))
}

impl Uploader {
    pub fn new(
        coordinator: Arc<Coordinator>,
        pool: VendorPool,
        settings: UploadSettings,
        remaining: Arc<Remaining>,
    ) -> Self {
        Self {
            coordinator,
            pool,
            settings,
            remaining,
            round: None,
            tasks: JoinSet::new(),
            pending: HashMap::new(),
            placed: Vec::new(),
            placed_blobs: Vec::new(),
            bad: HashSet::new(),
            stats: UploadStats::default(),
        }
    }

    /// Starts uploading a portion; returns once it is under way (waiting while
    /// too many portions are in flight).
    pub async fn put(&mut self, portion: Portion) -> Result<(), UploadError> {
        let size = portion.bytes.len() as u64;
        let mut grow = 2u64;
        let mut attempts = 0;
        loop {
            while self.pending.len() >= MAX_IN_FLIGHT {
                self.wait_one().await?;
            }
            let checkpoint = self.settings.checkpoint_bytes;
            let full = self.round.as_ref().is_some_and(|r| {
                r.lease.lapsed() || r.started >= checkpoint || r.portions >= MAX_PORTIONS_PER_COMMIT
            });
            if full {
                self.close_round(None).await?;
            }
            if self.round.is_none() {
                self.open_round(size, size.saturating_mul(grow)).await?;
            }
            let Some(round) = self.round.as_mut() else {
                continue;
            };
            let no_one = HashSet::new();
            if let Some(route) = round.ledger.route(size, self.settings.replication, &no_one) {
                round.used = true;
                round.started += size;
                round.portions += 1;
                self.start(portion, route);
                return Ok(());
            }
            if round.used {
                self.close_round(None).await?;
                continue;
            }
            attempts += 1;
            if attempts > GROW_ATTEMPTS {
                return Err(UploadError::NoRoom {
                    size,
                    replication: self.settings.replication,
                });
            }
            self.release_round().await;
            grow = grow.saturating_mul(4);
        }
    }

    /// Waits for every portion, then commits the last round with the snapshot.
    pub async fn finish(mut self, snapshot: SnapshotRecord) -> Result<UploadStats, UploadError> {
        self.close_round(Some(snapshot)).await?;
        Ok(self.stats)
    }

    /// Waits for every portion, then commits the last round without a
    /// snapshot (a repack's new portions; the snapshots are rewritten after).
    pub async fn finish_portions(mut self) -> Result<UploadStats, UploadError> {
        self.close_round(None).await?;
        Ok(self.stats)
    }

    /// Stops every upload and releases the open reservation.
    pub async fn abort(mut self) {
        self.tasks.abort_all();
        self.release_round().await;
    }

    async fn open_round(&mut self, size: u64, min_bytes: u64) -> Result<(), UploadError> {
        let wanted = self
            .remaining
            .left(ESTIMATE_PATIENCE)
            .await
            .saturating_add(size)
            .min(ROUND_MAX_BYTES);
        let mut bytes = wanted.max(min_bytes);
        let replication = self.settings.replication as u32;
        let reservation = loop {
            match self
                .coordinator
                .reserve(&request_id(), bytes, replication, self.settings.limits)
                .await
            {
                Ok(reservation) => break reservation,
                Err(e) if e.is_capacity() && bytes > min_bytes => {
                    tracing::info!(bytes, "not enough capacity for the round; asking for less");
                    bytes = (bytes / 2).max(min_bytes);
                }
                Err(e) => return Err(e.into()),
            }
        };
        self.stats.reservations += 1;
        let vendors: Vec<VendorRef> = reservation
            .candidates
            .iter()
            .map(|c| c.vendor.clone())
            .filter(|v| !self.bad.contains(&v.id))
            .collect();
        let ranked: Vec<VendorRef> = rank(probe_all(&self.pool, &vendors).await, true)
            .into_iter()
            .map(|p| p.vendor)
            .collect();
        tracing::info!(
            bytes,
            candidates = vendors.len(),
            usable = ranked.len(),
            "reserved a round"
        );
        if ranked.len() < self.settings.replication {
            let _ = self.coordinator.release(reservation.id).await;
            return Err(UploadError::TooFewVendors {
                usable: ranked.len(),
                offered: reservation.candidates.len(),
                needed: self.settings.replication,
            });
        }
        let offers = reservation
            .candidates
            .iter()
            .map(|c| {
                let offer = Offer {
                    room: c.reserved_bytes,
                    storage_price: c.storage_price_micros_per_tib_month,
                };
                (c.vendor.id.clone(), offer)
            })
            .collect();
        self.round = Some(Round {
            id: reservation.id,
            lease: Lease::keep(Arc::clone(&self.coordinator), &reservation),
            ledger: Ledger::new(ranked, offers),
            used: false,
            started: 0,
            portions: 0,
        });
        Ok(())
    }

    async fn release_round(&mut self) {
        if let Some(round) = self.round.take() {
            if let Err(e) = self.coordinator.release(round.id).await {
                tracing::warn!(reservation = %round.id, error = %e, "could not release the reservation; its lease will run out");
            }
        }
    }

    /// Waits for every portion of the round, then commits it.
    async fn close_round(&mut self, snapshot: Option<SnapshotRecord>) -> Result<(), UploadError> {
        while !self.pending.is_empty() {
            self.wait_one().await?;
        }
        let Some(round) = self.round.take() else {
            return Ok(());
        };
        if self.placed.is_empty() && snapshot.is_none() {
            self.round = Some(round);
            self.release_round().await;
            return Ok(());
        }
        let placed = std::mem::take(&mut self.placed);
        let blobs = std::mem::take(&mut self.placed_blobs);
        let count = placed.len();
        let last = snapshot.is_some();
        let committed = self
            .coordinator
            .commit(&request_id(), round.id, placed, snapshot)
            .await?;
        tracing::info!(portions = count, committed, "committed a round");
        if let (false, Some(journal)) = (last, self.settings.journal.as_ref()) {
            if let Err(e) = journal.append(&blobs) {
                tracing::warn!(error = %e, "resume journal not written; an interrupted backup will send these portions again");
            }
        }
        Ok(())
    }

    fn start(&mut self, portion: Portion, route: Vec<VendorRef>) {
        let id = portion.id;
        let pending = Pending {
            portion,
            receipts: Vec::new(),
            tried: HashSet::new(),
            in_flight: 0,
            sends: 0,
            last_error: String::new(),
        };
        self.pending.insert(id, pending);
        self.stats.portions += 1;
        self.send(id, route);
    }

    fn send(&mut self, id: PortionId, route: Vec<VendorRef>) {
        let (Some(pending), Some(round)) = (self.pending.get_mut(&id), self.round.as_ref()) else {
            return;
        };
        pending.in_flight += 1;
        pending.sends += 1;
        pending.tried.extend(route.iter().map(|v| v.id.clone()));
        let header = RoutingHeader {
            tenant: self.settings.tenant.clone(),
            portion: id,
            hash: pending.portion.hash,
            size: pending.portion.bytes.len() as u64,
            grants: route.iter().map(|v| round.lease.grant(&v.id)).collect(),
            route: route.clone(),
            piece_size: self.settings.piece_bytes,
            reservation: round.id,
        };
        let data = pending.portion.bytes.clone();
        let pool = self.pool.clone();
        tracing::debug!(portion = %id, route = ?route.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(), "sending portion");
        self.tasks.spawn(async move {
            let result = pool.store(header, data).await;
            Sent {
                portion: id,
                route,
                result,
            }
        });
    }

    async fn wait_one(&mut self) -> Result<(), UploadError> {
        let sent = match self.tasks.join_next().await {
            Some(Ok(sent)) => sent,
            Some(Err(e)) => return Err(UploadError::Task(e.to_string())),
            None => {
                // Nothing in flight yet portions pending: they can get no more copies.
                return match self.pending.keys().next().copied() {
                    Some(id) => Err(self.missing(id)),
                    None => Ok(()),
                };
            }
        };
        let id = sent.portion;
        self.absorb(sent);
        self.top_up(id)
    }
}
