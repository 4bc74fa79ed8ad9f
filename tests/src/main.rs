//! `offsite-devnet`: a local Offsite marketplace of real processes.
//!
//! `up` starts a coordinator group (three by default), vendors and their NAS
//! devices under one directory (`--detach` leaves them running on their own,
//! recorded in `DIR/devnet.json`; `--vendor-prices`, `--vendor-egress-prices`,
//! `--fee-ppm` and `--max-storage-price` price the market), `status` shows
//! each process and the coordinator's vendor table, `down` stops a detached
//! devnet, and `demo` runs a backup and a restore end to end, checks the
//! restored tree byte for byte and shows the tenant's usage.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use offsite_tests::{rpc, tree, Devnet, DevnetOptions, DevnetState, STOP_GRACE};

#[derive(Debug, Parser)]
#[command(
    name = "offsite-devnet",
    version,
    about = "A local Offsite marketplace of real processes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a coordinator group, vendors and their NAS devices under DIR.
    Up {
        /// Directory for configs, data, logs and devnet.json.
        #[arg(long)]
        dir: PathBuf,
        #[command(flatten)]
        shape: Shape,
        /// Leave the processes running after this command returns.
        #[arg(long)]
        detach: bool,
    },
    /// Show whether each process runs, and the coordinator's vendor table.
    /// Exits non-zero when a process is not running.
    Status {
        #[arg(long)]
        dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop a devnet started with `up --detach`.
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Run an `offsite-vendor` command as devnet vendor N's operator, with
    /// the vendor.toml the devnet wrote: `vendor --dir D --vendor 2 exit --wait`.
    Vendor {
        #[arg(long)]
        dir: PathBuf,
        /// The vendor, 1 to the number of vendors (vendor-N).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        vendor: u64,
        /// The `offsite-vendor` subcommand (exit, relieve, status, stores,
        /// earnings) and its arguments; `--config` is added.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Start a devnet, back up a tree, restore it and compare byte for byte.
    Demo {
        /// Devnet directory (default: a fresh temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Tree to back up (default: a generated sample tree).
        #[arg(long)]
        source: Option<PathBuf>,
        /// Leave the devnet running afterwards.
        #[arg(long)]
        keep: bool,
        #[command(flatten)]
        shape: Shape,
    },
}

#[derive(Debug, clap::Args)]
struct Shape {
    /// Number of coordinators in the group (3 survive losing one).
    #[arg(long, default_value_t = 3)]
    coordinators: usize,
    /// Number of vendors.
    #[arg(long, default_value_t = 4)]
    vendors: usize,
    /// NAS devices per vendor.
    #[arg(long, default_value_t = 2)]
    nas_per_vendor: usize,
    /// Each vendor's storage price, micro-units per TiB-month, one per
    /// vendor in order (default: all 0).
    #[arg(long, value_delimiter = ',', value_name = "P1,P2,...")]
    vendor_prices: Vec<u64>,
    /// Each vendor's egress price, micro-units per TiB, one per vendor
    /// (default: all 0).
    #[arg(long, value_delimiter = ',', value_name = "P1,P2,...")]
    vendor_egress_prices: Vec<u64>,
    /// The marketplace's fee, parts per million of every charge (50000 = 5%).
    #[arg(long, default_value_t = 0, value_name = "PPM")]
    fee_ppm: u32,
    /// The client config's `max_storage_price` (default: no limit).
    #[arg(long, value_name = "MICROS")]
    max_storage_price: Option<u64>,
    /// See audits, scrubs and repairs within seconds: one audit of each
    /// vendor a second, every piece scrubbed every 5 s, repairs 10 s after
    /// a vendor is down, 30 s leases.
    #[arg(long)]
    fast: bool,
}

impl Shape {
    fn options(&self, detach: bool) -> DevnetOptions {
        let options = DevnetOptions {
            coordinators: self.coordinators,
            vendors: self.vendors,
            nas_per_vendor: self.nas_per_vendor,
            vendor_prices: self.vendor_prices.clone(),
            vendor_egress_prices: self.vendor_egress_prices.clone(),
            fee_ppm: self.fee_ppm,
            max_storage_price: self.max_storage_price,
            detach,
            ..DevnetOptions::default()
        };
        if self.fast {
            options.fast()
        } else {
            options
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up { dir, shape, detach } => up(&dir, &shape, detach),
        Command::Status { dir, json } => status(&dir, json),
        Command::Down { dir } => down(&dir).map(|()| true),
        Command::Vendor { dir, vendor, args } => vendor_cli(&dir, vendor, &args),
        Command::Demo {
            dir,
            source,
            keep,
            shape,
        } => demo(dir, source, keep, &shape).map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(3),
        Err(e) => {
            eprintln!(
                "offsite-devnet: {}",
                offsite_identity::error_chain(e.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

fn up(dir: &Path, shape: &Shape, detach: bool) -> Result<bool> {
    let devnet = Devnet::start(dir, shape.options(detach))?;
    print_summary(&devnet.state());
    if detach {
        let state = devnet.detach()?;
        println!(
            "devnet up in {}; stop it with `offsite-devnet down --dir {}`",
            state.dir.display(),
            state.dir.display()
        );
        return Ok(true);
    }
    println!("devnet up; press ctrl-c to stop it");
    wait_for_stop_signal()?;
    println!("stopping the devnet");
    drop(devnet);
    Ok(true)
}

fn wait_for_stop_signal() -> Result<()> {
    rpc::runtime()?.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot watch SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("cannot watch ctrl-c"),
            _ = term.recv() => Ok(()),
        }
    })
}

fn print_summary(state: &DevnetState) {
    for coordinator in &state.coordinators {
        println!("{:<12} {}", coordinator.name, coordinator.address);
    }
    for vendor in &state.vendors {
        let nas: Vec<String> = vendor.nas.iter().map(|n| n.address.to_string()).collect();
        println!(
            "{:<12} {}  NAS {}",
            vendor.id,
            vendor.agent.address,
            nas.join(" ")
        );
    }
    println!(
        "client       offsite --config {} ...",
        state.client_config.display()
    );
    println!("logs         {}/*/log", state.dir.display());
}

fn load_state(dir: &Path) -> Result<DevnetState> {
    match DevnetState::load(dir)? {
        Some(state) => Ok(state),
        None => bail!(
            "no devnet in {} (no {}); start one with `offsite-devnet up --dir {} --detach`",
            dir.display(),
            DevnetState::path(dir).display(),
            dir.display()
        ),
    }
}

/// Runs `offsite-vendor ARGS[0] --config VENDOR.toml ARGS[1..]`, passing
/// its output through; false when it failed.
fn vendor_cli(dir: &Path, vendor: u64, args: &[std::ffi::OsString]) -> Result<bool> {
    let state = load_state(dir)?;
    let count = state.vendors.len();
    let index = usize::try_from(vendor - 1).unwrap_or(usize::MAX);
    let Some(node) = state.vendors.get(index) else {
        anyhow::bail!(
            "--vendor {vendor}: the devnet in {} has vendors 1 to {count}",
            dir.display()
        );
    };
    let (subcommand, rest) = args
        .split_first()
        .context("name the offsite-vendor subcommand, e.g. `status`")?;
    let subcommand = subcommand
        .to_str()
        .context("the offsite-vendor subcommand is not UTF-8")?;
    let status = offsite_tests::vendor_command(&node.agent.config, subcommand, rest)?
        .status()
        .context("cannot run offsite-vendor")?;
    Ok(status.success())
}

fn status(dir: &Path, json: bool) -> Result<bool> {
    let state = load_state(dir)?;
    let processes: Vec<_> = state
        .processes()
        .into_iter()
        .map(|p| (p, p.is_alive()))
        .collect();
    let all_alive = processes.iter().all(|(_, alive)| *alive);
    // Any running coordinator answers with its replica of the FAT.
    let asked = state
        .coordinators
        .iter()
        .find(|c| c.is_alive())
        .unwrap_or(&state.coordinators[0])
        .address;
    let harness = rpc::Rpc::open(&rpc::pki_dir(&state.dir))?;
    let coordinator = rpc::block_on(harness.status(asked))?;
    if json {
        let report = serde_json::json!({
            "dir": state.dir,
            "processes": processes.iter().map(|(p, alive)| serde_json::json!({
                "name": p.name, "pid": p.pid, "alive": alive,
                "address": p.address.to_string(), "log": p.log,
            })).collect::<Vec<_>>(),
            "coordinator": match &coordinator {
                Ok(status) => serde_json::json!({
                    "open_reservations": status.open_reservations,
                    "portions": status.portions,
                    "snapshots": status.snapshots,
                    "vendors": status.vendors.iter().map(|v| serde_json::json!({
                        "vendor_id": v.vendor_id, "address": v.address, "region": v.region,
                        "liveness": v.liveness, "offered_bytes": v.offered_bytes,
                        "reserved_bytes": v.reserved_bytes, "used_bytes": v.used_bytes,
                        "stored_bytes": v.stored_bytes,
                    })).collect::<Vec<_>>(),
                }),
                Err(e) => serde_json::json!({ "error": offsite_identity::error_chain(e.as_ref()) }),
            },
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(all_alive);
    }
    println!(
        "{:<16} {:>8} {:<8} {:<22} log",
        "process", "pid", "state", "address"
    );
    for (p, alive) in &processes {
        let pid = p.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        let shown = if *alive { "running" } else { "stopped" };
        println!(
            "{:<16} {pid:>8} {shown:<8} {:<22} {}",
            p.name,
            p.address,
            p.log.display()
        );
    }
    println!();
    match coordinator {
        Ok(status) => {
            println!(
                "{:<12} {:<8} {:>14} {:>14} {:>14}",
                "vendor", "liveness", "offered", "reserved", "used"
            );
            for v in &status.vendors {
                println!(
                    "{:<12} {:<8} {:>14} {:>14} {:>14}",
                    v.vendor_id, v.liveness, v.offered_bytes, v.reserved_bytes, v.used_bytes
                );
            }
            println!(
                "{} open reservations, {} portions, {} snapshots",
                status.open_reservations, status.portions, status.snapshots
            );
        }
        Err(e) => println!("coordinator at {asked} does not answer: {e:#}"),
    }
    Ok(all_alive)
}

fn down(dir: &Path) -> Result<()> {
    let state = load_state(dir)?;
    let procs: Vec<(String, u32, String)> = state
        .processes()
        .into_iter()
        .filter_map(|p| {
            Some((
                p.name.clone(),
                p.pid?,
                p.config.to_string_lossy().into_owned(),
            ))
        })
        .collect();
    let left = offsite_tests::stop_pids(&procs, STOP_GRACE);
    if !left.is_empty() {
        bail!("could not stop {}", left.join(", "));
    }
    std::fs::remove_file(DevnetState::path(dir))
        .with_context(|| format!("cannot remove {}", DevnetState::path(dir).display()))?;
    println!("devnet in {} is down", dir.display());
    Ok(())
}

fn demo(dir: Option<PathBuf>, source: Option<PathBuf>, keep: bool, shape: &Shape) -> Result<()> {
    let fresh = dir.is_none();
    let dir = match dir {
        Some(dir) => dir,
        None => tempfile::Builder::new()
            .prefix("offsite-demo-")
            .tempdir()
            .context("cannot create a temporary directory")?
            .keep(),
    };
    match run_demo(&dir, source, keep, shape) {
        Ok(()) => {
            if fresh && !keep {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("cannot remove {}", dir.display()))?;
            }
            Ok(())
        }
        Err(e) => Err(e.context(format!(
            "demo failed; configs and logs are in {}",
            dir.display()
        ))),
    }
}

fn run_demo(dir: &Path, source: Option<PathBuf>, keep: bool, shape: &Shape) -> Result<()> {
    Devnet::check_dir(dir)?;
    let source = match source {
        Some(source) => source
            .canonicalize()
            .with_context(|| format!("cannot read the source {}", source.display()))?,
        None => {
            let sample = dir.join("sample");
            println!("==> generating a sample tree in {}", sample.display());
            tree::generate(&sample, &tree::TreeSpec::small())?;
            sample.canonicalize()?
        }
    };
    println!("==> starting a devnet in {}", dir.display());
    let devnet = Devnet::start(dir, shape.options(true))?;
    print_summary(&devnet.state());
    let target = devnet.dir().join("restore");
    let steps: [Vec<std::ffi::OsString>; 5] = [
        vec!["init".into()],
        vec!["backup".into(), source.clone().into()],
        vec!["snapshots".into()],
        vec![
            "restore".into(),
            "latest".into(),
            "--target".into(),
            target.clone().into(),
        ],
        vec!["usage".into()],
    ];
    for args in steps {
        let shown: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
        println!("==> offsite {}", shown.join(" "));
        let output = devnet.client_ok(&args)?;
        print!("{}", String::from_utf8_lossy(&output.stdout));
    }
    let restored = tree::restored_root(&target, &source);
    tree::compare(&source, &restored)?;
    println!(
        "==> OK: {} is identical to {}, byte for byte",
        restored.display(),
        source.display()
    );
    if keep {
        let state = devnet.detach()?;
        println!(
            "devnet left running in {}; stop it with `offsite-devnet down --dir {}`",
            state.dir.display(),
            state.dir.display()
        );
    }
    Ok(())
}
