//! Reading a FAT snapshot written by the format versions before ours.
//!
//! Version 8 had no bad copies and no departures (exits and burst
//! reliefs): its FAT is read as [`FatV8`] with none (a copy found bad
//! before is found again by its vendor's scrub or an audit; no vendor is
//! exiting or being relieved); version 9 also appended the `Collected` reservation state, which
//! a version 8 FAT never holds. Version 7 had no reputation: its FAT is read as [`FatV7`] and every
//! vendor starts with an empty audit record. Version 6 had no ledger either. Its FAT is read with the layout it was written
//! in ([`FatV6`], the same fields without `ledger`) and every copy it holds
//! starts being metered at price 0 from its portion's commit time: nothing
//! was priced then, so nothing is owed for it. A copy a repair added later
//! than the commit is metered from the commit too (its byte-time is a
//! little high, its charge still 0). Released copies still waiting for
//! their vendor's deletion are not metered.

use std::collections::BTreeMap;

use offsite_proto::{
    PortionId, RequestId, ReservationId, SnapshotId, SnapshotRecord, TenantId, VendorId,
};
use serde::Deserialize;

use super::audits::Reputation;
use super::bad_copies::BadCopies;
use super::catalog::PortionRecord;
use super::deletions::DeletionQueue;
use super::grant_keys::GrantKeys;
use super::ledger::Ledger;
use super::repairs::Repair;
use super::reservations::Reservation;
use super::vendors::VendorRecord;
use super::Fat;
use crate::raft::codec::{
    split_version, FORMAT_VERSION, OLDEST_FORMAT_VERSION, PREVIOUS_FORMAT_VERSION,
};

/// The FAT as format version 6 stored it.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(super) struct FatV6 {
    vendors: BTreeMap<VendorId, VendorRecord>,
    reservations: BTreeMap<ReservationId, Reservation>,
    requests: BTreeMap<(TenantId, RequestId), ReservationId>,
    portions: BTreeMap<TenantId, BTreeMap<PortionId, PortionRecord>>,
    snapshots: BTreeMap<TenantId, BTreeMap<SnapshotId, SnapshotRecord>>,
    deletions: BTreeMap<VendorId, DeletionQueue>,
    grant_keys: GrantKeys,
    tenant_keys: BTreeMap<TenantId, Vec<u8>>,
    repairs: BTreeMap<ReservationId, Repair>,
    repair_failures: BTreeMap<(TenantId, PortionId), u32>,
}

impl From<FatV6> for Fat {
    fn from(v6: FatV6) -> Self {
        let copies = v6.portions.iter().flat_map(|(tenant, held)| {
            held.iter().flat_map(move |(portion, record)| {
                record.vendors.iter().map(move |vendor| {
                    (
                        vendor.clone(),
                        tenant.clone(),
                        *portion,
                        record.size,
                        record.committed_unix_ms,
                    )
                })
            })
        });
        let ledger = Ledger::starting_with(copies);
        Fat {
            vendors: v6.vendors,
            reservations: v6.reservations,
            requests: v6.requests,
            portions: v6.portions,
            snapshots: v6.snapshots,
            deletions: v6.deletions,
            grant_keys: v6.grant_keys,
            tenant_keys: v6.tenant_keys,
            repairs: v6.repairs,
            repair_failures: v6.repair_failures,
            ledger,
            reputation: BTreeMap::new(),
            bad_copies: BadCopies::default(),
            departures: Default::default(),
        }
    }
}

/// The FAT as format version 7 stored it: ours without the reputation.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(super) struct FatV7 {
    vendors: BTreeMap<VendorId, VendorRecord>,
    reservations: BTreeMap<ReservationId, Reservation>,
    requests: BTreeMap<(TenantId, RequestId), ReservationId>,
    portions: BTreeMap<TenantId, BTreeMap<PortionId, PortionRecord>>,
    snapshots: BTreeMap<TenantId, BTreeMap<SnapshotId, SnapshotRecord>>,
    deletions: BTreeMap<VendorId, DeletionQueue>,
    grant_keys: GrantKeys,
    tenant_keys: BTreeMap<TenantId, Vec<u8>>,
    repairs: BTreeMap<ReservationId, Repair>,
    repair_failures: BTreeMap<(TenantId, PortionId), u32>,
    ledger: Ledger,
}

impl From<FatV7> for Fat {
    fn from(v7: FatV7) -> Self {
        Fat {
            vendors: v7.vendors,
            reservations: v7.reservations,
            requests: v7.requests,
            portions: v7.portions,
            snapshots: v7.snapshots,
            deletions: v7.deletions,
            grant_keys: v7.grant_keys,
            tenant_keys: v7.tenant_keys,
            repairs: v7.repairs,
            repair_failures: v7.repair_failures,
            ledger: v7.ledger,
            reputation: BTreeMap::new(),
            bad_copies: BadCopies::default(),
            departures: Default::default(),
        }
    }
}

/// The FAT as format version 8 stored it: ours without the bad copies.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(super) struct FatV8 {
    vendors: BTreeMap<VendorId, VendorRecord>,
    reservations: BTreeMap<ReservationId, Reservation>,
    requests: BTreeMap<(TenantId, RequestId), ReservationId>,
    portions: BTreeMap<TenantId, BTreeMap<PortionId, PortionRecord>>,
    snapshots: BTreeMap<TenantId, BTreeMap<SnapshotId, SnapshotRecord>>,
    deletions: BTreeMap<VendorId, DeletionQueue>,
    grant_keys: GrantKeys,
    tenant_keys: BTreeMap<TenantId, Vec<u8>>,
    repairs: BTreeMap<ReservationId, Repair>,
    repair_failures: BTreeMap<(TenantId, PortionId), u32>,
    ledger: Ledger,
    reputation: BTreeMap<VendorId, Reputation>,
}

impl From<FatV8> for Fat {
    fn from(v8: FatV8) -> Self {
        Fat {
            vendors: v8.vendors,
            reservations: v8.reservations,
            requests: v8.requests,
            portions: v8.portions,
            snapshots: v8.snapshots,
            deletions: v8.deletions,
            grant_keys: v8.grant_keys,
            tenant_keys: v8.tenant_keys,
            repairs: v8.repairs,
            repair_failures: v8.repair_failures,
            ledger: v8.ledger,
            reputation: v8.reputation,
            bad_copies: BadCopies::default(),
            departures: Default::default(),
        }
    }
}

/// The version before [`PREVIOUS_FORMAT_VERSION`] (a ledger, no reputation).
const FORMAT_VERSION_7: u8 = 7;

/// Decodes a FAT snapshot of our format version or the one before.
pub fn decode_snapshot(bytes: &[u8]) -> Result<Fat, String> {
    match split_version(bytes)? {
        (FORMAT_VERSION, body) => postcard::from_bytes(body).map_err(|e| e.to_string()),
        (PREVIOUS_FORMAT_VERSION, body) => postcard::from_bytes::<FatV8>(body)
            .map(Fat::from)
            .map_err(|e| format!("a FAT of format version {PREVIOUS_FORMAT_VERSION}: {e}")),
        (FORMAT_VERSION_7, body) => postcard::from_bytes::<FatV7>(body)
            .map(Fat::from)
            .map_err(|e| format!("a FAT of format version {FORMAT_VERSION_7}: {e}")),
        (OLDEST_FORMAT_VERSION, body) => postcard::from_bytes::<FatV6>(body)
            .map(Fat::from)
            .map_err(|e| format!("a FAT of format version {OLDEST_FORMAT_VERSION}: {e}")),
        (version, _) => Err(format!(
            "format version {version}, but this build reads versions {OLDEST_FORMAT_VERSION} \
             to {FORMAT_VERSION}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The v6 view of a FAT: every field but the ledger.
    fn as_v6(fat: &Fat) -> FatV6 {
        FatV6 {
            vendors: fat.vendors.clone(),
            reservations: fat.reservations.clone(),
            requests: fat.requests.clone(),
            portions: fat.portions.clone(),
            snapshots: fat.snapshots.clone(),
            deletions: fat.deletions.clone(),
            grant_keys: fat.grant_keys.clone(),
            tenant_keys: fat.tenant_keys.clone(),
            repairs: fat.repairs.clone(),
            repair_failures: fat.repair_failures.clone(),
        }
    }

    #[test]
    fn a_version_6_snapshot_is_read_and_its_copies_are_metered_from_their_commit() {
        let mut fat = crate::fat::tests::market();
        crate::fat::deletion_tests::committed(&mut fat, "acme", &[100, 50], 1);
        let mut bytes = vec![OLDEST_FORMAT_VERSION];
        postcard::to_io(&as_v6(&fat), &mut bytes).unwrap();
        let read = decode_snapshot(&bytes).unwrap();
        assert_eq!(as_v6(&read).portions, fat.portions);
        assert_eq!(read.vendors, fat.vendors);
        let copies: u64 = fat
            .portions
            .values()
            .flat_map(|h| h.values())
            .map(|r| r.size * r.vendors.len() as u64)
            .sum();
        let tenants: Vec<_> = fat.portions.keys().cloned().collect();
        let metered: u64 = tenants.iter().map(|t| read.ledger.stored_bytes_of(t)).sum();
        assert!(copies > 0);
        assert_eq!(metered, copies);
        let statement = read.ledger.open_statement(read.ledger.now() + 1000);
        assert!(statement.lines.iter().all(|l| l.charge_micros == 0));

        let current = crate::raft::codec::encode(&fat).unwrap();
        assert_eq!(decode_snapshot(&current).unwrap(), fat);
        let mut old = current.clone();
        old[0] = OLDEST_FORMAT_VERSION - 1;
        assert!(decode_snapshot(&old)
            .unwrap_err()
            .contains("format version 5"));
    }

    /// A version 7 FAT (a ledger, no reputation) is read whole, every
    /// vendor with an empty audit record.
    #[test]
    fn a_version_7_snapshot_is_read_with_empty_reputations() {
        let mut fat = crate::fat::tests::market();
        crate::fat::deletion_tests::committed(&mut fat, "acme", &[100, 50], 1);
        let v7 = FatV7 {
            vendors: fat.vendors.clone(),
            reservations: fat.reservations.clone(),
            requests: fat.requests.clone(),
            portions: fat.portions.clone(),
            snapshots: fat.snapshots.clone(),
            deletions: fat.deletions.clone(),
            grant_keys: fat.grant_keys.clone(),
            tenant_keys: fat.tenant_keys.clone(),
            repairs: fat.repairs.clone(),
            repair_failures: fat.repair_failures.clone(),
            ledger: fat.ledger.clone(),
        };
        let mut bytes = vec![FORMAT_VERSION_7];
        postcard::to_io(&v7, &mut bytes).unwrap();
        let read = decode_snapshot(&bytes).unwrap();
        assert_eq!(read, fat);
        assert!(read.reputation.is_empty());
    }

    /// A version 8 FAT (reputations, no bad copies) is read whole, with no
    /// bad copy; ours keeps its bad copies through a snapshot.
    #[test]
    fn a_version_8_snapshot_is_read_without_bad_copies() {
        let mut fat = crate::fat::tests::market();
        let ids = crate::fat::deletion_tests::committed(&mut fat, "acme", &[100, 50], 1);
        let v8 = FatV8 {
            vendors: fat.vendors.clone(),
            reservations: fat.reservations.clone(),
            requests: fat.requests.clone(),
            portions: fat.portions.clone(),
            snapshots: fat.snapshots.clone(),
            deletions: fat.deletions.clone(),
            grant_keys: fat.grant_keys.clone(),
            tenant_keys: fat.tenant_keys.clone(),
            repairs: fat.repairs.clone(),
            repair_failures: fat.repair_failures.clone(),
            ledger: fat.ledger.clone(),
            reputation: fat.reputation.clone(),
        };
        let mut bytes = vec![PREVIOUS_FORMAT_VERSION];
        postcard::to_io(&v8, &mut bytes).unwrap();
        let read = decode_snapshot(&bytes).unwrap();
        assert_eq!(read, fat);
        assert_eq!(read.departures, Default::default());

        let holder = fat.portions[&crate::fat::tests::tid("acme")][&ids[0]].vendors[0].clone();
        crate::fat::bad_copy_tests::self_report(&mut fat, &holder, "acme", ids[0], 2);
        assert_eq!(fat.bad_copies().len(), 1);
        let current = crate::raft::codec::encode(&fat).unwrap();
        assert_eq!(decode_snapshot(&current).unwrap(), fat);
    }
}
