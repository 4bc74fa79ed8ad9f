//! Which coordinators this one has heard from lately: every successful Raft
//! call to a peer, and every Raft call from one, marks it reachable. Used
//! only to explain a lost quorum ("1 of 3 coordinators reachable").

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::NodeId;

/// When each peer was last heard from.
#[derive(Debug, Default)]
pub struct Health {
    seen: Mutex<HashMap<NodeId, Instant>>,
}

impl Health {
    /// Records that `node` answered or called just now.
    pub fn heard(&self, node: NodeId) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.insert(node, Instant::now());
    }

    /// Whether `node` was heard from within `window`.
    pub fn recent(&self, node: NodeId, window: Duration) -> bool {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.get(&node).is_some_and(|at| at.elapsed() <= window)
    }
}
