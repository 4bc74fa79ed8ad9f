//! `offsite`, the backup CLI: parses the command line, wires the config, the
//! keys and a session together for each command (in [`cli`]) and prints the
//! result: human text, or with `--json` one JSON document on stdout.
//!
//! # JSON shapes (stable; fields are only ever added)
//!
//! - `init`: `{"key_file", "uploaded"}` (uploaded: the coordinator group keeps
//!   a copy of the key file)
//! - `backup`: `{"snapshot_id": ID|null (null for --dry-run), "parent": ID|null,
//!   "dry_run", "tags": [..], "files", "dirs", "symlinks", "skipped",
//!   "unreadable", "unreadable_paths": ["PATH: why"], "excluded",
//!   "unchanged_files", "bytes_total", "bytes_read", "new_blobs",
//!   "resumed_blobs", "new_portions", "bytes_uploaded" (every copy),
//!   "would_upload_bytes" (one copy; --dry-run), "portions", "reservations",
//!   "estimated_monthly_cost_micros": N|null (--dry-run: what storing
//!   would_upload_bytes at R copies costs a month; null when no vendor price
//!   is known, and for a real backup)}`
//! - `snapshots`: `{"from_cache": bool, "snapshots": [{"snapshot_id", "host",
//!   "time_unix_ms", "paths", "tags", "logical_bytes", "file_count", "portions"}]}`
//! - `ls`: `{"snapshot_id", "from_cache", "entries": [{"path", "kind":
//!   "dir"|"file"|"symlink", "size", "mode", "mtime_unix", "uid", "gid",
//!   "user", "group"}]}` (paths that are not UTF-8 are shown lossily; owner
//!   fields null in snapshots from before owners were kept)
//! - `restore`: `{"snapshot_id", "path", "target", "files", "dirs",
//!   "symlinks", "bytes_written", "portions_fetched", "skipped", "deleted"}`
//! - `dump`: the data on stdout, a summary on stderr
//! - `forget`: `{"dry_run", "keep": [SNAP], "remove": [SNAP]}`, each SNAP
//!   `{"snapshot_id", "host", "time_unix_ms", "paths", "tags", "reasons": [..]}`
//!   (reasons: last, hourly, daily, weekly, monthly, yearly, within, tag)
//! - `check`: `{"ok", "snapshots", "portions", "portions_read", "copies_read",
//!   "bytes_read", "blobs_verified", "problems": [{"snapshot_id"|null,
//!   "portion_id"|null, "vendor_id"|null, "problem"}]}`
//! - `diff`: `{"from", "to", "added", "removed", "modified", "changes":
//!   [{"path", "change": "added"|"removed"|"modified", "what": ["type"|"content"|
//!   "target"|"mode"|"mtime"|"owner"]}]}`
//! - `find`: `{"pattern", "matches": [{"snapshot_id", "path", "kind", "size",
//!   "mode", "mtime_unix"}]}`
//! - `prune`: `{"dry_run", "snapshots", "portions_total", "bytes_total",
//!   "portions_needed", "bytes_needed", "portions_kept_recent",
//!   "portions_released", "bytes_released", "portions_repacked",
//!   "bytes_repacked", "new_portions", "snapshots_rewritten",
//!   "repack_skipped"}` (bytes are
//!   before replication; with `--dry-run`, what would be released and
//!   repacked; without, the released portions include the repacked ones)
//! - `usage`: `{"period", "started_unix_ms", "as_of_unix_ms",
//!   "charge_micros", "estimate_micros", "stored_bytes" (all copies),
//!   "stored_bytes_one_copy", "egress_bytes", "fee_ppm", "vendors":
//!   [{"vendor_id", "stored_bytes", "stored_byte_ms" (a decimal string),
//!   "egress_bytes", "charge_micros"}], "hosts": [{"host", "stored_bytes",
//!   "snapshots"}]}`
//! - `key passwd`: `{"key_file", "changed": true, "uploaded"}`
//! - `key upload`: `{"key_file", "uploaded": true}`
//! - any command that fails: `{"error": MESSAGE, "exit_code": N}`
//!
//! # Exit codes
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | success |
//! | 1 | fatal error (and `check` finding a problem) |
//! | 2 | usage error (bad flags or arguments) |
//! | 3 | partial success: the backup was saved but skipped unreadable files |
//! | 4 | wrong passphrase |
//! | 5 | no quorum: no coordinator answered, or too few vendors to place R copies |

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use offsite_client::blob::Compression;
use offsite_client::{ClientConfig, KeyError, SessionError};
use offsite_proto::limits::MAX_PRICE_MICROS;

/// The process exit codes (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Fatal = 1,
    Usage = 2,
    Partial = 3,
    WrongPassphrase = 4,
    NoQuorum = 5,
}

#[derive(Parser)]
#[command(
    name = "offsite",
    version,
    about = "Back up to the Offsite storage marketplace"
)]
pub struct Cli {
    /// The client config file (TOML); default: $OFFSITE_CONFIG.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Print one JSON document on stdout instead of human output (no progress bars).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create the key file (data key wrapped by the passphrase).
    Init,
    /// Back up files and directories as a new snapshot.
    Backup(BackupArgs),
    /// List the tenant's snapshots (from the cache when no coordinator answers).
    Snapshots {
        /// Only snapshots carrying this tag (repeat for several: all must match).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Only snapshots of this host.
        #[arg(long)]
        host: Option<String>,
        /// Only snapshots that backed up this path (or a directory holding it).
        #[arg(long)]
        path: Option<String>,
    },
    /// Every host of the tenant with its latest snapshot and how long ago it was.
    Hosts,
    /// Every snapshot as a read-only file system (FUSE) at MOUNTPOINT, by
    /// host and time, tag, and latest; unmounted on Ctrl-C or SIGTERM.
    Mount { mountpoint: PathBuf },
    /// Contents stored under more than one host and path, the most saved first.
    Dups {
        /// Only these hosts' snapshots (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// Every version of one file or folder across snapshots.
    History {
        /// The path as `ls` shows it, or the absolute path backed up.
        path: String,
        /// Only this host's snapshots.
        #[arg(long)]
        host: Option<String>,
    },
    /// List what a snapshot holds.
    Ls { snapshot: String },
    /// Restore a snapshot (an id, a unique prefix, or `latest`), or the part
    /// of it at `SNAPSHOT:PATH` (PATH as `ls` shows it, or the absolute path
    /// that was backed up), into a directory.
    Restore {
        /// SNAPSHOT or SNAPSHOT:PATH.
        snapshot: String,
        #[arg(long)]
        target: PathBuf,
        /// Restore only entries matching this pattern (or under a directory
        /// that does); repeatable. Patterns as for `backup --exclude`,
        /// matched against the path from the snapshot's root.
        #[arg(long)]
        include: Vec<String>,
        /// Leave out entries matching this pattern (a directory with all it
        /// holds); repeatable.
        #[arg(long)]
        exclude: Vec<String>,
        /// What to do with a file already in the target: always (replace),
        /// if-changed (leave one of the same size and mtime), never.
        #[arg(long, default_value = "always", value_parser = clap::value_parser!(offsite_client::Overwrite))]
        overwrite: offsite_client::Overwrite,
        /// Remove what the target holds and the snapshot (within the
        /// selection) does not, so the target matches it.
        #[arg(long)]
        delete: bool,
        /// As root, give entries their recorded user and group ids rather
        /// than the ids their names have on this host.
        #[arg(long)]
        numeric_owner: bool,
        /// Leave files to the restoring user even as root (and drop setuid
        /// and setgid bits, as any restore without owners does).
        #[arg(long, conflicts_with = "numeric_owner")]
        no_owner: bool,
    },
    /// Write one file of a snapshot to stdout, or a directory as a tar (or
    /// zip) stream: `dump SNAPSHOT:PATH [--archive tar|zip]`.
    Dump {
        /// SNAPSHOT:PATH (PATH as `ls` shows it, or the absolute path that
        /// was backed up; none: the whole snapshot).
        spec: String,
        /// Write a tar or zip stream (a directory is always one; tar unless
        /// zip is asked for).
        #[arg(long, value_parser = clap::value_parser!(offsite_client::Archive))]
        archive: Option<offsite_client::Archive>,
    },
    /// Forget snapshots by a retention policy (their portions stay until prune).
    Forget(ForgetArgs),
    /// Check that every portion is committed and held by R vendors.
    Check(CheckArgs),
    /// Release every portion no remaining snapshot needs (vendors then delete
    /// it), after repacking the mostly unused ones.
    Prune {
        /// Say what would be released and repacked; change nothing.
        #[arg(long, short = 'n')]
        dry_run: bool,
        /// Repack portions whose live blobs fill less than this percent of
        /// them (0: never repack).
        #[arg(long, value_name = "PERCENT", default_value_t = offsite_client::DEFAULT_REPACK_BELOW,
              value_parser = clap::value_parser!(u8).range(0..=100))]
        repack_below: u8,
    },
    /// Manage the key file.
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Show what changed between two snapshots.
    Diff { from: String, to: String },
    /// What the tenant has stored, fetched and been charged in the open
    /// billing period, and the estimate for the whole period, per vendor and
    /// per host.
    Usage,
    /// Find entries by name (a glob; with `/`, matched against the whole path).
    Find {
        pattern: String,
        /// Search only this snapshot.
        #[arg(long)]
        snapshot: Option<String>,
        /// Search only snapshots carrying this tag.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Search only this host's snapshots.
        #[arg(long)]
        host: Option<String>,
        /// Only entries modified after this (a duration back, 7d, or a date, 2026-11-30).
        #[arg(long)]
        newer: Option<String>,
        /// Only entries modified before this (as --newer).
        #[arg(long)]
        older: Option<String>,
        /// Only entries of this size: +10M (more), -4k (less), 100 (exactly).
        #[arg(long)]
        size: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum KeyAction {
    /// Change the passphrase: re-wrap the data key (no data is re-encrypted).
    /// The new passphrase comes from --new-password-file, else
    /// OFFSITE_NEW_PASSWORD_FILE, else OFFSITE_NEW_PASSWORD.
    Passwd {
        /// A file holding the new passphrase.
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
    },
    /// Store the key file's copy at the coordinator group again (init and
    /// passwd do it; this is for when they could not reach it).
    Upload,
}

#[derive(Args)]
pub struct BackupArgs {
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Tag the snapshot (repeat, or separate with commas).
    #[arg(long = "tag", value_delimiter = ',')]
    tags: Vec<String>,
    /// Leave out paths matching this glob (a name, or a path when it has `/`).
    #[arg(long)]
    exclude: Vec<String>,
    /// Read exclude patterns from this file, one a line (`#` comments).
    #[arg(long)]
    exclude_file: Vec<PathBuf>,
    /// Leave out directories holding a file of this name.
    #[arg(long)]
    exclude_if_present: Vec<String>,
    /// Do not cross into other filesystems.
    #[arg(long, short = 'x')]
    one_file_system: bool,
    /// Read and seal everything, upload nothing, save no snapshot.
    #[arg(long, short = 'n')]
    dry_run: bool,
    /// How hard to compress (default: the config's `compression`, else auto).
    #[arg(long, value_enum)]
    compression: Option<Compression>,
    /// The most this backup pays for storage, micro-units per TiB-month
    /// (default: the config's `max_storage_price`, else no limit).
    #[arg(long, value_name = "MICROS",
          value_parser = clap::value_parser!(u64).range(0..=MAX_PRICE_MICROS))]
    max_storage_price: Option<u64>,
    /// The most this backup pays for egress, micro-units per TiB (default:
    /// the config's `max_egress_price`, else no limit).
    #[arg(long, value_name = "MICROS",
          value_parser = clap::value_parser!(u64).range(0..=MAX_PRICE_MICROS))]
    max_egress_price: Option<u64>,
}

#[derive(Args)]
pub struct ForgetArgs {
    /// Keep the last N snapshots.
    #[arg(long)]
    keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the last N hours that have one.
    #[arg(long)]
    keep_hourly: Option<u32>,
    #[arg(long)]
    keep_daily: Option<u32>,
    #[arg(long)]
    keep_weekly: Option<u32>,
    #[arg(long)]
    keep_monthly: Option<u32>,
    #[arg(long)]
    keep_yearly: Option<u32>,
    /// Keep snapshots younger than this, relative to the newest (e.g. 2y5m7d3h).
    #[arg(long)]
    keep_within: Option<String>,
    /// Keep snapshots carrying this tag.
    #[arg(long)]
    keep_tag: Vec<String>,
    /// Only consider snapshots carrying this tag.
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Say what would be forgotten; forget nothing.
    #[arg(long, short = 'n')]
    dry_run: bool,
}

#[derive(Args)]
pub struct CheckArgs {
    /// Check only these snapshots (default: all).
    snapshots: Vec<String>,
    /// Fetch every copy of every portion and verify every blob.
    #[arg(long)]
    read_data: bool,
    /// Read only a share of the portions: `n/m` or `p%`.
    #[arg(long)]
    read_data_subset: Option<String>,
}

/// Keeps the client's memory flat: glibc would otherwise raise its mmap
/// threshold after the first freed portion buffer and keep every later
/// 16 MiB portion and chunk buffer in its heap, resident after they are
/// freed (measured: peak RSS of the benchmark backup 240 MiB -> 155 MiB).
fn bound_malloc_retention() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator settings; called before any
    // other thread exists.
    unsafe {
        // Allocations of 1 MiB and more are mapped on their own and
        // unmapped when freed.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
    }
}

fn main() -> ExitCode {
    bound_malloc_retention();
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
        // Colour only for a person at a terminal, not in log files or journald.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
    let json = cli.json;
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            // Each cause once: a message that already quotes its source is
            // not followed by it again.
            let message = offsite_identity::error_chain(e.as_ref());
            eprintln!("offsite: {message}");
            let code = exit_for(&e);
            if json {
                let doc = serde_json::json!({ "error": message, "exit_code": code as u8 });
                println!("{doc}");
            }
            code
        }
    };
    ExitCode::from(code as u8)
}

/// The exit code of a failed command.
fn exit_for(error: &anyhow::Error) -> Exit {
    for cause in error.chain() {
        if offsite_client::is_no_quorum(cause) {
            return Exit::NoQuorum;
        }
        if let Some(KeyError::WrongPassphrase(_)) = cause.downcast_ref::<KeyError>() {
            return Exit::WrongPassphrase;
        }
        if let Some(session) = cause.downcast_ref::<SessionError>() {
            if let SessionError::Key(KeyError::WrongPassphrase(_)) = session {
                return Exit::WrongPassphrase;
            }
            if matches!(
                session,
                SessionError::EmptyPolicy | SessionError::Filter(_) | SessionError::Invalid(_)
            ) {
                return Exit::Usage;
            }
        }
    }
    Exit::Fatal
}

async fn run(cli: Cli) -> anyhow::Result<Exit> {
    let config = ClientConfig::locate_and_load(cli.config.as_deref())?;
    let output = cli::dispatch(config, cli.command, cli.json).await?;
    // A dump's stdout is the data; it answers with nothing there.
    if cli.json && !output.json.is_null() {
        println!("{}", output.json);
    } else if !cli.json {
        print!("{}", output.human);
    }
    if let Some(note) = &output.note {
        eprintln!("offsite: {note}");
    }
    Ok(output.exit)
}
