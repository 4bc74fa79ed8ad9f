//! Vendors leaving or shrinking on purpose: a graceful **exit** (every copy
//! the vendor holds moves to other vendors, then the group states that the
//! vendor holds nothing the FAT needs) and **burst relief** (a vendor that
//! suddenly needs its disk sheds the bytes it asks, ahead of ordinary
//! repairs).
//!
//! Both work through re-replication (`fat::repairs`): an exiting vendor's
//! copies are all *leaving* from the moment it starts, a relieved vendor's
//! copies are leaving until what it holds is down to its goal, and neither
//! takes new placements or repair copies meanwhile. Nothing here deletes a
//! copy: a copy leaves a vendor only once its replacement is held, so the
//! copy count of a portion never falls on the way.
//!
//! An exit *completes* (the leader's `Settle`) when no portion lists the
//! vendor, no repair involves it and its deletion queue is empty; it is then
//! final: a cancel is refused and the vendor cannot register again under
//! the same id. A relief is *done* when the vendor holds at most its goal,
//! no repair replacing its copies is open and its deletion queue is empty
//! (its disk is really free); it then takes new data again.

use std::collections::BTreeMap;

use offsite_proto::VendorId;
use serde::{Deserialize, Serialize};

use super::{Fat, FatError, Outcome};

/// A vendor's exit as the FAT records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Exit {
    pub started_unix_ms: u64,
    pub portions_at_start: u64,
    pub bytes_at_start: u64,
    /// When the group found that the FAT needs nothing more of the vendor.
    pub completed_unix_ms: Option<u64>,
}

/// A vendor's burst relief as the FAT records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Relief {
    pub asked_bytes: u64,
    /// What the vendor may hold in the catalog once relieved.
    pub goal_bytes: u64,
    pub started_unix_ms: u64,
    pub done_unix_ms: Option<u64>,
}

/// Every exit and relief (format version 9).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Departures {
    exits: BTreeMap<VendorId, Exit>,
    reliefs: BTreeMap<VendorId, Relief>,
}

/// A vendor asks to leave, to stay after all, or for its disk back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Departure {
    /// Starts the vendor's exit (a repeat while it runs changes nothing).
    StartExit { vendor: VendorId, now_unix_ms: u64 },
    /// Cancels an exit that has not completed.
    CancelExit { vendor: VendorId, now_unix_ms: u64 },
    /// Sheds `bytes` of what the vendor holds, at once.
    Relieve {
        vendor: VendorId,
        bytes: u64,
        now_unix_ms: u64,
    },
    /// The leader completes the exits and reliefs whose conditions hold.
    Settle { now_unix_ms: u64 },
}

impl Departure {
    pub(super) fn restamp(&mut self, now: u64) {
        match self {
            Departure::StartExit { now_unix_ms, .. }
            | Departure::CancelExit { now_unix_ms, .. }
            | Departure::Relieve { now_unix_ms, .. }
            | Departure::Settle { now_unix_ms } => *now_unix_ms = now,
        }
    }
}

/// An exit's progress, for status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitProgress {
    pub started_unix_ms: u64,
    pub completed_unix_ms: Option<u64>,
    pub portions_at_start: u64,
    pub bytes_at_start: u64,
    /// Portions (and their bytes) the FAT still places on the vendor.
    pub portions_left: u64,
    pub bytes_left: u64,
    /// Deletions the vendor still owes (copies already replaced).
    pub deletions_left: u64,
}

/// A relief's progress, for status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReliefProgress {
    pub asked_bytes: u64,
    pub goal_bytes: u64,
    pub started_unix_ms: u64,
    pub done_unix_ms: Option<u64>,
    /// Bytes still to move before the vendor holds at most its goal.
    pub bytes_left: u64,
}

/// Where a vendor stands in leaving or shrinking.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepartureStatus {
    pub exit: Option<ExitProgress>,
    pub relief: Option<ReliefProgress>,
}

/// What `Settle` completed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settled {
    pub exits: Vec<VendorId>,
    pub reliefs: Vec<VendorId>,
}

impl Fat {
    /// Whether the vendor's exit has started (completed or not).
    pub(crate) fn exiting(&self, vendor: &VendorId) -> bool {
        self.departures.exits.contains_key(vendor)
    }

    /// Whether the vendor completed its exit.
    pub fn exited(&self, vendor: &VendorId) -> bool {
        self.departures
            .exits
            .get(vendor)
            .is_some_and(|e| e.completed_unix_ms.is_some())
    }

    /// The goal of a relief still under way.
    pub(crate) fn relief_goal(&self, vendor: &VendorId) -> Option<u64> {
        self.departures
            .reliefs
            .get(vendor)
            .filter(|r| r.done_unix_ms.is_none())
            .map(|r| r.goal_bytes)
    }

    /// Whether the vendor may take new placements and repair copies: in
    /// good standing, not exiting, and not being relieved.
    pub(crate) fn takes_new_data(&self, vendor: &VendorId) -> bool {
        self.in_good_standing(vendor) && !self.exiting(vendor) && self.relief_goal(vendor).is_none()
    }

    /// How many portions the catalog places on `vendor`.
    pub fn portions_on(&self, vendor: &VendorId) -> u64 {
        self.placed_on(vendor).0
    }

    /// The portions (and their bytes) the catalog places on `vendor`.
    fn placed_on(&self, vendor: &VendorId) -> (u64, u64) {
        self.portions
            .values()
            .flat_map(|held| held.values())
            .filter(|r| r.vendors.contains(vendor))
            .fold((0, 0), |(n, bytes), r| {
                (n + 1, bytes.saturating_add(r.size))
            })
    }

    fn owed_deletions(&self, vendor: &VendorId) -> u64 {
        self.deletions.get(vendor).map_or(0, |q| q.len() as u64)
    }

    fn in_a_repair(&self, vendor: &VendorId) -> bool {
        self.repairs
            .values()
            .any(|r| &r.source == vendor || &r.target == vendor || &r.replaces == vendor)
    }

    /// Where `vendor` stands in an exit or a relief.
    pub fn departure_status(&self, vendor: &VendorId) -> DepartureStatus {
        let exit = self.departures.exits.get(vendor).map(|e| {
            let (portions_left, bytes_left) = self.placed_on(vendor);
            ExitProgress {
                started_unix_ms: e.started_unix_ms,
                completed_unix_ms: e.completed_unix_ms,
                portions_at_start: e.portions_at_start,
                bytes_at_start: e.bytes_at_start,
                portions_left,
                bytes_left,
                deletions_left: self.owed_deletions(vendor),
            }
        });
        let relief = self.departures.reliefs.get(vendor).map(|r| ReliefProgress {
            asked_bytes: r.asked_bytes,
            goal_bytes: r.goal_bytes,
            started_unix_ms: r.started_unix_ms,
            done_unix_ms: r.done_unix_ms,
            bytes_left: match r.done_unix_ms {
                Some(_) => 0,
                None => self.committed_on(vendor).saturating_sub(r.goal_bytes),
            },
        });
        DepartureStatus { exit, relief }
    }

    /// The exit or relief `Settle` would complete at once, if any: what the
    /// leader checks before proposing it.
    pub fn settle_due(&self) -> bool {
        let settled = self.settleable();
        !settled.exits.is_empty() || !settled.reliefs.is_empty()
    }

    fn settleable(&self) -> Settled {
        let quiet = |v: &VendorId| self.owed_deletions(v) == 0 && !self.in_a_repair(v);
        let exits = self
            .departures
            .exits
            .iter()
            .filter(|(v, e)| e.completed_unix_ms.is_none() && quiet(v) && self.placed_on(v).0 == 0)
            .map(|(v, _)| v.clone())
            .collect();
        let reliefs = self
            .departures
            .reliefs
            .iter()
            .filter(|(v, r)| {
                r.done_unix_ms.is_none() && quiet(v) && self.committed_on(v) <= r.goal_bytes
            })
            .map(|(v, _)| v.clone())
            .collect();
        Settled { exits, reliefs }
    }

    fn check_registered(&self, vendor: &VendorId) -> Result<(), FatError> {
        match self.vendors.contains_key(vendor) {
            true => Ok(()),
            false => Err(FatError::NotFound(format!(
                "vendor {vendor} is not registered; start its agent (`offsite-vendor run`) first"
            ))),
        }
    }

    /// Checks a departure command without changing anything.
    pub(super) fn check_departure(&self, d: &Departure) -> Result<(), FatError> {
        match d {
            Departure::StartExit { vendor, .. } => {
                self.check_registered(vendor)?;
                match self.departures.exits.get(vendor) {
                    Some(Exit {
                        completed_unix_ms: Some(at),
                        ..
                    }) => Err(FatError::Conflict(format!(
                        "vendor {vendor} completed its exit at {at} (Unix ms); it holds nothing \
                         the FAT needs and may purge its data (`offsite-vendor exit --purge`)"
                    ))),
                    _ => Ok(()),
                }
            }
            Departure::CancelExit { vendor, .. } => {
                self.check_registered(vendor)?;
                match self.departures.exits.get(vendor) {
                    None => Err(FatError::NotFound(format!(
                        "vendor {vendor} is not exiting, so there is no exit to cancel"
                    ))),
                    Some(Exit {
                        completed_unix_ms: Some(at),
                        ..
                    }) => Err(FatError::Conflict(format!(
                        "vendor {vendor} completed its exit at {at} (Unix ms); a completed exit \
                         cannot be cancelled: to offer storage again, register under a new \
                         vendor_id with a new certificate"
                    ))),
                    Some(_) => Ok(()),
                }
            }
            Departure::Relieve { vendor, bytes, .. } => {
                self.check_registered(vendor)?;
                if self.exiting(vendor) {
                    return Err(FatError::Conflict(format!(
                        "vendor {vendor} is exiting: everything it holds is moving already; \
                         cancel the exit (`offsite-vendor exit --cancel`) to ask for relief instead"
                    )));
                }
                let held = self.committed_on(vendor);
                if *bytes == 0 || *bytes > held {
                    return Err(FatError::invalid(format!(
                        "relief of {bytes} bytes asked, but vendor {vendor} holds {held} bytes of \
                         committed copies; ask for 1 to {held} bytes"
                    )));
                }
                Ok(())
            }
            Departure::Settle { .. } => Ok(()),
        }
    }

    pub(super) fn depart(&mut self, d: Departure) -> Result<Outcome, FatError> {
        self.check_departure(&d)?;
        match d {
            Departure::StartExit {
                vendor,
                now_unix_ms,
            } => {
                if !self.departures.exits.contains_key(&vendor) {
                    let (portions, bytes) = self.placed_on(&vendor);
                    // An exit moves everything; a relief under way is part of it.
                    self.departures.reliefs.remove(&vendor);
                    self.departures.exits.insert(
                        vendor.clone(),
                        Exit {
                            started_unix_ms: now_unix_ms,
                            portions_at_start: portions,
                            bytes_at_start: bytes,
                            completed_unix_ms: None,
                        },
                    );
                }
                Ok(Outcome::Departure(self.departure_status(&vendor)))
            }
            Departure::CancelExit { vendor, .. } => {
                self.departures.exits.remove(&vendor);
                Ok(Outcome::Departure(self.departure_status(&vendor)))
            }
            Departure::Relieve {
                vendor,
                bytes,
                now_unix_ms,
            } => {
                let goal_bytes = self.committed_on(&vendor).saturating_sub(bytes);
                self.departures.reliefs.insert(
                    vendor.clone(),
                    Relief {
                        asked_bytes: bytes,
                        goal_bytes,
                        started_unix_ms: now_unix_ms,
                        done_unix_ms: None,
                    },
                );
                Ok(Outcome::Departure(self.departure_status(&vendor)))
            }
            Departure::Settle { now_unix_ms } => {
                let settled = self.settleable();
                for v in &settled.exits {
                    if let Some(e) = self.departures.exits.get_mut(v) {
                        e.completed_unix_ms = Some(now_unix_ms);
                    }
                }
                for v in &settled.reliefs {
                    if let Some(r) = self.departures.reliefs.get_mut(v) {
                        r.done_unix_ms = Some(now_unix_ms);
                    }
                }
                Ok(Outcome::Settled(settled))
            }
        }
    }

    /// A vendor that completed its exit may not register again under its id.
    pub(super) fn check_not_exited(&self, vendor: &VendorId) -> Result<(), FatError> {
        match self
            .departures
            .exits
            .get(vendor)
            .and_then(|e| e.completed_unix_ms)
        {
            Some(at) => Err(FatError::Conflict(format!(
                "vendor {vendor} completed its exit at {at} (Unix ms) and cannot register again \
                 under this id; purge its data (`offsite-vendor exit --purge`) and register under \
                 a new vendor_id with a new certificate"
            ))),
            None => Ok(()),
        }
    }
}
