//! The server side of the `Raft` gRPC service, the peer protocol: openraft's
//! messages from the other coordinators, and the proposals and read indexes
//! followers forward to the leader. A thin adapter over [`RaftStore`];
//! calls from the other coordinators only.

use offsite_identity::{require_role, Role};
use offsite_proto::pb::raft as pb;
use offsite_proto::pb::raft::raft_server::Raft as RaftApi;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::codec::{decode, encode};
use super::group::{check_command_size, RaftStore, Try};
use super::network::Forwarded;
use super::{NodeId, TypeConfig};
use crate::fat::Command;
use crate::store::{FatStore, ProposeError};

/// The `Raft` service of one coordinator.
pub(crate) struct RaftService {
    store: RaftStore,
    /// Wall-clock time (unix ms) the leader stamps into forwarded commands.
    clock: fn() -> u64,
}

impl RaftService {
    /// The service over `store`, stamping forwarded commands with `clock`.
    pub fn new(store: RaftStore, clock: fn() -> u64) -> Self {
        Self { store, clock }
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

impl RaftService {
    /// A forwarded proposal or read index comes from a current member: a
    /// removed coordinator's certificate is refused. (openraft's own
    /// messages are checked by role only: a replica's view of the
    /// membership may lag the group's, and its term and log checks keep a
    /// removed member from winning an election.)
    fn check_member<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let caller = require_role(request, &[Role::Coordinator])?;
        if self.store.admits_member(&caller.name) {
            return Ok(());
        }
        tracing::warn!(caller = %caller.name, "refused a call from a coordinator certificate that is not a member");
        Err(Status::permission_denied(format!(
            "coordinator certificate {} is not a member of the group; a removed coordinator \
             cannot propose or read; add it again with `offsite-coordinator members \
             add-learner --name {}`",
            caller.name, caller.name
        )))
    }
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
        self.check_member(&request)?;
        let mut command: Command = decode_request(request)?;
        // Every time in the log is the leader's: the follower's clock may be off.
        command.restamp((self.clock)());
        let deadline = Instant::now() + self.store.inner.write_timeout;
        let answer = if !self.store_is_leader() {
            Forwarded::NotLeader
        } else if let Err(err) = check_command_size(&command) {
            match err {
                ProposeError::Refused(refused) => Forwarded::Outcome(Err(refused)),
                ProposeError::Store(e) => Forwarded::Failed(e.to_string()),
            }
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
        self.check_member(&request)?;
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
}

impl RaftService {
    fn store_is_leader(&self) -> bool {
        self.store.is_leader()
    }
}
