//! The nemesis: faults injected at random into a running [`Devnet`] while
//! clients work against it. A fault is a kill (SIGKILL, healed by starting
//! the process again with its config and data) or a pause (SIGSTOP, healed
//! by SIGCONT) of one coordinator, one vendor agent or one NAS device, or a
//! partition, healed by removing the blackhole routes: a coordinator cut
//! off from the other coordinators or from everything, a vendor agent cut
//! off from everything (coordinators, other vendors, its NAS devices,
//! clients) or from its NAS devices only, a NAS device cut off from its
//! vendor. Partitions need the processes in network namespaces
//! (`DevnetOptions::coordinator_namespaces`, `vendor_namespaces`); those of
//! a process that shares the test's network are not picked.
//!
//! Faults come in episodes: one to three faults, at most one per slot
//! (coordinator, vendor, NAS device on another vendor), so a quorum of
//! coordinators and R vendors of the devnet stay possible; each episode is
//! held for a random bounded time, then every fault is healed together and
//! the devnet is waited for until ready. Every choice comes from one seeded
//! RNG, so a seed replays the same schedule (the timing of the processes
//! still differs from run to run).
//!
//! Dropping a [`Nemesis`] SIGCONTs every process it paused, also when a test
//! panics, so the devnet's own drop can stop them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::devnet::Devnet;

mod tally;
mod worker;

pub use tally::Tally;
pub use worker::{Forgotten, Saved, Worker};

/// Which kinds of fault the nemesis may inject.
#[derive(Debug, Clone, Copy)]
pub struct FaultKinds {
    pub kill: bool,
    pub pause: bool,
    /// Partitions of the processes that run in network namespaces (see the
    /// module doc).
    pub partition: bool,
}

/// How long faults are held and how long the devnet is left alone between
/// episodes.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub hold: (Duration, Duration),
    pub quiet: (Duration, Duration),
    /// The longest wait between two faults of one episode.
    pub stagger: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            hold: (Duration::from_secs(2), Duration::from_secs(10)),
            quiet: (Duration::from_secs(1), Duration::from_secs(5)),
            stagger: Duration::from_secs(3),
        }
    }
}

/// A process of the devnet, by its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Coordinator(usize),
    Vendor(usize),
    Nas(usize, usize),
}

impl Target {
    fn name(self) -> String {
        match self {
            Target::Coordinator(i) => format!("coordinator-{}", i + 1),
            Target::Vendor(i) => format!("vendor-{}", i + 1),
            Target::Nas(v, n) => format!("vendor-{}/nas-{}", v + 1, n + 1),
        }
    }

    fn slot(self) -> &'static str {
        match self {
            Target::Coordinator(_) => "coordinator",
            Target::Vendor(_) => "vendor",
            Target::Nas(..) => "nas",
        }
    }

    fn pid(self, devnet: &Devnet) -> Option<u32> {
        let state = devnet.state();
        match self {
            Target::Coordinator(i) => state.coordinators[i].pid,
            Target::Vendor(i) => state.vendors[i].agent.pid,
            Target::Nas(v, n) => state.vendors[v].nas[n].pid,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Kill,
    Pause,
    /// A coordinator cut off from the other coordinators, a vendor agent
    /// from its NAS devices, a NAS device from its vendor agent.
    Partition,
    /// The process cut off from everything.
    Isolate,
}

impl Action {
    /// The kind of fault, as the summary counts it.
    fn kind(self, target: Target) -> String {
        let slot = target.slot();
        match (self, target) {
            (Action::Kill, _) => format!("kill {slot}"),
            (Action::Pause, _) => format!("pause {slot}"),
            (Action::Isolate, _) => format!("isolate {slot}"),
            (Action::Partition, Target::Coordinator(_)) => {
                "partition coordinator from peers".into()
            }
            (Action::Partition, Target::Vendor(_)) => "partition vendor from its nas".into(),
            (Action::Partition, Target::Nas(..)) => "partition nas from its vendor".into(),
        }
    }
}

/// A process stopped with SIGSTOP; continued (SIGCONT) when dropped.
#[derive(Debug)]
struct Stopped {
    pid: u32,
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = signal(self.pid, Signal::SIGCONT);
    }
}

fn signal(pid: u32, sig: Signal) -> Result<()> {
    let raw = i32::try_from(pid).context("pid out of range")?;
    kill(Pid::from_raw(raw), sig).with_context(|| format!("cannot send {sig} to pid {pid}"))
}

/// A fault in place, until healed.
#[derive(Debug)]
struct Active {
    target: Target,
    since: Instant,
    /// Held while the process is paused.
    stopped: Option<Stopped>,
}

/// The fault injector; see the module doc.
#[derive(Debug)]
pub struct Nemesis {
    rng: StdRng,
    kinds: FaultKinds,
    timings: Timings,
    active: Vec<Active>,
    /// Faults injected, by kind (`kill coordinator`, `pause nas`, ...).
    pub injected: BTreeMap<String, u64>,
    /// The longest a fault was held before its heal began.
    pub longest_fault: Duration,
    /// The longest a heal took (restarts until the devnet was ready).
    pub longest_heal: Duration,
    /// One line per fault and heal, with the time since the start.
    pub journal: Vec<String>,
    started: Instant,
}

impl Nemesis {
    pub fn new(seed: u64, kinds: FaultKinds, timings: Timings) -> Nemesis {
        Nemesis {
            rng: StdRng::seed_from_u64(seed),
            kinds,
            timings,
            active: Vec::new(),
            injected: BTreeMap::new(),
            longest_fault: Duration::ZERO,
            longest_heal: Duration::ZERO,
            journal: Vec::new(),
            started: Instant::now(),
        }
    }

    /// Runs episodes until `until` (or until `stop` is set, as when a
    /// client fails), then heals everything.
    pub fn run(&mut self, devnet: &mut Devnet, until: Instant, stop: &AtomicBool) -> Result<()> {
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            self.episode(devnet, until)?;
            let quiet = self.pick(self.timings.quiet);
            sleep_until(until.min(Instant::now() + quiet));
        }
        self.heal(devnet)
    }

    /// One episode: faults injected a little apart, held, then healed.
    fn episode(&mut self, devnet: &mut Devnet, until: Instant) -> Result<()> {
        let mut slots = vec!["coordinator", "vendor", "nas"];
        slots.shuffle(&mut self.rng);
        let count = self.rng.gen_range(1..=slots.len());
        for (k, slot) in slots.into_iter().take(count).enumerate() {
            if k > 0 {
                let gap = self.pick((Duration::ZERO, self.timings.stagger));
                std::thread::sleep(gap);
            }
            let target = self.target(devnet, slot);
            self.inject(devnet, target)?;
        }
        let hold = self.pick(self.timings.hold);
        sleep_until(until.min(Instant::now() + hold));
        self.heal(devnet)
    }

    /// A target for `slot` that leaves the other slots' faults apart: a NAS
    /// device's fault is never on the vendor whose agent is down.
    fn target(&mut self, devnet: &Devnet, slot: &str) -> Target {
        let options = devnet.options();
        let busy_vendor = self.active.iter().find_map(|a| match a.target {
            Target::Vendor(v) | Target::Nas(v, _) => Some(v),
            Target::Coordinator(_) => None,
        });
        let vendors: Vec<usize> = (0..options.vendors)
            .filter(|v| Some(*v) != busy_vendor)
            .collect();
        match slot {
            "coordinator" => Target::Coordinator(self.rng.gen_range(0..options.coordinators)),
            "vendor" => Target::Vendor(*vendors.choose(&mut self.rng).unwrap_or(&0)),
            _ => Target::Nas(
                *vendors.choose(&mut self.rng).unwrap_or(&0),
                self.rng.gen_range(0..options.nas_per_vendor),
            ),
        }
    }

    fn inject(&mut self, devnet: &mut Devnet, target: Target) -> Result<()> {
        let mut actions = Vec::new();
        if self.kinds.kill {
            actions.push(Action::Kill);
        }
        if self.kinds.pause {
            actions.push(Action::Pause);
        }
        let options = devnet.options();
        let namespaced = match target {
            Target::Coordinator(_) => options.coordinator_namespaces,
            Target::Vendor(_) => options.vendor_namespaces,
            Target::Nas(..) => options.vendor_namespaces,
        };
        if self.kinds.partition && namespaced {
            actions.push(Action::Partition);
            // A NAS device answers only its vendor: cut off from it, it is
            // cut off from everything that matters.
            if !matches!(target, Target::Nas(..)) {
                actions.push(Action::Isolate);
            }
        }
        let Some(&action) = actions.choose(&mut self.rng) else {
            return Ok(());
        };
        let mut stopped = None;
        match (action, target) {
            (Action::Kill, Target::Coordinator(i)) => devnet.kill_coordinator(i)?,
            (Action::Kill, Target::Vendor(i)) => devnet.kill_vendor(i)?,
            (Action::Kill, Target::Nas(v, n)) => devnet.kill_nas(v, n)?,
            (Action::Pause, _) => {
                let pid = target
                    .pid(devnet)
                    .with_context(|| format!("{} is not running", target.name()))?;
                signal(pid, Signal::SIGSTOP)?;
                stopped = Some(Stopped { pid });
            }
            (Action::Partition, Target::Coordinator(i)) => devnet.partition_coordinator(i)?,
            (Action::Partition, Target::Vendor(i)) => devnet.partition_vendor_from_nas(i)?,
            (Action::Partition, Target::Nas(v, n)) => devnet.partition_nas(v, n)?,
            (Action::Isolate, Target::Coordinator(i)) => devnet.isolate_coordinator(i)?,
            (Action::Isolate, Target::Vendor(i)) => devnet.isolate_vendor(i)?,
            (Action::Isolate, Target::Nas(..)) => {
                anyhow::bail!("a NAS device is partitioned from its vendor, not isolated")
            }
        }
        let kind = action.kind(target);
        self.note(format!("{kind}: {}", target.name()));
        *self.injected.entry(kind).or_default() += 1;
        self.active.push(Active {
            target,
            since: Instant::now(),
            stopped,
        });
        Ok(())
    }

    /// Heals every fault: partitions heal and paused processes continue
    /// first (a restart waits for every process to answer), then every
    /// killed one starts again.
    pub fn heal(&mut self, devnet: &mut Devnet) -> Result<()> {
        if self.active.is_empty() {
            return Ok(());
        }
        let begun = Instant::now();
        devnet.heal_partitions()?;
        for fault in self.active.drain(..) {
            self.longest_fault = self.longest_fault.max(fault.since.elapsed());
            drop(fault.stopped);
        }
        devnet
            .restart_stopped()
            .context("the devnet did not come back after the nemesis healed its faults")?;
        let took = begun.elapsed();
        self.longest_heal = self.longest_heal.max(took);
        self.note(format!("healed in {:.1} s", took.as_secs_f64()));
        Ok(())
    }

    fn note(&mut self, line: String) {
        let at = self.started.elapsed().as_secs_f64();
        tracing::info!("nemesis at {at:.1} s: {line}");
        self.journal.push(format!("{at:7.1} s  {line}"));
    }

    fn pick(&mut self, (low, high): (Duration, Duration)) -> Duration {
        if high <= low {
            return low;
        }
        Duration::from_millis(
            self.rng
                .gen_range(low.as_millis() as u64..=high.as_millis() as u64),
        )
    }
}

impl Drop for Nemesis {
    fn drop(&mut self) {
        // Each paused process continues as its guard drops.
        self.active.clear();
    }
}

fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}
