//! FAT records that travel between the client and the coordinator group:
//! reservation candidates, portion placements (the final FAT with receipts),
//! portion locations and snapshot records.

use serde::{Deserialize, Serialize};

use crate::limits::{
    MAX_PORTIONS_PER_CALL, MAX_PORTION_BYTES, MAX_SNAPSHOT_LIST, MAX_SNAPSHOT_STRING,
};
use crate::pb::coordinator as pb;
use crate::{Grant, Hash, PortionId, Receipt, SnapshotId, VendorRef, WireError};

/// One candidate vendor of a reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub vendor: VendorRef,
    pub reserved_bytes: u64,
    pub region: String,
    pub store_grant: Grant,
    /// Micro-units per TiB-month; 0 from a coordinator without prices.
    #[serde(default)]
    pub storage_price_micros_per_tib_month: u64,
}

impl TryFrom<pb::Candidate> for Candidate {
    type Error = WireError;
    fn try_from(c: pb::Candidate) -> Result<Self, WireError> {
        Ok(Self {
            vendor: c
                .vendor
                .ok_or(WireError::missing("candidate.vendor"))?
                .try_into()?,
            reserved_bytes: c.reserved_bytes,
            region: bounded_string("candidate.region", c.region)?,
            store_grant: c.store_grant.unwrap_or_default().try_into()?,
            storage_price_micros_per_tib_month: c.storage_price_micros_per_tib_month,
        })
    }
}

impl From<Candidate> for pb::Candidate {
    fn from(c: Candidate) -> Self {
        Self {
            vendor: Some(c.vendor.into()),
            reserved_bytes: c.reserved_bytes,
            region: c.region,
            store_grant: Some(c.store_grant.into()),
            storage_price_micros_per_tib_month: c.storage_price_micros_per_tib_month,
        }
    }
}

/// A stored portion and the receipts of the vendors that hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortionPlacement {
    pub portion: PortionId,
    pub hash: Hash,
    pub size: u64,
    pub receipts: Vec<Receipt>,
}

impl TryFrom<pb::PortionPlacement> for PortionPlacement {
    type Error = WireError;
    fn try_from(p: pb::PortionPlacement) -> Result<Self, WireError> {
        if p.receipts.len() > crate::limits::MAX_ROUTE_LEN * 4 {
            return Err(WireError::new(
                "receipts",
                "too many receipts for one portion",
            ));
        }
        if !(1..=MAX_PORTION_BYTES).contains(&p.size) {
            return Err(WireError::new(
                "placement.size",
                format!(
                    "{} bytes; a portion has 1 to {MAX_PORTION_BYTES} bytes",
                    p.size
                ),
            ));
        }
        Ok(Self {
            portion: PortionId::parse(&p.portion_id)?,
            hash: Hash::from_wire("placement.hash", &p.hash)?,
            size: p.size,
            receipts: p
                .receipts
                .into_iter()
                .map(Receipt::try_from)
                .collect::<Result<_, _>>()?,
        })
    }
}

impl From<PortionPlacement> for pb::PortionPlacement {
    fn from(p: PortionPlacement) -> Self {
        Self {
            portion_id: p.portion.to_string(),
            hash: p.hash.to_vec(),
            size: p.size,
            receipts: p.receipts.into_iter().map(Into::into).collect(),
        }
    }
}

/// Where a committed portion lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortionLocation {
    pub portion: PortionId,
    pub hash: Hash,
    pub size: u64,
    pub vendors: Vec<VendorRef>,
    /// One fetch grant per vendor, same order.
    pub fetch_grants: Vec<Grant>,
}

impl TryFrom<pb::PortionLocation> for PortionLocation {
    type Error = WireError;
    fn try_from(p: pb::PortionLocation) -> Result<Self, WireError> {
        Ok(Self {
            portion: PortionId::parse(&p.portion_id)?,
            hash: Hash::from_wire("location.hash", &p.hash)?,
            size: p.size,
            vendors: p
                .vendors
                .into_iter()
                .map(VendorRef::try_from)
                .collect::<Result<_, _>>()?,
            fetch_grants: p
                .fetch_grants
                .into_iter()
                .map(Grant::try_from)
                .collect::<Result<_, _>>()?,
        })
    }
}

impl From<PortionLocation> for pb::PortionLocation {
    fn from(p: PortionLocation) -> Self {
        Self {
            portion_id: p.portion.to_string(),
            hash: p.hash.to_vec(),
            size: p.size,
            vendors: p.vendors.into_iter().map(Into::into).collect(),
            fetch_grants: p.fetch_grants.into_iter().map(Into::into).collect(),
        }
    }
}

/// Where one blob lives inside a portion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobLocation {
    pub portion: PortionId,
    pub offset: u64,
    pub length: u64,
}

impl TryFrom<pb::BlobLocation> for BlobLocation {
    type Error = WireError;
    fn try_from(b: pb::BlobLocation) -> Result<Self, WireError> {
        Ok(Self {
            portion: PortionId::parse(&b.portion_id)?,
            offset: b.offset,
            length: b.length,
        })
    }
}

impl From<BlobLocation> for pb::BlobLocation {
    fn from(b: BlobLocation) -> Self {
        Self {
            portion_id: b.portion.to_string(),
            offset: b.offset,
            length: b.length,
        }
    }
}

/// One backup as the FAT records it. The manifest it points to is encrypted;
/// the coordinator sees only these fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub id: SnapshotId,
    pub host: String,
    pub time_unix_ms: u64,
    pub paths: Vec<String>,
    pub tags: Vec<String>,
    pub manifest: BlobLocation,
    pub portions: Vec<PortionId>,
    pub logical_bytes: u64,
    pub file_count: u64,
}

fn bounded_string(field: &'static str, s: String) -> Result<String, WireError> {
    if s.len() > MAX_SNAPSHOT_STRING {
        return Err(WireError::new(
            field,
            format!("{} bytes, more than {MAX_SNAPSHOT_STRING}", s.len()),
        ));
    }
    Ok(s)
}

fn bounded_list(field: &'static str, list: Vec<String>) -> Result<Vec<String>, WireError> {
    if list.len() > MAX_SNAPSHOT_LIST {
        return Err(WireError::new(
            field,
            format!("{} entries, more than {MAX_SNAPSHOT_LIST}", list.len()),
        ));
    }
    list.into_iter().map(|s| bounded_string(field, s)).collect()
}

/// Parses a list of portion ids, bounded.
pub fn parse_portion_ids(field: &'static str, ids: &[String]) -> Result<Vec<PortionId>, WireError> {
    if ids.len() > MAX_PORTIONS_PER_CALL {
        return Err(WireError::new(
            field,
            format!("{} portions, more than {MAX_PORTIONS_PER_CALL}", ids.len()),
        ));
    }
    ids.iter().map(|id| PortionId::parse(id)).collect()
}

impl TryFrom<pb::SnapshotRecord> for SnapshotRecord {
    type Error = WireError;
    fn try_from(s: pb::SnapshotRecord) -> Result<Self, WireError> {
        Ok(Self {
            id: SnapshotId::parse(&s.snapshot_id)?,
            host: bounded_string("host", s.host)?,
            time_unix_ms: s.time_unix_ms,
            paths: bounded_list("paths", s.paths)?,
            tags: bounded_list("tags", s.tags)?,
            manifest: s
                .manifest
                .ok_or(WireError::missing("manifest"))?
                .try_into()?,
            portions: parse_portion_ids("portion_ids", &s.portion_ids)?,
            logical_bytes: s.logical_bytes,
            file_count: s.file_count,
        })
    }
}

impl From<SnapshotRecord> for pb::SnapshotRecord {
    fn from(s: SnapshotRecord) -> Self {
        Self {
            snapshot_id: s.id.to_string(),
            host: s.host,
            time_unix_ms: s.time_unix_ms,
            paths: s.paths,
            tags: s.tags,
            manifest: Some(s.manifest.into()),
            portion_ids: s.portions.iter().map(ToString::to_string).collect(),
            logical_bytes: s.logical_bytes,
            file_count: s.file_count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_record_round_trips_and_bounds_lists() {
        let record = SnapshotRecord {
            id: SnapshotId::random(),
            host: "laptop".into(),
            time_unix_ms: 1_700_000_000_000,
            paths: vec!["/home".into()],
            tags: vec!["nightly".into()],
            manifest: BlobLocation {
                portion: PortionId::random(),
                offset: 10,
                length: 20,
            },
            portions: vec![PortionId::random()],
            logical_bytes: 5,
            file_count: 1,
        };
        let wire: pb::SnapshotRecord = record.clone().into();
        assert_eq!(SnapshotRecord::try_from(wire.clone()).unwrap(), record);

        let mut too_many = wire;
        too_many.tags = vec!["t".into(); MAX_SNAPSHOT_LIST + 1];
        assert_eq!(
            SnapshotRecord::try_from(too_many).unwrap_err().field,
            "tags"
        );
    }
}
