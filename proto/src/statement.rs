//! A billing period's statement as people and scripts read it: the ledger's
//! lines summed per tenant and per vendor, as JSON or CSV. The coordinator's
//! `ledger show`, the vendor's `earnings` and the client's `usage` print
//! these, so the three agree on every figure.
//!
//! Money fields end in `_micros`. Stored byte-time (`stored_byte_ms`) is a
//! decimal string: it can exceed what a JSON number holds exactly.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::pb::common::{LedgerLine, Statement};
use crate::WireError;

/// One tenant's or one vendor's figures in a period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub charge_micros: u64,
    pub fee_micros: u64,
    pub payout_micros: u64,
    /// Bytes of the copies held now (all copies).
    pub stored_bytes: u64,
    pub stored_byte_ms: String,
    pub egress_bytes: u64,
}

#[derive(Default)]
struct Sum {
    charge: u64,
    fee: u64,
    payout: u64,
    stored: u64,
    byte_ms: u128,
    egress: u64,
}

/// A line's quantity, checked: byte-ms of a storage line, bytes of an
/// egress line (which fit 64 bits).
fn quantity(l: &LedgerLine) -> Result<u128, WireError> {
    let quantity: u128 = l.quantity.parse().map_err(|_| {
        WireError::new(
            "quantity",
            format!("{:?} is not a decimal number", l.quantity),
        )
    })?;
    match l.kind.as_str() {
        STORAGE => Ok(quantity),
        EGRESS if quantity <= u128::from(u64::MAX) => Ok(quantity),
        EGRESS => Err(WireError::new("quantity", "egress bytes above 2^64")),
        other => Err(WireError::new(
            "kind",
            format!("{other:?} is neither {STORAGE:?} nor {EGRESS:?}"),
        )),
    }
}

/// The kinds of line.
pub const STORAGE: &str = "storage";
pub const EGRESS: &str = "egress";

impl Sum {
    fn add(&mut self, l: &LedgerLine, quantity: u128) {
        self.charge = self.charge.saturating_add(l.charge_micros);
        self.fee = self.fee.saturating_add(l.fee_micros);
        self.payout = self.payout.saturating_add(l.payout_micros);
        if l.kind == EGRESS {
            self.egress = self
                .egress
                .saturating_add(u64::try_from(quantity).unwrap_or(u64::MAX));
        } else {
            self.stored = self.stored.saturating_add(l.stored_bytes);
            self.byte_ms = self.byte_ms.saturating_add(quantity);
        }
    }

    fn totals(&self) -> Totals {
        Totals {
            charge_micros: self.charge,
            fee_micros: self.fee,
            payout_micros: self.payout,
            stored_bytes: self.stored,
            stored_byte_ms: self.byte_ms.to_string(),
            egress_bytes: self.egress,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantTotals {
    pub tenant_id: String,
    #[serde(flatten)]
    pub totals: Totals,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VendorTotals {
    pub vendor_id: String,
    #[serde(flatten)]
    pub totals: Totals,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineView {
    pub tenant_id: String,
    pub vendor_id: String,
    pub kind: String,
    pub price_micros: u64,
    pub quantity: String,
    pub stored_bytes: u64,
    pub charge_micros: u64,
    pub fee_micros: u64,
    pub payout_micros: u64,
}

/// A statement with its sums: the tenants' charges equal the vendors'
/// payouts plus `fee_micros`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatementView {
    pub period: u32,
    pub started_unix_ms: u64,
    /// `None` while the period is open.
    pub closed_unix_ms: Option<u64>,
    pub as_of_unix_ms: u64,
    pub fee_ppm: u32,
    pub charge_micros: u64,
    pub fee_micros: u64,
    pub payout_micros: u64,
    pub tenants: Vec<TenantTotals>,
    pub vendors: Vec<VendorTotals>,
    pub lines: Vec<LineView>,
}

/// A statement from the coordinator group, its lines checked (a kind and a
/// decimal quantity each).
impl TryFrom<&Statement> for StatementView {
    type Error = WireError;

    fn try_from(s: &Statement) -> Result<Self, WireError> {
        let (mut all, mut tenants, mut vendors) = (
            Sum::default(),
            BTreeMap::<&str, Sum>::new(),
            BTreeMap::<&str, Sum>::new(),
        );
        for l in &s.lines {
            let quantity = quantity(l)?;
            all.add(l, quantity);
            tenants.entry(&l.tenant_id).or_default().add(l, quantity);
            vendors.entry(&l.vendor_id).or_default().add(l, quantity);
        }
        Ok(Self {
            period: s.period,
            started_unix_ms: s.started_unix_ms,
            closed_unix_ms: (s.closed_unix_ms > 0).then_some(s.closed_unix_ms),
            as_of_unix_ms: s.as_of_unix_ms,
            fee_ppm: s.fee_ppm,
            charge_micros: all.charge,
            fee_micros: all.fee,
            payout_micros: all.payout,
            tenants: tenants
                .into_iter()
                .map(|(id, sum)| TenantTotals {
                    tenant_id: id.into(),
                    totals: sum.totals(),
                })
                .collect(),
            vendors: vendors
                .into_iter()
                .map(|(id, sum)| VendorTotals {
                    vendor_id: id.into(),
                    totals: sum.totals(),
                })
                .collect(),
            lines: s
                .lines
                .iter()
                .map(|l| LineView {
                    tenant_id: l.tenant_id.clone(),
                    vendor_id: l.vendor_id.clone(),
                    kind: l.kind.clone(),
                    price_micros: l.price_micros,
                    quantity: l.quantity.clone(),
                    stored_bytes: l.stored_bytes,
                    charge_micros: l.charge_micros,
                    fee_micros: l.fee_micros,
                    payout_micros: l.payout_micros,
                })
                .collect(),
        })
    }
}

/// The header of [`StatementView::csv`].
pub const CSV_HEADER: &str = "period,tenant_id,vendor_id,kind,price_micros,quantity,\
stored_bytes,charge_micros,fee_micros,payout_micros";

impl StatementView {
    /// One CSV row per line, after [`CSV_HEADER`]. Ids are letters, digits,
    /// '.', '_' and '-', so no field needs quoting.
    pub fn csv(&self) -> String {
        let mut out = String::from(CSV_HEADER);
        out.push('\n');
        for l in &self.lines {
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{}\n",
                self.period,
                l.tenant_id,
                l.vendor_id,
                l.kind,
                l.price_micros,
                l.quantity,
                l.stored_bytes,
                l.charge_micros,
                l.fee_micros,
                l.payout_micros
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(
        tenant: &str,
        vendor: &str,
        kind: &str,
        quantity: &str,
        charge: u64,
        fee: u64,
    ) -> LedgerLine {
        LedgerLine {
            tenant_id: tenant.into(),
            vendor_id: vendor.into(),
            kind: kind.into(),
            price_micros: 5,
            quantity: quantity.into(),
            stored_bytes: if kind == "storage" { 10 } else { 0 },
            charge_micros: charge,
            fee_micros: fee,
            payout_micros: charge - fee,
        }
    }

    #[test]
    fn sums_per_tenant_and_vendor_add_up_and_the_csv_has_a_row_per_line() {
        let statement = Statement {
            period: 3,
            lines: vec![
                line(
                    "acme",
                    "v1",
                    "storage",
                    "340282366920938463463374607431768211455",
                    100,
                    5,
                ),
                line("acme", "v2", "egress", "77", 40, 2),
                line("globex", "v1", "storage", "1000", 7, 0),
            ],
            ..Default::default()
        };
        let view = StatementView::try_from(&statement).unwrap();
        assert_eq!(view.charge_micros, 147);
        assert_eq!(view.charge_micros, view.payout_micros + view.fee_micros);
        assert_eq!(view.closed_unix_ms, None);
        let acme = &view.tenants[0];
        assert_eq!(
            (acme.tenant_id.as_str(), acme.totals.charge_micros),
            ("acme", 140)
        );
        assert_eq!(acme.totals.egress_bytes, 77);
        assert_eq!(acme.totals.stored_byte_ms, u128::MAX.to_string());
        let v1 = &view.vendors[0];
        assert_eq!((v1.totals.payout_micros, v1.totals.stored_bytes), (102, 20));
        let csv = view.csv();
        assert_eq!(csv.lines().count(), 4);
        assert!(csv.contains("\n3,acme,v2,egress,5,77,0,40,2,38\n"), "{csv}");
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["tenants"][0]["tenant_id"], "acme");
        assert_eq!(json["vendors"][1]["payout_micros"], 38);
        assert_eq!(json["fee_micros"], 7);

        let mut bad = statement.clone();
        bad.lines[0].kind = "rent".into();
        assert_eq!(StatementView::try_from(&bad).unwrap_err().field, "kind");
        let mut bad = statement;
        bad.lines[1].quantity = "-3".into();
        assert_eq!(StatementView::try_from(&bad).unwrap_err().field, "quantity");
    }
}
