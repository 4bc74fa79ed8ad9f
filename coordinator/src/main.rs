//! `offsite-coordinator`: `run --config FILE` serves the FAT until SIGTERM or
//! ctrl-c; `status --coordinator HOST:PORT [--json]` prints the coordinator
//! group and the marketplace's vendors; `members add-learner|promote|remove`
//! changes the group's membership one coordinator at a time; `pki init|issue`
//! creates the marketplace's certificate authority and issues certificates;
//! `grant-key rotate` gives the group a new grant-signing key.

mod cli_grant_key;
mod cli_market;
mod cli_pki;
mod cli_status;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use offsite_coordinator::CoordinatorConfig;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "offsite-coordinator",
    version,
    about = "The Offsite coordinator: the FAT service"
)]
struct Cli {
    #[command(subcommand)]
    command: CliCommand,
}

#[derive(Subcommand)]
enum CliCommand {
    /// Serve the FAT until SIGTERM or ctrl-c.
    Run {
        /// The coordinator's TOML config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the coordinator group (members, leader, term, last applied
    /// index) and the marketplace's vendors with their capacity.
    Status {
        /// host:port of a coordinator.
        #[arg(long)]
        coordinator: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        tls: cli_pki::TlsArgs,
    },
    /// Change the group's membership, one coordinator at a time: add the new
    /// one as a learner, promote it once it caught up, remove the old one.
    Members {
        /// host:port of any coordinator of the group (forwarded to the leader).
        #[arg(long)]
        coordinator: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        tls: cli_pki::TlsArgs,
        #[command(subcommand)]
        change: MembersCommand,
    },
    /// The group's grant-signing key: `rotate` installs a new one (the
    /// previous ones keep verifying grants already handed out).
    GrantKey {
        /// host:port of any coordinator of the group (forwarded to the leader).
        #[arg(long)]
        coordinator: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        tls: cli_pki::TlsArgs,
        #[command(subcommand)]
        action: GrantKeyCommand,
    },
    /// A tenant's limits (admin certificate): `set` its storage quota,
    /// spending cap per period and open reservations.
    Tenant {
        /// host:port of any coordinator of the group.
        #[arg(long)]
        coordinator: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        tls: cli_pki::TlsArgs,
        #[command(subcommand)]
        action: TenantCommand,
    },
    /// The ledger (admin certificate): `show` a period's statement, `close`
    /// the open period (its figures are frozen and a new one starts).
    Ledger {
        /// host:port of any coordinator of the group.
        #[arg(long)]
        coordinator: String,
        #[command(flatten)]
        tls: cli_pki::TlsArgs,
        #[command(subcommand)]
        action: LedgerCommand,
    },
    /// The marketplace's certificate authority: create it, issue certificates.
    Pki {
        #[command(subcommand)]
        command: cli_pki::PkiCommand,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Set limits; an unnamed limit keeps its value, 0 removes one.
    Set {
        #[arg(long)]
        tenant: String,
        /// Bytes of all copies, committed or held in open reservations.
        #[arg(long)]
        quota_bytes: Option<u64>,
        /// Most the tenant's charge may reach in one period (micro-units);
        /// new reservations are refused once it has.
        #[arg(long = "monthly-cap")]
        monthly_cap_micros: Option<u64>,
        /// Most open reservations at once (default 256).
        #[arg(long)]
        max_open_reservations: Option<u32>,
    },
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// A period's statement: every tenant's charge, every vendor's payout,
    /// the marketplace's fee and every line.
    Show {
        #[command(flatten)]
        args: cli_market::StatementArgs,
    },
    /// Close the open period (refused unless `--period`, when given, is the
    /// open one) and print its frozen statement.
    Close {
        #[command(flatten)]
        args: cli_market::StatementArgs,
    },
}

#[derive(Subcommand)]
enum GrantKeyCommand {
    /// Install a new grant key; it signs every grant from now on.
    Rotate,
}

#[derive(Subcommand)]
enum MembersCommand {
    /// Add a coordinator that follows the log without voting.
    AddLearner {
        /// Its node id (never one used before).
        #[arg(long)]
        id: u64,
        /// host:port the other coordinators reach it at.
        #[arg(long)]
        address: String,
        /// The name its certificate carries (`pki issue --name`); once every
        /// member has one, only members' certificates take part.
        #[arg(long, value_parser = member_name)]
        name: Option<String>,
    },
    /// Make a learner a voter.
    Promote {
        #[arg(long)]
        id: u64,
    },
    /// Remove a coordinator from the group.
    Remove {
        #[arg(long)]
        id: u64,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        CliCommand::Run { config } => run(config).await,
        CliCommand::Status {
            coordinator,
            json,
            tls,
        } => match tls.credentials() {
            Ok(credentials) => cli_status::print(&coordinator, &credentials, json).await,
            Err(e) => Err(e),
        },
        CliCommand::Pki { command } => cli_pki::run(command),
        CliCommand::Tenant {
            coordinator,
            json,
            tls,
            action,
        } => match tls.admin_credentials() {
            Ok(credentials) => {
                let TenantCommand::Set {
                    tenant,
                    quota_bytes,
                    monthly_cap_micros,
                    max_open_reservations,
                } = action;
                let args = cli_market::LimitsArgs {
                    tenant,
                    quota_bytes,
                    monthly_cap_micros,
                    max_open_reservations,
                };
                cli_market::set_limits(&coordinator, &credentials, args, json).await
            }
            Err(e) => Err(e),
        },
        CliCommand::Ledger {
            coordinator,
            tls,
            action,
        } => match tls.admin_credentials() {
            Ok(credentials) => match action {
                LedgerCommand::Show { args } => {
                    cli_market::show(&coordinator, &credentials, args).await
                }
                LedgerCommand::Close { args } => {
                    cli_market::close(&coordinator, &credentials, args).await
                }
            },
            Err(e) => Err(e),
        },
        CliCommand::GrantKey {
            coordinator,
            json,
            tls,
            action: GrantKeyCommand::Rotate,
        } => match tls.admin_credentials() {
            Ok(credentials) => cli_grant_key::rotate(&coordinator, &credentials, json).await,
            Err(e) => Err(e),
        },
        CliCommand::Members {
            coordinator,
            json,
            tls,
            change,
        } => {
            let change = match change {
                MembersCommand::AddLearner { id, address, name } => {
                    let address = offsite_coordinator::raft::MemberAddr::new(name, address)
                        .node()
                        .addr;
                    cli_status::Change::AddLearner { id, address }
                }
                MembersCommand::Promote { id } => cli_status::Change::Promote { id },
                MembersCommand::Remove { id } => cli_status::Change::Remove { id },
            };
            match tls.credentials() {
                Ok(credentials) => {
                    cli_status::change(&coordinator, &credentials, change, json).await
                }
                Err(e) => Err(e),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", describe(&err));
            ExitCode::FAILURE
        }
    }
}

/// `--name` of `members add-learner`: a certificate name.
fn member_name(name: &str) -> Result<String, String> {
    offsite_coordinator::raft::check_member_name(name).map(|()| name.to_string())
}

/// The error and its causes on one line, each cause said once (our error
/// messages often already include their source).
fn describe(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let cause = cause.to_string();
        if !text.contains(cause.trim()) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(cause.trim());
        }
    }
    text
}

fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, not in log files or journald.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn run(config_path: PathBuf) -> anyhow::Result<()> {
    let config = CoordinatorConfig::load(&config_path)
        .with_context(|| format!("config file {}", config_path.display()))?;
    let coordinator = offsite_coordinator::Coordinator::start(config)
        .await
        .context("starting the coordinator")?;
    coordinator
        .serve(shutdown_signal())
        .await
        .context("serving the FAT")
}

/// Completes at SIGTERM or ctrl-c.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
