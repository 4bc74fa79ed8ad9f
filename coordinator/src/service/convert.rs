//! Conversions between the generated coordinator messages and the FAT's
//! commands and outcomes, at the edge. Field checks come from offsite_proto's
//! `TryFrom` impls and `limits`.

use offsite_proto::limits::{
    MAX_GRANT_BYTES, MAX_LOCATE_PER_CALL, MAX_PORTIONS_PER_CALL, MAX_RELEASE_PER_CALL,
    MAX_SNAPSHOT_REWRITES,
};
use offsite_proto::pb::admin as pba;
use offsite_proto::pb::common as pbc;
use offsite_proto::pb::coordinator as pb;
use offsite_proto::{
    parse_deletions, parse_portion_ids, PortionId, PortionLocation, PortionPlacement, RequestId,
    ReservationId, SnapshotRecord, TenantId, VendorId, VendorRef, WireError,
};

use crate::fat::{
    Commit, FatStatus, RegisterVendor, ReleasePortions, ReportCapacity, ReservationView,
    RewriteSnapshots, VendorStatus,
};

pub(super) fn register_command(
    r: pb::RegisterVendorRequest,
    now_unix_ms: u64,
) -> Result<RegisterVendor, WireError> {
    if r.identity_key.len() > MAX_GRANT_BYTES {
        return Err(WireError::new("identity_key", "larger than 4 KiB"));
    }
    let vendor = VendorRef::try_from(pbc::VendorRef {
        vendor_id: r.vendor_id,
        address: r.address,
    })?;
    Ok(RegisterVendor {
        vendor,
        region: r.region,
        offered_bytes: r.offered_bytes,
        network_bytes_per_sec: r.network_bytes_per_sec,
        identity_key: r.identity_key,
        now_unix_ms,
    })
}

pub(super) fn report_command(
    r: pb::CapacityReport,
    now_unix_ms: u64,
) -> Result<ReportCapacity, WireError> {
    Ok(ReportCapacity {
        vendor: VendorId::new(r.vendor_id)?,
        offered_bytes: r.offered_bytes,
        stored_bytes: r.stored_bytes,
        deleted: parse_deletions("deleted", r.deleted)?,
        now_unix_ms,
    })
}

pub(super) fn release_portions_command(
    tenant: TenantId,
    r: pb::ReleasePortionsRequest,
) -> Result<ReleasePortions, WireError> {
    if r.portion_ids.len() > MAX_RELEASE_PER_CALL {
        return Err(WireError::new(
            "portion_ids",
            format!(
                "{} portions, more than {MAX_RELEASE_PER_CALL}; release them in several calls",
                r.portion_ids.len()
            ),
        ));
    }
    Ok(ReleasePortions {
        tenant,
        portions: parse_portion_ids("portion_ids", &r.portion_ids)?,
    })
}

pub(super) fn rewrite_snapshots_command(
    tenant: TenantId,
    r: pb::RewriteSnapshotsRequest,
) -> Result<RewriteSnapshots, WireError> {
    if r.snapshots.len() > MAX_SNAPSHOT_REWRITES {
        return Err(WireError::new(
            "snapshots",
            format!(
                "{} snapshots, more than {MAX_SNAPSHOT_REWRITES}; rewrite them in several calls",
                r.snapshots.len()
            ),
        ));
    }
    Ok(RewriteSnapshots {
        tenant,
        snapshots: r
            .snapshots
            .into_iter()
            .map(SnapshotRecord::try_from)
            .collect::<Result<_, _>>()?,
    })
}

/// The ids of a locate call, each once, in the order first named: a
/// repeated id is looked up and granted once.
pub(super) fn locate_ids(ids: &[String]) -> Result<Vec<PortionId>, WireError> {
    if ids.len() > MAX_LOCATE_PER_CALL {
        return Err(WireError::new(
            "portion_ids",
            format!(
                "{} portions, more than {MAX_LOCATE_PER_CALL}; locate them in several calls",
                ids.len()
            ),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut unique = Vec::new();
    for id in parse_portion_ids("portion_ids", ids)? {
        if seen.insert(id) {
            unique.push(id);
        }
    }
    Ok(unique)
}

/// The start of a portion list page: empty means from the first portion.
pub(super) fn list_after(r: &pb::ListPortionsRequest) -> Result<Option<PortionId>, WireError> {
    if r.after_portion_id.is_empty() {
        Ok(None)
    } else {
        PortionId::parse(&r.after_portion_id).map(Some)
    }
}

pub(super) fn commit_command(
    tenant: TenantId,
    r: pb::CommitRequest,
    now_unix_ms: u64,
) -> Result<Commit, WireError> {
    if r.portions.len() > MAX_PORTIONS_PER_CALL {
        return Err(WireError::new(
            "portions",
            format!(
                "{} portions, more than {MAX_PORTIONS_PER_CALL}; split the commit over several reservations",
                r.portions.len()
            ),
        ));
    }
    Ok(Commit {
        tenant,
        request: RequestId::new(r.request_id)?,
        reservation: ReservationId::parse(&r.reservation_id)?,
        portions: r
            .portions
            .into_iter()
            .map(PortionPlacement::try_from)
            .collect::<Result<_, _>>()?,
        snapshot: r.snapshot.map(SnapshotRecord::try_from).transpose()?,
        now_unix_ms,
    })
}

/// A reservation as granted or renewed; a lease lasts `lease_ms` from now.
pub(super) fn reserve_response(view: ReservationView, lease_ms: u64) -> pb::ReserveResponse {
    pb::ReserveResponse {
        reservation_id: view.id.to_string(),
        candidates: view.candidates.into_iter().map(Into::into).collect(),
        lease_expires_unix_ms: view.lease_expires_unix_ms,
        lease_ms,
    }
}

pub(super) fn locations(list: Vec<PortionLocation>) -> Vec<pb::PortionLocation> {
    list.into_iter().map(Into::into).collect()
}

/// The marketplace status of this replica's FAT, applied up to `applied_index`.
pub(super) fn marketplace_status(
    status: FatStatus,
    applied_index: u64,
) -> pba::MarketplaceStatusResponse {
    pba::MarketplaceStatusResponse {
        vendors: status.vendors.into_iter().map(vendor_status).collect(),
        open_reservations: status.open_reservations,
        portions: status.portions,
        snapshots: status.snapshots,
        applied_index,
        pending_deletions: status.pending_deletions,
        open_repairs: status.open_repairs,
    }
}

fn vendor_status(v: VendorStatus) -> pba::VendorStatus {
    pba::VendorStatus {
        vendor_id: v.vendor.id.into(),
        address: v.vendor.address,
        region: v.region,
        liveness: v.liveness.as_str().into(),
        offered_bytes: v.offered_bytes,
        reserved_bytes: v.reserved_bytes,
        used_bytes: v.used_bytes,
        stored_bytes: v.stored_bytes,
        last_report_unix_ms: v.last_report_unix_ms,
        reported_offered_bytes: v.reported_offered_bytes,
        storage_price_micros: v.prices.storage_micros_per_tib_month,
        egress_price_micros: v.prices.egress_micros_per_tib,
        audits_passed: v.reputation.audits_passed,
        audits_failed: v.reputation.audits_failed,
        audit_rounds_down: v.reputation.rounds_down,
        recent_audit_failures: v.reputation.recent_failures(),
        standing: v.reputation.standing().as_str().into(),
        last_audit_failure: v.reputation.last_failure.clone().unwrap_or_default(),
        exit: v.departure.exit.map(super::departures::exit_progress),
        relief: v.departure.relief.map(super::departures::relief_progress),
        bad_copies: v.bad_copies.0,
        copies_reported_bad: v.bad_copies.1,
    }
}

/// What the coordinator made of a copy a tenant reported bad.
pub(super) fn bad_copy_answer(
    report: offsite_proto::BadCopyReport,
    verdict: crate::bad_copy_audit::Verdict,
) -> pb::BadCopyAnswer {
    use crate::bad_copy_audit::Verdict;
    let (verdict, detail) = match verdict {
        Verdict::Confirmed(reason) => (
            pb::BadCopyVerdict::Confirmed,
            format!(
                "its audit failed ({reason}); the copy will be made again from a healthy holder"
            ),
        ),
        Verdict::NotConfirmed => (
            pb::BadCopyVerdict::NotConfirmed,
            "the vendor proved it holds the copy whole; nothing changed".to_string(),
        ),
        Verdict::AlreadyKnown => (
            pb::BadCopyVerdict::AlreadyKnown,
            "already known bad; its repair is under way".to_string(),
        ),
        Verdict::NotPlaced => (
            pb::BadCopyVerdict::NotPlaced,
            format!(
                "the FAT does not place this portion on vendor {}; locate the portion again",
                report.vendor
            ),
        ),
        Verdict::Unverified(why) => (
            pb::BadCopyVerdict::Unverified,
            format!("not judged: {why}; check again later"),
        ),
    };
    pb::BadCopyAnswer {
        portion_id: report.portion.to_string(),
        vendor_id: report.vendor.to_string(),
        verdict: verdict.into(),
        detail: offsite_proto::bounded_reason(&detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_ids_are_named_once_in_order_and_capped() {
        let (a, b) = (PortionId::random(), PortionId::random());
        let mut named = vec![a.to_string(); MAX_LOCATE_PER_CALL - 2];
        named.push(b.to_string());
        named.push(a.to_string());
        let unique = locate_ids(&named).unwrap();
        assert!(unique == [a, b], "{} ids, not 2", unique.len());
        named.push(b.to_string());
        let refused = locate_ids(&named).unwrap_err().to_string();
        assert!(
            refused.contains(&MAX_LOCATE_PER_CALL.to_string()),
            "{refused}"
        );
    }
}
