//! The server side of the `Raft` gRPC service: openraft's messages from the
//! other coordinators, proposals and read indexes forwarded by followers,
//! and the group's admin calls. A thin adapter over [`RaftStore`].

use offsite_identity::{require_role, PeerIdentity, Role};
use offsite_proto::pb::raft as pb;
use offsite_proto::pb::raft::raft_server::Raft as RaftApi;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::admin::{GroupStatus, MemberStatus, MembershipChange};
use super::codec::{decode, encode};
use super::group::{Forwarded, RaftStore, Try};
use super::{NodeId, TypeConfig};
use crate::fat::{Command, Outcome};
use crate::service::{grants, now_unix_ms};
use crate::store::{FatStore, ProposeError};

/// Metadata key marking an admin call already forwarded once.
pub(super) const FORWARDED_KEY: &str = "offsite-forwarded";

/// The `Raft` service of one coordinator.
pub(crate) struct RaftService {
    store: RaftStore,
}

impl RaftService {
    pub fn new(store: RaftStore) -> Self {
        Self { store }
    }

    fn heard(&self, node: NodeId) {
        self.store.inner.peers.health.heard(node);
    }
}

/// Raft messages, forwarded proposals and read indexes come only from the
/// other coordinators.
fn from_coordinator<T>(request: &Request<T>) -> Result<(), Status> {
    require_role(request, &[Role::Coordinator]).map(drop)
}

/// Group status and membership changes: an operator (admin certificate) or
/// another coordinator (forwarding to the leader).
fn from_admin<T>(request: &Request<T>) -> Result<PeerIdentity, Status> {
    require_role(request, &[Role::Admin, Role::Coordinator])
}

fn decode_request<T: DeserializeOwned>(request: Request<pb::RaftBytes>) -> Result<T, Status> {
    from_coordinator(&request)?;
    decode(&request.into_inner().data).map_err(|e| {
        Status::invalid_argument(format!(
            "unreadable Raft message: {e}; are both coordinators the same build?"
        ))
    })
}

fn reply<T: Serialize>(value: &T) -> Result<Response<pb::RaftBytes>, Status> {
    let data =
        encode(value).map_err(|e| Status::internal(format!("cannot encode a Raft reply: {e}")))?;
    Ok(Response::new(pb::RaftBytes { data }))
}

/// The coordinator is shutting down: the peer should treat it as unreachable.
fn stopping(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("this coordinator is stopping: {e}"))
}

pub(super) fn group_status_to_pb(s: GroupStatus) -> pb::GroupStatusResponse {
    let (leader_id, leader_address) = s.leader.unwrap_or((0, String::new()));
    pb::GroupStatusResponse {
        node_id: s.node_id,
        role: s.role,
        leader_id,
        leader_address,
        term: s.term,
        last_log_index: s.last_log_index,
        last_applied_index: s.last_applied_index,
        snapshot_index: s.snapshot_index,
        members: s
            .members
            .into_iter()
            .map(|m| pb::GroupMember {
                id: m.id,
                address: m.address,
                voter: m.voter,
            })
            .collect(),
        fat_digest: s.fat_digest.to_vec(),
        initialized: s.initialized,
    }
}

pub(super) fn group_status_from_pb(s: pb::GroupStatusResponse) -> Result<GroupStatus, String> {
    let fat_digest = <[u8; 32]>::try_from(s.fat_digest.as_slice())
        .map_err(|_| format!("a FAT digest of {} bytes instead of 32", s.fat_digest.len()))?;
    Ok(GroupStatus {
        node_id: s.node_id,
        role: s.role,
        leader: (s.leader_id != 0).then_some((s.leader_id, s.leader_address)),
        term: s.term,
        last_log_index: s.last_log_index,
        last_applied_index: s.last_applied_index,
        snapshot_index: s.snapshot_index,
        members: s
            .members
            .into_iter()
            .map(|m| MemberStatus {
                id: m.id,
                address: m.address,
                voter: m.voter,
            })
            .collect(),
        fat_digest,
        initialized: s.initialized,
    })
}

fn member_change(
    request: Request<pb::MemberRequest>,
    add: bool,
    promote: bool,
) -> Result<(MembershipChange, bool), Status> {
    let caller = from_admin(&request)?;
    // Only a coordinator forwards; an operator's call is never taken as one.
    let forwarded =
        caller.role == Role::Coordinator && request.metadata().get(FORWARDED_KEY).is_some();
    let r = request.into_inner();
    let change = if add {
        MembershipChange::AddLearner {
            id: r.id,
            address: r.address,
        }
    } else if promote {
        MembershipChange::Promote { id: r.id }
    } else {
        MembershipChange::Remove { id: r.id }
    };
    Ok((change, forwarded))
}

impl RaftService {
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
        }
        let status = self
            .store
            .change_membership(change, forwarded)
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(group_status_to_pb(status)))
    }
}

#[tonic::async_trait]
impl RaftApi for RaftService {
    async fn append_entries(
        &self,
        request: Request<pb::RaftBytes>,
    ) -> Result<Response<pb::RaftBytes>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode_request(request)?;
        self.heard(rpc.vote.leader_id().voted_for().unwrap_or_default());
        let response = self
            .store
            .inner
            .raft
            .append_entries(rpc)
            .await
            .map_err(stopping)?;
        reply(&response)
    }

    async fn vote(
        &self,
        request: Request<pb::RaftBytes>,
    ) -> Result<Response<pb::RaftBytes>, Status> {
        let rpc: VoteRequest<NodeId> = decode_request(request)?;
        self.heard(rpc.vote.leader_id().voted_for().unwrap_or_default());
        let response = self.store.inner.raft.vote(rpc).await.map_err(stopping)?;
        reply(&response)
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::RaftBytes>,
    ) -> Result<Response<pb::RaftBytes>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode_request(request)?;
        self.heard(rpc.vote.leader_id().voted_for().unwrap_or_default());
        let result = self.store.inner.raft.install_snapshot(rpc).await;
        reply(&result)
    }

    async fn propose(
        &self,
        request: Request<pb::RaftBytes>,
    ) -> Result<Response<pb::RaftBytes>, Status> {
        let mut command: Command = decode_request(request)?;
        // Every time in the log is the leader's: the follower's clock may be off.
        command.restamp(now_unix_ms());
        let deadline = Instant::now() + self.store.inner.write_timeout;
        let answer = if !self.store_is_leader() {
            Forwarded::NotLeader
        } else {
            match self.store.propose_here(command, deadline).await {
                Try::Done(Ok(outcome)) => Forwarded::Outcome(Ok(outcome)),
                Try::Done(Err(ProposeError::Refused(refused))) => Forwarded::Outcome(Err(refused)),
                Try::Done(Err(ProposeError::Store(e))) => Forwarded::Failed(e.to_string()),
                Try::Again(_) => Forwarded::NotLeader,
            }
        };
        reply(&answer)
    }

    async fn read_index(
        &self,
        request: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        from_coordinator(&request)?;
        if !self.store_is_leader() {
            return Err(Status::failed_precondition(
                "this coordinator is not the leader",
            ));
        }
        let deadline = Instant::now() + self.store.inner.write_timeout;
        match self.store.read_index_here(deadline).await {
            Ok(index) => Ok(Response::new(pb::ReadIndexResponse { index })),
            Err(Try::Done(Err(e))) => Err(Status::unavailable(e.to_string())),
            Err(_) => Err(Status::unavailable(
                "the leader could not confirm its leadership; retry",
            )),
        }
    }

    async fn group_status(
        &self,
        request: Request<pb::GroupStatusRequest>,
    ) -> Result<Response<pb::GroupStatusResponse>, Status> {
        from_admin(&request)?;
        Ok(Response::new(group_status_to_pb(self.store.group_status())))
    }

    async fn add_learner(
        &self,
        request: Request<pb::MemberRequest>,
    ) -> Result<Response<pb::GroupStatusResponse>, Status> {
        let (change, forwarded) = member_change(request, true, false)?;
        self.membership(change, forwarded).await
    }

    async fn promote_voter(
        &self,
        request: Request<pb::MemberRequest>,
    ) -> Result<Response<pb::GroupStatusResponse>, Status> {
        let (change, forwarded) = member_change(request, false, true)?;
        self.membership(change, forwarded).await
    }

    async fn remove_member(
        &self,
        request: Request<pb::MemberRequest>,
    ) -> Result<Response<pb::GroupStatusResponse>, Status> {
        let (change, forwarded) = member_change(request, false, false)?;
        self.membership(change, forwarded).await
    }

    async fn rotate_grant_key(
        &self,
        request: Request<pb::RotateGrantKeyRequest>,
    ) -> Result<Response<pb::RotateGrantKeyResponse>, Status> {
        let caller = require_role(&request, &[Role::Admin])?;
        let outcome = grants::rotate(&self.store)
            .await
            .map_err(crate::service::status_of)?;
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
            .map_err(crate::service::store_status)?;
        Ok(Response::new(pb::RotateGrantKeyResponse {
            key_id,
            retired,
            keys,
        }))
    }
}

impl RaftService {
    fn store_is_leader(&self) -> bool {
        use crate::store::FatStore;
        self.store.is_leader()
    }
}
