//! openraft's transport over our gRPC `Raft` service: each openraft message
//! is encoded with [`codec`](super::codec) into `RaftBytes` and sent as a
//! unary call with openraft's deadline. An unreachable peer becomes
//! `RPCError::Unreachable`, so openraft backs off instead of spinning.
//!
//! [`Peers`] also serves the coordinator's own calls to the leader
//! (forwarded proposals and reads, admin calls): one lazily connected
//! channel per address, shared.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use offsite_identity::{Credentials, Role};
use offsite_proto::pb::raft::raft_client::RaftClient;
use offsite_proto::pb::raft::RaftBytes;
use openraft::error::{
    Infallible, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use super::codec::{decode, encode};
use super::health::Health;
use super::{NodeId, TypeConfig};

/// Largest Raft message a coordinator sends or accepts (a batch of log
/// entries, a snapshot chunk, a forwarded command).
pub const MAX_RAFT_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

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

    /// A client for the coordinator at `address` (host:port).
    pub fn client(&self, address: &str) -> Result<RaftClient<Channel>, String> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        let channel = match channels.get(address) {
            Some(channel) => channel.clone(),
            None => {
                let channel = self
                    .credentials
                    .endpoint(address, &Role::Coordinator.dns_name())
                    .map_err(|e| format!("coordinator address {e}"))?
                    .connect_timeout(Duration::from_secs(2))
                    .tcp_nodelay(true)
                    .connect_lazy();
                channels.insert(address.to_string(), channel.clone());
                channel
            }
        };
        Ok(RaftClient::new(channel)
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES))
    }
}

impl RaftNetworkFactory<TypeConfig> for Peers {
    type Network = PeerLink;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerLink {
        PeerLink {
            target,
            address: node.addr.clone(),
            client: self.client(&node.addr),
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
        let client = match &self.client {
            Ok(client) => client.clone(),
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(&self.error(e)))),
        };
        let data = encode(request).map_err(|e| self.network(e))?;
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
        let bytes = self
            .call(&rpc, &option, |mut c, r| async move {
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
