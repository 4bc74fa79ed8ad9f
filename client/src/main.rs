//! `offsite`, the backup CLI: wires the config, the keys and a session
//! together for each command and prints the result (JSON with `--json`).
//!
//! JSON shapes (one document on stdout):
//! - `init`: `{"key_file": PATH}`
//! - `backup`: `{"snapshot_id", "files", "dirs", "symlinks", "skipped",
//!   "bytes_read", "new_blobs", "bytes_uploaded", "portions", "reservations"}`
//! - `snapshots`: `{"snapshots": [{"snapshot_id", "host", "time_unix_ms",
//!   "paths", "tags", "logical_bytes", "file_count", "portions"}]}`
//! - `ls`: `{"snapshot_id", "entries": [{"path", "kind": "dir"|"file"|"symlink",
//!   "size", "mode", "mtime_unix"}]}` (paths that are not UTF-8 are shown lossily)
//! - `restore`: `{"snapshot_id", "target", "files", "dirs", "symlinks",
//!   "bytes_written", "portions_fetched"}`
//!
//! Exit codes: see [`Exit`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use offsite_client::keys::{init_key_file, passphrase, KdfParams};
use offsite_client::restore::Plan;
use offsite_client::{ClientConfig, KeyError, Session, SessionError};
use serde_json::{json, Value};

/// The process exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Ok = 0,
    Fatal = 1,
    Usage = 2,
    WrongPassphrase = 4,
}

#[derive(Parser)]
#[command(
    name = "offsite",
    version,
    about = "Back up to the Offsite storage marketplace"
)]
struct Cli {
    /// The client config file (TOML); default: $OFFSITE_CONFIG.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Print one JSON document on stdout instead of human output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the key file (data key wrapped by the passphrase).
    Init,
    /// Back up files and directories as a new snapshot.
    Backup {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// List the tenant's snapshots.
    Snapshots,
    /// List what a snapshot holds.
    Ls { snapshot: String },
    /// Restore a snapshot (an id, a unique prefix, or `latest`) into a directory.
    Restore {
        snapshot: String,
        #[arg(long)]
        target: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            let code = if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            };
            return ExitCode::from(code as u8);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("offsite: cannot start the async runtime: {e}");
            return ExitCode::from(Exit::Fatal as u8);
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(()) => Exit::Ok,
        Err(e) => {
            eprintln!("offsite: {e:#}");
            exit_for(&e)
        }
    };
    ExitCode::from(code as u8)
}

fn exit_for(error: &anyhow::Error) -> Exit {
    let wrong = error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<KeyError>(),
            Some(KeyError::WrongPassphrase(_))
        ) || matches!(
            cause.downcast_ref::<SessionError>(),
            Some(SessionError::Key(KeyError::WrongPassphrase(_)))
        )
    });
    if wrong {
        Exit::WrongPassphrase
    } else {
        Exit::Fatal
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = ClientConfig::locate_and_load(cli.config.as_deref())?;
    let output = match cli.command {
        Command::Init => init(&config)?,
        Command::Backup { paths } => backup(config, paths).await?,
        Command::Snapshots => snapshots(config).await?,
        Command::Ls { snapshot } => ls(config, &snapshot).await?,
        Command::Restore { snapshot, target } => restore(config, &snapshot, target).await?,
    };
    if cli.json {
        println!("{}", output.json);
    } else {
        print!("{}", output.human);
    }
    Ok(())
}

/// A command's result in both forms.
struct Output {
    json: Value,
    human: String,
}

fn init(config: &ClientConfig) -> anyhow::Result<Output> {
    let pass = passphrase(config.password_file.as_deref())?;
    init_key_file(&config.key_file, &pass, KdfParams::DEFAULT)?;
    let path = config.key_file.display().to_string();
    Ok(Output {
        human: format!("created key file {path}; keep a copy of it and the passphrase safe\n"),
        json: json!({ "key_file": path }),
    })
}

async fn backup(config: ClientConfig, paths: Vec<PathBuf>) -> anyhow::Result<Output> {
    let session = Session::new(config);
    let keys = session.unlock()?;
    let s = session.backup(keys, paths).await.context("backup failed")?;
    let human = format!(
        "snapshot {} saved: {} files, {} dirs, {} symlinks, {} skipped; {} bytes read, {} new blobs, {} bytes uploaded in {} portions\n",
        s.snapshot, s.files, s.dirs, s.symlinks, s.skipped, s.bytes_read, s.new_blobs,
        s.upload.bytes_uploaded, s.upload.portions
    );
    Ok(Output {
        human,
        json: json!({
            "snapshot_id": s.snapshot.to_string(),
            "files": s.files,
            "dirs": s.dirs,
            "symlinks": s.symlinks,
            "skipped": s.skipped,
            "bytes_read": s.bytes_read,
            "new_blobs": s.new_blobs,
            "bytes_uploaded": s.upload.bytes_uploaded,
            "portions": s.upload.portions,
            "reservations": s.upload.reservations,
        }),
    })
}

async fn snapshots(config: ClientConfig) -> anyhow::Result<Output> {
    let session = Session::new(config);
    let list = session.snapshots().await?;
    let mut human = String::new();
    for s in &list {
        human.push_str(&format!(
            "{}  {}  {}  {} files  {} bytes  {}\n",
            s.id,
            s.time_unix_ms,
            s.host,
            s.file_count,
            s.logical_bytes,
            s.paths.join(" ")
        ));
    }
    let json_list: Vec<Value> = list
        .iter()
        .map(|s| {
            json!({
                "snapshot_id": s.id.to_string(),
                "host": s.host,
                "time_unix_ms": s.time_unix_ms,
                "paths": s.paths,
                "tags": s.tags,
                "logical_bytes": s.logical_bytes,
                "file_count": s.file_count,
                "portions": s.portions.len(),
            })
        })
        .collect();
    Ok(Output {
        human,
        json: json!({ "snapshots": json_list }),
    })
}

fn listing(plan: &Plan) -> Vec<(String, &'static str, u64, u32, i64)> {
    let mut rows: Vec<_> = plan
        .dirs
        .iter()
        .map(|d| {
            (
                d.path.to_string_lossy().into_owned(),
                "dir",
                0,
                d.mode,
                d.mtime.0,
            )
        })
        .chain(plan.files.iter().map(|f| {
            (
                f.path.to_string_lossy().into_owned(),
                "file",
                f.size,
                f.mode,
                f.mtime.0,
            )
        }))
        .chain(plan.links.iter().map(|l| {
            (
                l.path.to_string_lossy().into_owned(),
                "symlink",
                0,
                0o777,
                l.mtime.0,
            )
        }))
        .collect();
    rows.sort();
    rows
}

async fn ls(config: ClientConfig, spec: &str) -> anyhow::Result<Output> {
    let session = Session::new(config);
    let keys = session.unlock()?;
    let (record, plan) = session.list(&keys, spec).await?;
    let rows = listing(&plan);
    let human = rows
        .iter()
        .map(|(path, kind, size, mode, _)| {
            format!("{kind:7} {:o} {size:>12} {path}\n", mode & 0o7777)
        })
        .collect();
    let entries: Vec<Value> = rows
        .iter()
        .map(|(path, kind, size, mode, mtime)| {
            json!({ "path": path, "kind": kind, "size": size, "mode": mode & 0o7777, "mtime_unix": mtime })
        })
        .collect();
    Ok(Output {
        human,
        json: json!({ "snapshot_id": record.id.to_string(), "entries": entries }),
    })
}

async fn restore(config: ClientConfig, spec: &str, target: PathBuf) -> anyhow::Result<Output> {
    let session = Session::new(config);
    let keys = session.unlock()?;
    let (record, s) = session
        .restore(keys, spec, &target)
        .await
        .context("restore failed")?;
    let target = target.display().to_string();
    Ok(Output {
        human: format!(
            "restored snapshot {} into {target}: {} files, {} dirs, {} symlinks, {} bytes\n",
            record.id, s.files, s.dirs, s.symlinks, s.bytes_written
        ),
        json: json!({
            "snapshot_id": record.id.to_string(),
            "target": target,
            "files": s.files,
            "dirs": s.dirs,
            "symlinks": s.symlinks,
            "bytes_written": s.bytes_written,
            "portions_fetched": s.portions_fetched,
        }),
    })
}
