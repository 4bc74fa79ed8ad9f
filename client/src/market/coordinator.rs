//! The coordinator group as the client sees it: typed calls that return
//! `offsite_proto` domain types, failing over across every configured
//! coordinator when one is unreachable. The tenant is the one named by the
//! client's certificate.

use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use offsite_identity::{Credentials, Role};
use offsite_proto::limits::MAX_MESSAGE_BYTES;
use offsite_proto::pb::coordinator as pb;
use offsite_proto::pb::coordinator::fat_client::FatClient;
use offsite_proto::{
    BadCopyReport, Candidate, ListedPortion, PortionId, PortionLocation, PortionPlacement,
    RequestId, ReservationId, SnapshotId, SnapshotRecord, WireError,
};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::config::PriceLimits;
use crate::market::connect::connect;
use crate::usage::Usage;

/// How long one coordinator call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Portions located per call. Each location carries a vendor and a signed
/// fetch grant per replica, about a KiB at R = 3 and some 15 KiB at the
/// largest R, so an answer stays well below the message limit.
const LOCATE_BATCH: usize = 1_000;

type Client = FatClient<Channel>;

/// What went wrong talking to the coordinator group, sorted by what to do.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("no coordinator answered {what} (tried {tried}); last error: {last}; check that the coordinators in the config are running and reachable")]
    Unreachable {
        what: &'static str,
        tried: String,
        last: String,
    },
    #[error("the coordinator refused {what}: {:?}: {message}", .refusal.code())]
    Refused {
        what: &'static str,
        refusal: Refusal,
        message: String,
        /// An earlier attempt of this call failed after it may have reached
        /// the group, so the refusal may answer a repeat of a call that
        /// went through.
        after_failover: bool,
    },
    #[error("the coordinator answered {what} with a malformed message: {source}; check that client and coordinator run the same release")]
    Malformed {
        what: &'static str,
        source: WireError,
    },
}

/// Why the group refused a call, read from the status code (the
/// coordinator gives each kind of refusal its own code), so callers never
/// match on the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not enough capacity: ask for less, or retry later.
    NoRoom,
    /// Fewer vendors are up with room than the replication needs: asking
    /// for less does not help (`ResourceExhausted` marked
    /// `offsite_proto::refusal::TOO_FEW_VENDORS`).
    TooFewVendors,
    /// The thing named does not exist (or is another tenant's).
    NotFound,
    /// The state changed or the lease ran out: look again, then retry.
    Conflict,
    /// The request itself is wrong: a bug or a mismatched release.
    Invalid,
    /// The certificate may not do this.
    Forbidden,
    /// Any other code: give up.
    Other(Code),
}

impl Refusal {
    /// The kind of a refusal: its code, and the coordinator's mark where one
    /// code covers several kinds.
    fn of_status(status: &tonic::Status) -> Self {
        let marked = status
            .metadata()
            .get(offsite_proto::refusal::REFUSAL_KEY)
            .and_then(|v| v.to_str().ok());
        match (status.code(), marked) {
            (Code::ResourceExhausted, Some(offsite_proto::refusal::TOO_FEW_VENDORS)) => {
                Refusal::TooFewVendors
            }
            (code, _) => Self::of(code),
        }
    }

    fn of(code: Code) -> Self {
        match code {
            Code::ResourceExhausted => Refusal::NoRoom,
            Code::NotFound => Refusal::NotFound,
            Code::FailedPrecondition => Refusal::Conflict,
            Code::InvalidArgument => Refusal::Invalid,
            Code::PermissionDenied => Refusal::Forbidden,
            other => Refusal::Other(other),
        }
    }

    /// The status code the refusal came with.
    pub fn code(self) -> Code {
        match self {
            Refusal::NoRoom | Refusal::TooFewVendors => Code::ResourceExhausted,
            Refusal::NotFound => Code::NotFound,
            Refusal::Conflict => Code::FailedPrecondition,
            Refusal::Invalid => Code::InvalidArgument,
            Refusal::Forbidden => Code::PermissionDenied,
            Refusal::Other(code) => code,
        }
    }
}

impl CoordinatorError {
    /// True when the group refused because there is not enough room
    /// (asking for less may help).
    pub fn is_capacity(&self) -> bool {
        self.refusal() == Some(Refusal::NoRoom)
    }

    /// True when fewer vendors are up with room than the replication needs.
    pub fn is_too_few_vendors(&self) -> bool {
        self.refusal() == Some(Refusal::TooFewVendors)
    }

    /// The kind of refusal, when the group refused.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            CoordinatorError::Refused { refusal, .. } => Some(*refusal),
            _ => None,
        }
    }
}

/// A reservation: the provisional FAT.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub id: ReservationId,
    pub candidates: Vec<Candidate>,
    pub lease_expires_unix_ms: u64,
    /// How long the lease lasts from the answer (0 from a coordinator too old
    /// to say).
    pub lease_ms: u64,
}

fn reservation_of(
    reply: pb::ReserveResponse,
    what: &'static str,
) -> Result<Reservation, CoordinatorError> {
    Ok(Reservation {
        id: ReservationId::parse(&reply.reservation_id).map_err(malformed(what))?,
        candidates: reply
            .candidates
            .into_iter()
            .map(Candidate::try_from)
            .collect::<Result<_, _>>()
            .map_err(malformed(what))?,
        lease_expires_unix_ms: reply.lease_expires_unix_ms,
        lease_ms: reply.lease_ms,
    })
}

/// The coordinator group, with failover.
pub struct Coordinator {
    addresses: Vec<String>,
    credentials: Credentials,
    /// The coordinator that answered last, and its client. Held only to
    /// read or replace it, never across a call: a channel is cheap to clone,
    /// so independent calls run at once.
    current: Mutex<Option<(usize, Client)>>,
}

fn malformed(what: &'static str) -> impl Fn(WireError) -> CoordinatorError {
    move |source| CoordinatorError::Malformed { what, source }
}

/// What the coordinator made of a copy the tenant reported bad.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadCopyAnswer {
    pub portion_id: String,
    pub vendor_id: String,
    /// `confirmed` (its audit failed: it will be made again), `not_confirmed`
    /// (the vendor proved it whole), `already_known`, `not_placed`,
    /// `unverified` (the vendor is not up or did not answer), `unknown`.
    pub verdict: &'static str,
    pub detail: String,
}

impl Coordinator {
    /// Calls go to `addresses` with `credentials` (the tenant's certificate).
    pub fn new(addresses: Vec<String>, credentials: Credentials) -> Self {
        Self {
            addresses,
            credentials,
            current: Mutex::new(None),
        }
    }

    /// Runs `call` on the coordinator that answered last, else on each in turn
    /// until one answers with something other than "unavailable".
    async fn call<T, F, Fut>(&self, what: &'static str, call: F) -> Result<T, CoordinatorError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let known = self.current().clone();
        let start = known.as_ref().map_or(0, |(i, _)| *i);
        let mut last = String::from("no coordinator configured");
        let mut after_failover = false;
        for step in 0..self.addresses.len() {
            let index = (start + step) % self.addresses.len();
            let address = &self.addresses[index];
            let client = match known.as_ref() {
                Some((i, client)) if *i == index => client.clone(),
                _ => match connect(&self.credentials, address, &Role::Coordinator.dns_name()).await
                {
                    Ok(channel) => FatClient::new(channel)
                        .max_decoding_message_size(MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(MAX_MESSAGE_BYTES),
                    Err(e) => {
                        last = format!("{address}: {e}");
                        tracing::warn!(%address, error = %e, "coordinator unreachable; trying the next");
                        continue;
                    }
                },
            };
            match tokio::time::timeout(CALL_TIMEOUT, call(client.clone())).await {
                Ok(Ok(response)) => {
                    *self.current() = Some((index, client));
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) if !is_failover(&status) => {
                    *self.current() = Some((index, client));
                    return Err(CoordinatorError::Refused {
                        what,
                        refusal: Refusal::of_status(&status),
                        message: status.message().to_string(),
                        after_failover,
                    });
                }
                Ok(Err(status)) => last = format!("{address}: {}", status.message()),
                Err(_) => last = format!("{address}: no answer in {CALL_TIMEOUT:?}"),
            }
            after_failover = true;
            tracing::warn!(%address, error = %last, "coordinator failed; trying the next");
            // Forget it, unless another call has moved on meanwhile.
            let mut current = self.current();
            if current.as_ref().is_some_and(|(i, _)| *i == index) {
                *current = None;
            }
        }
        Err(CoordinatorError::Unreachable {
            what,
            tried: self.addresses.join(", "),
            last,
        })
    }

    /// The coordinator that answered last, locked for a moment (a panic
    /// while it was held left nothing half-written: it is one assignment).
    fn current(&self) -> std::sync::MutexGuard<'_, Option<(usize, Client)>> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reserves room for `bytes` at `replication` on vendors within `limits`.
    pub async fn reserve(
        &self,
        request: &RequestId,
        bytes: u64,
        replication: u32,
        limits: PriceLimits,
    ) -> Result<Reservation, CoordinatorError> {
        let message = pb::ReserveRequest {
            request_id: request.to_string(),
            bytes,
            replication,
            max_storage_price: limits.storage,
            max_egress_price: limits.egress,
        };
        let reply = self
            .call("reserve", |mut c| {
                let m = message.clone();
                async move { c.reserve(m).await }
            })
            .await?;
        reservation_of(reply, "reserve")
    }

    /// Extends an open reservation's lease while its portions are on their
    /// way; the reservation with store grants that last as long.
    pub async fn renew_lease(
        &self,
        reservation: ReservationId,
    ) -> Result<Reservation, CoordinatorError> {
        let message = pb::RenewLeaseRequest {
            reservation_id: reservation.to_string(),
        };
        let reply = self
            .call("renew lease", |mut c| {
                let m = message.clone();
                async move { c.renew_lease(m).await }
            })
            .await?;
        reservation_of(reply, "renew lease")
    }

    /// Commits placed portions (the final FAT), with the snapshot at the end of a backup.
    pub async fn commit(
        &self,
        request: &RequestId,
        reservation: ReservationId,
        portions: Vec<PortionPlacement>,
        snapshot: Option<SnapshotRecord>,
    ) -> Result<u64, CoordinatorError> {
        let message = pb::CommitRequest {
            request_id: request.to_string(),
            reservation_id: reservation.to_string(),
            portions: portions.into_iter().map(Into::into).collect(),
            snapshot: snapshot.map(Into::into),
        };
        let reply = self
            .call("commit", |mut c| {
                let m = message.clone();
                async move { c.commit(m).await }
            })
            .await?;
        Ok(reply.committed_bytes)
    }

    /// The tenant's lines of the open billing period, its estimate and its
    /// stored bytes per host.
    pub async fn usage(&self) -> Result<Usage, CoordinatorError> {
        let reply = self
            .call("usage", |mut c| async move {
                c.usage(pb::UsageRequest {}).await
            })
            .await?;
        Usage::try_from(reply).map_err(malformed("usage"))
    }

    /// Gives back a reservation that will not be committed.
    pub async fn release(&self, reservation: ReservationId) -> Result<(), CoordinatorError> {
        let message = pb::ReleaseRequest {
            reservation_id: reservation.to_string(),
        };
        self.call("release", |mut c| {
            let m = message.clone();
            async move { c.release(m).await }
        })
        .await?;
        Ok(())
    }

    /// Every snapshot of the tenant.
    pub async fn list_snapshots(&self) -> Result<Vec<SnapshotRecord>, CoordinatorError> {
        let reply = self
            .call("list snapshots", |mut c| async move {
                c.list_snapshots(pb::ListSnapshotsRequest {}).await
            })
            .await?;
        reply
            .snapshots
            .into_iter()
            .map(SnapshotRecord::try_from)
            .collect::<Result<_, _>>()
            .map_err(malformed("list snapshots"))
    }

    /// One snapshot and where each of its portions lives.
    pub async fn get_snapshot(
        &self,
        id: SnapshotId,
    ) -> Result<(SnapshotRecord, Vec<PortionLocation>), CoordinatorError> {
        let message = pb::GetSnapshotRequest {
            snapshot_id: id.to_string(),
        };
        let reply = self
            .call("get snapshot", |mut c| {
                let m = message.clone();
                async move { c.get_snapshot(m).await }
            })
            .await?;
        let what = "get snapshot";
        let record = reply
            .snapshot
            .ok_or(WireError::missing("snapshot"))
            .and_then(SnapshotRecord::try_from)
            .map_err(malformed(what))?;
        let locations = reply
            .portions
            .into_iter()
            .map(PortionLocation::try_from)
            .collect::<Result<_, _>>()
            .map_err(malformed(what))?;
        Ok((record, locations))
    }

    /// Removes a snapshot record; its portions stay until pruned.
    pub async fn forget(&self, id: SnapshotId) -> Result<(), CoordinatorError> {
        let message = pb::ForgetRequest {
            snapshot_id: id.to_string(),
        };
        let forgotten = self
            .call("forget", |mut c| {
                let m = message.clone();
                async move { c.forget(m).await }
            })
            .await;
        match forgotten {
            Ok(_) => Ok(()),
            Err(e) if went_through_before(&e) => {
                tracing::info!(snapshot = %id, "an earlier attempt of the forget went through");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Keeps `key_file` at the coordinator group as the tenant's key file.
    pub async fn put_key_file(&self, key_file: Vec<u8>) -> Result<(), CoordinatorError> {
        let message = pb::PutKeyFileRequest { key_file };
        self.call("put key file", |mut c| {
            let m = message.clone();
            async move { c.put_key_file(m).await }
        })
        .await?;
        Ok(())
    }

    /// The tenant's key file kept at the coordinator group, if any.
    pub async fn get_key_file(&self) -> Result<Option<Vec<u8>>, CoordinatorError> {
        let reply = self
            .call("get key file", |mut c| async move {
                c.get_key_file(pb::GetKeyFileRequest {}).await
            })
            .await;
        match reply {
            Ok(reply) => Ok(Some(reply.key_file)),
            Err(CoordinatorError::Refused {
                refusal: Refusal::NotFound,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Where the given portions live (those the coordinator knows), asked
    /// [`LOCATE_BATCH`] at a time.
    pub async fn locate_portions(
        &self,
        ids: &[PortionId],
    ) -> Result<Vec<PortionLocation>, CoordinatorError> {
        let mut located = Vec::with_capacity(ids.len());
        for batch in ids.chunks(LOCATE_BATCH) {
            let message = pb::LocatePortionsRequest {
                portion_ids: batch.iter().map(ToString::to_string).collect(),
            };
            let reply = self
                .call("locate portions", |mut c| {
                    let m = message.clone();
                    async move { c.locate_portions(m).await }
                })
                .await?;
            for location in reply.portions {
                located.push(
                    PortionLocation::try_from(location).map_err(malformed("locate portions"))?,
                );
            }
        }
        Ok(located)
    }
}

impl Coordinator {
    /// One page of the tenant's committed portions after `after`, and
    /// whether more follow.
    pub async fn list_portions(
        &self,
        after: Option<PortionId>,
    ) -> Result<(Vec<ListedPortion>, bool), CoordinatorError> {
        let message = pb::ListPortionsRequest {
            after_portion_id: after.map(|p| p.to_string()).unwrap_or_default(),
            limit: 0,
        };
        let reply = self
            .call("list portions", |mut c| {
                let m = message.clone();
                async move { c.list_portions(m).await }
            })
            .await?;
        let page = reply
            .portions
            .into_iter()
            .map(ListedPortion::try_from)
            .collect::<Result<_, _>>()
            .map_err(malformed("list portions"))?;
        Ok((page, reply.more))
    }

    /// Reports copies a check found bad at their vendors (at most
    /// `limits::MAX_BAD_COPY_REPORTS_PER_CALL`); the coordinator audits
    /// each and answers what it made of it, in the order given.
    pub async fn report_bad_copies(
        &self,
        copies: &[BadCopyReport],
    ) -> Result<Vec<BadCopyAnswer>, CoordinatorError> {
        let message = pb::ReportBadCopiesRequest {
            copies: copies.iter().cloned().map(Into::into).collect(),
        };
        let reply = self
            .call("report bad copies", |mut c| {
                let m = message.clone();
                async move { c.report_bad_copies(m).await }
            })
            .await?;
        Ok(reply
            .answers
            .into_iter()
            .map(|a| BadCopyAnswer {
                portion_id: a.portion_id,
                vendor_id: a.vendor_id,
                verdict: match pb::BadCopyVerdict::try_from(a.verdict) {
                    Ok(pb::BadCopyVerdict::Confirmed) => "confirmed",
                    Ok(pb::BadCopyVerdict::NotConfirmed) => "not_confirmed",
                    Ok(pb::BadCopyVerdict::AlreadyKnown) => "already_known",
                    Ok(pb::BadCopyVerdict::NotPlaced) => "not_placed",
                    Ok(pb::BadCopyVerdict::Unverified) => "unverified",
                    Ok(pb::BadCopyVerdict::Unspecified) | Err(_) => "unknown",
                },
                detail: offsite_proto::bounded_reason(&a.detail),
            })
            .collect())
    }

    /// Releases portions no snapshot needs (at most
    /// `limits::MAX_RELEASE_PER_CALL`); the portions released and their bytes.
    pub async fn release_portions(
        &self,
        ids: &[PortionId],
    ) -> Result<(u64, u64), CoordinatorError> {
        let message = pb::ReleasePortionsRequest {
            portion_ids: ids.iter().map(ToString::to_string).collect(),
        };
        let reply = self
            .call("release portions", |mut c| {
                let m = message.clone();
                async move { c.release_portions(m).await }
            })
            .await?;
        Ok((reply.released_portions, reply.released_bytes))
    }
}

impl Coordinator {
    /// Moves snapshots' data to other committed portions, all records in one
    /// step (at most `limits::MAX_SNAPSHOT_REWRITES`).
    pub async fn rewrite_snapshots(
        &self,
        snapshots: &[SnapshotRecord],
    ) -> Result<u64, CoordinatorError> {
        let message = pb::RewriteSnapshotsRequest {
            snapshots: snapshots.iter().cloned().map(Into::into).collect(),
        };
        let reply = self
            .call("rewrite snapshots", |mut c| {
                let m = message.clone();
                async move { c.rewrite_snapshots(m).await }
            })
            .await?;
        Ok(reply.rewritten)
    }
}

/// True when a forget (or another call that removes what it names) is
/// refused as not found only because an earlier attempt, whose answer was
/// lost to a failover, already removed it.
fn went_through_before(error: &CoordinatorError) -> bool {
    matches!(
        error,
        CoordinatorError::Refused {
            refusal: Refusal::NotFound,
            after_failover: true,
            ..
        }
    )
}

/// Whether a failed call goes to the next coordinator: the coordinator is
/// unreachable, slow or stopping, or the connection broke under the call
/// (tonic reports that as `Unknown` with the transport error as its
/// source; a status a coordinator sent never has a source). Reserves and
/// commits carry request ids, so repeating them is safe; a release is
/// idempotent while the deletion is pending; a repeated forget whose first
/// attempt went through is refused as not found, which `forget` then takes
/// as done ([`went_through_before`]).
fn is_failover(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => true,
        Code::Unknown => std::error::Error::source(status).is_some(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A broken connection fails over; an unknown error a coordinator sent
    /// does not.
    #[test]
    fn a_transport_error_fails_over_and_a_sent_status_does_not() {
        let broken = Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset",
        )));
        assert_eq!(broken.code(), Code::Unknown);
        assert!(is_failover(&broken), "{broken:?}");
        assert!(!is_failover(&Status::unknown("a coordinator bug")));
        assert!(is_failover(&Status::unavailable("stopping")));
        assert!(!is_failover(&Status::not_found("no snapshot")));
    }

    fn refused(code: Code, message: &str) -> CoordinatorError {
        CoordinatorError::Refused {
            what: "reserve",
            refusal: Refusal::of(code),
            message: message.into(),
            after_failover: false,
        }
    }

    fn after_failover(mut e: CoordinatorError) -> CoordinatorError {
        if let CoordinatorError::Refused { after_failover, .. } = &mut e {
            *after_failover = true;
        }
        e
    }

    /// A forget's "not found" after a lost answer means the first attempt
    /// removed it; the same answer on a first attempt stays an error, and
    /// so does any other refusal after a failover.
    #[test]
    fn not_found_after_a_failover_means_the_first_attempt_went_through() {
        let missing = refused(Code::NotFound, "no snapshot");
        assert!(!went_through_before(&missing));
        assert!(went_through_before(&after_failover(missing)));
        let conflict = after_failover(refused(Code::FailedPrecondition, "locked"));
        assert!(!went_through_before(&conflict));
    }

    /// The kind comes from the code alone; the message keeps its code.
    #[test]
    fn a_refusal_is_classified_by_its_code_not_its_message() {
        assert!(refused(Code::ResourceExhausted, "not enough room").is_capacity());
        assert!(!refused(Code::FailedPrecondition, "capacity").is_capacity());
        assert_eq!(
            refused(Code::FailedPrecondition, "x").refusal(),
            Some(Refusal::Conflict)
        );
        for code in [
            Code::ResourceExhausted,
            Code::NotFound,
            Code::FailedPrecondition,
            Code::InvalidArgument,
            Code::PermissionDenied,
            Code::Internal,
        ] {
            assert_eq!(Refusal::of(code).code(), code);
        }
        assert_eq!(
            refused(Code::ResourceExhausted, "full").to_string(),
            "the coordinator refused reserve: ResourceExhausted: full"
        );
    }

    /// Too few vendors is told from too little room by the coordinator's
    /// mark, not by the message.
    #[test]
    fn too_few_vendors_is_read_from_the_refusals_mark() {
        let mut status = Status::resource_exhausted("not enough capacity");
        assert_eq!(Refusal::of_status(&status), Refusal::NoRoom);
        status.metadata_mut().insert(
            offsite_proto::refusal::REFUSAL_KEY,
            offsite_proto::refusal::TOO_FEW_VENDORS.parse().unwrap(),
        );
        assert_eq!(Refusal::of_status(&status), Refusal::TooFewVendors);
        let refused = CoordinatorError::Refused {
            what: "reserve",
            refusal: Refusal::of_status(&status),
            message: status.message().into(),
            after_failover: false,
        };
        assert!(refused.is_too_few_vendors() && !refused.is_capacity());
    }
}
