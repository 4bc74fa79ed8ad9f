//! Free ports for the daemons of a devnet, on 127.0.0.1 or another local
//! address. A port is found by binding port 0 and reading what the kernel
//! chose; a process-wide registry keeps two devnets of the same test binary
//! from being handed the same port.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Mutex;

use anyhow::{Context, Result};

static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A free `127.0.0.1:port`, never one this process handed out before.
pub fn free_addr() -> Result<SocketAddr> {
    free_addr_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// A free `ip:port` (`ip` one of this host's addresses), never a port this
/// process handed out before.
pub fn free_addr_on(ip: IpAddr) -> Result<SocketAddr> {
    for _ in 0..64 {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("cannot bind a port on {ip}"))?;
        let addr = listener
            .local_addr()
            .context("cannot read the bound port")?;
        let mut taken = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if taken.insert(addr.port()) {
            return Ok(addr);
        }
    }
    anyhow::bail!("no free port on {ip} after 64 tries")
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
