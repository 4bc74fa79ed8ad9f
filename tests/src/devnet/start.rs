//! Starting a devnet: the configs of every process written under its
//! directory (see the layout in [`super`]), the processes started in order
//! (coordinators, NAS devices, vendors), and the wait until the marketplace
//! is ready; a start whose ports were taken meanwhile is retried on fresh ones.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use offsite_identity::Role;

use super::network::{Network, Place};
use super::options::vendor_price;
use super::{Devnet, DevnetOptions, Node, VendorNode};
use crate::bins;
use crate::configs::{self, ClientConfig, CoordinatorConfig, NasConfig, StoreConfig, VendorConfig};
use crate::permit::Permit;
use crate::process::Daemon;
use crate::rpc::{self, Rpc};
use crate::state::DevnetState;

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
        anyhow::ensure!(
            !(options.detach && (options.coordinator_namespaces || options.vendor_namespaces)),
            "a devnet in network namespaces cannot be detached: its namespaces go when it stops"
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
        let net = Network::create(options)?;

        let mut members = Vec::with_capacity(options.coordinators);
        for id in 1..=options.coordinators as u64 {
            members.push(configs::MemberConfig {
                id,
                address: net.listen(Place::Coordinator(id as usize - 1))?,
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
                collect_expired_after_secs: options.collect_expired_after_secs,
                audits_per_vendor_per_hour: options.audits_per_vendor_per_hour,
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
            coordinator.daemon.wrapper = net.wrapper(Place::Coordinator(member.id as usize - 1));
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
                    listen: net.listen(Place::Nas(v - 1, m - 1))?,
                    data_dir: nas_dir.join("data"),
                    cap_bytes: options.nas_cap_bytes,
                    allowed_vendor: id.clone(),
                    tls: rpc.tls(Role::Nas, &nas_name(&id, m))?,
                };
                let name = format!("{id}/nas-{m}");
                let mut device = node(
                    &name,
                    &nas_bin,
                    &nas_dir,
                    "nas.toml",
                    options.detach,
                    config.listen,
                    &config,
                )?;
                device.daemon.wrapper = net.wrapper(Place::Nas(v - 1, m - 1));
                nas.push(device);
            }
            // Advertised as it listens: in its own namespace, its address
            // there is the one every other process reaches it at.
            let listen = net.listen(Place::Vendor(v - 1))?;
            let config = VendorConfig {
                vendor_id: id.clone(),
                listen,
                advertise: listen,
                region: REGIONS[(v - 1) % REGIONS.len()].to_string(),
                coordinators: coordinator_addrs.clone(),
                data_dir: vendor_dir.join("data"),
                report_interval_secs: options.report_interval_secs,
                reconcile_interval_secs: options.reconcile_interval_secs,
                gc_grace_secs: options.gc_grace_secs,
                network_bytes_per_sec: 0,
                // Every device of a devnet shares one disk with the test
                // machine: keeping a tenth of it free for each would leave
                // a nearly full CI disk with nothing to offer.
                keep_free_share: 0.0,
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
                scrub_period_secs: options.scrub_period_secs,
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
            let mut agent = node(
                &id,
                &vendor_bin,
                &vendor_dir,
                "vendor.toml",
                options.detach,
                listen,
                &config,
            )?;
            agent.daemon.wrapper = net.wrapper(Place::Vendor(v - 1));
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
