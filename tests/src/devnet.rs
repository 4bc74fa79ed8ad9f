//! A devnet: a local marketplace of real processes (a coordinator group of
//! three by default, vendors, and the NAS devices of each vendor) started
//! from configs written under one directory, plus the client config that
//! backs up into it. The client and the vendors know every coordinator.
//!
//! Layout of the directory:
//! `coordinator-N/{coordinator.toml,data,log}`, `vendor-N/{vendor.toml,data,log}`,
//! `vendor-N/nas-M/{nas.toml,data,log}`, `client.toml`, `client/{password,
//! key.json,cache}`, `devnet.json` (see [`crate::DevnetState`]) and `pki/`:
//! the marketplace CA (`ca.pem`, `ca.key`) and a certificate and key per
//! process (`coordinator-coordinator-N`, `vendor-vendor-N`,
//! `nas-vendor-N-nas-M`), the client's tenant (`tenant-devnet`) and the
//! harness's admin (`admin-harness`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use offsite_identity::Role;
use offsite_proto::pb::admin::MarketplaceStatusResponse;

use crate::bins;
use crate::configs::{self, ClientConfig, CoordinatorConfig, NasConfig, StoreConfig, VendorConfig};
use crate::netns::Namespaces;
use crate::permit::Permit;
use crate::ports::free_addr;
use crate::process::{Daemon, Paused, STOP_GRACE};
use crate::rpc::{self, Rpc};
use crate::state::{DevnetState, ProcessState, VendorState};

/// The shape of a devnet and the knobs of its daemons.
#[derive(Debug, Clone)]
pub struct DevnetOptions {
    /// Coordinators in the group (3 survive losing one).
    pub coordinators: usize,
    pub vendors: usize,
    pub nas_per_vendor: usize,
    /// Reservation lease of the coordinator.
    pub lease_secs: u64,
    pub suspect_after_secs: u64,
    pub down_after_secs: u64,
    /// How long a vendor stays down before its copies are made elsewhere.
    pub repair_after_secs: u64,
    pub report_interval_secs: u64,
    /// Cap of each NAS device; None: what its filesystem has.
    pub nas_cap_bytes: Option<u64>,
    /// The client's replication factor.
    pub replication: u32,
    pub portion_bytes: u64,
    pub piece_bytes: u64,
    /// The vendors' waits on a hung peer (`store_idle_timeout_secs`,
    /// `hop_timeout_secs`, `fetch_idle_timeout_secs`); None: their defaults.
    pub vendor_waits: VendorWaits,
    /// The client's `vendor_stall_timeout_secs`; None: its default.
    pub client_stall_secs: Option<u64>,
    /// How long the start may take before it is given up.
    pub ready_timeout: Duration,
    /// Start every process in its own session so it outlives the launcher.
    pub detach: bool,
    /// Each vendor's storage price (micro-units per TiB-month), in vendor
    /// order; empty: every vendor charges 0. Otherwise one per vendor.
    pub vendor_prices: Vec<u64>,
    /// Each vendor's egress price (micro-units per TiB), likewise.
    pub vendor_egress_prices: Vec<u64>,
    /// The coordinators' `fee_ppm` (the marketplace's share of every charge).
    pub fee_ppm: u32,
    /// The client's `max_storage_price`; None: no limit.
    pub max_storage_price: Option<u64>,
    /// Run each coordinator in its own network namespace (see
    /// [`crate::netns`]; needs root and `ip netns`), so a test can
    /// partition it; the rest stays on 127.0.0.1.
    pub coordinator_namespaces: bool,
}

impl Default for DevnetOptions {
    fn default() -> Self {
        Self {
            coordinators: 3,
            vendors: 4,
            nas_per_vendor: 2,
            lease_secs: 120,
            // Longer than a report that meets an isolated coordinator takes
            // to fail over (its 5 s write timeout, then the next), so a
            // partition of one coordinator makes no vendor suspect.
            suspect_after_secs: 10,
            down_after_secs: 15,
            repair_after_secs: 3600,
            report_interval_secs: 1,
            nas_cap_bytes: None,
            replication: 3,
            portion_bytes: 16 * 1024 * 1024,
            piece_bytes: 5 * 1024 * 1024,
            vendor_waits: VendorWaits::default(),
            client_stall_secs: None,
            ready_timeout: Duration::from_secs(60),
            detach: false,
            vendor_prices: Vec::new(),
            vendor_egress_prices: Vec::new(),
            fee_ppm: 0,
            max_storage_price: None,
            coordinator_namespaces: false,
        }
    }
}

/// How long the vendors of a devnet wait on a hung peer, in seconds (see
/// the vendor config in the README); None: the vendor's default.
#[derive(Debug, Clone, Copy, Default)]
pub struct VendorWaits {
    pub store_idle: Option<u64>,
    pub hop: Option<u64>,
    pub fetch_idle: Option<u64>,
}

impl VendorWaits {
    /// Short waits, for tests that hang a process on purpose: a hung hop is
    /// cut off within seconds, and a client (see [`HUNG_CLIENT_STALL_SECS`])
    /// still waits longer than any vendor of a route of 3. The idle timeout
    /// of a store's sender stays at its default (a minute), longer than the
    /// client takes to resend around a hung vendor: a store stuck behind the
    /// hung vendor still holds its lock when the resend arrives.
    pub fn short() -> Self {
        Self {
            store_idle: None,
            hop: Some(2),
            fetch_idle: Some(5),
        }
    }
}

/// The client's stall timeout that goes with [`VendorWaits::short`]: above
/// the 16 s the first vendor of a route of 3 may stall (3 hops per vendor
/// after it, plus a NAS answer).
pub const HUNG_CLIENT_STALL_SECS: u64 = 20;

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
    /// The coordinators' namespaces, with `coordinator_namespaces`; dropped
    /// after every process has stopped.
    net: Option<Namespaces>,
}

/// The port every coordinator listens on inside its own namespace.
const NAMESPACE_PORT: u16 = 7000;

/// The price of vendor `v` (counted from 1) in `prices`: 0 when the list is
/// empty, else its entry, which a list of another length than `vendors`
/// does not give.
fn vendor_price(prices: &[u64], field: &str, vendors: usize, v: usize) -> Result<u64> {
    if prices.is_empty() {
        return Ok(0);
    }
    anyhow::ensure!(
        prices.len() == vendors,
        "{field} lists {} prices for {vendors} vendors; give one per vendor (or none: all 0)",
        prices.len()
    );
    Ok(prices[v - 1])
}

const REGIONS: [&str; 4] = ["eu-west", "eu-central", "us-east", "ap-south"];

impl Devnet {
    /// Writes every config under `dir`, starts the processes and waits until the
    /// coordinator shows every vendor up and every vendor and NAS device answers.
    pub fn start(dir: &Path, options: DevnetOptions) -> Result<Devnet> {
        anyhow::ensure!(options.vendors > 0, "a devnet needs at least one vendor");
        anyhow::ensure!(
            options.coordinators > 0,
            "a devnet needs at least one coordinator"
        );
        anyhow::ensure!(
            options.nas_per_vendor > 0,
            "a vendor needs at least one NAS device"
        );
        vendor_price(&options.vendor_prices, "vendor_prices", options.vendors, 1)?;
        vendor_price(
            &options.vendor_egress_prices,
            "vendor_egress_prices",
            options.vendors,
            1,
        )?;
        let dir = prepare_dir(dir)?;
        let permit = Permit::acquire();
        let mut last = None;
        // A port picked free can be taken by someone else before the daemon binds
        // it; such a start is retried with fresh ports.
        for _ in 0..3 {
            let mut devnet = Devnet::configure(&dir, &options)?;
            match devnet.launch() {
                Ok(()) => {
                    devnet._permit = Some(permit);
                    return Ok(devnet);
                }
                Err(e) if format!("{e:#}").contains("in use") => {
                    devnet.discard()?;
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("the devnet did not start")))
    }

    /// Checks that `dir` can hold a new devnet (see [`Devnet::start`]):
    /// writable, with no devnet running there and no stopped one's data.
    pub fn check_dir(dir: &Path) -> Result<()> {
        prepare_dir(dir).map(drop)
    }

    /// Picks ports and writes every config; starts nothing.
    fn configure(dir: &Path, options: &DevnetOptions) -> Result<Devnet> {
        let coordinator_bin = bins::binary(bins::COORDINATOR)?;
        let vendor_bin = bins::binary(bins::VENDOR)?;
        let nas_bin = bins::binary(bins::NAS)?;
        bins::binary(bins::CLIENT)?;
        let rpc = Rpc::open(&rpc::pki_dir(dir))?;
        let net = match options.coordinator_namespaces {
            true => Some(Namespaces::create(options.coordinators)?),
            false => None,
        };

        let mut members = Vec::with_capacity(options.coordinators);
        for id in 1..=options.coordinators as u64 {
            let address = match &net {
                Some(net) => SocketAddr::from((net.ip(id as usize - 1), NAMESPACE_PORT)),
                None => free_addr()?,
            };
            members.push(configs::MemberConfig {
                id,
                address,
                name: format!("coordinator-{id}"),
            });
        }
        let coordinator_addrs: Vec<SocketAddr> = members.iter().map(|m| m.address).collect();
        let mut coordinators = Vec::with_capacity(members.len());
        for member in &members {
            let name = format!("coordinator-{}", member.id);
            let coordinator_dir = dir.join(&name);
            let config = CoordinatorConfig {
                node_id: member.id,
                listen: member.address,
                data_dir: coordinator_dir.join("data"),
                lease_secs: options.lease_secs,
                suspect_after_secs: options.suspect_after_secs,
                down_after_secs: options.down_after_secs,
                repair_after_secs: options.repair_after_secs,
                overprovision: 1.5,
                extra_vendors: 2,
                sweep_interval_secs: 1,
                fee_ppm: options.fee_ppm,
                initial_members: members.clone(),
                tls: rpc.tls(Role::Coordinator, &name)?,
            };
            let mut coordinator = node(
                &name,
                &coordinator_bin,
                &coordinator_dir,
                "coordinator.toml",
                options.detach,
                member.address,
                &config,
            )?;
            if let Some(net) = &net {
                coordinator.daemon.wrapper = net.exec_prefix(member.id as usize - 1);
            }
            coordinators.push(coordinator);
        }

        let mut vendors = Vec::with_capacity(options.vendors);
        for v in 1..=options.vendors {
            let id = format!("vendor-{v}");
            let vendor_dir = dir.join(&id);
            let mut nas = Vec::with_capacity(options.nas_per_vendor);
            for m in 1..=options.nas_per_vendor {
                let nas_dir = vendor_dir.join(format!("nas-{m}"));
                let config = NasConfig {
                    listen: free_addr()?,
                    data_dir: nas_dir.join("data"),
                    cap_bytes: options.nas_cap_bytes,
                    allowed_vendor: id.clone(),
                    tls: rpc.tls(Role::Nas, &nas_name(&id, m))?,
                };
                let name = format!("{id}/nas-{m}");
                nas.push(node(
                    &name,
                    &nas_bin,
                    &nas_dir,
                    "nas.toml",
                    options.detach,
                    config.listen,
                    &config,
                )?);
            }
            let listen = free_addr()?;
            let config = VendorConfig {
                vendor_id: id.clone(),
                listen,
                advertise: listen,
                region: REGIONS[(v - 1) % REGIONS.len()].to_string(),
                coordinators: coordinator_addrs.clone(),
                data_dir: vendor_dir.join("data"),
                report_interval_secs: options.report_interval_secs,
                network_bytes_per_sec: 0,
                keep_free_share: 0.10,
                storage_price_micros_per_tib_month: vendor_price(
                    &options.vendor_prices,
                    "vendor_prices",
                    options.vendors,
                    v,
                )?,
                egress_price_micros_per_tib: vendor_price(
                    &options.vendor_egress_prices,
                    "vendor_egress_prices",
                    options.vendors,
                    v,
                )?,
                store_idle_timeout_secs: options.vendor_waits.store_idle,
                hop_timeout_secs: options.vendor_waits.hop,
                fetch_idle_timeout_secs: options.vendor_waits.fetch_idle,
                tls: rpc.tls(Role::Vendor, &id)?,
                stores: nas
                    .iter()
                    .enumerate()
                    .map(|(m, n)| StoreConfig::Nas {
                        address: n.address,
                        name: nas_name(&id, m + 1),
                    })
                    .collect(),
            };
            let agent = node(
                &id,
                &vendor_bin,
                &vendor_dir,
                "vendor.toml",
                options.detach,
                listen,
                &config,
            )?;
            vendors.push(VendorNode { id, agent, nas });
        }

        let client_dir = dir.join("client");
        std::fs::create_dir_all(client_dir.join("cache"))
            .with_context(|| format!("cannot create {}", client_dir.display()))?;
        let password_file = client_dir.join("password");
        let password = ensure_password(&password_file)?;
        let client = ClientConfig {
            coordinators: coordinator_addrs,
            tenant: rpc::DEVNET_TENANT.to_string(),
            key_file: client_dir.join("key.json"),
            cache_dir: client_dir.join("cache"),
            host: "devnet-host".to_string(),
            replication: options.replication,
            portion_bytes: options.portion_bytes,
            piece_bytes: options.piece_bytes,
            password_file,
            vendor_stall_timeout_secs: options.client_stall_secs,
            max_storage_price: options.max_storage_price,
            tls: rpc.tls(Role::Tenant, rpc::DEVNET_TENANT)?,
        };
        let client_config = dir.join("client.toml");
        configs::write_client_toml(&client_config, &client)?;
        let addrs = coordinators.iter().chain(
            vendors
                .iter()
                .flat_map(|v| std::iter::once(&v.agent).chain(&v.nas)),
        );
        rpc::register(&rpc, addrs.map(|node| node.address));

        Ok(Devnet {
            dir: dir.to_path_buf(),
            options: options.clone(),
            coordinators,
            vendors,
            client_config,
            password,
            detached: false,
            rpc,
            _permit: None,
            net,
        })
    }

    /// Starts every process, records the state, and waits until ready.
    fn launch(&mut self) -> Result<()> {
        for coordinator in &mut self.coordinators {
            coordinator.daemon.start()?;
        }
        for vendor in &mut self.vendors {
            for nas in &mut vendor.nas {
                nas.daemon.start()?;
            }
        }
        for vendor in &mut self.vendors {
            vendor.agent.daemon.start()?;
        }
        self.save_state()?;
        self.wait_ready(self.options.ready_timeout)
    }

    /// Polls until the coordinator shows every vendor up and every vendor and
    /// NAS device answers; fails at once, with its log, if a process exits.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let runtime = rpc::runtime()?;
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running()?;
            let last = match runtime.block_on(self.readiness()) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                bail!(
                    "devnet in {} not ready after {timeout:?}: {last:#}",
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    async fn readiness(&self) -> Result<()> {
        for coordinator in &self.coordinators[1..] {
            if coordinator.daemon.pid().is_some() {
                self.rpc.status(coordinator.address).await?;
            }
        }
        let status = self.rpc.status(self.status_addr()).await?;
        for vendor in &self.vendors {
            let Some(row) = status.vendors.iter().find(|v| v.vendor_id == vendor.id) else {
                bail!("the coordinator does not list {} yet", vendor.id);
            };
            anyhow::ensure!(
                row.liveness == "up",
                "the coordinator shows {} as {:?}",
                vendor.id,
                row.liveness
            );
            anyhow::ensure!(row.offered_bytes > 0, "{} offers no bytes yet", vendor.id);
            self.rpc.probe(vendor.agent.address).await?;
            for nas in &vendor.nas {
                self.rpc.nas_capacity(nas.address, &vendor.id).await?;
            }
        }
        Ok(())
    }

    /// An error naming the first process that should run but has exited, with
    /// the tail of its log.
    fn check_running(&mut self) -> Result<()> {
        let mut nodes: Vec<&mut Node> = self.coordinators.iter_mut().collect();
        for vendor in &mut self.vendors {
            nodes.push(&mut vendor.agent);
            nodes.extend(vendor.nas.iter_mut());
        }
        for node in nodes {
            if node.daemon.pid().is_none() {
                continue; // stopped on purpose by a test
            }
            if let Some(status) = node.daemon.exited() {
                bail!(
                    "{} exited early ({status}); the end of {}:\n{}",
                    node.daemon.name,
                    node.daemon.log.display(),
                    node.daemon.log_tail(30)
                );
            }
        }
        Ok(())
    }

    // ---- what tests look at ----

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

    // ---- faults ----

    /// SIGKILLs coordinator `index` (0-based).
    pub fn kill_coordinator(&mut self, index: usize) -> Result<()> {
        self.coordinators[index].daemon.kill()
    }

    /// Starts coordinator `index` again with the same config and data.
    pub fn restart_coordinator(&mut self, index: usize) -> Result<()> {
        self.coordinators[index].daemon.start()?;
        self.save_state()
    }

    /// SIGKILLs vendor `index`'s agent.
    pub fn kill_vendor(&mut self, index: usize) -> Result<()> {
        self.vendors[index].agent.daemon.kill()
    }

    /// SIGTERMs vendor `index`'s agent and waits for it to exit.
    pub fn stop_vendor(&mut self, index: usize) -> Result<()> {
        self.vendors[index].agent.daemon.stop(STOP_GRACE)
    }

    /// Starts vendor `index`'s agent again with the same config and waits
    /// until it answers probes and the coordinator shows it up.
    pub fn restart_vendor(&mut self, index: usize) -> Result<()> {
        self.vendors[index].agent.daemon.start()?;
        self.save_state()?;
        self.wait_ready(self.options.ready_timeout)
    }

    /// SIGSTOPs vendor `index`'s agent: it hangs until the guard is dropped.
    pub fn pause_vendor(&self, index: usize) -> Result<Paused> {
        self.vendors[index].agent.daemon.pause()
    }

    /// SIGSTOPs NAS device `nas` of vendor `vendor` until the guard is dropped.
    pub fn pause_nas(&self, vendor: usize, nas: usize) -> Result<Paused> {
        self.vendors[vendor].nas[nas].daemon.pause()
    }

    /// The pid of vendor `index`'s agent, while it runs.
    pub fn vendor_pid(&self, index: usize) -> Option<u32> {
        self.vendors[index].agent.daemon.pid()
    }

    /// SIGKILLs NAS device `nas` of vendor `vendor`.
    pub fn kill_nas(&mut self, vendor: usize, nas: usize) -> Result<()> {
        self.vendors[vendor].nas[nas].daemon.kill()
    }

    /// SIGTERMs NAS device `nas` of vendor `vendor`.
    pub fn stop_nas(&mut self, vendor: usize, nas: usize) -> Result<()> {
        self.vendors[vendor].nas[nas].daemon.stop(STOP_GRACE)
    }

    /// Starts NAS device `nas` of vendor `vendor` again and waits until ready.
    pub fn restart_nas(&mut self, vendor: usize, nas: usize) -> Result<()> {
        self.vendors[vendor].nas[nas].daemon.start()?;
        self.save_state()?;
        self.wait_ready(self.options.ready_timeout)
    }

    /// Starts again every process that is not running (killed or stopped
    /// by a test), with the same config and data, and waits until ready:
    /// one call that heals several faults at once, which restarting them one
    /// by one (each waiting for every other to be ready) cannot.
    pub fn restart_stopped(&mut self) -> Result<()> {
        for node in self.nodes_mut() {
            node.daemon.start()?;
        }
        self.save_state()?;
        self.wait_ready(self.options.ready_timeout)
    }

    /// Cuts coordinator `index` off from the other coordinators, both ways;
    /// vendors, clients and the harness still reach it. Needs
    /// `coordinator_namespaces`.
    pub fn partition_coordinator(&mut self, index: usize) -> Result<()> {
        self.namespaces()?.isolate(index)
    }

    /// Cuts coordinator `index` off from everything else: the other
    /// coordinators, vendors, clients and the harness.
    pub fn isolate_coordinator(&mut self, index: usize) -> Result<()> {
        let net = self.namespaces()?;
        net.isolate(index)?;
        net.isolate_from_root(index)
    }

    /// Heals every partition.
    pub fn heal_partitions(&mut self) -> Result<()> {
        match &mut self.net {
            Some(net) => net.heal(),
            None => Ok(()),
        }
    }

    fn namespaces(&mut self) -> Result<&mut Namespaces> {
        self.net.as_mut().context(
            "this devnet's coordinators share the test's network; \
             start it with coordinator_namespaces to partition them",
        )
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

    /// Stops a start that failed and removes every daemon's data: the
    /// coordinators' group knows this attempt's ports, so the next attempt,
    /// on fresh ports, must begin from nothing (as `prepare_dir` made sure
    /// this one did).
    fn discard(mut self) -> Result<()> {
        self.stop_all();
        for node in self.nodes_mut() {
            if node.data_dir.exists() {
                std::fs::remove_dir_all(&node.data_dir).with_context(|| {
                    format!(
                        "cannot remove {} after a failed start",
                        node.data_dir.display()
                    )
                })?;
            }
        }
        Ok(())
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

/// Writes a daemon's config into `dir/file` and describes its process.
fn node(
    name: &str,
    binary: &Path,
    dir: &Path,
    file: &str,
    detach: bool,
    address: SocketAddr,
    config: &impl serde::Serialize,
) -> Result<Node> {
    let path = dir.join(file);
    configs::write_toml(&path, config)?;
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let daemon = Daemon::new(
        name.to_string(),
        binary.to_path_buf(),
        path,
        dir.join("log"),
        detach,
    );
    Ok(Node {
        daemon,
        address,
        data_dir,
    })
}

/// The certificate name of NAS device `m` (1-based) of `vendor`.
fn nas_name(vendor: &str, m: usize) -> String {
    format!("{vendor}-nas-{m}")
}

/// Creates `dir`, checks it is writable and holds neither a running devnet
/// nor a stopped one's data, and returns its absolute path.
fn prepare_dir(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create {}; choose a writable directory",
            dir.display()
        )
    })?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    let probe = dir.join(".devnet-write-check");
    std::fs::write(&probe, b"ok").with_context(|| {
        format!(
            "cannot write to {}; choose a writable directory",
            dir.display()
        )
    })?;
    let _ = std::fs::remove_file(&probe);
    if let Some(state) = DevnetState::load(&dir)? {
        let alive: Vec<String> = state
            .processes()
            .into_iter()
            .filter(|p| p.is_alive())
            .map(|p| format!("{} (pid {})", p.name, p.pid.unwrap_or(0)))
            .collect();
        if !alive.is_empty() {
            bail!(
                "a devnet is already up in {}: {}; stop it with `offsite-devnet down --dir {}`",
                dir.display(),
                alive.join(", "),
                dir.display()
            );
        }
    }
    // A stopped devnet's coordinators remember their group by the ports it
    // had; started again on fresh ports they would never reach each other.
    let earlier = dir.join("coordinator-1").join("data");
    if earlier.exists() {
        bail!(
            "{} holds the data of a devnet that was stopped ({}), which cannot be started again; \
             remove {} or choose another directory",
            dir.display(),
            earlier.display(),
            dir.display()
        );
    }
    Ok(dir)
}

/// Reads the passphrase in `path`, or creates a random one there (mode 0600).
fn ensure_password(path: &Path) -> Result<String> {
    use rand::distributions::{Alphanumeric, DistString};
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(existing) = std::fs::read_to_string(path) {
        return Ok(existing.trim_end().to_string());
    }
    let password = Alphanumeric.sample_string(&mut rand::thread_rng(), 32);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    write!(file, "{password}").with_context(|| format!("cannot write {}", path.display()))?;
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_prices_are_none_or_one_per_vendor() {
        assert_eq!(vendor_price(&[], "vendor_prices", 4, 3).unwrap(), 0);
        assert_eq!(vendor_price(&[5, 6, 7], "vendor_prices", 3, 2).unwrap(), 6);
        let err = vendor_price(&[5, 6], "vendor_egress_prices", 4, 1)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("vendor_egress_prices") && err.contains("2 prices for 4 vendors"),
            "the error names the list and both numbers: {err}"
        );
        assert!(vendor_price(&[1, 2, 3], "vendor_prices", 2, 1).is_err());
    }
}
