//! `offsite-vendor run --config FILE`: loads the vendor config, opens the
//! stores and local FAT, serves the vendor gRPC service, registers with the
//! coordinator group, and shuts down gracefully on SIGTERM or ctrl-c.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use offsite_vendor::{VendorAgent, VendorConfig};
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
    }
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
