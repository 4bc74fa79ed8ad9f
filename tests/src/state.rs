//! `DIR/devnet.json`: what a devnet launcher started (pid, address, config,
//! log and data directory of every process), so `offsite-devnet status` and
//! `down` can find a detached devnet from another process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::process::pid_is_ours;

/// The file name of the state, inside the devnet directory.
pub const STATE_FILE: &str = "devnet.json";

/// One process of a devnet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessState {
    /// `coordinator-N`, `vendor-N` or `vendor-N/nas-M`.
    pub name: String,
    /// None when the process is not running.
    pub pid: Option<u32>,
    pub address: SocketAddr,
    pub config: PathBuf,
    pub log: PathBuf,
    pub data_dir: PathBuf,
}

impl ProcessState {
    /// Whether the recorded pid is still this process (not a recycled pid).
    pub fn is_alive(&self) -> bool {
        self.pid
            .is_some_and(|pid| pid_is_ours(pid, &self.config.to_string_lossy()))
    }
}

/// A vendor agent and its NAS devices.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VendorState {
    pub id: String,
    pub agent: ProcessState,
    pub nas: Vec<ProcessState>,
}

/// Everything a devnet launcher started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevnetState {
    pub dir: PathBuf,
    pub client_config: PathBuf,
    /// The coordinator group, `coordinator-1` first.
    pub coordinators: Vec<ProcessState>,
    pub vendors: Vec<VendorState>,
}

impl DevnetState {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// The state in `dir`, or None when there is none.
    pub fn load(dir: &Path) -> Result<Option<DevnetState>> {
        let path = Self::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let state = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a devnet state file", path.display()))?;
        Ok(Some(state))
    }

    pub fn save(&self) -> Result<()> {
        let path = Self::path(&self.dir);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Every process: the coordinators, then each vendor with its NAS devices.
    pub fn processes(&self) -> Vec<&ProcessState> {
        let mut all: Vec<&ProcessState> = self.coordinators.iter().collect();
        for vendor in &self.vendors {
            all.push(&vendor.agent);
            all.extend(vendor.nas.iter());
        }
        all
    }
}
