//! One `offsite-nas` on its own, for tests of a single NAS device (e.g. the
//! vendor crate's piece-store suite run through its gRPC client).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use crate::bins;
use crate::configs::{write_toml, NasConfig};
use crate::ports::free_addr;
use crate::process::Daemon;
use offsite_identity::Role;

use crate::rpc::{self, Rpc};

/// A running NAS device; dropping it stops the process.
#[derive(Debug)]
pub struct NasDevice {
    daemon: Daemon,
    address: SocketAddr,
    data_dir: PathBuf,
    rpc: Rpc,
}

/// The vendor a lone NAS device serves.
pub const NAS_VENDOR: &str = "vendor-1";
/// The lone NAS device's certificate name.
pub const NAS_NAME: &str = "nas-1";

impl NasDevice {
    /// Writes `dir/nas.toml` (a device of vendor [`NAS_VENDOR`], with a
    /// CA and certificates in `dir/pki`), starts `offsite-nas` and waits
    /// (bounded) until it answers `Nas.Capacity`.
    pub fn start(dir: &Path, cap_bytes: Option<u64>) -> Result<NasDevice> {
        let rpc = Rpc::open(&rpc::pki_dir(dir))?;
        let config = NasConfig {
            listen: free_addr()?,
            data_dir: dir.join("data"),
            cap_bytes,
            allowed_vendor: NAS_VENDOR.into(),
            tls: rpc.tls(Role::Nas, NAS_NAME)?,
        };
        let path = dir.join("nas.toml");
        write_toml(&path, &config)?;
        let binary = bins::binary(bins::NAS)?;
        let mut daemon = Daemon::new("nas".into(), binary, path, dir.join("log"), false);
        daemon.start()?;
        let mut device = NasDevice {
            daemon,
            address: config.listen,
            data_dir: config.data_dir,
            rpc,
        };
        let runtime = rpc::runtime()?;
        crate::wait_for("the NAS device to answer", Duration::from_secs(30), || {
            if let Some(status) = device.daemon.exited() {
                anyhow::bail!(
                    "offsite-nas exited early ({status}):\n{}",
                    device.daemon.log_tail(30)
                );
            }
            let asked = device.rpc.nas_capacity(device.address, NAS_VENDOR);
            Ok(runtime.block_on(asked).ok())
        })?;
        Ok(device)
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The certificates of the device's marketplace (its vendor's among them).
    pub fn rpc(&self) -> &Rpc {
        &self.rpc
    }

    /// The tail of the device's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        self.daemon.log_tail(lines)
    }
}
