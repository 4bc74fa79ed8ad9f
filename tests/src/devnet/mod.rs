//! A devnet: a local marketplace of real processes (a coordinator group of
//! three by default, vendors, and the NAS devices of each vendor) started
//! from configs written under one directory, plus the client config that
//! backs up into it. The client and the vendors know every coordinator.
//! Its processes may run in network namespaces of their own, so a test can
//! partition them (see `network`).
//!
//! Layout of the directory:
//! `coordinator-N/{coordinator.toml,data,log}`, `vendor-N/{vendor.toml,data,log}`,
//! `vendor-N/nas-M/{nas.toml,data,log}`, `client.toml`, `client/{password,
//! key.json,cache}`, `devnet.json` (see [`crate::DevnetState`]) and `pki/`:
//! the marketplace CA (`ca.pem`, `ca.key`) and a certificate and key per
//! process (`coordinator-coordinator-N`, `vendor-vendor-N`,
//! `nas-vendor-N-nas-M`), the client's tenant (`tenant-devnet`) and the
//! harness's admin (`admin-harness`).

mod faults;
mod network;
mod options;
mod start;
mod vendor_cli;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use offsite_proto::pb::admin::MarketplaceStatusResponse;

pub use options::{DevnetOptions, VendorWaits, FAST_SCRUB_PERIOD_SECS, HUNG_CLIENT_STALL_SECS};
pub use vendor_cli::{vendor_command, VENDOR_CLI_TIMEOUT};

use crate::permit::Permit;
use crate::process::{Daemon, STOP_GRACE};
use crate::rpc::{self, Rpc};
use crate::state::{DevnetState, ProcessState, VendorState};

/// A daemon with the address it serves and its data directory.
#[derive(Debug)]
struct Node {
    daemon: Daemon,
    address: SocketAddr,
    data_dir: PathBuf,
}

impl Node {
    fn state(&self) -> ProcessState {
        ProcessState {
            name: self.daemon.name.clone(),
            pid: self.daemon.pid(),
            address: self.address,
            config: self.daemon.config.clone(),
            log: self.daemon.log.clone(),
            data_dir: self.data_dir.clone(),
        }
    }
}

#[derive(Debug)]
struct VendorNode {
    id: String,
    agent: Node,
    nas: Vec<Node>,
}

/// A running devnet. Dropping it stops every process (SIGTERM, then SIGKILL
/// after a bounded wait), also when a test panics.
#[derive(Debug)]
pub struct Devnet {
    dir: PathBuf,
    options: DevnetOptions,
    coordinators: Vec<Node>,
    vendors: Vec<VendorNode>,
    client_config: PathBuf,
    password: String,
    detached: bool,
    rpc: Rpc,
    _permit: Option<Permit>,
    /// Where each process listens, and the namespaces that hold them (with
    /// `coordinator_namespaces` or `vendor_namespaces`); dropped after every
    /// process has stopped.
    net: network::Network,
}

impl Devnet {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The harness's certificates for this devnet (tenant `devnet`, admin,
    /// and any other it issues from the devnet's CA).
    pub fn rpc(&self) -> Rpc {
        self.rpc.clone()
    }

    /// The first coordinator's address.
    pub fn coordinator_addr(&self) -> SocketAddr {
        self.coordinators[0].address
    }

    /// Every coordinator's address, `coordinator-1` first.
    pub fn coordinator_addrs(&self) -> Vec<SocketAddr> {
        self.coordinators.iter().map(|c| c.address).collect()
    }

    /// A running coordinator's address, for status calls (each answers
    /// with its own replica of the FAT).
    fn status_addr(&self) -> SocketAddr {
        self.coordinators
            .iter()
            .find(|c| c.daemon.pid().is_some())
            .unwrap_or(&self.coordinators[0])
            .address
    }

    /// Vendor ids, `vendor-1` first.
    pub fn vendor_ids(&self) -> Vec<String> {
        self.vendors.iter().map(|v| v.id.clone()).collect()
    }

    /// The address of vendor `index` (0-based).
    pub fn vendor_addr(&self, index: usize) -> SocketAddr {
        self.vendors[index].agent.address
    }

    /// The data directory of every NAS device of vendor `index`.
    pub fn nas_data_dirs(&self, index: usize) -> Vec<PathBuf> {
        self.vendors[index]
            .nas
            .iter()
            .map(|n| n.data_dir.clone())
            .collect()
    }

    /// The data directory of every NAS device of every vendor.
    pub fn all_nas_data_dirs(&self) -> Vec<PathBuf> {
        (0..self.vendors.len())
            .flat_map(|i| self.nas_data_dirs(i))
            .collect()
    }

    /// The address of NAS device `nas` (0-based) of vendor `vendor`.
    pub fn nas_addr(&self, vendor: usize, nas: usize) -> SocketAddr {
        self.vendors[vendor].nas[nas].address
    }

    pub fn client_config(&self) -> &Path {
        &self.client_config
    }

    /// The client's cache of the devnet tenant (`cache_dir/<tenant>`):
    /// manifests, the dedup index cache, the resume journal.
    pub fn tenant_cache_dir(&self) -> PathBuf {
        self.dir.join("client/cache").join(rpc::DEVNET_TENANT)
    }

    /// The passphrase in `client/password`.
    pub fn password(&self) -> &str {
        &self.password
    }

    pub fn options(&self) -> &DevnetOptions {
        &self.options
    }

    /// The coordinator's marketplace status (blocking).
    pub fn status(&self) -> Result<MarketplaceStatusResponse> {
        rpc::block_on(self.rpc.status(self.status_addr()))?
    }

    /// Polls the coordinator's status until `check` holds, for at most `timeout`.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&MarketplaceStatusResponse) -> bool,
    ) -> Result<MarketplaceStatusResponse> {
        let runtime = rpc::runtime()?;
        crate::wait_for(what, timeout, || {
            let status = runtime.block_on(self.rpc.status(self.status_addr()))?;
            Ok(check(&status).then_some(status))
        })
    }

    // ---- life ----

    /// What this devnet started, as written to `devnet.json`.
    pub fn state(&self) -> DevnetState {
        DevnetState {
            dir: self.dir.clone(),
            client_config: self.client_config.clone(),
            coordinators: self.coordinators.iter().map(Node::state).collect(),
            vendors: self
                .vendors
                .iter()
                .map(|v| VendorState {
                    id: v.id.clone(),
                    agent: v.agent.state(),
                    nas: v.nas.iter().map(Node::state).collect(),
                })
                .collect(),
        }
    }

    fn save_state(&self) -> Result<()> {
        self.state().save()
    }

    /// Leaves the processes running on their own (they were started in their
    /// own sessions) and keeps `devnet.json` for `status` and `down`.
    pub fn detach(mut self) -> Result<DevnetState> {
        anyhow::ensure!(self.options.detach, "this devnet was not started detached");
        let state = self.state();
        state.save()?;
        for node in self.nodes_mut() {
            node.daemon.release();
        }
        self.detached = true;
        Ok(state)
    }

    fn nodes_mut(&mut self) -> Vec<&mut Node> {
        let mut nodes = Vec::new();
        for vendor in &mut self.vendors {
            nodes.push(&mut vendor.agent);
            nodes.extend(vendor.nas.iter_mut());
        }
        nodes.extend(self.coordinators.iter_mut());
        nodes
    }

    /// Stops every process: SIGTERM to all, a bounded wait, SIGKILL to the
    /// rest; then removes `devnet.json`.
    pub fn stop_all(&mut self) {
        let mut nodes = self.nodes_mut();
        for node in &mut nodes {
            node.daemon.terminate();
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline && nodes.iter_mut().any(|n| n.daemon.is_running()) {
            std::thread::sleep(Duration::from_millis(50));
        }
        for node in &mut nodes {
            let _ = node.daemon.kill();
        }
        let _ = std::fs::remove_file(DevnetState::path(&self.dir));
    }
}

impl Drop for Devnet {
    fn drop(&mut self) {
        if !self.detached {
            self.stop_all();
        }
    }
}
