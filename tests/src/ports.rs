//! Free 127.0.0.1 ports for the daemons of a devnet. A port is found by binding
//! port 0 and reading what the kernel chose; a process-wide registry keeps two
//! devnets of the same test binary from being handed the same port.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;

use anyhow::{Context, Result};

static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A free `127.0.0.1:port`, never one this process handed out before.
pub fn free_addr() -> Result<SocketAddr> {
    for _ in 0..64 {
        let listener =
            TcpListener::bind("127.0.0.1:0").context("cannot bind a port on 127.0.0.1")?;
        let addr = listener
            .local_addr()
            .context("cannot read the bound port")?;
        let mut taken = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if taken.insert(addr.port()) {
            return Ok(addr);
        }
    }
    anyhow::bail!("no free port on 127.0.0.1 after 64 tries")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_on_loopback() {
        let a = free_addr().unwrap();
        let b = free_addr().unwrap();
        assert_ne!(a.port(), b.port());
        assert!(a.ip().is_loopback());
    }
}
