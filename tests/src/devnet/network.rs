//! Where the processes of a devnet listen, and the partitions between them.
//! By default every process listens on a free port of 127.0.0.1. With
//! `coordinator_namespaces` each coordinator, and with `vendor_namespaces`
//! each vendor agent and each NAS device, runs in a network namespace of
//! its own on one bridge (see [`crate::netns`]) and listens on that
//! namespace's address; whatever stays in the test's namespace (the client,
//! the harness, and the processes not namespaced) is reached over the
//! bridge. A partition is a set of blackhole routes between namespaces.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result};

use super::DevnetOptions;
use crate::netns::Namespaces;
use crate::ports::{free_addr, free_addr_on};

/// The ports a coordinator, a vendor agent and a NAS device listen on
/// inside their own namespaces.
const COORDINATOR_PORT: u16 = 7000;
const VENDOR_PORT: u16 = 7100;
const NAS_PORT: u16 = 7200;

/// A process of a devnet, by its 0-based indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    Coordinator(usize),
    Vendor(usize),
    /// NAS device `.1` of vendor `.0`.
    Nas(usize, usize),
}

impl Place {
    fn port(self) -> u16 {
        match self {
            Place::Coordinator(_) => COORDINATOR_PORT,
            Place::Vendor(_) => VENDOR_PORT,
            Place::Nas(..) => NAS_PORT,
        }
    }
}

/// The namespaces of a devnet, if any, and which process is in which.
#[derive(Debug)]
pub(super) struct Network {
    namespaces: Option<Namespaces>,
    coordinators: usize,
    vendors: usize,
    nas_per_vendor: usize,
    coordinators_apart: bool,
    vendors_apart: bool,
}

impl Network {
    /// Creates the namespaces `options` ask for: `cN` for the coordinators
    /// first, then `vN` and `vNnM` for each vendor and its NAS devices.
    pub fn create(options: &DevnetOptions) -> Result<Network> {
        let mut labels = Vec::new();
        if options.coordinator_namespaces {
            labels.extend((1..=options.coordinators).map(|c| format!("c{c}")));
        }
        if options.vendor_namespaces {
            for v in 1..=options.vendors {
                labels.push(format!("v{v}"));
                labels.extend((1..=options.nas_per_vendor).map(|n| format!("v{v}n{n}")));
            }
        }
        let namespaces = match labels.is_empty() {
            true => None,
            false => Some(Namespaces::create_labelled(&labels)?),
        };
        Ok(Network {
            namespaces,
            coordinators: options.coordinators,
            vendors: options.vendors,
            nas_per_vendor: options.nas_per_vendor,
            coordinators_apart: options.coordinator_namespaces,
            vendors_apart: options.vendor_namespaces,
        })
    }

    /// The namespace of `place`, by its index in [`Namespaces`]; None when
    /// it runs in the test's namespace.
    fn member(&self, place: Place) -> Option<usize> {
        let vendors_from = if self.coordinators_apart {
            self.coordinators
        } else {
            0
        };
        let per_vendor = 1 + self.nas_per_vendor;
        match place {
            Place::Coordinator(c) => self.coordinators_apart.then_some(c),
            Place::Vendor(v) => self.vendors_apart.then_some(vendors_from + v * per_vendor),
            Place::Nas(v, n) => self
                .vendors_apart
                .then_some(vendors_from + v * per_vendor + 1 + n),
        }
    }

    /// Where `place` listens: its namespace's address, or a free port in
    /// the test's namespace (on the bridge when there are namespaces, so
    /// the processes in them reach it; else on 127.0.0.1).
    pub fn listen(&self, place: Place) -> Result<SocketAddr> {
        match (&self.namespaces, self.member(place)) {
            (Some(net), Some(member)) => Ok(SocketAddr::from((net.ip(member), place.port()))),
            (Some(net), None) => free_addr_on(IpAddr::V4(net.root_ip())),
            (None, _) => free_addr(),
        }
    }

    /// The command line `place`'s binary runs under: `ip netns exec NS`,
    /// or nothing.
    pub fn wrapper(&self, place: Place) -> Vec<String> {
        match (&self.namespaces, self.member(place)) {
            (Some(net), Some(member)) => net.exec_prefix(member),
            _ => Vec::new(),
        }
    }

    /// Cuts `place` off from each of `others`, both ways.
    pub fn cut(&mut self, place: Place, others: &[Place]) -> Result<()> {
        let a = self.namespaced(place)?;
        let others = others
            .iter()
            .map(|o| self.namespaced(*o))
            .collect::<Result<Vec<_>>>()?;
        self.namespaces_mut()?.cut(a, &others)
    }

    /// Cuts `place` off from everything: every other namespace and the
    /// test's (the client, the harness, any process not namespaced).
    pub fn isolate(&mut self, place: Place) -> Result<()> {
        let a = self.namespaced(place)?;
        let net = self.namespaces_mut()?;
        net.isolate(a)?;
        net.isolate_from_root(a)
    }

    /// Every other coordinator than `c`.
    pub fn peers(&self, c: usize) -> Vec<Place> {
        (0..self.coordinators)
            .filter(|o| *o != c)
            .map(Place::Coordinator)
            .collect()
    }

    /// Every NAS device of vendor `v`.
    pub fn nas_of(&self, v: usize) -> Vec<Place> {
        (0..self.nas_per_vendor).map(|n| Place::Nas(v, n)).collect()
    }

    /// Removes every blackhole route.
    pub fn heal(&mut self) -> Result<()> {
        match &mut self.namespaces {
            Some(net) => net.heal(),
            None => Ok(()),
        }
    }

    fn namespaced(&self, place: Place) -> Result<usize> {
        let option = match place {
            Place::Coordinator(c) if c < self.coordinators => "coordinator_namespaces",
            Place::Vendor(v) | Place::Nas(v, _) if v < self.vendors => "vendor_namespaces",
            _ => anyhow::bail!("this devnet has no {place:?}"),
        };
        self.member(place).with_context(|| {
            format!(
                "{place:?} shares the test's network, so it cannot be partitioned; \
                 start the devnet with {option}"
            )
        })
    }

    fn namespaces_mut(&mut self) -> Result<&mut Namespaces> {
        self.namespaces
            .as_mut()
            .context("this devnet runs no process in a network namespace")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(coordinators_apart: bool, vendors_apart: bool) -> Network {
        Network {
            namespaces: None,
            coordinators: 3,
            vendors: 2,
            nas_per_vendor: 2,
            coordinators_apart,
            vendors_apart,
        }
    }

    #[test]
    fn members_follow_the_labels_in_order() {
        let both = network(true, true);
        assert_eq!(both.member(Place::Coordinator(2)), Some(2));
        assert_eq!(both.member(Place::Vendor(0)), Some(3));
        assert_eq!(both.member(Place::Nas(0, 1)), Some(5));
        assert_eq!(both.member(Place::Vendor(1)), Some(6));
        assert_eq!(both.member(Place::Nas(1, 1)), Some(8));
        let vendors = network(false, true);
        assert_eq!(vendors.member(Place::Coordinator(0)), None);
        assert_eq!(vendors.member(Place::Vendor(1)), Some(3));
        let coordinators = network(true, false);
        assert_eq!(coordinators.member(Place::Nas(1, 0)), None);
    }

    #[test]
    fn a_process_in_the_tests_namespace_is_not_partitioned() {
        let err = network(true, false)
            .namespaced(Place::Vendor(1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("vendor_namespaces"), "{err}");
        assert!(network(true, true).namespaced(Place::Vendor(7)).is_err());
    }
}
