//! Why the FAT state machine refused a command, sorted by what the caller
//! should do about it. A refused command changed nothing.

use serde::{Deserialize, Serialize};

/// A command the FAT refused. Each variant names the action that fixes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum FatError {
    /// The named record does not exist for this caller (or belongs to another
    /// tenant, which looks the same from outside).
    #[error("{0}; check the id, or list what exists")]
    NotFound(String),
    /// The reservation's lease ran out or it was released.
    #[error("{0}; ask for a new reservation")]
    Expired(String),
    /// There is not enough free room on up vendors for the request: too
    /// little room, or fewer vendors with room than the replication needs
    /// ([`FatError::is_too_few_vendors`]; asking for less does not help then).
    #[error("{}", not_enough_message(*asked_bytes, *replication, *needed_bytes, *free_bytes, *vendors))]
    NotEnoughCapacity {
        asked_bytes: u64,
        replication: u32,
        needed_bytes: u64,
        free_bytes: u64,
        vendors: u64,
    },
    /// The request is malformed or inconsistent; it will fail again as sent.
    #[error("{0}")]
    Invalid(String),
    /// The request clashes with what was already done (an id used for something
    /// else, a reservation already committed).
    #[error("{0}")]
    Conflict(String),
    /// The caller may not do this to this record.
    #[error("{0}")]
    Forbidden(String),
    /// A limit the operator set on the tenant (quota, spending cap, open
    /// reservations) would be passed; the message names it, what is used and
    /// who can raise it.
    #[error("{0}")]
    LimitReached(String),
}

fn not_enough_message(
    asked_bytes: u64,
    replication: u32,
    needed_bytes: u64,
    free_bytes: u64,
    vendors: u64,
) -> String {
    if vendors < u64::from(replication) {
        format!(
            "too few vendors: replication {replication} needs at least {replication} vendors with free \
             room, but {vendors} are up with room; add vendors (or wait for those down to come \
             back), or lower `replication`"
        )
    } else {
        format!(
            "not enough capacity: asked for {asked_bytes} bytes at replication {replication} \
             ({needed_bytes} bytes over at least {replication} vendors), but {free_bytes} bytes \
             are free on {vendors} vendors; ask for less, or retry later"
        )
    }
}

impl FatError {
    /// Fewer vendors have room than the replication needs.
    pub fn is_too_few_vendors(&self) -> bool {
        matches!(self, FatError::NotEnoughCapacity { replication, vendors, .. }
            if *vendors < u64::from(*replication))
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }
}
