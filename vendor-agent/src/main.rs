//! `offsite-vendor run --config FILE`: loads the vendor config, opens the
//! stores and local FAT, serves the vendor gRPC service, registers with the
//! coordinator group, and shuts down gracefully on SIGTERM or ctrl-c.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::time::Duration;

use offsite_vendor::{departure, VendorAgent, VendorConfig};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "offsite-vendor", version, about = "The Offsite vendor agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the vendor agent.
    Run {
        /// The vendor config (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// What this vendor earned: the open billing period and the closed
    /// ones, as the coordinator group's ledger says.
    Earnings {
        /// The vendor config (TOML): its certificate and coordinators.
        #[arg(long)]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Graceful exit: asks the coordinator group to move every portion
    /// this vendor holds to other vendors; no new data comes meanwhile.
    /// Keep the agent running until the exit completes.
    Exit {
        /// The vendor config (TOML): its certificate and coordinators.
        #[arg(long)]
        config: PathBuf,
        /// Cancel an exit that has not completed.
        #[arg(long, conflicts_with_all = ["purge", "wait"])]
        cancel: bool,
        /// Wait until the exit completes and print the group's signed
        /// statement that this vendor holds nothing the FAT needs.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, at most a week.
        #[arg(long, default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..=604_800))]
        timeout_secs: u64,
        /// Save the verified statement (JSON) to this file.
        #[arg(long)]
        statement_out: Option<PathBuf>,
        /// After a completed exit, with the agent stopped: delete every
        /// piece and the local FAT (the identity key and the statement stay).
        #[arg(long)]
        purge: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Burst relief: asks that BYTES of what this vendor holds move to
    /// other vendors at once, ahead of ordinary repairs.
    Relieve {
        /// The vendor config (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Bytes to free, at least 1, at most what the vendor holds.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        bytes: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// This vendor as the coordinator group sees it: what it holds, its
    /// exit and its burst relief.
    Status {
        /// The vendor config (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The running agent's stores, with what each holds.
    Stores {
        /// The vendor config (TOML): the agent's address and certificate.
        #[arg(long)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, not in log files or journald.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Run { config } => run(config).await,
        Command::Earnings { config, json } => {
            let config = VendorConfig::load(&config)?;
            let earnings = offsite_vendor::earnings::earnings(&config).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&earnings)?);
            } else {
                offsite_vendor::earnings::print_table(&earnings);
            }
            Ok(())
        }
        Command::Exit {
            config,
            cancel,
            wait,
            timeout_secs,
            statement_out,
            purge,
            json,
        } => {
            let config = VendorConfig::load(&config)?;
            exit(
                &config,
                cancel,
                wait,
                timeout_secs,
                statement_out,
                purge,
                json,
            )
            .await
        }
        Command::Relieve {
            config,
            bytes,
            json,
        } => {
            let config = VendorConfig::load(&config)?;
            let status = departure::ask(&config, departure::Ask::Relieve { bytes }).await?;
            show(&status, json)
        }
        Command::Status { config, json } => {
            let config = VendorConfig::load(&config)?;
            let status = departure::ask(&config, departure::Ask::Status).await?;
            show(&status, json)
        }
        Command::Stores { config, json } => {
            let config = VendorConfig::load(&config)?;
            let stores = departure::stores(&config).await?;
            if json {
                println!("{}", serde_json::json!({ "stores": stores }));
            } else {
                departure::print_stores(&stores);
            }
            Ok(())
        }
    }
}

fn show(status: &departure::DepartureView, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(status)?);
    } else {
        departure::print(status);
    }
    Ok(())
}

async fn exit(
    config: &VendorConfig,
    cancel: bool,
    wait: bool,
    timeout_secs: u64,
    statement_out: Option<PathBuf>,
    purge: bool,
    json: bool,
) -> anyhow::Result<()> {
    if purge && !wait {
        let purged = departure::purge(config).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&purged)?);
        } else {
            println!(
                "vendor {}: {} portions ({} pieces, {} bytes) deleted; the statement is kept in {}",
                purged.vendor_id,
                purged.portions,
                purged.pieces,
                purged.bytes,
                purged.statement_file
            );
        }
        return Ok(());
    }
    if purge {
        anyhow::bail!("--purge deletes the data once the exit completed, with the agent stopped; run `exit --wait` first, stop the agent, then `exit --purge`");
    }
    let ask = match cancel {
        true => departure::Ask::CancelExit,
        false => departure::Ask::Exit,
    };
    let mut status = departure::ask(config, ask).await?;
    if wait && !status.exited() {
        status = departure::wait_for_exit(config, Duration::from_secs(timeout_secs)).await?;
    }
    if let (Some(path), Some(statement)) = (&statement_out, &status.statement) {
        departure::save_statement(statement, path)?;
    }
    show(&status, json)
}

async fn run(path: PathBuf) -> anyhow::Result<()> {
    let config = VendorConfig::load(&path)?;
    let agent = VendorAgent::open(&config)
        .with_context(|| format!("cannot start the vendor agent of {}", path.display()))?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (config field listen)", config.listen))?;
    let registration = tokio::spawn(agent.registration(&config));
    let collection = agent.collection(&config).map(tokio::spawn);
    let scrubber = agent.scrubber(&config).map(tokio::spawn);
    let served = agent.serve(listener, shutdown_signal()).await;
    registration.abort();
    for task in [collection, scrubber].into_iter().flatten() {
        task.abort();
    }
    served.context("the vendor gRPC server failed")?;
    tracing::info!("vendor agent stopped");
    Ok(())
}

/// Resolves on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("ctrl-c: shutting down"),
        () = terminate => tracing::info!("SIGTERM: shutting down"),
    }
}
