//! Re-replication on the wire: the copies the coordinator asks of a vendor
//! (a portion it holds, to be sent to another vendor under that vendor's
//! store grant) and how each ended.

use serde::{Deserialize, Serialize};

use crate::limits::{MAX_COPIES_PER_REPORT, MAX_COPY_ERROR_LEN};
use crate::pb::coordinator as pb;
use crate::{Grant, Hash, PortionId, Receipt, ReservationId, TenantId, VendorRef, WireError};

/// Send a copy of `portion` (which the asked vendor holds) to `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyTask {
    pub repair: ReservationId,
    pub tenant: TenantId,
    pub portion: PortionId,
    pub hash: Hash,
    pub size: u64,
    pub target: VendorRef,
    /// The target's store grant, for the repair's id.
    pub grant: Grant,
}

impl TryFrom<pb::CopyTask> for CopyTask {
    type Error = WireError;
    fn try_from(t: pb::CopyTask) -> Result<Self, WireError> {
        Ok(Self {
            repair: ReservationId::parse(&t.repair_id)?,
            tenant: TenantId::new(t.tenant_id)?,
            portion: PortionId::parse(&t.portion_id)?,
            hash: Hash::from_wire("copy.hash", &t.hash)?,
            size: t.size,
            target: t
                .target
                .ok_or_else(|| WireError::new("copy.target", "missing"))?
                .try_into()?,
            grant: t
                .grant
                .ok_or_else(|| WireError::new("copy.grant", "missing"))?
                .try_into()?,
        })
    }
}

impl From<CopyTask> for pb::CopyTask {
    fn from(t: CopyTask) -> Self {
        Self {
            repair_id: t.repair.to_string(),
            tenant_id: t.tenant.to_string(),
            portion_id: t.portion.to_string(),
            hash: t.hash.to_vec(),
            size: t.size,
            target: Some(t.target.into()),
            grant: Some(t.grant.into()),
        }
    }
}

/// How one copy ended: the target's receipt, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyResult {
    pub repair: ReservationId,
    pub outcome: Result<Receipt, String>,
}

impl TryFrom<pb::CopyResult> for CopyResult {
    type Error = WireError;
    fn try_from(r: pb::CopyResult) -> Result<Self, WireError> {
        let outcome = match r.receipt {
            Some(receipt) => Ok(receipt.try_into()?),
            None if r.error.is_empty() => {
                return Err(WireError::new(
                    "copied.error",
                    "a copy result has neither a receipt nor an error",
                ))
            }
            None => Err(bounded_error(r.error)),
        };
        Ok(Self {
            repair: ReservationId::parse(&r.repair_id)?,
            outcome,
        })
    }
}

impl From<CopyResult> for pb::CopyResult {
    fn from(r: CopyResult) -> Self {
        let (receipt, error) = match r.outcome {
            Ok(receipt) => (Some(receipt.into()), String::new()),
            Err(error) => (None, bounded_error(error)),
        };
        Self {
            repair_id: r.repair.to_string(),
            receipt,
            error,
        }
    }
}

/// `error` cut to [`MAX_COPY_ERROR_LEN`] characters.
fn bounded_error(error: String) -> String {
    match error.char_indices().nth(MAX_COPY_ERROR_LEN) {
        Some((end, _)) => format!("{}...", &error[..end]),
        None => error,
    }
}

/// Checks the length of a list of copy tasks or results, then converts it.
pub fn parse_copies<W, T: TryFrom<W, Error = WireError>>(
    field: &'static str,
    list: Vec<W>,
) -> Result<Vec<T>, WireError> {
    if list.len() > MAX_COPIES_PER_REPORT {
        return Err(WireError::new(
            field,
            format!("{} copies, more than {MAX_COPIES_PER_REPORT}", list.len()),
        ));
    }
    list.into_iter().map(T::try_from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_needs_a_receipt_or_an_error_and_long_errors_are_cut() {
        let empty = pb::CopyResult {
            repair_id: ReservationId::random().to_string(),
            receipt: None,
            error: String::new(),
        };
        assert!(CopyResult::try_from(empty).is_err());
        let long = pb::CopyResult {
            repair_id: ReservationId::random().to_string(),
            receipt: None,
            error: "x".repeat(5000),
        };
        let parsed = CopyResult::try_from(long).unwrap();
        assert_eq!(parsed.outcome.unwrap_err().len(), MAX_COPY_ERROR_LEN + 3);
        let many = vec![pb::CopyResult::default(); MAX_COPIES_PER_REPORT + 1];
        let err = parse_copies::<_, CopyResult>("copied", many).unwrap_err();
        assert!(err.to_string().contains("more than 64"), "{err}");
    }
}
