//! What the tenant pays: its lines of the open billing period's statement,
//! as the coordinator group's `Fat.Usage` answers them, summed per vendor
//! for `offsite usage`, and the monthly cost `backup --dry-run` estimates
//! from the prices in them.
//!
//! A *line* is the tenant's storage or egress at one vendor at one price.
//! A storage line's quantity is byte-milliseconds stored, an egress line's
//! bytes served. Money is integer micro-units of the marketplace's
//! currency; storage prices are per TiB-month, egress prices per TiB.

use offsite_proto::pb::coordinator as pb;
use offsite_proto::statement::{LineView, StatementView, STORAGE};
use offsite_proto::WireError;
use serde::Serialize;

/// Bytes in the TiB that prices are per.
const TIB: u128 = 1 << 40;

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
    /// The tenant's lines, checked and summed (`offsite_proto::statement`).
    pub statement: StatementView,
    /// The charge so far plus what the stored bytes accrue until the
    /// period's nominal end at today's prices.
    pub estimate_micros: u64,
    /// Bytes of the committed portions, one copy each.
    pub stored_bytes_one_copy: u64,
    pub hosts: Vec<HostUsage>,
}

impl TryFrom<pb::UsageResponse> for Usage {
    type Error = WireError;
    fn try_from(reply: pb::UsageResponse) -> Result<Self, WireError> {
        let statement = reply
            .statement
            .ok_or_else(|| WireError::missing("statement"))?;
        Ok(Usage {
            statement: StatementView::try_from(&statement)?,
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
    pub vendor_id: String,
    /// Bytes held there now (every copy there).
    pub stored_bytes: u64,
    /// Byte-milliseconds stored there this period, as a decimal string:
    /// it can exceed what a JSON number holds exactly.
    pub stored_byte_ms: String,
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
        let view = usage.statement;
        let vendors: Vec<VendorUsage> = view
            .vendors
            .into_iter()
            .map(|v| VendorUsage {
                vendor_id: v.vendor_id,
                stored_bytes: v.totals.stored_bytes,
                stored_byte_ms: v.totals.stored_byte_ms,
                egress_bytes: v.totals.egress_bytes,
                charge_micros: v.totals.charge_micros,
            })
            .collect();
        let sum = |f: fn(&VendorUsage) -> u64| {
            vendors
                .iter()
                .fold(0u64, |total, v| total.saturating_add(f(v)))
        };
        UsageReport {
            period: view.period,
            started_unix_ms: view.started_unix_ms,
            as_of_unix_ms: view.as_of_unix_ms,
            charge_micros: view.charge_micros,
            estimate_micros: usage.estimate_micros,
            stored_bytes: sum(|v| v.stored_bytes),
            stored_bytes_one_copy: usage.stored_bytes_one_copy,
            egress_bytes: sum(|v| v.egress_bytes),
            fee_ppm: view.fee_ppm,
            vendors,
            hosts: usage.hosts,
        }
    }
}

/// What storing `bytes` (one copy) at `replication` costs a month, in
/// micro-units: bytes × replication × the average storage price / TiB,
/// rounded down. The average is over the tenant's storage lines of the
/// period (one per vendor and price its data is or was on) whose price is
/// within `max_storage_price`: the prices placement is likely to choose
/// from. `None` when no such line exists: no vendor price is known yet.
pub fn monthly_cost_micros(
    lines: &[LineView],
    bytes: u64,
    replication: u32,
    max_storage_price: Option<u64>,
) -> Option<u64> {
    let prices: Vec<u128> = lines
        .iter()
        .filter(|l| l.kind == STORAGE)
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
    use offsite_proto::pb::common as pbc;

    fn line(vendor: &str, kind: &str, price: u64, quantity: u128, stored: u64) -> pbc::LedgerLine {
        let charge = price / 2 + (quantity % 7) as u64;
        pbc::LedgerLine {
            tenant_id: "acme".into(),
            vendor_id: vendor.into(),
            kind: kind.into(),
            price_micros: price,
            quantity: quantity.to_string(),
            stored_bytes: stored,
            charge_micros: charge,
            fee_micros: 0,
            payout_micros: charge,
        }
    }

    fn usage(lines: Vec<pbc::LedgerLine>) -> Usage {
        Usage::try_from(pb::UsageResponse {
            statement: Some(pbc::Statement {
                period: 2,
                started_unix_ms: 1_000,
                as_of_unix_ms: 5_000,
                fee_ppm: 50_000,
                lines,
                ..Default::default()
            }),
            estimate_micros: 999,
            stored_bytes_one_copy: 300,
            hosts: vec![pb::HostUsage {
                host: "laptop".into(),
                stored_bytes: 300,
                snapshots: 2,
            }],
        })
        .unwrap()
    }

    #[test]
    fn lines_sum_per_vendor_and_the_charge_is_the_sum_of_the_lines() {
        let lines = vec![
            line("v-2", STORAGE, 100, u128::MAX - 5, 300),
            line("v-1", STORAGE, 40, 1_000, 300),
            line("v-1", STORAGE, 60, 500, 0),
            line("v-1", "egress", 7, 4_096, 0),
            line("v-3", "egress", 9, 100, 0),
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
            (v1.stored_bytes, v1.stored_byte_ms.as_str(), v1.egress_bytes),
            (300, "1500", 4_096)
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
        let lines = usage(vec![
            line("v-1", STORAGE, 1_000_000, 0, 0),
            line("v-2", STORAGE, 3_000_000, 0, 0),
            line("v-3", STORAGE, 50_000_000, 0, 0),
            line("v-3", "egress", 1, 0, 0),
        ])
        .statement
        .lines;
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
    fn a_malformed_answer_is_refused_naming_its_field() {
        let bad_kind = pbc::Statement {
            lines: vec![line("v-1", "rent", 5, 1, 1)],
            ..Default::default()
        };
        let answer = |statement| pb::UsageResponse {
            statement: Some(statement),
            ..Default::default()
        };
        assert_eq!(Usage::try_from(answer(bad_kind)).unwrap_err().field, "kind");
        let mut bad_quantity = line("v-1", STORAGE, 5, 1, 1);
        bad_quantity.quantity = "-3".into();
        let bad_quantity = pbc::Statement {
            lines: vec![bad_quantity],
            ..Default::default()
        };
        assert_eq!(
            Usage::try_from(answer(bad_quantity)).unwrap_err().field,
            "quantity"
        );
        let no_statement = pb::UsageResponse::default();
        assert_eq!(
            Usage::try_from(no_statement).unwrap_err().field,
            "statement"
        );
    }
}
