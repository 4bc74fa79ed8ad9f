//! Faults a test injects on purpose: kill, stop, pause (SIGSTOP) and start
//! again a coordinator, a vendor agent or a NAS device, and partitions of
//! the processes that run in network namespaces (see [`crate::netns`]).

use anyhow::Result;

use super::network::Place;
use super::Devnet;
use crate::process::{Paused, STOP_GRACE};

impl Devnet {
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

    // ---- partitions ----

    /// Cuts coordinator `index` off from the other coordinators, both ways;
    /// vendors, clients and the harness still reach it. Needs
    /// `coordinator_namespaces`.
    pub fn partition_coordinator(&mut self, index: usize) -> Result<()> {
        let peers = self.net.peers(index);
        self.net.cut(Place::Coordinator(index), &peers)
    }

    /// Cuts coordinator `index` off from everything else: the other
    /// coordinators, vendors, NAS devices, clients and the harness.
    pub fn isolate_coordinator(&mut self, index: usize) -> Result<()> {
        self.net.isolate(Place::Coordinator(index))
    }

    /// Cuts vendor `index`'s agent off from everything else: the
    /// coordinators, the other vendors, its NAS devices, clients and the
    /// harness. Needs `vendor_namespaces`.
    pub fn isolate_vendor(&mut self, index: usize) -> Result<()> {
        self.net.isolate(Place::Vendor(index))
    }

    /// Cuts vendor `index`'s agent off from its NAS devices only, both
    /// ways. Needs `vendor_namespaces`.
    pub fn partition_vendor_from_nas(&mut self, index: usize) -> Result<()> {
        let nas = self.net.nas_of(index);
        self.net.cut(Place::Vendor(index), &nas)
    }

    /// Cuts NAS device `nas` of vendor `vendor` off from its vendor agent,
    /// both ways (the harness still reaches it). Needs `vendor_namespaces`.
    pub fn partition_nas(&mut self, vendor: usize, nas: usize) -> Result<()> {
        self.net
            .cut(Place::Nas(vendor, nas), &[Place::Vendor(vendor)])
    }

    /// Heals every partition.
    pub fn heal_partitions(&mut self) -> Result<()> {
        self.net.heal()
    }
}
