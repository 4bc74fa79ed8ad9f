//! What the group's membership says of each coordinator: the host:port the
//! others reach it at and, since the membership binding, the name its
//! certificate carries. Both travel in openraft's `BasicNode::addr` as
//! `NAME@HOST:PORT`, so memberships stored before (plain `HOST:PORT`) still
//! decode; such a member has no name on record.
//!
//! Forwarded proposals, read indexes and membership changes are accepted
//! only from a certificate whose name belongs to the current membership
//! ([`Callers`]): a removed coordinator's still-valid certificate can no
//! longer propose, read through the leader or rejoin on its own. openraft's
//! own messages are checked by role only (see `RaftService::check_member`).
//! While any member has no name on record (a group made before the
//! binding), every coordinator certificate is accepted, as before.

use std::collections::BTreeSet;

use offsite_identity::check_name;
use openraft::BasicNode;

/// A member's address and, where recorded, its certificate name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberAddr {
    pub name: Option<String>,
    pub address: String,
}

impl MemberAddr {
    pub fn new(name: Option<String>, address: impl Into<String>) -> Self {
        Self {
            name,
            address: address.into(),
        }
    }

    /// Reads `NAME@HOST:PORT` or a plain `HOST:PORT`.
    pub fn parse(addr: &str) -> Self {
        match addr.split_once('@') {
            Some((name, address)) if check_name(name).is_ok() => {
                Self::new(Some(name.to_string()), address)
            }
            _ => Self::new(None, addr),
        }
    }

    pub fn of(node: &BasicNode) -> Self {
        Self::parse(&node.addr)
    }

    pub fn node(&self) -> BasicNode {
        BasicNode::new(match &self.name {
            Some(name) => format!("{name}@{}", self.address),
            None => self.address.clone(),
        })
    }
}

/// Checks a certificate name given for a member.
pub fn check_member_name(name: &str) -> Result<(), String> {
    check_name(name).map_err(|problem| format!("coordinator certificate name: {problem}"))
}

/// The certificate names the current membership accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Callers {
    /// Every member has a name on record: only these.
    Named(BTreeSet<String>),
    /// Some member has none (a group made before the binding): any
    /// coordinator certificate.
    Unbound,
}

impl Callers {
    pub fn of<'a>(nodes: impl IntoIterator<Item = &'a BasicNode>) -> Self {
        let mut names = BTreeSet::new();
        for node in nodes {
            match MemberAddr::of(node).name {
                Some(name) => names.insert(name),
                None => return Callers::Unbound,
            };
        }
        Callers::Named(names)
    }

    pub fn admits(&self, name: &str) -> bool {
        match self {
            Callers::Named(names) => names.contains(name),
            Callers::Unbound => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_carries_its_name_and_a_plain_one_still_reads() {
        let named = MemberAddr::new(Some("coord1".into()), "10.0.0.1:7000");
        assert_eq!(named.node().addr, "coord1@10.0.0.1:7000");
        assert_eq!(MemberAddr::of(&named.node()), named);
        let plain = MemberAddr::parse("10.0.0.2:7000");
        assert_eq!(plain, MemberAddr::new(None, "10.0.0.2:7000"));
        assert_eq!(plain.node().addr, "10.0.0.2:7000");
        // Not a certificate name before the '@': the whole is the address.
        assert_eq!(MemberAddr::parse("a b@h:1").name, None);
    }

    #[test]
    fn only_named_members_are_admitted_once_every_member_has_a_name() {
        let nodes = [
            MemberAddr::new(Some("coord1".into()), "h1:7000").node(),
            MemberAddr::new(Some("coord2".into()), "h2:7000").node(),
        ];
        let callers = Callers::of(&nodes);
        assert!(callers.admits("coord1") && callers.admits("coord2"));
        assert!(!callers.admits("coord3"));
        let mixed = [nodes[0].clone(), MemberAddr::parse("h3:7000").node()];
        assert_eq!(Callers::of(&mixed), Callers::Unbound);
        assert!(Callers::of(&mixed).admits("anyone"));
    }
}
