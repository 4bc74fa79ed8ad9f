//! `offsite-coordinator tenant set` and `offsite-coordinator ledger
//! show|close`: the operator's side of the market (admin certificate).

use anyhow::Context;
use offsite_identity::Credentials;
use offsite_proto::pb::admin::{LedgerCloseRequest, LedgerShowRequest, TenantLimitsRequest};
use offsite_proto::statement::StatementView;
use serde::Serialize;

use crate::cli_status::admin_client;

/// How a statement is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

/// Which period, and how to print it.
#[derive(Debug, clap::Args)]
pub struct StatementArgs {
    /// Default: the open period.
    #[arg(long)]
    pub period: Option<u32>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Same as --format json.
    #[arg(long)]
    pub json: bool,
}

impl StatementArgs {
    fn format(&self) -> Format {
        if self.json {
            Format::Json
        } else {
            self.format
        }
    }
}

/// A tenant's limits to set; `None` keeps the one it has, 0 removes it.
pub struct LimitsArgs {
    pub tenant: String,
    pub quota_bytes: Option<u64>,
    pub monthly_cap_micros: Option<u64>,
    pub max_open_reservations: Option<u32>,
}

#[derive(Serialize)]
struct LimitsView {
    tenant_id: String,
    /// 0: no limit.
    quota_bytes: u64,
    monthly_cap_micros: u64,
    /// 0: the default.
    max_open_reservations: u32,
}

pub async fn set_limits(
    coordinator: &str,
    credentials: &Credentials,
    args: LimitsArgs,
    json: bool,
) -> anyhow::Result<()> {
    if args.quota_bytes.is_none()
        && args.monthly_cap_micros.is_none()
        && args.max_open_reservations.is_none()
    {
        anyhow::bail!(
            "nothing to set: give --quota-bytes, --monthly-cap or --max-open-reservations \
             (0 removes a limit)"
        );
    }
    let tenant = args.tenant.clone();
    let limits = admin_client(coordinator, credentials)
        .await?
        .set_tenant_limits(TenantLimitsRequest {
            tenant_id: args.tenant,
            quota_bytes: args.quota_bytes,
            monthly_cap_micros: args.monthly_cap_micros,
            max_open_reservations: args.max_open_reservations,
        })
        .await
        .map_err(|status| anyhow::anyhow!("{}", status.message()))
        .with_context(|| format!("the coordinator at {coordinator} did not set {tenant}'s limits"))?
        .into_inner();
    let view = LimitsView {
        tenant_id: limits.tenant_id,
        quota_bytes: limits.quota_bytes,
        monthly_cap_micros: limits.monthly_cap_micros,
        max_open_reservations: limits.max_open_reservations,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    let show = |v: u64, none: &str| match v {
        0 => none.to_string(),
        v => v.to_string(),
    };
    println!("tenant {}", view.tenant_id);
    println!(
        "  storage quota (bytes, all copies)  {}",
        show(view.quota_bytes, "none")
    );
    println!(
        "  spending cap per period (micros)    {}",
        show(view.monthly_cap_micros, "none")
    );
    println!(
        "  open reservations at most           {}",
        show(u64::from(view.max_open_reservations), "default (256)")
    );
    Ok(())
}

pub async fn show(
    coordinator: &str,
    credentials: &Credentials,
    args: StatementArgs,
) -> anyhow::Result<()> {
    let period = args.period;
    let statement = admin_client(coordinator, credentials)
        .await?
        .ledger_show(LedgerShowRequest { period })
        .await
        .map_err(|status| anyhow::anyhow!("{}", status.message()))
        .with_context(|| format!("the coordinator at {coordinator} did not show the ledger"))?
        .into_inner();
    print(&StatementView::try_from(&statement)?, args.format())
}

pub async fn close(
    coordinator: &str,
    credentials: &Credentials,
    args: StatementArgs,
) -> anyhow::Result<()> {
    let mut client = admin_client(coordinator, credentials).await?;
    let period = match args.period {
        Some(p) => p,
        None => {
            client
                .ledger_show(LedgerShowRequest { period: None })
                .await
                .map_err(|status| anyhow::anyhow!("{}", status.message()))
                .with_context(|| {
                    format!("the coordinator at {coordinator} did not say which period is open")
                })?
                .into_inner()
                .period
        }
    };
    let statement = client
        .ledger_close(LedgerCloseRequest { period })
        .await
        .map_err(|status| anyhow::anyhow!("{}", status.message()))
        .with_context(|| format!("the coordinator at {coordinator} did not close period {period}"))?
        .into_inner();
    print(&StatementView::try_from(&statement)?, args.format())
}

fn print(view: &StatementView, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(view)?),
        Format::Csv => print!("{}", view.csv()),
        Format::Table => print_table(view),
    }
    Ok(())
}

fn print_table(view: &StatementView) {
    let state = match view.closed_unix_ms {
        Some(at) => format!("closed at {at}"),
        None => format!("open, as of {}", view.as_of_unix_ms),
    };
    println!(
        "period {} ({state}); fee {} ppm; charges {} = payouts {} + fee {} (micro-units)",
        view.period, view.fee_ppm, view.charge_micros, view.payout_micros, view.fee_micros
    );
    let row = |name: &str,
               money: &dyn std::fmt::Display,
               stored: &dyn std::fmt::Display,
               egress: &dyn std::fmt::Display| {
        println!("{name:<24} {money:>16} {stored:>16} {egress:>14}");
    };
    row("TENANT", &"CHARGE", &"STORED BYTES", &"EGRESS BYTES");
    for t in &view.tenants {
        let totals = &t.totals;
        row(
            &t.tenant_id,
            &totals.charge_micros,
            &totals.stored_bytes,
            &totals.egress_bytes,
        );
    }
    row("VENDOR", &"PAYOUT", &"STORED BYTES", &"EGRESS BYTES");
    for v in &view.vendors {
        let totals = &v.totals;
        row(
            &v.vendor_id,
            &totals.payout_micros,
            &totals.stored_bytes,
            &totals.egress_bytes,
        );
    }
}
