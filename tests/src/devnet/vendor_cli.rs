//! Running `offsite-vendor` commands (`exit`, `relieve`, `status`,
//! `stores`, `earnings`) against a devnet vendor, with the `vendor.toml`
//! the devnet wrote for it, the way its operator would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::Result;

use super::Devnet;
use crate::bins;
use crate::client::run_bounded;

/// How long one vendor command may take (an `exit --wait` is given less
/// with `--timeout-secs`).
pub const VENDOR_CLI_TIMEOUT: Duration = Duration::from_secs(300);

/// `offsite-vendor SUBCOMMAND --config CONFIG ARGS...`, not started yet.
pub fn vendor_command<I, S>(config: &Path, subcommand: &str, args: I) -> Result<Command>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut command = Command::new(bins::binary(bins::VENDOR)?);
    command
        .arg(subcommand)
        .arg("--config")
        .arg(config)
        .args(args);
    Ok(command)
}

impl Devnet {
    /// Vendor `index`'s config, as the devnet wrote it.
    pub fn vendor_config(&self, index: usize) -> &Path {
        &self.vendors[index].agent.daemon.config
    }

    /// Vendor `index`'s data directory (its local FAT and identity key).
    pub fn vendor_data_dir(&self, index: usize) -> PathBuf {
        self.state().vendors[index].agent.data_dir.clone()
    }

    /// Runs `offsite-vendor SUBCOMMAND` for vendor `index` to completion
    /// (at most [`VENDOR_CLI_TIMEOUT`]).
    pub fn run_vendor_cli<I, S>(&self, index: usize, subcommand: &str, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let command = vendor_command(self.vendor_config(index), subcommand, args)?;
        run_bounded(command, VENDOR_CLI_TIMEOUT)
    }
}
