//! `offsite usage`: the tenant's figures in the open billing period, as a
//! table for people and as the `UsageReport` JSON shape for scripts.

use offsite_client::{Session, UsageReport};

use super::Output;

pub async fn usage(session: &Session) -> anyhow::Result<Output> {
    let report = session.usage().await?;
    let json = serde_json::to_value(&report)?;
    Ok(Output::ok(human(&report), json))
}

/// Micro-units as units of the marketplace's currency, exactly.
pub fn money(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

fn human(r: &UsageReport) -> String {
    let mut out = format!(
        "period {} (started at unix ms {}, figures as of unix ms {}; fee {} ppm)\n\
         charge so far:        {}\n\
         estimate for period:  {}\n\
         stored:               {} bytes one copy, {} bytes all copies\n\
         egress:               {} bytes\n",
        r.period,
        r.started_unix_ms,
        r.as_of_unix_ms,
        r.fee_ppm,
        money(r.charge_micros),
        money(r.estimate_micros),
        r.stored_bytes_one_copy,
        r.stored_bytes,
        r.egress_bytes,
    );
    out.push_str(&format!(
        "\n{:<16} {:>16} {:>28} {:>16} {:>18}\n",
        "vendor", "stored bytes", "stored byte-ms", "egress bytes", "charge"
    ));
    for v in &r.vendors {
        out.push_str(&format!(
            "{:<16} {:>16} {:>28} {:>16} {:>18}\n",
            v.vendor_id.as_str(),
            v.stored_bytes,
            v.stored_byte_ms,
            v.egress_bytes,
            money(v.charge_micros)
        ));
    }
    if r.vendors.is_empty() {
        out.push_str("(nothing stored or fetched this period)\n");
    }
    out.push_str(&format!(
        "\n{:<24} {:>16} {:>10}\n",
        "host", "bytes one copy", "snapshots"
    ));
    for h in &r.hosts {
        out.push_str(&format!(
            "{:<24} {:>16} {:>10}\n",
            h.host, h.stored_bytes, h.snapshots
        ));
    }
    if r.hosts.is_empty() {
        out.push_str("(no snapshots)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_exact_to_the_micro_unit() {
        assert_eq!(money(0), "0.000000");
        assert_eq!(money(1_500_001), "1.500001");
        assert_eq!(money(u64::MAX), "18446744073709.551615");
    }
}
