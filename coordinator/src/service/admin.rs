//! `Admin`: the operator service. The coordinator group's status and its
//! membership changes (admin certificates, or a coordinator forwarding a
//! change to the leader), grant-key rotation (admin certificates only) and
//! the marketplace status (any certificate of the marketplace, as the
//! former `Fat.Status`). A thin adapter over [`RaftStore`]; the ledger,
//! tenant limits, vendor exits and the dashboard belong here too.

use std::sync::Arc;

use offsite_identity::{require_role, PeerIdentity, Role};
use offsite_proto::pb::admin as pb;
use offsite_proto::pb::admin::admin_server::Admin as AdminApi;
use tonic::{Request, Response, Status};

use super::{convert, grants, status_of, store_status};
use crate::fat::Outcome;
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
}
