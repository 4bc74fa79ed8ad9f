//! Network namespaces for partitions, with real processes: [`Namespaces`],
//! a few namespaces on one bridge, each with its own address, whose links a
//! test can cut (a partition) while still reaching every namespace itself;
//! and [`NetnsGroup`], a coordinator group of three in them. A devnet can
//! also run its coordinators, and its vendor agents and NAS devices, one
//! per namespace (`DevnetOptions::coordinator_namespaces`,
//! `DevnetOptions::vendor_namespaces`).
//!
//! Layout, in a private subnet `10.231.N.0/24` that only these namespaces use:
//! a hub namespace holds a bridge; one veth pair joins the test's (root)
//! namespace to it (`.1`) and one joins each member namespace (`.11`,
//! `.12`, ...). The bridge lives in its own namespace so that bridged
//! frames meet that namespace's empty firewall, not the host's (a host with
//! `br_netfilter` and a `FORWARD DROP` policy, as Docker sets up, would drop
//! them). A partition is a set of blackhole routes inside the members'
//! namespaces, never in the test's: a member cut off from the test's
//! namespace gets a route to `.1` that goes nowhere, so nothing there (the
//! test, a devnet's vendors and clients) gets an answer from it. Everything
//! is removed on drop, also when the test panics.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};

use anyhow::{bail, Context, Result};
use offsite_identity::{Role, TlsConfig};
use serde::Serialize;

use crate::rpc::{self, Rpc};
use crate::{binary, write_toml, KillOnDrop, COORDINATOR};

/// The gRPC port every replica listens on inside its namespace.
const PORT: u16 = 7000;
/// Replicas in the group.
const REPLICAS: usize = 3;
/// Members one bridge holds: addresses `.11` to `.254` of its subnet.
const MAX_MEMBERS: usize = 244;

/// Sets of namespaces this process created so far, and the lock their
/// creation holds.
static CREATED: AtomicU32 = AtomicU32::new(0);
static CREATING: Mutex<()> = Mutex::new(());

/// Timings of the group under test: short, so elections and "no quorum"
/// answers come quickly.
#[derive(Debug, Clone, Copy)]
pub struct GroupTimings {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub write_timeout_ms: u64,
}

impl Default for GroupTimings {
    fn default() -> Self {
        Self {
            heartbeat_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            write_timeout_ms: 2000,
        }
    }
}

/// `offsite-coordinator run --config coordinator.toml`, with the timings.
#[derive(Serialize)]
struct Config<'a> {
    node_id: u64,
    listen: SocketAddr,
    advertise: String,
    data_dir: &'a Path,
    heartbeat_ms: u64,
    election_timeout_min_ms: u64,
    election_timeout_max_ms: u64,
    write_timeout_ms: u64,
    initial_members: Vec<Member>,
    tls: TlsConfig,
}

#[derive(Serialize)]
struct Member {
    id: u64,
    address: String,
    name: String,
}

/// Namespaces on one bridge, reachable from the test's namespace; see the
/// module doc.
#[derive(Debug)]
pub struct Namespaces {
    hub: String,
    root_veth: String,
    names: Vec<String>,
    subnet: u8,
    /// Blackhole routes in place, as (namespace index, address); two
    /// partitions that overlap share a route.
    blackholes: BTreeSet<(usize, Ipv4Addr)>,
}

impl Namespaces {
    /// Creates `count` namespaces, named after this process so concurrent
    /// tests do not meet. Fails with the missing capability named when
    /// `ip netns` cannot be used.
    pub fn create(count: usize) -> Result<Namespaces> {
        let labels: Vec<String> = (1..=count).map(|i| format!("c{i}")).collect();
        Namespaces::create_labelled(&labels)
    }

    /// Creates one namespace per label (a few letters and digits each, such
    /// as `v2n1`), in that order; `ip netns list` shows each label after a
    /// tag of this process.
    pub fn create_labelled(labels: &[String]) -> Result<Namespaces> {
        anyhow::ensure!(
            labels.len() <= MAX_MEMBERS,
            "{} namespaces asked for; one bridge holds at most {MAX_MEMBERS}",
            labels.len()
        );
        check_capability()?;
        // One at a time in this process, so two sets never pick the same
        // free subnet; each has its own number, so their names differ.
        let _one = CREATING.lock().unwrap_or_else(PoisonError::into_inner);
        let pid = std::process::id();
        let seq = CREATED.fetch_add(1, Ordering::Relaxed);
        let tag = format!("os{}x{seq}", pid % 1_000_000);
        let mut net = Namespaces {
            hub: format!("{tag}hub"),
            root_veth: format!("{tag}r"),
            names: labels.iter().map(|l| format!("{tag}{l}")).collect(),
            subnet: free_subnet(pid)?,
            blackholes: BTreeSet::new(),
        };
        net.build()?;
        Ok(net)
    }

    /// The name of namespace `i` (for `ip netns exec`).
    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// The address of namespace `i`.
    pub fn ip(&self, i: usize) -> Ipv4Addr {
        member_ip(self.subnet, i + 1)
    }

    /// The test's own address on the bridge, from which every process of
    /// the test's namespace reaches the members (and on which it listens
    /// for them).
    pub fn root_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.subnet, 1)
    }

    /// `ip netns exec NAME`: the command line that runs a program in
    /// namespace `i` (ip execs the program, so its pid is the program's).
    pub fn exec_prefix(&self, i: usize) -> Vec<String> {
        ["ip", "netns", "exec", self.name(i)]
            .map(String::from)
            .to_vec()
    }

    /// Cuts member `isolated` off from the other members, both ways:
    /// blackhole routes in its namespace to them and in theirs to it.
    pub fn isolate(&mut self, isolated: usize) -> Result<()> {
        let others: Vec<usize> = (0..self.names.len()).filter(|o| *o != isolated).collect();
        self.cut(isolated, &others)
    }

    /// Cuts member `a` off from each of `others`, both ways.
    pub fn cut(&mut self, a: usize, others: &[usize]) -> Result<()> {
        for &other in others.iter().filter(|o| **o != a) {
            self.blackhole(a, self.ip(other))?;
            self.blackhole(other, self.ip(a))?;
        }
        Ok(())
    }

    /// Cuts member `i` off from the test's namespace, both ways (its
    /// answers to `.1` go nowhere, so nothing there reaches it).
    pub fn isolate_from_root(&mut self, i: usize) -> Result<()> {
        self.blackhole(i, self.root_ip())
    }

    /// Removes every blackhole route: the partition heals.
    pub fn heal(&mut self) -> Result<()> {
        while let Some((ns, ip)) = self.blackholes.pop_first() {
            ip_cmd(&[
                "-n",
                &self.names[ns],
                "route",
                "del",
                "blackhole",
                &format!("{ip}/32"),
            ])?;
        }
        Ok(())
    }

    fn blackhole(&mut self, ns: usize, ip: Ipv4Addr) -> Result<()> {
        if self.blackholes.contains(&(ns, ip)) {
            return Ok(());
        }
        ip_cmd(&[
            "-n",
            &self.names[ns],
            "route",
            "add",
            "blackhole",
            &format!("{ip}/32"),
        ])?;
        self.blackholes.insert((ns, ip));
        Ok(())
    }

    fn build(&mut self) -> Result<()> {
        let hub = self.hub.clone();
        ip_cmd(&["netns", "add", &hub])?;
        ip_cmd(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip_cmd(&["-n", &hub, "link", "set", "br0", "up"])?;
        let root = self.root_veth.clone();
        ip_cmd(&[
            "link", "add", &root, "type", "veth", "peer", "name", "up0", "netns", &hub,
        ])?;
        ip_cmd(&["-n", &hub, "link", "set", "up0", "master", "br0", "up"])?;
        let gateway = format!("{}/24", self.root_ip());
        ip_cmd(&["addr", "add", &gateway, "dev", &root])?;
        ip_cmd(&["link", "set", &root, "up"])?;
        for (i, ns) in self.names.clone().iter().enumerate() {
            let port = format!("p{}", i + 1);
            ip_cmd(&["netns", "add", ns])?;
            ip_cmd(&[
                "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                ns,
            ])?;
            ip_cmd(&["-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
            let address = format!("{}/24", self.ip(i));
            ip_cmd(&["-n", ns, "addr", "add", &address, "dev", "eth0"])?;
            ip_cmd(&["-n", ns, "link", "set", "eth0", "up"])?;
            ip_cmd(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Errors are ignored so one leftover does not keep the rest.
        let _ = ip_cmd(&["link", "del", &self.root_veth]);
        for ns in self.names.iter().chain([&self.hub]) {
            let _ = ip_cmd(&["netns", "del", ns]);
        }
    }
}

/// Three coordinators in three network namespaces.
pub struct NetnsGroup {
    addrs: Vec<SocketAddr>,
    dir: PathBuf,
    processes: Vec<Option<KillOnDrop>>,
    /// The group's CA and the harness's certificates (in `dir/pki`).
    rpc: Rpc,
    /// Dropped after the processes (fields drop after `Drop::drop`).
    net: Namespaces,
}

impl NetnsGroup {
    /// Creates the namespaces and starts the three coordinators, logging to
    /// `dir/cN.log`. Fails with the missing capability named when `ip netns`
    /// cannot be used.
    pub fn start(dir: &Path, timings: GroupTimings) -> Result<NetnsGroup> {
        let coordinator = binary(COORDINATOR)?;
        let net = Namespaces::create(REPLICAS)?;
        let mut group = NetnsGroup {
            addrs: (0..REPLICAS)
                .map(|i| SocketAddr::from((net.ip(i), PORT)))
                .collect(),
            dir: dir.to_path_buf(),
            processes: Vec::new(),
            rpc: Rpc::open(&crate::rpc::pki_dir(dir))?,
            net,
        };
        rpc::register(&group.rpc, group.addrs.clone());
        for i in 0..REPLICAS {
            let process = group.spawn(i, &coordinator, timings)?;
            group.processes.push(Some(process));
        }
        Ok(group)
    }

    /// The harness's certificates for this group (admin, tenant, and any
    /// other it issues from the group's CA).
    pub fn rpc(&self) -> Rpc {
        self.rpc.clone()
    }

    /// Every replica's gRPC address, reachable from the test's namespace.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Cuts replica `isolated` off from the others, both ways: blackhole
    /// routes in its namespace to them and in theirs to it.
    pub fn isolate(&mut self, isolated: usize) -> Result<()> {
        self.net.isolate(isolated)
    }

    /// Removes every blackhole route: the partition heals.
    pub fn heal(&mut self) -> Result<()> {
        self.net.heal()
    }

    /// The last lines of replica `i`'s log, for assertion messages.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        crate::log_tail(&self.log(i), lines)
    }

    fn log(&self, i: usize) -> PathBuf {
        self.dir.join(format!("c{}.log", i + 1))
    }

    fn spawn(&self, i: usize, binary: &Path, timings: GroupTimings) -> Result<KillOnDrop> {
        let data_dir = self.dir.join(format!("c{}", i + 1));
        let config = Config {
            node_id: i as u64 + 1,
            listen: self.addrs[i],
            advertise: self.addrs[i].to_string(),
            data_dir: &data_dir,
            heartbeat_ms: timings.heartbeat_ms,
            election_timeout_min_ms: timings.election_timeout_min_ms,
            election_timeout_max_ms: timings.election_timeout_max_ms,
            write_timeout_ms: timings.write_timeout_ms,
            initial_members: (0..REPLICAS)
                .map(|m| Member {
                    id: m as u64 + 1,
                    address: self.addrs[m].to_string(),
                    name: format!("c{}", m + 1),
                })
                .collect(),
            // Peers check the name coordinator.offsite, not the 10.x address.
            tls: self.rpc.tls(Role::Coordinator, &format!("c{}", i + 1))?,
        };
        let path = self.dir.join(format!("c{}.toml", i + 1));
        write_toml(&path, &config)?;
        let log = std::fs::File::create(self.log(i))
            .with_context(|| format!("cannot create {}", self.log(i).display()))?;
        // `ip netns exec` execs the binary, so the child is the coordinator.
        let child = Command::new("ip")
            .args(["netns", "exec", self.net.name(i)])
            .arg(binary)
            .args(["run", "--config"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("cannot share the log file")?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!("cannot start {} in {}", binary.display(), self.net.name(i))
            })?;
        Ok(KillOnDrop(child))
    }
}

impl Drop for NetnsGroup {
    fn drop(&mut self) {
        // Processes first (they hold the namespaces open); the namespaces
        // go when `net` drops, after this.
        for process in &mut self.processes {
            process.take();
        }
    }
}

fn member_ip(subnet: u8, i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 231, subnet, 10 + i as u8)
}

/// Runs `ip ARGS`; the error shows the command and what `ip` said.
fn ip_cmd(args: &[&str]) -> Result<()> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `ip {}`", args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Fails, naming what is missing, unless `ip netns` works here.
fn check_capability() -> Result<()> {
    ip_cmd(&["netns", "list"]).context(
        "this test needs network namespaces: the `ip` command of iproute2 (`ip netns`) and \
         root (CAP_SYS_ADMIN and CAP_NET_ADMIN); install iproute2 and run the test as root",
    )
}

/// A `10.231.N.0/24` no interface of this host uses, starting from one
/// derived from `pid` so concurrent runs pick different subnets.
fn free_subnet(pid: u32) -> Result<u8> {
    let output = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .context("cannot run `ip -4 -o addr show`")?;
    let used = String::from_utf8_lossy(&output.stdout).into_owned();
    let start = pid % 250;
    (0..250u32)
        .map(|k| 1 + ((start + k) % 250) as u8)
        .find(|n| !used.contains(&format!(" 10.231.{n}.")))
        .context("every 10.231.N.0/24 subnet is in use on this host; remove stale test interfaces")
}
