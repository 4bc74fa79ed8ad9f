//! Records of pruning: the tenant's committed portions as the coordinator
//! lists them, and the deletions the coordinator asks of a vendor (and the
//! vendor acknowledges) after a tenant released portions no snapshot needs.

use serde::{Deserialize, Serialize};

use crate::limits::MAX_DELETIONS_PER_REPORT;
use crate::pb::coordinator as pb;
use crate::{PortionId, TenantId, WireError};

/// One portion of one tenant a vendor must delete, or has deleted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortionDeletion {
    pub tenant: TenantId,
    pub portion: PortionId,
}

impl TryFrom<pb::PortionDeletion> for PortionDeletion {
    type Error = WireError;
    fn try_from(d: pb::PortionDeletion) -> Result<Self, WireError> {
        Ok(Self {
            tenant: TenantId::new(d.tenant_id)?,
            portion: PortionId::parse(&d.portion_id)?,
        })
    }
}

impl From<PortionDeletion> for pb::PortionDeletion {
    fn from(d: PortionDeletion) -> Self {
        Self {
            tenant_id: d.tenant.to_string(),
            portion_id: d.portion.to_string(),
        }
    }
}

/// Checks and converts a list of deletions of at most
/// [`MAX_DELETIONS_PER_REPORT`] entries.
pub fn parse_deletions(
    field: &'static str,
    list: Vec<pb::PortionDeletion>,
) -> Result<Vec<PortionDeletion>, WireError> {
    if list.len() > MAX_DELETIONS_PER_REPORT {
        return Err(WireError::new(
            field,
            format!(
                "{} deletions, more than {MAX_DELETIONS_PER_REPORT}",
                list.len()
            ),
        ));
    }
    list.into_iter().map(PortionDeletion::try_from).collect()
}

/// A committed portion of the tenant, as the portion list shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedPortion {
    pub portion: PortionId,
    pub size: u64,
    pub committed_unix_ms: u64,
}

impl TryFrom<pb::ListedPortion> for ListedPortion {
    type Error = WireError;
    fn try_from(p: pb::ListedPortion) -> Result<Self, WireError> {
        Ok(Self {
            portion: PortionId::parse(&p.portion_id)?,
            size: p.size,
            committed_unix_ms: p.committed_unix_ms,
        })
    }
}

impl From<ListedPortion> for pb::ListedPortion {
    fn from(p: ListedPortion) -> Self {
        Self {
            portion_id: p.portion.to_string(),
            size: p.size,
            committed_unix_ms: p.committed_unix_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletions_round_trip_and_are_bounded() {
        let d = PortionDeletion {
            tenant: TenantId::new("acme").unwrap(),
            portion: PortionId::random(),
        };
        let wire: pb::PortionDeletion = d.clone().into();
        assert_eq!(PortionDeletion::try_from(wire.clone()).unwrap(), d);
        let too_many = vec![wire; MAX_DELETIONS_PER_REPORT + 1];
        assert!(parse_deletions("deleted", too_many).is_err());
        let bad = pb::PortionDeletion {
            tenant_id: "a b".into(),
            portion_id: d.portion.to_string(),
        };
        assert!(parse_deletions("deleted", vec![bad]).is_err());
    }
}
