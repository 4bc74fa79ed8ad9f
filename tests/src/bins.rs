//! Finds the Offsite binaries the harness starts: `OFFSITE_BIN_DIR` if set,
//! else the directory of the running executable, else its parent (test
//! executables live in `target/debug/deps`, `offsite-devnet` in `target/debug`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The coordinator daemon.
pub const COORDINATOR: &str = "offsite-coordinator";
/// The vendor agent.
pub const VENDOR: &str = "offsite-vendor";
/// The NAS device daemon.
pub const NAS: &str = "offsite-nas";
/// The backup client.
pub const CLIENT: &str = "offsite";
/// The local marketplace launcher.
pub const DEVNET: &str = "offsite-devnet";

/// The full path of binary `name`, or an error that says how to build it.
pub fn binary(name: &str) -> Result<PathBuf> {
    let dirs = search_dirs()?;
    for dir in &dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    let shown: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let shown = shown.join(" or ");
    bail!("{name} not found in {shown}; run `cargo build --bins` first")
}

/// Where binaries are looked for, in order.
fn search_dirs() -> Result<Vec<PathBuf>> {
    if let Some(dir) = std::env::var_os("OFFSITE_BIN_DIR") {
        return Ok(vec![PathBuf::from(dir)]);
    }
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    let mut dirs = Vec::new();
    if let Some(dir) = exe.parent() {
        dirs.push(dir.to_path_buf());
        if let Some(parent) = dir.parent().filter(|p| p != &Path::new("")) {
            dirs.push(parent.to_path_buf());
        }
    }
    Ok(dirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_names_the_fix() {
        let err = binary("offsite-no-such-binary").unwrap_err().to_string();
        assert!(err.contains("offsite-no-such-binary not found in"), "{err}");
        assert!(err.contains("cargo build --bins"), "{err}");
    }
}
