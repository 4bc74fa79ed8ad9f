//! What the tenant pays: its lines of the open billing period's statement,
//! as the coordinator group's `Fat.Usage` answers them, summed per vendor
//! for `offsite usage`, and the monthly cost `backup --dry-run` estimates
//! from the prices in them.
//!
//! A *line* is the tenant's storage or egress at one vendor at one price.
//! A storage line's quantity is byte-milliseconds stored, an egress line's
//! bytes served. Money is integer micro-units of the marketplace's
//! currency; storage prices are per TiB-month, egress prices per TiB.

use std::collections::BTreeMap;

use offsite_proto::pb::common as pbc;
use offsite_proto::pb::coordinator as pb;
use offsite_proto::{VendorId, WireError};
use serde::{Serialize, Serializer};

/// Bytes in the TiB that prices are per.
const TIB: u128 = 1 << 40;

/// What a line meters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    Storage,
    Egress,
}

/// One line of the tenant's statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub vendor: VendorId,
    pub kind: LineKind,
    /// Per TiB-month (storage) or per TiB (egress).
    pub price_micros: u64,
    /// Byte-milliseconds (storage) or bytes (egress).
    pub quantity: u128,
    /// Storage: bytes held now at this price (all copies at this vendor).
    pub stored_bytes: u64,
    pub charge_micros: u64,
}

/// One host's snapshots: the bytes of the portions they need (one copy
/// each) and how many there are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostUsage {
    pub host: String,
    pub stored_bytes: u64,
    pub snapshots: u64,
}

/// The tenant's usage in the open period, as the coordinator group answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub period: u32,
    pub started_unix_ms: u64,
    pub as_of_unix_ms: u64,
    /// The marketplace's share of every charge, parts per million.
    pub fee_ppm: u32,
    pub lines: Vec<Line>,
    /// The charge so far plus what the stored bytes accrue until the
    /// period's nominal end at today's prices.
    pub estimate_micros: u64,
    /// Bytes of the committed portions, one copy each.
    pub stored_bytes_one_copy: u64,
    pub hosts: Vec<HostUsage>,
}

impl TryFrom<pbc::LedgerLine> for Line {
    type Error = WireError;
    fn try_from(l: pbc::LedgerLine) -> Result<Self, WireError> {
        let kind = match l.kind.as_str() {
            "storage" => LineKind::Storage,
            "egress" => LineKind::Egress,
            other => {
                return Err(WireError::new(
                    "kind",
                    format!("{other:?} is neither \"storage\" nor \"egress\""),
                ))
            }
        };
        let quantity = l.quantity.parse().map_err(|_| {
            WireError::new(
                "quantity",
                format!("{:?} is not a decimal number", l.quantity),
            )
        })?;
        Ok(Line {
            vendor: VendorId::new(l.vendor_id)?,
            kind,
            price_micros: l.price_micros,
            quantity,
            stored_bytes: l.stored_bytes,
            charge_micros: l.charge_micros,
        })
    }
}

impl TryFrom<pb::UsageResponse> for Usage {
    type Error = WireError;
    fn try_from(reply: pb::UsageResponse) -> Result<Self, WireError> {
        let statement = reply
            .statement
            .ok_or_else(|| WireError::missing("statement"))?;
        Ok(Usage {
            period: statement.period,
            started_unix_ms: statement.started_unix_ms,
            as_of_unix_ms: statement.as_of_unix_ms,
            fee_ppm: statement.fee_ppm,
            lines: statement
                .lines
                .into_iter()
                .map(Line::try_from)
                .collect::<Result<_, _>>()?,
            estimate_micros: reply.estimate_micros,
            stored_bytes_one_copy: reply.stored_bytes_one_copy,
            hosts: reply
                .hosts
                .into_iter()
                .map(|h| HostUsage {
                    host: h.host,
                    stored_bytes: h.stored_bytes,
                    snapshots: h.snapshots,
                })
                .collect(),
        })
    }
}

/// The tenant's figures at one vendor: its lines there summed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VendorUsage {
    pub vendor_id: VendorId,
    /// Bytes held there now (every copy there).
    pub stored_bytes: u64,
    /// Byte-milliseconds stored there this period; a decimal string in
    /// JSON, since it can exceed what a JSON number holds exactly.
    #[serde(serialize_with = "decimal")]
    pub stored_byte_ms: u128,
    pub egress_bytes: u64,
    pub charge_micros: u64,
}

/// `offsite usage`: the period's figures, summed over the lines, per vendor
/// and per host (the `--json` shape documented in the README).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageReport {
    pub period: u32,
    pub started_unix_ms: u64,
    pub as_of_unix_ms: u64,
    /// The charge so far in the period: the sum of the lines' charges.
    pub charge_micros: u64,
    pub estimate_micros: u64,
    /// Bytes held now, every copy.
    pub stored_bytes: u64,
    pub stored_bytes_one_copy: u64,
    pub egress_bytes: u64,
    pub fee_ppm: u32,
    pub vendors: Vec<VendorUsage>,
    pub hosts: Vec<HostUsage>,
}

impl From<Usage> for UsageReport {
    fn from(usage: Usage) -> Self {
        let mut vendors: BTreeMap<VendorId, VendorUsage> = BTreeMap::new();
        for l in &usage.lines {
            let v = vendors
                .entry(l.vendor.clone())
                .or_insert_with(|| VendorUsage {
                    vendor_id: l.vendor.clone(),
                    stored_bytes: 0,
                    stored_byte_ms: 0,
                    egress_bytes: 0,
                    charge_micros: 0,
                });
            v.charge_micros = v.charge_micros.saturating_add(l.charge_micros);
            match l.kind {
                LineKind::Storage => {
                    v.stored_bytes = v.stored_bytes.saturating_add(l.stored_bytes);
                    v.stored_byte_ms = v.stored_byte_ms.saturating_add(l.quantity);
                }
                LineKind::Egress => {
                    let bytes = u64::try_from(l.quantity).unwrap_or(u64::MAX);
                    v.egress_bytes = v.egress_bytes.saturating_add(bytes);
                }
            }
        }
        let vendors: Vec<VendorUsage> = vendors.into_values().collect();
        let sum = |f: fn(&VendorUsage) -> u64| {
            vendors
                .iter()
                .fold(0u64, |total, v| total.saturating_add(f(v)))
        };
        UsageReport {
            period: usage.period,
            started_unix_ms: usage.started_unix_ms,
            as_of_unix_ms: usage.as_of_unix_ms,
            charge_micros: sum(|v| v.charge_micros),
            estimate_micros: usage.estimate_micros,
            stored_bytes: sum(|v| v.stored_bytes),
            stored_bytes_one_copy: usage.stored_bytes_one_copy,
            egress_bytes: sum(|v| v.egress_bytes),
            fee_ppm: usage.fee_ppm,
            vendors,
            hosts: usage.hosts,
        }
    }
}

fn decimal<S: Serializer>(value: &u128, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// What storing `bytes` (one copy) at `replication` costs a month, in
/// micro-units: bytes × replication × the average storage price / TiB,
/// rounded down. The average is over the tenant's storage lines of the
/// period (one per vendor and price its data is or was on) whose price is
/// within `max_storage_price`: the prices placement is likely to choose
/// from. `None` when no such line exists: no vendor price is known yet.
pub fn monthly_cost_micros(
    lines: &[Line],
    bytes: u64,
    replication: u32,
    max_storage_price: Option<u64>,
) -> Option<u64> {
    let prices: Vec<u128> = lines
        .iter()
        .filter(|l| l.kind == LineKind::Storage)
        .filter(|l| max_storage_price.is_none_or(|max| l.price_micros <= max))
        .map(|l| u128::from(l.price_micros))
        .collect();
    if prices.is_empty() {
        return None;
    }
    let sum = prices.iter().fold(0u128, |s, p| s.saturating_add(*p));
    let cost = (u128::from(bytes) * u128::from(replication)).saturating_mul(sum)
        / (prices.len() as u128 * TIB);
    Some(u64::try_from(cost).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(vendor: &str, kind: LineKind, price: u64, quantity: u128, stored: u64) -> Line {
        Line {
            vendor: VendorId::new(vendor).unwrap(),
            kind,
            price_micros: price,
            quantity,
            stored_bytes: stored,
            charge_micros: price / 2 + quantity as u64 % 7,
        }
    }

    fn usage(lines: Vec<Line>) -> Usage {
        Usage {
            period: 2,
            started_unix_ms: 1_000,
            as_of_unix_ms: 5_000,
            fee_ppm: 50_000,
            lines,
            estimate_micros: 999,
            stored_bytes_one_copy: 300,
            hosts: vec![HostUsage {
                host: "laptop".into(),
                stored_bytes: 300,
                snapshots: 2,
            }],
        }
    }

    #[test]
    fn lines_sum_per_vendor_and_the_charge_is_the_sum_of_the_lines() {
        let lines = vec![
            line("v-2", LineKind::Storage, 100, u128::MAX - 5, 300),
            line("v-1", LineKind::Storage, 40, 1_000, 300),
            line("v-1", LineKind::Storage, 60, 500, 0),
            line("v-1", LineKind::Egress, 7, 4_096, 0),
            line("v-3", LineKind::Egress, 9, 100, 0),
        ];
        let charges: u64 = lines.iter().map(|l| l.charge_micros).sum();
        let report = UsageReport::from(usage(lines));
        assert_eq!(report.charge_micros, charges);
        assert_eq!(
            report.vendors.iter().map(|v| v.charge_micros).sum::<u64>(),
            charges
        );
        let ids: Vec<&str> = report
            .vendors
            .iter()
            .map(|v| v.vendor_id.as_str())
            .collect();
        assert_eq!(ids, ["v-1", "v-2", "v-3"]);
        let v1 = &report.vendors[0];
        assert_eq!(
            (v1.stored_bytes, v1.stored_byte_ms, v1.egress_bytes),
            (300, 1_500, 4_096)
        );
        assert_eq!(report.stored_bytes, 600);
        assert_eq!(report.stored_bytes_one_copy, 300);
        assert_eq!(report.egress_bytes, 4_196);
        assert_eq!(report.vendors[2].stored_bytes, 0);

        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["charge_micros"], charges);
        assert_eq!(json["vendors"][0]["vendor_id"], "v-1");
        assert_eq!(json["vendors"][0]["stored_byte_ms"], "1500");
        assert_eq!(
            json["vendors"][1]["stored_byte_ms"],
            (u128::MAX - 5).to_string(),
            "byte-time past 2^64 stays exact"
        );
        assert_eq!(json["hosts"][0]["host"], "laptop");
        assert_eq!(json["fee_ppm"], 50_000);
    }

    #[test]
    fn no_lines_is_a_report_of_zeros() {
        let report = UsageReport::from(usage(Vec::new()));
        assert_eq!(
            (
                report.charge_micros,
                report.stored_bytes,
                report.egress_bytes
            ),
            (0, 0, 0)
        );
        assert!(report.vendors.is_empty());
    }

    #[test]
    fn the_monthly_cost_is_bytes_times_copies_at_the_average_price_within_the_limit() {
        let tib = 1u64 << 40;
        let lines = vec![
            line("v-1", LineKind::Storage, 1_000_000, 0, 0),
            line("v-2", LineKind::Storage, 3_000_000, 0, 0),
            line("v-3", LineKind::Storage, 50_000_000, 0, 0),
            line("v-3", LineKind::Egress, 1, 0, 0),
        ];
        // One TiB at R = 3 at the average of 1 and 3 units.
        assert_eq!(
            monthly_cost_micros(&lines, tib, 3, Some(3_000_000)),
            Some(6_000_000)
        );
        assert_eq!(monthly_cost_micros(&lines, tib, 1, None), Some(18_000_000));
        assert_eq!(
            monthly_cost_micros(&lines, tib / 2, 1, Some(1_000_000)),
            Some(500_000)
        );
        assert_eq!(monthly_cost_micros(&lines, tib, 3, Some(999)), None);
        assert_eq!(monthly_cost_micros(&lines[3..], tib, 3, None), None);
        assert_eq!(
            monthly_cost_micros(&lines, u64::MAX, 32, None).map(|c| c > 0),
            Some(true)
        );
    }

    #[test]
    fn a_malformed_line_is_refused_naming_its_field() {
        let good = pbc::LedgerLine {
            tenant_id: "acme".into(),
            vendor_id: "v-1".into(),
            kind: "storage".into(),
            price_micros: 5,
            quantity: u128::MAX.to_string(),
            stored_bytes: 1,
            charge_micros: 2,
            fee_micros: 0,
            payout_micros: 2,
        };
        assert_eq!(Line::try_from(good.clone()).unwrap().quantity, u128::MAX);
        let bad_kind = pbc::LedgerLine {
            kind: "rent".into(),
            ..good.clone()
        };
        assert_eq!(Line::try_from(bad_kind).unwrap_err().field, "kind");
        let bad_quantity = pbc::LedgerLine {
            quantity: "-3".into(),
            ..good
        };
        assert_eq!(Line::try_from(bad_quantity).unwrap_err().field, "quantity");
        let no_statement = pb::UsageResponse::default();
        assert_eq!(
            Usage::try_from(no_statement).unwrap_err().field,
            "statement"
        );
    }
}
