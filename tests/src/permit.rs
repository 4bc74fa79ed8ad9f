//! A process-wide limit on how many devnets run at once (default 2, or
//! `OFFSITE_TEST_DEVNETS`), so parallel test threads do not overload a small
//! machine: a devnet start waits for a permit and holds it until it stops.

use std::sync::{Condvar, Mutex};

static RUNNING: Mutex<usize> = Mutex::new(0);
static FREED: Condvar = Condvar::new();

fn limit() -> usize {
    std::env::var("OFFSITE_TEST_DEVNETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(2)
}

/// Held while a devnet runs; dropping it lets the next one start.
#[derive(Debug)]
pub struct Permit(());

impl Permit {
    /// Waits until fewer than the limit of devnets run.
    pub fn acquire() -> Permit {
        let limit = limit();
        let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        while *running >= limit {
            running = FREED.wait(running).unwrap_or_else(|e| e.into_inner());
        }
        *running += 1;
        Permit(())
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        *running = running.saturating_sub(1);
        FREED.notify_one();
    }
}
