//! The coordinator group as the client sees it: typed calls that return
//! `offsite_proto` domain types, failing over across every configured
//! coordinator when one is unreachable. The tenant travels in the gRPC
//! metadata of every call.

use std::future::Future;
use std::time::Duration;

use offsite_proto::limits::MAX_MESSAGE_BYTES;
use offsite_proto::pb::coordinator as pb;
use offsite_proto::pb::coordinator::fat_client::FatClient;
use offsite_proto::{
    Candidate, PortionId, PortionLocation, PortionPlacement, RequestId, ReservationId, SnapshotId,
    SnapshotRecord, TenantId, WireError, TENANT_METADATA_KEY,
};
use tokio::sync::Mutex;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::connect::connect;

/// How long one coordinator call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

type Client = FatClient<InterceptedService<Channel, TenantHeader>>;

/// Adds the tenant to every request.
#[derive(Clone)]
pub struct TenantHeader(AsciiMetadataValue);

impl tonic::service::Interceptor for TenantHeader {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        request
            .metadata_mut()
            .insert(TENANT_METADATA_KEY, self.0.clone());
        Ok(request)
    }
}

/// What went wrong talking to the coordinator group, sorted by what to do.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("no coordinator answered {what} (tried {tried}); last error: {last}; check that the coordinators in the config are running and reachable")]
    Unreachable {
        what: &'static str,
        tried: String,
        last: String,
    },
    #[error("the coordinator refused {what}: {code:?}: {message}")]
    Refused {
        what: &'static str,
        code: Code,
        message: String,
    },
    #[error("the coordinator answered {what} with a malformed message: {source}; check that client and coordinator run the same release")]
    Malformed {
        what: &'static str,
        source: WireError,
    },
}

impl CoordinatorError {
    /// True when the group refused because there is not enough room.
    pub fn is_capacity(&self) -> bool {
        matches!(self, CoordinatorError::Refused { code, message, .. }
            if *code == Code::ResourceExhausted || message.contains("capacity"))
    }
}

/// A reservation: the provisional FAT.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub id: ReservationId,
    pub candidates: Vec<Candidate>,
    pub lease_expires_unix_ms: u64,
}

/// The coordinator group, with failover.
pub struct Coordinator {
    addresses: Vec<String>,
    tenant: TenantHeader,
    /// The coordinator that answered last, and its client.
    current: Mutex<Option<(usize, Client)>>,
}

fn malformed(what: &'static str) -> impl Fn(WireError) -> CoordinatorError {
    move |source| CoordinatorError::Malformed { what, source }
}

impl Coordinator {
    pub fn new(addresses: Vec<String>, tenant: &TenantId) -> Self {
        // Tenant ids are checked to be `[A-Za-z0-9._-]`, always valid metadata.
        let value = MetadataValue::try_from(tenant.as_str())
            .unwrap_or_else(|_| MetadataValue::from_static("invalid-tenant"));
        Self {
            addresses,
            tenant: TenantHeader(value),
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
        let mut current = self.current.lock().await;
        let start = current.as_ref().map_or(0, |(i, _)| *i);
        let mut last = String::from("no coordinator configured");
        for step in 0..self.addresses.len() {
            let index = (start + step) % self.addresses.len();
            let address = &self.addresses[index];
            let client = match current.as_ref() {
                Some((i, client)) if *i == index => client.clone(),
                _ => match connect(address).await {
                    Ok(channel) => FatClient::with_interceptor(channel, self.tenant.clone())
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
                    *current = Some((index, client));
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) if !is_failover(&status) => {
                    *current = Some((index, client));
                    return Err(CoordinatorError::Refused {
                        what,
                        code: status.code(),
                        message: status.message().to_string(),
                    });
                }
                Ok(Err(status)) => last = format!("{address}: {}", status.message()),
                Err(_) => last = format!("{address}: no answer in {CALL_TIMEOUT:?}"),
            }
            tracing::warn!(%address, error = %last, "coordinator failed; trying the next");
            *current = None;
        }
        Err(CoordinatorError::Unreachable {
            what,
            tried: self.addresses.join(", "),
            last,
        })
    }

    /// Reserves room for `bytes` at `replication`.
    pub async fn reserve(
        &self,
        request: &RequestId,
        bytes: u64,
        replication: u32,
    ) -> Result<Reservation, CoordinatorError> {
        let message = pb::ReserveRequest {
            request_id: request.to_string(),
            bytes,
            replication,
        };
        let reply = self
            .call("reserve", |mut c| {
                let m = message.clone();
                async move { c.reserve(m).await }
            })
            .await?;
        let what = "reserve";
        Ok(Reservation {
            id: ReservationId::parse(&reply.reservation_id).map_err(malformed(what))?,
            candidates: reply
                .candidates
                .into_iter()
                .map(Candidate::try_from)
                .collect::<Result<_, _>>()
                .map_err(malformed(what))?,
            lease_expires_unix_ms: reply.lease_expires_unix_ms,
        })
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
        self.call("forget", |mut c| {
            let m = message.clone();
            async move { c.forget(m).await }
        })
        .await?;
        Ok(())
    }

    /// Where the given portions live.
    pub async fn locate_portions(
        &self,
        ids: &[PortionId],
    ) -> Result<Vec<PortionLocation>, CoordinatorError> {
        let message = pb::LocatePortionsRequest {
            portion_ids: ids.iter().map(ToString::to_string).collect(),
        };
        let reply = self
            .call("locate portions", |mut c| {
                let m = message.clone();
                async move { c.locate_portions(m).await }
            })
            .await?;
        reply
            .portions
            .into_iter()
            .map(PortionLocation::try_from)
            .collect::<Result<_, _>>()
            .map_err(malformed("locate portions"))
    }
}

/// Statuses that mean "this coordinator cannot answer; ask another".
fn is_failover(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
    )
}
