//! Running the group: initialising it once, changing its membership one
//! coordinator at a time (add a learner, promote it to voter, remove a
//! member), and describing it ([`GroupStatus`]).
//!
//! Membership changes run on the leader; a follower forwards them there.

use std::collections::{BTreeMap, BTreeSet};

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState, Vote};
use serde::Serialize;
use tokio::time::Instant;

use super::group::RaftStore;
use super::member::MemberAddr;
use super::NodeId;
use crate::store::StoreError;

/// A member of the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub address: String,
    /// The name its certificate must carry; empty when none is on record.
    pub name: String,
    pub voter: bool,
}

/// The group as one coordinator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupStatus {
    pub node_id: NodeId,
    pub role: String,
    pub leader: Option<(NodeId, String)>,
    pub term: u64,
    pub last_log_index: u64,
    pub last_applied_index: u64,
    pub snapshot_index: u64,
    pub members: Vec<MemberStatus>,
    /// blake3 of this replica's FAT.
    pub fat_digest: [u8; 32],
    pub initialized: bool,
}

/// A membership change, one coordinator at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    /// `address` is `NAME@HOST:PORT` (see [`MemberAddr`]), or a plain
    /// `HOST:PORT` for a member whose certificate name is not bound.
    AddLearner {
        id: NodeId,
        address: String,
    },
    Promote {
        id: NodeId,
    },
    Remove {
        id: NodeId,
    },
}

/// How many log entries a learner may trail the leader by and still be promoted.
const MAX_PROMOTE_LAG: u64 = 256;

/// Why a learner is not ready to vote, if it is not: it never acknowledged an
/// entry, or it trails the leader's log by more than [`MAX_PROMOTE_LAG`].
fn not_caught_up(id: NodeId, leader_last: u64, matched: Option<u64>) -> Option<String> {
    let advice =
        "wait until `offsite-coordinator status` on the leader shows it caught up, then promote it";
    match matched {
        None => Some(format!(
            "coordinator {id} has not acknowledged any log entry yet (is it running and reachable?); {advice}"
        )),
        Some(index) if leader_last.saturating_sub(index) > MAX_PROMOTE_LAG => Some(format!(
            "coordinator {id} is {} log entries behind the leader; {advice}",
            leader_last - index
        )),
        Some(_) => None,
    }
}

fn role(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

impl RaftStore {
    /// This coordinator's view of the group.
    pub fn group_status(&self) -> GroupStatus {
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let member = MemberAddr::of(node);
                MemberStatus {
                    id: *id,
                    address: member.address,
                    name: member.name.unwrap_or_default(),
                    voter: voters.contains(id),
                }
            })
            .collect();
        let (fat_digest, snapshot_index, last_applied_index) = {
            let state = self.inner.fat.read();
            let bytes = postcard::to_stdvec(&state.fat).unwrap_or_default();
            (
                *blake3::hash(&bytes).as_bytes(),
                state.snapshot_index,
                state.last_applied.map_or(0, |id| id.index),
            )
        };
        GroupStatus {
            node_id: self.inner.id,
            role: role(metrics.state).into(),
            leader: self.leader(),
            term: metrics.current_term,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            last_applied_index,
            snapshot_index,
            members,
            fat_digest,
            initialized: metrics.last_log_index.is_some() || metrics.vote != Vote::default(),
        }
    }

    /// Initialises a new group of `members` (id -> host:port) once: only the
    /// member with the lowest id does it, only if its own store is empty and
    /// no other member already belongs to a group. Anything else is left
    /// alone, so calling this at every start is safe.
    pub async fn initialize(&self, members: &BTreeMap<NodeId, String>) -> Result<(), StoreError> {
        let raft = &self.inner.raft;
        if raft
            .is_initialized()
            .await
            .map_err(|e| StoreError::Stopped(e.to_string()))?
        {
            tracing::info!("this coordinator already belongs to a group");
            return Ok(());
        }
        match members.keys().next() {
            Some(first) if *first == self.inner.id => {}
            Some(first) => {
                tracing::info!(
                    first,
                    "waiting for coordinator {first} to initialise the group, or to be added to it"
                );
                return Ok(());
            }
            None => return Ok(()),
        }
        for (id, address) in members {
            let reach = MemberAddr::parse(address).address;
            if *id != self.inner.id && self.inner.peers.initialized(&reach).await {
                tracing::info!(
                    peer = id,
                    "the group already exists; waiting for its leader to reach this coordinator"
                );
                return Ok(());
            }
        }
        let nodes: BTreeMap<NodeId, BasicNode> = members
            .iter()
            .map(|(id, address)| (*id, BasicNode::new(address)))
            .collect();
        match raft.initialize(nodes).await {
            Ok(()) => {
                tracing::info!(members = ?members, "coordinator group initialised");
                Ok(())
            }
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(StoreError::Membership(format!(
                "cannot initialise the group: {e}"
            ))),
        }
    }

    /// Applies `change` on the leader (forwarding it there from a follower
    /// unless `forwarded`), and answers with the group's status after it.
    pub async fn change_membership(
        &self,
        change: MembershipChange,
        forwarded: bool,
    ) -> Result<GroupStatus, StoreError> {
        let deadline = Instant::now() + self.inner.write_timeout * 4;
        loop {
            match self.leader() {
                Some((id, _)) if id == self.inner.id => return self.change_here(change, deadline).await,
                Some((leader, address)) if !forwarded => return self.inner.peers.change_membership(leader, &address, change).await,
                _ if Instant::now() >= deadline => {
                    return Err(StoreError::Membership(format!(
                        "coordinator {} is not the leader and no leader is known; run the command against the leader (see `offsite-coordinator status`)",
                        self.inner.id
                    )))
                }
                _ => self.settle(deadline).await,
            }
        }
    }

    async fn change_here(
        &self,
        change: MembershipChange,
        deadline: Instant,
    ) -> Result<GroupStatus, StoreError> {
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let raft = &self.inner.raft;
        let call = match change {
            MembershipChange::AddLearner { id, address } => {
                if voters.contains(&id) {
                    return Err(StoreError::Membership(format!(
                        "coordinator {id} is already a voter"
                    )));
                }
                tracing::info!(id, %address, "adding a learner");
                tokio::time::timeout_at(
                    deadline,
                    raft.add_learner(id, BasicNode::new(address), false),
                )
                .await
            }
            MembershipChange::Promote { id } => {
                if voters.contains(&id) {
                    return Ok(self.group_status());
                }
                if membership.get_node(&id).is_none() {
                    return Err(StoreError::Membership(format!(
                        "coordinator {id} is not a member; add it as a learner first (`offsite-coordinator members add-learner`)"
                    )));
                }
                let matched = metrics
                    .replication
                    .as_ref()
                    .and_then(|replication| replication.get(&id).copied().flatten())
                    .map(|log_id| log_id.index);
                let leader_last = metrics.last_log_index.unwrap_or(0);
                if let Some(problem) = not_caught_up(id, leader_last, matched) {
                    return Err(StoreError::Membership(problem));
                }
                let mut new = voters.clone();
                new.insert(id);
                tracing::info!(id, "promoting a learner to voter");
                tokio::time::timeout_at(deadline, raft.change_membership(new, false)).await
            }
            MembershipChange::Remove { id } => {
                if membership.get_node(&id).is_none() {
                    return Ok(self.group_status());
                }
                let changes = if voters.contains(&id) {
                    let mut new = voters.clone();
                    new.remove(&id);
                    if new.is_empty() {
                        return Err(StoreError::Membership(
                            "cannot remove the last voter of the group".into(),
                        ));
                    }
                    ChangeMembers::ReplaceAllVoters(new)
                } else {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                };
                tracing::info!(id, "removing a member");
                tokio::time::timeout_at(deadline, raft.change_membership(changes, false)).await
            }
        };
        match call {
            Err(_) => Err(self.out_of_time("the membership change did not commit")),
            Ok(Ok(_)) => Ok(self.group_status()),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Err(StoreError::Membership(
                "leadership moved during the change; run it again".into(),
            )),
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => Err(StoreError::Membership(format!(
                "{e}; membership changes go one coordinator at a time: wait for the previous one, then retry"
            ))),
            Ok(Err(RaftError::Fatal(e))) => Err(StoreError::Stopped(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_learner_is_promoted_only_once_it_has_caught_up() {
        assert!(not_caught_up(4, 10, None)
            .is_some_and(|p| p.contains("has not acknowledged any log entry")));
        assert!(not_caught_up(4, 1_000, Some(1_000 - MAX_PROMOTE_LAG - 1))
            .is_some_and(|p| p.contains(&format!("{} log entries behind", MAX_PROMOTE_LAG + 1))));
        assert_eq!(not_caught_up(4, 1_000, Some(1_000 - MAX_PROMOTE_LAG)), None);
        assert_eq!(
            not_caught_up(4, 5, Some(7)),
            None,
            "a learner ahead of a stale view is fine"
        );
    }
}
