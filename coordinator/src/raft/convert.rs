//! Conversions between the generated messages the coordinators exchange
//! about the group (`offsite.admin`: group status, membership requests) and
//! the group's domain types ([`GroupStatus`], [`MembershipChange`]), used by
//! the peer client ([`network`](super::network)) and the `Admin` service.

use offsite_proto::pb::admin as pb;

use super::admin::{GroupStatus, MemberStatus, MembershipChange};

impl From<GroupStatus> for pb::GroupStatusResponse {
    fn from(s: GroupStatus) -> Self {
        let (leader_id, leader_address) = s.leader.unwrap_or((0, String::new()));
        Self {
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
                    name: m.name,
                    voter: m.voter,
                })
                .collect(),
            fat_digest: s.fat_digest.to_vec(),
            initialized: s.initialized,
        }
    }
}

impl TryFrom<pb::GroupStatusResponse> for GroupStatus {
    /// What is wrong with the message.
    type Error = String;

    fn try_from(s: pb::GroupStatusResponse) -> Result<Self, String> {
        let fat_digest = <[u8; 32]>::try_from(s.fat_digest.as_slice())
            .map_err(|_| format!("a FAT digest of {} bytes instead of 32", s.fat_digest.len()))?;
        Ok(Self {
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
                    name: m.name,
                    voter: m.voter,
                })
                .collect(),
            fat_digest,
            initialized: s.initialized,
        })
    }
}

impl From<MembershipChange> for pb::MemberRequest {
    /// The request's fields; which call carries it says which change it is.
    fn from(change: MembershipChange) -> Self {
        match change {
            MembershipChange::AddLearner { id, address } => Self { id, address },
            MembershipChange::Promote { id } | MembershipChange::Remove { id } => Self {
                id,
                address: String::new(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_status_round_trips_and_a_short_digest_is_refused() {
        let status = GroupStatus {
            node_id: 2,
            role: "follower".into(),
            leader: Some((1, "10.0.0.1:7000".into())),
            term: 4,
            last_log_index: 9,
            last_applied_index: 8,
            snapshot_index: 5,
            members: vec![MemberStatus {
                id: 1,
                address: "10.0.0.1:7000".into(),
                name: "coord1".into(),
                voter: true,
            }],
            fat_digest: [7; 32],
            initialized: true,
        };
        let wire = pb::GroupStatusResponse::from(status.clone());
        assert_eq!(GroupStatus::try_from(wire.clone()), Ok(status));
        let leaderless = pb::GroupStatusResponse {
            leader_id: 0,
            ..wire.clone()
        };
        assert_eq!(GroupStatus::try_from(leaderless).unwrap().leader, None);
        let short = pb::GroupStatusResponse {
            fat_digest: vec![1; 31],
            ..wire
        };
        let err = GroupStatus::try_from(short).unwrap_err();
        assert!(err.contains("31 bytes"), "{err}");
    }
}
