//! The client side of the peer protocol: everything one coordinator asks
//! the others.
//!
//! - openraft's transport ([`PeerLink`]): each openraft message is encoded
//!   with [`codec`](super::codec) into `RaftBytes` and sent as a unary
//!   `Raft` call with openraft's deadline. An unreachable peer becomes
//!   `RPCError::Unreachable`, so openraft backs off instead of spinning.
//! - A follower's calls to the leader: forwarded proposals
//!   ([`Peers::propose`]), read indexes ([`Peers::read_index`]) and
//!   membership changes ([`Peers::change_membership`], on the leader's
//!   `Admin` service, marked [`FORWARDED_KEY`]).
//! - Whether a peer already belongs to a group ([`Peers::initialized`]).
//!
//! [`Peers`] keeps one lazily connected channel per address, shared by all
//! of them.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use offsite_identity::{Credentials, Role};
use offsite_proto::pb::admin::admin_client::AdminClient;
use offsite_proto::pb::admin::{GroupStatusRequest, MemberRequest};
use offsite_proto::pb::raft::raft_client::RaftClient;
use offsite_proto::pb::raft::{RaftBytes, ReadIndexRequest};
use openraft::error::{
    Infallible, InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError,
    RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;

use super::member::MemberAddr;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tonic::transport::Channel;

use super::admin::{GroupStatus, MembershipChange};
use super::codec::{decode, encode};
use super::group::Try;
use super::health::Health;
use super::{NodeId, TypeConfig};
use crate::fat::{Command, FatError, Outcome};
use crate::store::{ProposeError, StoreError};

/// Metadata key marking a membership change a coordinator forwarded to the
/// leader, so the leader does not forward it again.
pub(crate) const FORWARDED_KEY: &str = "offsite-forwarded";

/// A forwarded proposal's answer from the leader.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Forwarded {
    Outcome(Result<Outcome, FatError>),
    /// The callee is not the leader (any more); ask again.
    NotLeader,
    /// The leader could not commit it; its error, to pass on.
    Failed(String),
}

/// Largest Raft message a coordinator sends or accepts (a batch of log
/// entries, a snapshot chunk, a forwarded command).
pub const MAX_RAFT_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Largest batch of log entries sent in one `AppendEntries` call: it must
/// arrive within a heartbeat. A larger batch is split (openraft is told to
/// send fewer entries); one entry is at most `limits::MAX_COMMAND_BYTES`.
pub const MAX_APPEND_BYTES: usize = 4 * offsite_proto::limits::MAX_COMMAND_BYTES;

/// Channels to the other coordinators, by address (mutual TLS, expecting a
/// coordinator certificate), and who answered lately.
#[derive(Clone)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    credentials: Arc<Credentials>,
    pub health: Arc<Health>,
}

impl Peers {
    /// No channel yet; every one will present `credentials`.
    pub fn new(credentials: Credentials) -> Self {
        Self {
            channels: Arc::default(),
            credentials: Arc::new(credentials),
            health: Arc::default(),
        }
    }

    /// The channel to the coordinator at `address` (host:port).
    fn channel(&self, address: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let channel = self
            .credentials
            .endpoint(address, &Role::Coordinator.dns_name())
            .map_err(|e| format!("coordinator address {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    /// A `Raft` client for the coordinator at `address` (host:port).
    fn client(&self, address: &str) -> Result<RaftClient<Channel>, String> {
        Ok(RaftClient::new(self.channel(address)?)
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES))
    }

    /// An `Admin` client for the coordinator at `address` (host:port).
    fn admin(&self, address: &str) -> Result<AdminClient<Channel>, String> {
        Ok(AdminClient::new(self.channel(address)?))
    }

    /// Forwards `command` to the leader `leader` at `address` and returns
    /// its outcome, or why to try again.
    pub(super) async fn propose(
        &self,
        leader: NodeId,
        address: &str,
        command: &Command,
        deadline: Instant,
    ) -> Try<Outcome> {
        let data = match encode(command) {
            Ok(data) => data,
            Err(e) => {
                return Try::Done(Err(StoreError::Stopped(format!(
                    "cannot encode a command: {e}"
                ))
                .into()))
            }
        };
        let mut client = match self.client(address) {
            Ok(client) => client,
            Err(e) => return Try::Again(e),
        };
        let call = client.propose(RaftBytes { data });
        let reply = match tokio::time::timeout_at(deadline, call).await {
            Err(_) => {
                return Try::Again(format!(
                    "the leader {leader} at {address} did not answer in time"
                ))
            }
            Ok(Err(status)) => {
                return Try::Again(format!(
                    "the leader {leader} at {address}: {}",
                    status.message()
                ))
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        match decode::<Forwarded>(&reply.data) {
            Ok(Forwarded::Outcome(Ok(outcome))) => Try::Done(Ok(outcome)),
            Ok(Forwarded::Outcome(Err(refused))) => Try::Done(Err(ProposeError::Refused(refused))),
            Ok(Forwarded::NotLeader) => Try::Again(format!("{leader} is no longer the leader")),
            Ok(Forwarded::Failed(message)) => Try::Done(Err(StoreError::Leader {
                leader,
                address: address.into(),
                problem: message,
            }
            .into())),
            Err(e) => Try::Done(Err(StoreError::Leader {
                leader,
                address: address.into(),
                problem: format!("unreadable answer: {e}"),
            }
            .into())),
        }
    }

    /// The leader's read index: the log index a linearizable read on this
    /// replica must wait for; or why to try again.
    pub(super) async fn read_index(
        &self,
        leader: NodeId,
        address: &str,
        deadline: Instant,
    ) -> Result<u64, String> {
        let mut client = self.client(address)?;
        let call = client.read_index(ReadIndexRequest {});
        match tokio::time::timeout_at(deadline, call).await {
            Ok(Ok(reply)) => Ok(reply.into_inner().index),
            Ok(Err(status)) => Err(format!("the leader {leader}: {}", status.message())),
            Err(_) => Err(format!("the leader {leader} did not answer in time")),
        }
    }

    /// Forwards a membership change to the leader `leader` at `address`
    /// (marked forwarded, so it goes no further) and returns the group's
    /// status after it.
    pub(super) async fn change_membership(
        &self,
        leader: NodeId,
        address: &str,
        change: MembershipChange,
    ) -> Result<GroupStatus, StoreError> {
        let unreachable = |problem: String| StoreError::Leader {
            leader,
            address: address.to_string(),
            problem,
        };
        let mut client = self.admin(address).map_err(unreachable)?;
        let forwarded = |message: MemberRequest| {
            let mut request = tonic::Request::new(message);
            request.metadata_mut().insert(
                FORWARDED_KEY,
                tonic::metadata::MetadataValue::from_static("1"),
            );
            request
        };
        let reply = match change {
            MembershipChange::AddLearner { .. } => {
                client.add_learner(forwarded(change.into())).await
            }
            MembershipChange::Promote { .. } => {
                client.promote_voter(forwarded(change.into())).await
            }
            MembershipChange::Remove { .. } => client.remove_member(forwarded(change.into())).await,
        };
        let reply = reply.map_err(|status| {
            StoreError::Membership(format!(
                "the leader {leader} at {address}: {}",
                status.message()
            ))
        })?;
        GroupStatus::try_from(reply.into_inner()).map_err(StoreError::Membership)
    }

    /// Whether the coordinator at `address` answers, within a second, that
    /// it belongs to a group.
    pub(super) async fn initialized(&self, address: &str) -> bool {
        let Ok(mut client) = self.admin(address) else {
            return false;
        };
        let call = client.group_status(GroupStatusRequest {});
        matches!(
            tokio::time::timeout(Duration::from_secs(1), call).await,
            Ok(Ok(reply)) if reply.get_ref().initialized
        )
    }
}

impl RaftNetworkFactory<TypeConfig> for Peers {
    type Network = PeerLink;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerLink {
        let address = MemberAddr::of(node).address;
        PeerLink {
            target,
            client: self.client(&address),
            address,
            health: Arc::clone(&self.health),
        }
    }
}

/// openraft's connection to one peer.
pub struct PeerLink {
    target: NodeId,
    address: String,
    client: Result<RaftClient<Channel>, String>,
    health: Arc<Health>,
}

/// A transport failure, for openraft's error types.
#[derive(Debug, thiserror::Error)]
#[error("coordinator {target} at {address}: {problem}")]
struct LinkError {
    target: NodeId,
    address: String,
    problem: String,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl PeerLink {
    fn error(&self, problem: impl ToString) -> LinkError {
        LinkError {
            target: self.target,
            address: self.address.clone(),
            problem: problem.to_string(),
        }
    }

    /// Sends `request` with `call` and returns the peer's encoded answer.
    async fn call<Req, E, F, Fut>(
        &mut self,
        request: &Req,
        option: &RPCOption,
        call: F,
    ) -> RpcResult<Vec<u8>, E>
    where
        Req: Serialize,
        E: std::error::Error,
        F: FnOnce(RaftClient<Channel>, RaftBytes) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftBytes>, tonic::Status>>,
    {
        let data = encode(request).map_err(|e| self.network(e))?;
        self.send(data, option, call).await
    }

    /// Sends an encoded openraft message with openraft's deadline.
    async fn send<E, F, Fut>(
        &mut self,
        data: Vec<u8>,
        option: &RPCOption,
        call: F,
    ) -> RpcResult<Vec<u8>, E>
    where
        E: std::error::Error,
        F: FnOnce(RaftClient<Channel>, RaftBytes) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftBytes>, tonic::Status>>,
    {
        let client = match &self.client {
            Ok(client) => client.clone(),
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(&self.error(e)))),
        };
        let reply = tokio::time::timeout(option.hard_ttl(), call(client, RaftBytes { data })).await;
        match reply {
            Err(_) => {
                let e = self.error(format!("no answer within {:?}", option.hard_ttl()));
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => Err(
                RPCError::Unreachable(Unreachable::new(&self.error(status.message()))),
            ),
            Ok(Err(status)) => Err(self.network(status.message())),
            Ok(Ok(reply)) => {
                self.health.heard(self.target);
                Ok(reply.into_inner().data)
            }
        }
    }

    fn network<E: std::error::Error>(
        &self,
        problem: impl ToString,
    ) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
        RPCError::Network(NetworkError::new(&self.error(problem)))
    }

    /// Decodes an answer that is the response itself (the peer's only
    /// possible error, shutting down, arrives as a gRPC status).
    fn plain<Resp: DeserializeOwned, E: std::error::Error>(
        &self,
        bytes: &[u8],
    ) -> RpcResult<Resp, E> {
        decode(bytes).map_err(|e| self.network(e))
    }
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, Infallible> {
        let data = encode(&rpc).map_err(|e| self.network(e))?;
        if data.len() > MAX_APPEND_BYTES {
            let entries = rpc.entries.len() as u64;
            if entries > 1 {
                // openraft sends fewer entries next time, at once.
                let hint = entries.saturating_mul(MAX_APPEND_BYTES as u64) / data.len() as u64;
                return Err(PayloadTooLarge::new_entries_hint(hint.max(1)).into());
            }
            if data.len() > MAX_RAFT_MESSAGE_BYTES {
                return Err(self.network(format!(
                    "one log entry of {} bytes is more than the {MAX_RAFT_MESSAGE_BYTES} bytes \
                     a Raft message may hold; it cannot be replicated",
                    data.len()
                )));
            }
        }
        let bytes = self
            .send(data, &option, |mut c, r| async move {
                c.append_entries(r).await
            })
            .await?;
        self.plain(&bytes)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let bytes = self
            .call(&rpc, &option, |mut c, r| async move {
                c.install_snapshot(r).await
            })
            .await?;
        let result: Result<
            InstallSnapshotResponse<NodeId>,
            RaftError<NodeId, InstallSnapshotError>,
        > = decode(&bytes).map_err(|e| self.network(e))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, Infallible> {
        let bytes = self
            .call(&rpc, &option, |mut c, r| async move { c.vote(r).await })
            .await?;
        self.plain(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};

    use super::*;
    use crate::fat::StoreTenantKey;

    /// A link whose channel never opened: what it sends fails as unreachable.
    fn link() -> PeerLink {
        PeerLink {
            target: 2,
            address: "127.0.0.1:1".into(),
            client: Err("no channel in this test".into()),
            health: Arc::default(),
        }
    }

    /// `count` entries of about 900 KB each (just under one log entry's cap).
    fn append(count: u64) -> AppendEntriesRequest<TypeConfig> {
        let entry = |index| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::StoreTenantKey(StoreTenantKey {
                tenant: offsite_proto::TenantId::new("acme").unwrap(),
                key_file: vec![7; 900 * 1024],
                now_unix_ms: 0,
            })),
        };
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: (1..=count).map(entry).collect(),
        }
    }

    #[tokio::test]
    async fn a_batch_larger_than_an_append_asks_openraft_for_fewer_entries() {
        let option = RPCOption::new(Duration::from_secs(1));
        match link().append_entries(append(8), option.clone()).await {
            Err(RPCError::PayloadTooLarge(too_large)) => {
                let hint = too_large.entries_hint();
                assert!((1..=4).contains(&hint), "hint {hint}");
                let fits = append(hint);
                assert!(encode(&fits).unwrap().len() <= MAX_APPEND_BYTES);
            }
            other => panic!("{other:?}"),
        }
        // One entry is sent whatever its size (it is within the entry cap).
        match link().append_entries(append(1), option).await {
            Err(RPCError::Unreachable(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}
