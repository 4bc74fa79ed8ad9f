//! Wall-clock time in Unix milliseconds, the unit of every time on the wire
//! (grant expiry, leases, snapshot times). Daemons read it here and stamp it
//! into commands; the FAT never reads a clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch; 0 for a clock set before 1970, and
/// `u64::MAX` past the year 584 million.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_clock_is_after_2026_and_moves_forward() {
        let a = super::now_unix_ms();
        assert!(a > 1_764_000_000_000, "{a}");
        assert!(super::now_unix_ms() >= a);
    }
}
