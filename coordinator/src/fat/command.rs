//! The commands the FAT applies and the outcomes it returns. Both are serde
//! types: they travel through the replicated log. Time (`now_unix_ms`) and
//! every choice (new ids, chosen candidates) are decided by the caller and
//! carried here, so applying a command is deterministic.

use offsite_proto::{
    Candidate, PortionDeletion, PortionId, PortionPlacement, RequestId, ReservationId, SnapshotId,
    SnapshotRecord, TenantId, VendorId, VendorRef,
};
use serde::{Deserialize, Serialize};

use super::{
    Departure, DepartureStatus, FinishRepairs, GrantSecret, Liveness, MarkBadCopies, PlanRepairs,
    Prices, RecordAudits, Settled, TenantLimits,
};

/// One change to the FAT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    RegisterVendor(RegisterVendor),
    ReportCapacity(ReportCapacity),
    Reserve(Reserve),
    Commit(Commit),
    Release(Release),
    /// Releases every open reservation whose lease ran out by `now_unix_ms`.
    ExpireLeases {
        now_unix_ms: u64,
    },
    Forget(Forget),
    /// The leader's judgement of vendors whose reports stopped.
    UpdateLiveness(UpdateLiveness),
    /// A tenant releases portions no remaining snapshot needs (prune).
    ReleasePortions(ReleasePortions),
    /// A tenant moves snapshots' data to other portions (repack).
    RewriteSnapshots(RewriteSnapshots),
    /// A new grant key for the group (the first one, or a rotation).
    InstallGrantKey(InstallGrantKey),
    /// A tenant's key file, kept for restoring on a new machine.
    StoreTenantKey(StoreTenantKey),
    /// The leader opens repairs of copies on leaving vendors.
    PlanRepairs(PlanRepairs),
    /// A source vendor reports how the copies it was asked for ended.
    FinishRepairs(FinishRepairs),
    /// A tenant extends the lease of an open reservation whose portions are
    /// still on their way. Added after the others: the log names a command
    /// by its place in this list.
    RenewLease(RenewLease),
    /// A vendor's prices for new placements.
    SetVendorPrices(SetVendorPrices),
    /// The marketplace's fee, from the leader's config.
    SetMarketFee(SetMarketFee),
    /// The operator's limits on a tenant.
    SetTenantLimits(SetTenantLimits),
    /// The operator closes the open billing period.
    ClosePeriod(ClosePeriod),
    /// Fetches a vendor served, booked as egress.
    BookEgress(BookEgress),
    /// The leader's round of audits (format version 8).
    RecordAudits(RecordAudits),
    /// The leader ends expired reservations' chance of a late commit, so
    /// vendors may delete what they stored (format version 9).
    CollectReservations(CollectReservations),
    /// Copies found bad: by their vendor's scrub, or by a failed audit
    /// after a tenant reported them (format version 9).
    MarkBadCopies(MarkBadCopies),
    /// A vendor's exit or burst relief, or the leader settling them
    /// (format version 9).
    Departure(Departure),
}

impl Command {
    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::RegisterVendor(_) => "register-vendor",
            Command::ReportCapacity(_) => "report-capacity",
            Command::Reserve(_) => "reserve",
            Command::Commit(_) => "commit",
            Command::Release(_) => "release",
            Command::ExpireLeases { .. } => "expire-leases",
            Command::Forget(_) => "forget",
            Command::UpdateLiveness(_) => "update-liveness",
            Command::ReleasePortions(_) => "release-portions",
            Command::RewriteSnapshots(_) => "rewrite-snapshots",
            Command::InstallGrantKey(_) => "install-grant-key",
            Command::StoreTenantKey(_) => "store-tenant-key",
            Command::PlanRepairs(_) => "plan-repairs",
            Command::FinishRepairs(_) => "finish-repairs",
            Command::RenewLease(_) => "renew-lease",
            Command::SetVendorPrices(_) => "set-vendor-prices",
            Command::SetMarketFee(_) => "set-market-fee",
            Command::SetTenantLimits(_) => "set-tenant-limits",
            Command::ClosePeriod(_) => "close-period",
            Command::BookEgress(_) => "book-egress",
            Command::RecordAudits(_) => "record-audits",
            Command::CollectReservations(_) => "collect-reservations",
            Command::MarkBadCopies(_) => "mark-bad-copies",
            Command::Departure(_) => "departure",
        }
    }

    /// Stamps the command with `now_unix_ms`, the leader's clock when it
    /// proposes it, so every time in the log is the leader's. A reservation's
    /// lease keeps its length.
    pub fn restamp(&mut self, now_unix_ms: u64) {
        match self {
            Command::RegisterVendor(c) => c.now_unix_ms = now_unix_ms,
            Command::ReportCapacity(c) => c.now_unix_ms = now_unix_ms,
            Command::Reserve(c) => {
                let lease = c.lease_expires_unix_ms.saturating_sub(c.now_unix_ms);
                c.now_unix_ms = now_unix_ms;
                c.lease_expires_unix_ms = now_unix_ms.saturating_add(lease);
            }
            Command::Commit(c) => c.now_unix_ms = now_unix_ms,
            Command::Release(c) => c.now_unix_ms = now_unix_ms,
            Command::ExpireLeases { now_unix_ms: now } => *now = now_unix_ms,
            Command::Forget(_) => {}
            Command::UpdateLiveness(c) => c.now_unix_ms = now_unix_ms,
            Command::ReleasePortions(_) | Command::RewriteSnapshots(_) => {}
            Command::InstallGrantKey(c) => c.now_unix_ms = now_unix_ms,
            Command::StoreTenantKey(c) => c.now_unix_ms = now_unix_ms,
            Command::PlanRepairs(c) => c.now_unix_ms = now_unix_ms,
            Command::FinishRepairs(_) => {}
            Command::RenewLease(c) => {
                let lease = c.lease_expires_unix_ms.saturating_sub(c.now_unix_ms);
                c.now_unix_ms = now_unix_ms;
                c.lease_expires_unix_ms = now_unix_ms.saturating_add(lease);
            }
            Command::SetVendorPrices(c) => c.now_unix_ms = now_unix_ms,
            Command::SetMarketFee(c) => c.now_unix_ms = now_unix_ms,
            Command::SetTenantLimits(c) => c.now_unix_ms = now_unix_ms,
            Command::ClosePeriod(c) => c.now_unix_ms = now_unix_ms,
            Command::BookEgress(c) => c.now_unix_ms = now_unix_ms,
            Command::RecordAudits(c) => c.now_unix_ms = now_unix_ms,
            Command::CollectReservations(c) => c.now_unix_ms = now_unix_ms,
            Command::MarkBadCopies(c) => c.now_unix_ms = now_unix_ms,
            Command::Departure(c) => c.restamp(now_unix_ms),
        }
    }
}

/// Expired reservations whose copies may now be deleted: none of them can
/// be committed late any more (ids that are not expired are skipped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectReservations {
    pub ids: Vec<ReservationId>,
    pub now_unix_ms: u64,
}

/// A vendor logs on, or re-registers with a new address or offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterVendor {
    pub vendor: VendorRef,
    /// Failure domain; letters, digits, '.', '_' and '-'.
    pub region: String,
    pub offered_bytes: u64,
    pub network_bytes_per_sec: u64,
    /// ed25519 public key (32 bytes) the vendor's receipts are signed with.
    pub identity_key: Vec<u8>,
    pub now_unix_ms: u64,
}

/// A vendor's periodic capacity report, also its heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportCapacity {
    pub vendor: VendorId,
    pub offered_bytes: u64,
    pub stored_bytes: u64,
    /// Deletions the vendor did since its last report, as the FAT asked.
    pub deleted: Vec<PortionDeletion>,
    pub now_unix_ms: u64,
}

/// Bytes held on one candidate vendor of a reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub vendor: VendorId,
    pub bytes: u64,
}

/// Room for `bytes` at `replication`, held on the chosen candidates until the
/// lease runs out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reserve {
    pub tenant: TenantId,
    /// A repeated request id from the same tenant returns the same reservation.
    pub request: RequestId,
    /// The id the new reservation gets (chosen by the caller).
    pub reservation: ReservationId,
    pub bytes: u64,
    pub replication: u32,
    /// The candidates chosen by placement, with the bytes each holds.
    pub holds: Vec<Hold>,
    pub now_unix_ms: u64,
    pub lease_expires_unix_ms: u64,
}

/// The final FAT of some portions, optionally with the snapshot that needs them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    pub tenant: TenantId,
    /// A repeated commit with the same request id returns the first result.
    pub request: RequestId,
    pub reservation: ReservationId,
    pub portions: Vec<PortionPlacement>,
    pub snapshot: Option<SnapshotRecord>,
    pub now_unix_ms: u64,
}

/// Gives back a reservation that will not be committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub tenant: TenantId,
    pub reservation: ReservationId,
    pub now_unix_ms: u64,
}

/// Extends an open reservation's lease to `lease_expires_unix_ms` (a lease
/// never gets shorter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewLease {
    pub tenant: TenantId,
    pub reservation: ReservationId,
    pub now_unix_ms: u64,
    pub lease_expires_unix_ms: u64,
}

/// Removes a snapshot record; its portions stay until pruned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forget {
    pub tenant: TenantId,
    pub snapshot: SnapshotId,
}

/// Committed portions of a tenant that no remaining snapshot needs leave the
/// final FAT; every vendor holding one gets it in its deletion queue.
/// Refused whole if one is needed by a snapshot or is not the tenant's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasePortions {
    pub tenant: TenantId,
    pub portions: Vec<PortionId>,
}

/// Replaces existing snapshot records of a tenant, all at once; each new
/// record may differ from the stored one only in `portions` and `manifest`,
/// which must be committed portions of the tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewriteSnapshots {
    pub tenant: TenantId,
    pub snapshots: Vec<SnapshotRecord>,
}

/// Keeps `key_file` as the tenant's key file, replacing the one it had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreTenantKey {
    pub tenant: TenantId,
    pub key_file: Vec<u8>,
    pub now_unix_ms: u64,
}

/// Installs grant key `key_id` with `secret` (drawn by the proposer). Refused
/// unless `key_id` is the FAT's next key id, so a rotation applies once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallGrantKey {
    pub key_id: u32,
    pub secret: GrantSecret,
    pub now_unix_ms: u64,
}

/// Vendors whose report age crossed the suspect or down threshold, as the
/// leader judged them at `now_unix_ms` (its clock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateLiveness {
    pub changes: Vec<LivenessChange>,
    pub now_unix_ms: u64,
}

/// One vendor's new liveness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LivenessChange {
    pub vendor: VendorId,
    pub liveness: Liveness,
    /// The vendor's last report time when the leader judged it; a vendor that
    /// reported since keeps its liveness.
    pub seen_report_unix_ms: u64,
}

/// A vendor's prices from now on (new placements).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetVendorPrices {
    pub vendor: VendorId,
    pub prices: Prices,
    pub now_unix_ms: u64,
}

/// The marketplace's share of every charge, in parts per million.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetMarketFee {
    pub fee_ppm: u32,
    pub now_unix_ms: u64,
}

/// Replaces a tenant's limits (all `None`: no limits).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetTenantLimits {
    pub tenant: TenantId,
    pub limits: TenantLimits,
    pub now_unix_ms: u64,
}

/// Closes billing period `period`, which must be the open one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosePeriod {
    pub period: u32,
    pub now_unix_ms: u64,
}

/// Fetches `vendor` served, each under a fetch grant the proposer verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookEgress {
    pub vendor: VendorId,
    pub served: Vec<ServedFetch>,
    pub now_unix_ms: u64,
}

/// Bytes served under one fetch grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedFetch {
    /// blake3 of the signed grant: a grant is booked once.
    pub digest: [u8; 32],
    pub tenant: TenantId,
    pub portion: PortionId,
    /// The grant's byte limit: more is never booked.
    pub max_bytes: u64,
    pub expires_unix_ms: u64,
    pub bytes: u64,
}

/// What an applied command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    VendorRegistered,
    TenantKeyStored,
    /// The report was recorded; `delete` is the next batch of the vendor's
    /// deletion queue.
    CapacityReported {
        delete: Vec<PortionDeletion>,
    },
    Reserved(ReservationView),
    Committed {
        committed_bytes: u64,
    },
    Released,
    LeasesExpired {
        released: Vec<ReservationId>,
    },
    Forgotten,
    /// The vendors whose liveness changed, with the new liveness.
    LivenessUpdated {
        changed: Vec<(VendorId, Liveness)>,
    },
    /// How many portions left the final FAT and their bytes (before
    /// replication).
    PortionsReleased {
        portions: u64,
        bytes: u64,
    },
    SnapshotsRewritten {
        snapshots: u64,
    },
    /// Grant key `key_id` signs from now on; `retired` keys no longer verify.
    GrantKeyInstalled {
        key_id: u32,
        retired: Vec<u32>,
    },
    RepairsPlanned {
        opened: u64,
    },
    /// Copies that joined their portion's vendors, and repairs that failed
    /// (with why).
    RepairsFinished {
        placed: u64,
        failed: Vec<(ReservationId, String)>,
    },
    /// Prices, the fee or a tenant's limits were set.
    MarketSet,
    PeriodClosed {
        period: u32,
    },
    /// Grants booked (repeats are skipped) and their bytes.
    EgressBooked {
        grants: u64,
        bytes: u64,
    },
    /// Audits recorded; the vendors they disqualified.
    AuditsRecorded {
        disqualified: Vec<VendorId>,
    },
    /// Expired reservations collected.
    ReservationsCollected {
        collected: u64,
    },
    /// Copies newly marked bad (repeats and copies the FAT does not place
    /// are skipped).
    BadCopiesMarked {
        marked: u64,
    },
    /// The vendor's exit and relief after a departure command.
    Departure(DepartureStatus),
    /// The exits and reliefs the leader's `Settle` completed.
    Settled(Settled),
}

/// The provisional FAT handed to the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationView {
    pub id: ReservationId,
    pub candidates: Vec<Candidate>,
    pub lease_expires_unix_ms: u64,
}
