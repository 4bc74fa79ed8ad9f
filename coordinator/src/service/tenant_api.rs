//! `Fat`: the tenant-facing service. Reservations, commits of the final FAT,
//! snapshot records and portion locations, each scoped to the calling tenant.

use std::sync::Arc;

use offsite_proto::pb::coordinator as pb;
use offsite_proto::pb::coordinator::fat_server::Fat as FatApi;
use offsite_proto::signing::GrantOp;
use offsite_proto::{PortionLocation, RequestId, ReservationId, SnapshotId, TenantId};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tonic::{Request, Response, Status};

use super::{convert, grants, status_of, store_status};
use crate::bad_copy_audit::BadCopyAuditor;
use crate::fat::{
    check_reserve_request, Command, FatError, Forget, Hold, Outcome, Release, RenewLease, Reserve,
    StoreTenantKey,
};
use crate::placement::{self, PlacementPolicy, PriceLimits};
use crate::store::{FatStore, ProposeError};
use offsite_identity::require_tenant;
use offsite_proto::clock::now_unix_ms;

/// How often a reserve is tried again when another reservation took the
/// room placement counted on.
const RESERVE_ATTEMPTS: usize = 3;
/// Most snapshot records in one list (the newest).
pub(crate) const MAX_LISTED_SNAPSHOTS: usize = 10_000;

/// The policies the tenant-facing service stamps into commands.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FatServiceConfig {
    pub lease_ms: u64,
    pub placement: PlacementPolicy,
}

/// The tenant-facing service.
pub(crate) struct FatService<S> {
    store: Arc<S>,
    config: FatServiceConfig,
    /// Audits the copies tenants report bad.
    auditor: Arc<BadCopyAuditor>,
}

impl<S: FatStore> FatService<S> {
    pub fn new(store: Arc<S>, config: FatServiceConfig, auditor: Arc<BadCopyAuditor>) -> Self {
        Self {
            store,
            config,
            auditor,
        }
    }

    /// Candidates for a new reservation; none when the request was seen
    /// before, since `apply` then answers with the first reservation.
    async fn choose(
        &self,
        reserve: &Reserve,
        limits: PriceLimits,
    ) -> Result<Vec<Hold>, ProposeError> {
        let policy = self.config;
        let (tenant, request) = (reserve.tenant.clone(), reserve.request.clone());
        let (bytes, replication) = (reserve.bytes, reserve.replication);
        self.store
            .read(move |fat| {
                if fat.reservation_for_request(&tenant, &request).is_some() {
                    return Ok(Vec::new());
                }
                let rooms = fat.vendors_with_room();
                let mut rng = StdRng::from_entropy();
                placement::choose_within(
                    &rooms,
                    &limits,
                    bytes,
                    replication,
                    &policy.placement,
                    &mut rng,
                )
            })
            .await?
            .map_err(ProposeError::Refused)
    }
}

impl<S: FatStore> FatService<S> {
    /// Fills each location's fetch grants, one per vendor.
    async fn grant_fetches(
        &self,
        tenant: &TenantId,
        locations: &mut [PortionLocation],
    ) -> Result<(), Status> {
        if locations.is_empty() {
            return Ok(());
        }
        let key = grants::signing_key(&*self.store).await?;
        let signed =
            grants::sign_portion_grants(&key, GrantOp::Fetch, tenant, locations, now_unix_ms());
        for (location, grants) in locations.iter_mut().zip(signed) {
            location.fetch_grants = grants;
        }
        Ok(())
    }
}

fn unexpected(outcome: Outcome) -> Status {
    Status::internal(format!(
        "the FAT answered with {outcome:?}, which this call does not expect; this is a \
         coordinator bug, please report it"
    ))
}

#[tonic::async_trait]
impl<S: FatStore> FatApi for FatService<S> {
    async fn reserve(
        &self,
        request: Request<pb::ReserveRequest>,
    ) -> Result<Response<pb::ReserveResponse>, Status> {
        let tenant = require_tenant(&request)?;
        let r = request.into_inner();
        let request_id = RequestId::new(r.request_id)?;
        check_reserve_request(r.bytes, r.replication).map_err(|e| status_of(e.into()))?;
        let limits = PriceLimits {
            max_storage_price: r.max_storage_price,
            max_egress_price: r.max_egress_price,
        };
        let mut attempt = 1;
        loop {
            let now = now_unix_ms();
            let mut reserve = Reserve {
                tenant: tenant.clone(),
                request: request_id.clone(),
                reservation: ReservationId::random(),
                bytes: r.bytes,
                replication: r.replication,
                holds: Vec::new(),
                now_unix_ms: now,
                lease_expires_unix_ms: now.saturating_add(self.config.lease_ms),
            };
            reserve.holds = self.choose(&reserve, limits).await.map_err(status_of)?;
            match self.store.propose(Command::Reserve(reserve)).await {
                Ok(Outcome::Reserved(mut view)) => {
                    let key = grants::signing_key(&*self.store).await?;
                    grants::sign_store_grants(&key, &tenant, &mut view);
                    tracing::info!(%tenant, reservation = %view.id, bytes = r.bytes, candidates = view.candidates.len(), "reserved");
                    let response = convert::reserve_response(view, self.config.lease_ms);
                    return Ok(Response::new(response));
                }
                Ok(other) => return Err(unexpected(other)),
                Err(ProposeError::Refused(FatError::NotEnoughCapacity { .. }))
                    if attempt < RESERVE_ATTEMPTS =>
                {
                    tracing::debug!(%tenant, attempt, "room taken meanwhile; placing again");
                    attempt += 1;
                }
                Err(e) => return Err(status_of(e)),
            }
        }
    }

    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let tenant = require_tenant(&request)?;
        let commit = convert::commit_command(tenant.clone(), request.into_inner(), now_unix_ms())?;
        let (reservation, portions) = (commit.reservation, commit.portions.len());
        match self
            .store
            .propose(Command::Commit(commit))
            .await
            .map_err(status_of)?
        {
            Outcome::Committed { committed_bytes } => {
                tracing::info!(%tenant, %reservation, portions, committed_bytes, "committed");
                Ok(Response::new(pb::CommitResponse { committed_bytes }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let tenant = require_tenant(&request)?;
        let reservation = ReservationId::parse(&request.into_inner().reservation_id)?;
        let command = Command::Release(Release {
            tenant,
            reservation,
            now_unix_ms: now_unix_ms(),
        });
        self.store.propose(command).await.map_err(status_of)?;
        Ok(Response::new(pb::ReleaseResponse {}))
    }

    async fn renew_lease(
        &self,
        request: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::ReserveResponse>, Status> {
        let tenant = require_tenant(&request)?;
        let reservation = ReservationId::parse(&request.into_inner().reservation_id)?;
        let now = now_unix_ms();
        let command = Command::RenewLease(RenewLease {
            tenant: tenant.clone(),
            reservation,
            now_unix_ms: now,
            lease_expires_unix_ms: now.saturating_add(self.config.lease_ms),
        });
        match self.store.propose(command).await.map_err(status_of)? {
            Outcome::Reserved(mut view) => {
                let key = grants::signing_key(&*self.store).await?;
                grants::sign_store_grants(&key, &tenant, &mut view);
                tracing::debug!(%tenant, %reservation, lease_expires_unix_ms = view.lease_expires_unix_ms, "lease renewed");
                let response = convert::reserve_response(view, self.config.lease_ms);
                Ok(Response::new(response))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn list_snapshots(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let tenant = require_tenant(&request)?;
        let mut list = self
            .store
            .read(move |fat| fat.snapshots(&tenant))
            .await
            .map_err(store_status)?;
        let excess = list.len().saturating_sub(MAX_LISTED_SNAPSHOTS);
        list.drain(..excess);
        Ok(Response::new(pb::ListSnapshotsResponse {
            snapshots: list.into_iter().map(Into::into).collect(),
        }))
    }

    async fn get_snapshot(
        &self,
        request: Request<pb::GetSnapshotRequest>,
    ) -> Result<Response<pb::GetSnapshotResponse>, Status> {
        let tenant = require_tenant(&request)?;
        let id = SnapshotId::parse(&request.into_inner().snapshot_id)?;
        let owner = tenant.clone();
        let (record, mut portions) = self
            .store
            .read(move |fat| fat.snapshot(&owner, id))
            .await
            .map_err(store_status)?
            .map_err(|e| status_of(e.into()))?;
        self.grant_fetches(&tenant, &mut portions).await?;
        Ok(Response::new(pb::GetSnapshotResponse {
            snapshot: Some(record.into()),
            portions: convert::locations(portions),
        }))
    }

    async fn forget(
        &self,
        request: Request<pb::ForgetRequest>,
    ) -> Result<Response<pb::ForgetResponse>, Status> {
        let tenant = require_tenant(&request)?;
        let snapshot = SnapshotId::parse(&request.into_inner().snapshot_id)?;
        let command = Command::Forget(Forget {
            tenant: tenant.clone(),
            snapshot,
        });
        self.store.propose(command).await.map_err(status_of)?;
        tracing::info!(%tenant, %snapshot, "snapshot forgotten");
        Ok(Response::new(pb::ForgetResponse {}))
    }

    async fn locate_portions(
        &self,
        request: Request<pb::LocatePortionsRequest>,
    ) -> Result<Response<pb::LocatePortionsResponse>, Status> {
        let tenant = require_tenant(&request)?;
        let ids = convert::locate_ids(&request.into_inner().portion_ids)?;
        let owner = tenant.clone();
        let mut portions = self
            .store
            .read(move |fat| fat.locate(&owner, &ids))
            .await
            .map_err(store_status)?;
        self.grant_fetches(&tenant, &mut portions).await?;
        Ok(Response::new(pb::LocatePortionsResponse {
            portions: convert::locations(portions),
        }))
    }

    async fn list_portions(
        &self,
        request: Request<pb::ListPortionsRequest>,
    ) -> Result<Response<pb::ListPortionsResponse>, Status> {
        let tenant = require_tenant(&request)?;
        let r = request.into_inner();
        let after = convert::list_after(&r)?;
        let limit = usize::try_from(r.limit).unwrap_or(usize::MAX);
        let (portions, more) = self
            .store
            .read(move |fat| fat.list_portions(&tenant, after, limit))
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::ListPortionsResponse {
            portions: portions.into_iter().map(Into::into).collect(),
            more,
        }))
    }

    async fn release_portions(
        &self,
        request: Request<pb::ReleasePortionsRequest>,
    ) -> Result<Response<pb::ReleasePortionsResponse>, Status> {
        let tenant = require_tenant(&request)?;
        let command = convert::release_portions_command(tenant.clone(), request.into_inner())?;
        let asked = command.portions.len();
        match self
            .store
            .propose(Command::ReleasePortions(command))
            .await
            .map_err(status_of)?
        {
            Outcome::PortionsReleased { portions, bytes } => {
                tracing::info!(%tenant, asked, portions, bytes, "portions released");
                Ok(Response::new(pb::ReleasePortionsResponse {
                    released_portions: portions,
                    released_bytes: bytes,
                }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn rewrite_snapshots(
        &self,
        request: Request<pb::RewriteSnapshotsRequest>,
    ) -> Result<Response<pb::RewriteSnapshotsResponse>, Status> {
        let tenant = require_tenant(&request)?;
        let command = convert::rewrite_snapshots_command(tenant.clone(), request.into_inner())?;
        match self
            .store
            .propose(Command::RewriteSnapshots(command))
            .await
            .map_err(status_of)?
        {
            Outcome::SnapshotsRewritten { snapshots } => {
                tracing::info!(%tenant, snapshots, "snapshots rewritten");
                Ok(Response::new(pb::RewriteSnapshotsResponse {
                    rewritten: snapshots,
                }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn put_key_file(
        &self,
        request: Request<pb::PutKeyFileRequest>,
    ) -> Result<Response<pb::PutKeyFileResponse>, Status> {
        let tenant = require_tenant(&request)?;
        let command = Command::StoreTenantKey(StoreTenantKey {
            tenant: tenant.clone(),
            key_file: request.into_inner().key_file,
            now_unix_ms: now_unix_ms(),
        });
        self.store.propose(command).await.map_err(status_of)?;
        tracing::info!(%tenant, "key file stored");
        Ok(Response::new(pb::PutKeyFileResponse {}))
    }

    async fn get_key_file(
        &self,
        request: Request<pb::GetKeyFileRequest>,
    ) -> Result<Response<pb::GetKeyFileResponse>, Status> {
        let tenant = require_tenant(&request)?;
        let owner = tenant.clone();
        let key_file = self
            .store
            .read(move |fat| fat.tenant_key(&owner))
            .await
            .map_err(store_status)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "tenant {tenant} has stored no key file; run `offsite init` (or `offsite key \
                     passwd`) on the machine that holds it"
                ))
            })?;
        Ok(Response::new(pb::GetKeyFileResponse { key_file }))
    }

    async fn usage(
        &self,
        request: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let tenant = require_tenant(&request)?;
        let now = now_unix_ms();
        let usage = self
            .store
            .read(move |fat| fat.usage(&tenant, now))
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::UsageResponse {
            statement: Some(super::market::statement(usage.statement)),
            estimate_micros: usage.estimate_micros,
            stored_bytes_one_copy: usage.stored_bytes_one_copy,
            hosts: usage
                .hosts
                .into_iter()
                .map(|(host, stored_bytes, snapshots)| pb::HostUsage {
                    host,
                    stored_bytes,
                    snapshots,
                })
                .collect(),
        }))
    }

    async fn report_bad_copies(
        &self,
        request: Request<pb::ReportBadCopiesRequest>,
    ) -> Result<Response<pb::ReportBadCopiesResponse>, Status> {
        let tenant = require_tenant(&request)?;
        let reports = offsite_proto::parse_bad_copy_reports(request.into_inner().copies)?;
        let judged = self.auditor.judge(&*self.store, &tenant, reports).await?;
        Ok(Response::new(pb::ReportBadCopiesResponse {
            answers: judged
                .into_iter()
                .map(|(report, verdict)| convert::bad_copy_answer(report, verdict))
                .collect(),
        }))
    }
}
