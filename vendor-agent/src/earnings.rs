//! `offsite-vendor earnings`: what the ledger says this vendor earned, in
//! the open period and in every closed one, asked of the coordinator group
//! with the vendor's own certificate (a vendor sees only its own lines).

use std::time::Duration;

use anyhow::Context;
use offsite_identity::{Credentials, Role};
use offsite_proto::limits::MAX_MESSAGE_BYTES;
use offsite_proto::pb::coordinator::vendor_registry_client::VendorRegistryClient;
use offsite_proto::pb::coordinator::EarningsRequest;
use offsite_proto::statement::{StatementView, Totals};
use serde::Serialize;

use crate::VendorConfig;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// One period of a vendor's earnings.
#[derive(Debug, Serialize)]
pub struct PeriodEarnings {
    pub period: u32,
    pub started_unix_ms: u64,
    pub closed_unix_ms: Option<u64>,
    /// What tenants are charged for this vendor's storage and egress.
    pub charge_micros: u64,
    /// The marketplace's fee taken from it.
    pub fee_micros: u64,
    /// What the vendor earns: the charge less the fee.
    pub earnings_micros: u64,
    pub stored_bytes: u64,
    pub stored_byte_ms: String,
    pub egress_bytes: u64,
}

/// The vendor's earnings: the open period, then the closed ones (newest
/// first).
#[derive(Debug, Serialize)]
pub struct Earnings {
    pub vendor_id: String,
    #[serde(flatten)]
    pub current: PeriodEarnings,
    pub closed: Vec<PeriodEarnings>,
}

fn period(view: &StatementView) -> PeriodEarnings {
    let totals = view
        .vendors
        .first()
        .map(|v| v.totals.clone())
        .unwrap_or(Totals {
            stored_byte_ms: "0".into(),
            ..Totals::default()
        });
    PeriodEarnings {
        period: view.period,
        started_unix_ms: view.started_unix_ms,
        closed_unix_ms: view.closed_unix_ms,
        charge_micros: totals.charge_micros,
        fee_micros: totals.fee_micros,
        earnings_micros: totals.payout_micros,
        stored_bytes: totals.stored_bytes,
        stored_byte_ms: totals.stored_byte_ms,
        egress_bytes: totals.egress_bytes,
    }
}

/// Asks each coordinator of `config` in turn.
pub async fn earnings(config: &VendorConfig) -> anyhow::Result<Earnings> {
    let credentials = Credentials::load(&config.tls)
        .context("cannot load the vendor's certificate (config section [tls])")?
        .expect_role(Role::Vendor, "offsite-vendor earnings")?;
    let mut last = None;
    for coordinator in &config.coordinators {
        match ask(&credentials, coordinator).await {
            Ok(statements) => {
                let mut views = statements
                    .iter()
                    .map(|s| StatementView::try_from(s).map(|v| period(&v)))
                    .collect::<Result<Vec<_>, _>>()
                    .context("the coordinator sent a malformed statement")?
                    .into_iter();
                let current = views
                    .next()
                    .context("the coordinator sent no open period")?;
                return Ok(Earnings {
                    vendor_id: config.vendor_id.clone(),
                    current,
                    closed: views.collect(),
                });
            }
            Err(err) => {
                tracing::warn!(%coordinator, error = %err, "cannot ask this coordinator; trying the next");
                last = Some(err);
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no coordinator is configured"))).context(
        "no coordinator answered; check that the group is up and `coordinators` in the config",
    )
}

async fn ask(
    credentials: &Credentials,
    coordinator: &str,
) -> anyhow::Result<Vec<offsite_proto::pb::common::Statement>> {
    let channel = credentials
        .endpoint(coordinator, &Role::Coordinator.dns_name())?
        .connect_timeout(CALL_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .connect()
        .await?;
    let answer = VendorRegistryClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .earnings(EarningsRequest {})
        .await
        .map_err(|status| anyhow::anyhow!("{}", status.message()))?
        .into_inner();
    Ok(answer.statements)
}

/// The earnings as a person reads them.
pub fn print_table(e: &Earnings) {
    println!("vendor {}", e.vendor_id);
    println!(
        "period {} (open): earnings {} micro-units (charged {}, fee {}); {} bytes stored, {} bytes served",
        e.current.period,
        e.current.earnings_micros,
        e.current.charge_micros,
        e.current.fee_micros,
        e.current.stored_bytes,
        e.current.egress_bytes
    );
    for p in &e.closed {
        println!(
            "period {} (closed): earnings {} micro-units (charged {}, fee {}); {} bytes served",
            p.period, p.earnings_micros, p.charge_micros, p.fee_micros, p.egress_bytes
        );
    }
}
