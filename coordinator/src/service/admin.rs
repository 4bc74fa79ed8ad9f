//! `Admin`: the operator service. The coordinator group's status and its
//! membership changes (admin certificates, or a coordinator forwarding a
//! change to the leader), grant-key rotation (admin certificates only) and
//! the marketplace status (any certificate of the marketplace, as the
//! former `Fat.Status`). A thin adapter over [`RaftStore`]; the ledger,
//! vendor exits and the dashboard belong here too; the ledger and tenant
//! limits are here (admin certificates only).

use std::sync::Arc;

use offsite_identity::{require_role, PeerIdentity, Role};
use offsite_proto::clock::now_unix_ms;
use offsite_proto::pb::admin as pb;
use offsite_proto::pb::admin::admin_server::Admin as AdminApi;
use offsite_proto::pb::common as pbc;
use offsite_proto::TenantId;
use tonic::{Request, Response, Status};

use super::{convert, grants, market, status_of, store_status};
use crate::fat::{ClosePeriod, Command, Outcome, SetTenantLimits};
use crate::raft::{MembershipChange, RaftStore, FORWARDED_KEY};
use crate::store::FatStore;

/// The `Admin` service of one coordinator.
pub(crate) struct AdminService {
    store: Arc<RaftStore>,
}

impl AdminService {
    pub fn new(store: Arc<RaftStore>) -> Self {
        Self { store }
    }
}

/// Group status and membership changes: an operator (admin certificate) or
/// another coordinator (forwarding to the leader, or asking whether a group
/// exists).
fn from_admin<T>(request: &Request<T>) -> Result<PeerIdentity, Status> {
    require_role(request, &[Role::Admin, Role::Coordinator])
}

impl AdminService {
    /// The request of a membership change, and whether another coordinator
    /// forwarded it (only a coordinator forwards; an operator's call is
    /// never taken as one). A coordinator certificate must be a current
    /// member's: a removed coordinator cannot change the membership, nor
    /// join again on its own.
    fn member_request(
        &self,
        request: Request<pb::MemberRequest>,
    ) -> Result<(pb::MemberRequest, bool), Status> {
        let caller = from_admin(&request)?;
        if caller.role == Role::Coordinator && !self.store.admits_member(&caller.name) {
            tracing::warn!(caller = %caller.name, "refused a membership change from a coordinator certificate that is not a member");
            return Err(Status::permission_denied(format!(
                "coordinator certificate {} is not a member of the group, so it cannot change \
                 the membership; an operator adds it with an admin certificate \
                 (`offsite-coordinator members add-learner --name {}`)",
                caller.name, caller.name
            )));
        }
        let forwarded =
            caller.role == Role::Coordinator && request.metadata().get(FORWARDED_KEY).is_some();
        Ok((request.into_inner(), forwarded))
    }

    async fn membership(
        &self,
        change: MembershipChange,
        forwarded: bool,
    ) -> Result<Response<pb::GroupStatusResponse>, Status> {
        if let MembershipChange::AddLearner { id, address } = &change {
            if *id == 0 {
                return Err(Status::invalid_argument("coordinator ids start at 1"));
            }
            if address.is_empty() || address.len() > offsite_proto::limits::MAX_ADDRESS_LEN {
                return Err(Status::invalid_argument(
                    "name the new coordinator's host:port",
                ));
            }
            if let Some((name, _)) = address.split_once('@') {
                crate::raft::check_member_name(name).map_err(Status::invalid_argument)?;
            }
        }
        let status = self
            .store
            .change_membership(change, forwarded)
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(status.into()))
    }
}

#[tonic::async_trait]
impl AdminApi for AdminService {
    async fn group_status(
        &self,
        request: Request<pb::GroupStatusRequest>,
    ) -> Result<Response<pb::GroupStatusResponse>, Status> {
        from_admin(&request)?;
        Ok(Response::new(self.store.group_status().into()))
    }

    async fn add_learner(
        &self,
        request: Request<pb::MemberRequest>,
    ) -> Result<Response<pb::GroupStatusResponse>, Status> {
        let (r, forwarded) = self.member_request(request)?;
        let change = MembershipChange::AddLearner {
            id: r.id,
            address: r.address,
        };
        self.membership(change, forwarded).await
    }

    async fn promote_voter(
        &self,
        request: Request<pb::MemberRequest>,
    ) -> Result<Response<pb::GroupStatusResponse>, Status> {
        let (r, forwarded) = self.member_request(request)?;
        self.membership(MembershipChange::Promote { id: r.id }, forwarded)
            .await
    }

    async fn remove_member(
        &self,
        request: Request<pb::MemberRequest>,
    ) -> Result<Response<pb::GroupStatusResponse>, Status> {
        let (r, forwarded) = self.member_request(request)?;
        self.membership(MembershipChange::Remove { id: r.id }, forwarded)
            .await
    }

    async fn rotate_grant_key(
        &self,
        request: Request<pb::RotateGrantKeyRequest>,
    ) -> Result<Response<pb::RotateGrantKeyResponse>, Status> {
        let caller = require_role(&request, &[Role::Admin])?;
        let outcome = grants::rotate(&*self.store).await.map_err(status_of)?;
        let Outcome::GrantKeyInstalled { key_id, retired } = outcome else {
            return Err(Status::internal(format!(
                "the FAT answered a grant key rotation with {outcome:?}; this is a coordinator \
                 bug, please report it"
            )));
        };
        tracing::info!(admin = %caller.name, key_id, ?retired, "grant key rotated");
        // An up-to-date read: a follower may not have applied the rotation yet.
        let keys = self
            .store
            .read(grants::public_keys_of)
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::RotateGrantKeyResponse {
            key_id,
            retired,
            keys,
        }))
    }

    async fn marketplace_status(
        &self,
        _request: Request<pb::MarketplaceStatusRequest>,
    ) -> Result<Response<pb::MarketplaceStatusResponse>, Status> {
        // Any certificate of the marketplace, as `Fat.Status` was: capacity
        // only, no tenant data. This replica's own view, so an operator can
        // compare replicas.
        let status = self.store.read_local(|fat| fat.status());
        let applied_index = self.store.applied_index();
        Ok(Response::new(convert::marketplace_status(
            status,
            applied_index,
        )))
    }

    async fn set_tenant_limits(
        &self,
        request: Request<pb::TenantLimitsRequest>,
    ) -> Result<Response<pb::TenantLimits>, Status> {
        let caller = require_role(&request, &[Role::Admin])?;
        let r = request.into_inner();
        let tenant = TenantId::new(r.tenant_id)?;
        let lookup = tenant.clone();
        let mut limits = self
            .store
            .read(move |fat| fat.tenant_limits(&lookup))
            .await
            .map_err(store_status)?;
        let or_none = |v: u64| (v > 0).then_some(v);
        if let Some(quota) = r.quota_bytes {
            limits.quota_bytes = or_none(quota);
        }
        if let Some(cap) = r.monthly_cap_micros {
            limits.monthly_cap_micros = or_none(cap);
        }
        if let Some(open) = r.max_open_reservations {
            limits.max_open_reservations = (open > 0).then_some(open);
        }
        let command = Command::SetTenantLimits(SetTenantLimits {
            tenant: tenant.clone(),
            limits: limits.clone(),
            now_unix_ms: now_unix_ms(),
        });
        self.store.propose(command).await.map_err(status_of)?;
        tracing::info!(admin = %caller.name, %tenant, ?limits, "tenant limits set");
        Ok(Response::new(pb::TenantLimits {
            tenant_id: tenant.into(),
            quota_bytes: limits.quota_bytes.unwrap_or(0),
            monthly_cap_micros: limits.monthly_cap_micros.unwrap_or(0),
            max_open_reservations: limits.max_open_reservations.unwrap_or(0),
        }))
    }

    async fn ledger_show(
        &self,
        request: Request<pb::LedgerShowRequest>,
    ) -> Result<Response<pbc::Statement>, Status> {
        require_role(&request, &[Role::Admin])?;
        let period = request.into_inner().period;
        let now = now_unix_ms();
        let statement = self
            .store
            .read(move |fat| fat.statement(period, now))
            .await
            .map_err(store_status)?
            .map_err(|e| status_of(e.into()))?;
        Ok(Response::new(market::statement(statement)))
    }

    async fn ledger_close(
        &self,
        request: Request<pb::LedgerCloseRequest>,
    ) -> Result<Response<pbc::Statement>, Status> {
        let caller = require_role(&request, &[Role::Admin])?;
        let period = request.into_inner().period;
        let command = Command::ClosePeriod(ClosePeriod {
            period,
            now_unix_ms: now_unix_ms(),
        });
        self.store.propose(command).await.map_err(status_of)?;
        tracing::info!(admin = %caller.name, period, "billing period closed");
        let statement = self
            .store
            .read(move |fat| fat.statement(Some(period), 0))
            .await
            .map_err(store_status)?
            .map_err(|e| status_of(e.into()))?;
        Ok(Response::new(market::statement(statement)))
    }
}
