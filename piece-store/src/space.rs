//! Capacity of a piece directory: what the filesystem holding it can still
//! take, bounded by an optional configured cap.
//! `capacity = min(cap, used + filesystem available)`, `free = capacity - used`.

use std::path::Path;

use crate::PieceError;

/// Room of a piece directory, in bytes of piece data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// `min(cap, used + filesystem available)`.
    pub capacity_bytes: u64,
    /// Bytes of piece data held.
    pub used_bytes: u64,
    /// `capacity - used`.
    pub free_bytes: u64,
}

/// Size of the filesystem holding a piece directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSpace {
    pub total_bytes: u64,
    /// Bytes an unprivileged writer can still use.
    pub available_bytes: u64,
}

/// Measures the filesystem holding `path`.
pub(crate) fn filesystem(path: &Path) -> Result<FsSpace, PieceError> {
    let stats = fs4::statvfs(path).map_err(PieceError::io(path))?;
    Ok(FsSpace {
        total_bytes: stats.total_space(),
        available_bytes: stats.available_space(),
    })
}

/// Combines the cap, what is held and what the filesystem has left.
pub(crate) fn capacity(cap: Option<u64>, used: u64, available: u64) -> Capacity {
    let capacity = used.saturating_add(available).min(cap.unwrap_or(u64::MAX));
    Capacity {
        capacity_bytes: capacity,
        used_bytes: used,
        free_bytes: capacity.saturating_sub(used),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_bounds_capacity() {
        let c = capacity(Some(100), 30, 1_000);
        assert_eq!(
            (c.capacity_bytes, c.used_bytes, c.free_bytes),
            (100, 30, 70)
        );
    }

    #[test]
    fn filesystem_bounds_capacity() {
        let c = capacity(Some(1_000), 30, 50);
        assert_eq!((c.capacity_bytes, c.free_bytes), (80, 50));
        let c = capacity(None, 30, 50);
        assert_eq!((c.capacity_bytes, c.free_bytes), (80, 50));
    }

    #[test]
    fn cap_below_used_leaves_nothing_free() {
        let c = capacity(Some(10), 30, 50);
        assert_eq!((c.capacity_bytes, c.free_bytes), (10, 0));
    }
}
