//! The Offsite test harness: a [`Devnet`] (a local marketplace of the real
//! binaries: coordinator, vendor agents and their NAS devices) started from
//! configs it writes, the client run against it, fault injection (kill, stop,
//! restart, pause any process; partition those a devnet runs in network
//! namespaces), a coordinator group in network namespaces for partitions
//! ([`netns`]), the nemesis, and a generator and comparer of source trees
//! for backups and restores.
//!
//! ```no_run
//! use offsite_tests::{Devnet, DevnetOptions};
//! let dir = tempfile::tempdir()?;
//! let devnet = Devnet::start(dir.path(), DevnetOptions::default())?;
//! devnet.client_ok(["init"])?;
//! # anyhow::Ok(())
//! ```

mod bins;
pub mod checks;
mod client;
mod configs;
mod devnet;
mod nas;
pub mod nemesis;
pub mod netns;
mod permit;
mod ports;
mod process;
pub mod rpc;
mod state;
pub mod tree;

use std::time::{Duration, Instant};

pub use bins::{binary, CLIENT, COORDINATOR, DEVNET, NAS, VENDOR};
pub use client::{client_command_with, describe, run_bounded, KillOnDrop, CLIENT_TIMEOUT};
pub use configs::{
    write_toml, ClientConfig, CoordinatorConfig, MemberConfig, NasConfig, StoreConfig, VendorConfig,
};
pub use devnet::{
    vendor_command, Devnet, DevnetOptions, VendorWaits, FAST_SCRUB_PERIOD_SECS,
    HUNG_CLIENT_STALL_SECS, VENDOR_CLI_TIMEOUT,
};
pub use nas::{NasDevice, NAS_NAME, NAS_VENDOR};
pub use ports::free_addr;
pub use process::{log_tail, pid_is_ours, stop_pids, Daemon, Paused, STOP_GRACE};
pub use state::{DevnetState, ProcessState, VendorState, STATE_FILE};

/// Polls `check` every 100 ms until it yields a value, for at most `timeout`.
/// The error names `what` and the last error `check` returned.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        match check() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last = Some(e),
        }
        if Instant::now() >= deadline {
            return Err(match last {
                Some(e) => e.context(format!("gave up waiting for {what} after {timeout:?}")),
                None => anyhow::anyhow!("gave up waiting for {what} after {timeout:?}"),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
