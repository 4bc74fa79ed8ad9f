//! Bad copies on the wire: a vendor's own finding in its capacity report
//! ([`BadCopy`]) and a tenant's report of a copy its check could not read
//! whole ([`BadCopyReport`]), each checked and bounded where it arrives.

use crate::limits::{
    MAX_BAD_COPIES_PER_REPORT, MAX_BAD_COPY_REASON_LEN, MAX_BAD_COPY_REPORTS_PER_CALL,
};
use crate::pb::coordinator as pb;
use crate::{PortionId, TenantId, VendorId, WireError};

/// A copy its vendor found bad: a piece of it damaged or missing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BadCopy {
    pub tenant: TenantId,
    pub portion: PortionId,
    pub reason: String,
}

/// A copy a tenant's check found bad at `vendor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadCopyReport {
    pub portion: PortionId,
    pub vendor: VendorId,
    pub problem: String,
}

fn check_reason(field: &'static str, reason: &str) -> Result<(), WireError> {
    if reason.chars().count() > MAX_BAD_COPY_REASON_LEN {
        return Err(WireError::new(
            field,
            format!("longer than {MAX_BAD_COPY_REASON_LEN} characters; shorten it"),
        ));
    }
    Ok(())
}

/// Cuts a reason to what the wire carries.
pub fn bounded_reason(reason: &str) -> String {
    reason.chars().take(MAX_BAD_COPY_REASON_LEN).collect()
}

impl TryFrom<pb::BadCopy> for BadCopy {
    type Error = WireError;
    fn try_from(b: pb::BadCopy) -> Result<Self, WireError> {
        check_reason("bad_copies.reason", &b.reason)?;
        Ok(Self {
            tenant: TenantId::new(b.tenant_id)?,
            portion: PortionId::parse(&b.portion_id)?,
            reason: b.reason,
        })
    }
}

impl From<BadCopy> for pb::BadCopy {
    fn from(b: BadCopy) -> Self {
        Self {
            tenant_id: b.tenant.to_string(),
            portion_id: b.portion.to_string(),
            reason: bounded_reason(&b.reason),
        }
    }
}

impl TryFrom<pb::BadCopyReport> for BadCopyReport {
    type Error = WireError;
    fn try_from(r: pb::BadCopyReport) -> Result<Self, WireError> {
        check_reason("copies.problem", &r.problem)?;
        Ok(Self {
            portion: PortionId::parse(&r.portion_id)?,
            vendor: VendorId::new(r.vendor_id)?,
            problem: r.problem,
        })
    }
}

impl From<BadCopyReport> for pb::BadCopyReport {
    fn from(r: BadCopyReport) -> Self {
        Self {
            portion_id: r.portion.to_string(),
            vendor_id: r.vendor.to_string(),
            problem: bounded_reason(&r.problem),
        }
    }
}

/// The bad copies of a capacity report: too many refuse the report; a
/// malformed entry is dropped (the scrub finds the copy again), so one bad
/// entry cannot stop a vendor's heartbeat.
pub fn parse_bad_copies(list: Vec<pb::BadCopy>) -> Result<(Vec<BadCopy>, usize), WireError> {
    if list.len() > MAX_BAD_COPIES_PER_REPORT {
        return Err(WireError::new(
            "bad_copies",
            format!(
                "{} bad copies, more than {MAX_BAD_COPIES_PER_REPORT}; report at most that \
                 many and the rest in the next report",
                list.len()
            ),
        ));
    }
    let total = list.len();
    let parsed: Vec<BadCopy> = list
        .into_iter()
        .filter_map(|b| BadCopy::try_from(b).ok())
        .collect();
    let dropped = total - parsed.len();
    Ok((parsed, dropped))
}

/// A tenant's reported copies: at most [`MAX_BAD_COPY_REPORTS_PER_CALL`],
/// each well formed, each copy named once.
pub fn parse_bad_copy_reports(
    list: Vec<pb::BadCopyReport>,
) -> Result<Vec<BadCopyReport>, WireError> {
    if list.len() > MAX_BAD_COPY_REPORTS_PER_CALL {
        return Err(WireError::new(
            "copies",
            format!(
                "{} copies, more than {MAX_BAD_COPY_REPORTS_PER_CALL}; report them in calls \
                 of at most that many",
                list.len()
            ),
        ));
    }
    let mut reports: Vec<BadCopyReport> = Vec::with_capacity(list.len());
    for wire in list {
        let report = BadCopyReport::try_from(wire)?;
        if reports
            .iter()
            .any(|r| r.portion == report.portion && r.vendor == report.vendor)
        {
            return Err(WireError::new(
                "copies",
                format!(
                    "names vendor {}'s copy of portion {} twice; name each copy once",
                    report.vendor, report.portion
                ),
            ));
        }
        reports.push(report);
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_bounded_checked_and_named_once() {
        let report = BadCopyReport {
            portion: PortionId::random(),
            vendor: VendorId::new("vendor-1").unwrap(),
            problem: "portion hash mismatch".into(),
        };
        let wire: pb::BadCopyReport = report.clone().into();
        assert_eq!(
            parse_bad_copy_reports(vec![wire.clone()]).unwrap(),
            vec![report]
        );
        assert!(parse_bad_copy_reports(vec![wire.clone(), wire.clone()]).is_err());
        let many = vec![wire.clone(); MAX_BAD_COPY_REPORTS_PER_CALL + 1];
        assert!(parse_bad_copy_reports(many).is_err());
        let long = pb::BadCopyReport {
            problem: "x".repeat(MAX_BAD_COPY_REASON_LEN + 1),
            ..wire
        };
        assert!(parse_bad_copy_reports(vec![long]).is_err());
    }

    #[test]
    fn a_malformed_bad_copy_is_dropped_and_too_many_refused() {
        let good: pb::BadCopy = BadCopy {
            tenant: TenantId::new("acme").unwrap(),
            portion: PortionId::random(),
            reason: "piece missing".into(),
        }
        .into();
        let bad = pb::BadCopy {
            tenant_id: "a b".into(),
            ..good.clone()
        };
        let (parsed, dropped) = parse_bad_copies(vec![good.clone(), bad]).unwrap();
        assert_eq!((parsed.len(), dropped), (1, 1));
        assert!(parse_bad_copies(vec![good; MAX_BAD_COPIES_PER_REPORT + 1]).is_err());
    }
}
