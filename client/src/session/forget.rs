//! `forget` and its retention policy: which snapshots to keep. Snapshots are
//! grouped by host and paths; within a group, newest first, a snapshot is kept
//! when it is one of the last N (`--keep-last`), the newest of one of the last
//! N hours / days / weeks / months / years that have a snapshot, younger than
//! `--keep-within` (relative to the group's newest snapshot), or carries a tag
//! of `--keep-tag`. Every other snapshot of the group is forgotten. Times are
//! UTC. An empty policy keeps everything (forget needs at least one rule).
//! The command forgets the others at the coordinator group, never offline.

use std::collections::{BTreeMap, HashSet};

use offsite_proto::{SnapshotId, SnapshotRecord};

use super::{has_tags, Session, SessionError};

/// A time-bucket rule: how many buckets, its name, and a time's bucket.
type Bucket = (Option<u32>, &'static str, fn(u64) -> i64);

/// How many snapshots each rule keeps; `None` when the rule is not given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub last: Option<u32>,
    pub hourly: Option<u32>,
    pub daily: Option<u32>,
    pub weekly: Option<u32>,
    pub monthly: Option<u32>,
    pub yearly: Option<u32>,
    /// Keep snapshots this many milliseconds younger than the group's newest.
    pub within_ms: Option<u64>,
    pub tags: Vec<String>,
}

/// One snapshot's fate, with the rules that keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub snapshot: SnapshotRecord,
    pub keep: bool,
    pub reasons: Vec<&'static str>,
}

/// A `--keep-within` duration that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("duration {0:?} is not like 2y5m7d3h (y, m = 30 d, w, d, h)")]
pub struct DurationError(String);

impl Policy {
    /// True when no rule is given.
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }

    /// Decides every snapshot; the result is sorted like the input.
    pub fn apply(&self, snapshots: &[SnapshotRecord]) -> Vec<Decision> {
        let mut groups: BTreeMap<(String, Vec<String>), Vec<&SnapshotRecord>> = BTreeMap::new();
        for s in snapshots {
            let mut paths = s.paths.clone();
            paths.sort();
            groups.entry((s.host.clone(), paths)).or_default().push(s);
        }
        let mut decided: BTreeMap<offsite_proto::SnapshotId, Decision> = BTreeMap::new();
        for (_, mut group) in groups {
            group.sort_by_key(|s| std::cmp::Reverse((s.time_unix_ms, s.id)));
            for decision in self.apply_group(&group) {
                decided.insert(decision.snapshot.id, decision);
            }
        }
        snapshots
            .iter()
            .filter_map(|s| decided.remove(&s.id))
            .collect()
    }

    /// `group` is newest first.
    fn apply_group(&self, group: &[&SnapshotRecord]) -> Vec<Decision> {
        let mut reasons: Vec<Vec<&'static str>> = vec![Vec::new(); group.len()];
        if self.is_empty() {
            for r in &mut reasons {
                r.push("no policy");
            }
        }
        if let Some(n) = self.last {
            for r in reasons.iter_mut().take(n as usize) {
                r.push("last");
            }
        }
        let buckets: [Bucket; 5] = [
            (self.hourly, "hourly", |t| (t / 3_600_000) as i64),
            (self.daily, "daily", |t| (t / 86_400_000) as i64),
            (self.weekly, "weekly", week),
            (self.monthly, "monthly", |t| month(t).0),
            (self.yearly, "yearly", |t| month(t).1),
        ];
        for (count, name, bucket) in buckets {
            let Some(count) = count else { continue };
            let mut seen = HashSet::new();
            for (i, s) in group.iter().enumerate() {
                if seen.len() >= count as usize {
                    break;
                }
                if seen.insert(bucket(s.time_unix_ms)) {
                    reasons[i].push(name);
                }
            }
        }
        if let (Some(within), Some(newest)) = (self.within_ms, group.first()) {
            for (i, s) in group.iter().enumerate() {
                if newest.time_unix_ms.saturating_sub(s.time_unix_ms) < within {
                    reasons[i].push("within");
                }
            }
        }
        for (i, s) in group.iter().enumerate() {
            if s.tags.iter().any(|t| self.tags.contains(t)) {
                reasons[i].push("tag");
            }
        }
        group
            .iter()
            .zip(reasons)
            .map(|(s, reasons)| Decision {
                snapshot: (*s).clone(),
                keep: !reasons.is_empty(),
                reasons,
            })
            .collect()
    }
}

/// Days since the epoch to (year, month 1-12), proleptic Gregorian, UTC.
fn civil(days: i64) -> (i64, i64) {
    let (y, m, _) = crate::calendar::civil_from_days(days);
    (y, i64::from(m))
}

/// (months since year 0, year) of a time.
fn month(unix_ms: u64) -> (i64, i64) {
    let (y, m) = civil((unix_ms / 86_400_000) as i64);
    (y * 12 + m, y)
}

/// ISO-like week number: weeks since the Monday before the epoch.
fn week(unix_ms: u64) -> i64 {
    // 1970-01-01 was a Thursday; shift so weeks start on Monday.
    ((unix_ms / 86_400_000) as i64 + 3).div_euclid(7)
}

/// Parses `2y5m7d3h`-style durations (y = 365 d, m = 30 d, w = 7 d) into ms.
pub fn parse_duration(text: &str) -> Result<u64, DurationError> {
    let err = || DurationError(text.to_string());
    if text.is_empty() || text.len() > 64 {
        return Err(err());
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let hours: u64 = match c {
            'y' => 365 * 24,
            'm' => 30 * 24,
            'w' => 7 * 24,
            'd' => 24,
            'h' => 1,
            _ => return Err(err()),
        };
        let n: u64 = number.parse().map_err(|_| err())?;
        number.clear();
        total = n
            .checked_mul(hours * 3_600_000)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(err)?;
    }
    if !number.is_empty() {
        return Err(err());
    }
    Ok(total)
}

impl Session {
    /// Applies a retention policy to the snapshots carrying every tag of
    /// `tags`; unless `dry_run`, forgets those it does not keep.
    pub async fn forget(
        &self,
        policy: &Policy,
        tags: &[String],
        dry_run: bool,
    ) -> Result<Vec<Decision>, SessionError> {
        if policy.is_empty() {
            return Err(SessionError::EmptyPolicy);
        }
        let list: Vec<SnapshotRecord> = self
            .snapshots()
            .await?
            .into_iter()
            .filter(|s| has_tags(s, tags))
            .collect();
        let decisions = policy.apply(&list);
        if !dry_run {
            let forgotten: Vec<SnapshotId> = decisions
                .iter()
                .filter(|d| !d.keep)
                .map(|d| d.snapshot.id)
                .collect();
            self.cached.forget(&forgotten).await?;
        }
        Ok(decisions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use offsite_proto::{BlobLocation, PortionId, SnapshotId};

    const HOUR: u64 = 3_600_000;
    const DAY: u64 = 24 * HOUR;
    /// 2024-01-01T00:00:00Z, a Monday.
    const T0: u64 = 1_704_067_200_000;

    fn snap(time: u64, host: &str, tags: &[&str]) -> SnapshotRecord {
        SnapshotRecord {
            id: SnapshotId::random(),
            host: host.into(),
            time_unix_ms: time,
            paths: vec!["/data".into()],
            tags: tags.iter().map(|t| t.to_string()).collect(),
            manifest: BlobLocation {
                portion: PortionId::random(),
                offset: 8,
                length: 1,
            },
            portions: vec![],
            logical_bytes: 0,
            file_count: 0,
        }
    }

    fn kept(policy: &Policy, snaps: &[SnapshotRecord]) -> Vec<u64> {
        let mut times: Vec<u64> = policy
            .apply(snaps)
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| (d.snapshot.time_unix_ms - T0) / HOUR)
            .collect();
        times.sort();
        times
    }

    #[test]
    fn last_daily_and_within_pick_the_expected_snapshots() {
        // Every 6 hours for 10 days: hours 0, 6, ..., 234.
        let snaps: Vec<_> = (0..40).map(|i| snap(T0 + i * 6 * HOUR, "h", &[])).collect();
        let last = Policy {
            last: Some(3),
            ..Default::default()
        };
        assert_eq!(kept(&last, &snaps), vec![222, 228, 234]);
        let daily = Policy {
            daily: Some(2),
            ..Default::default()
        };
        assert_eq!(
            kept(&daily, &snaps),
            vec![210, 234],
            "newest of days 9 and 8"
        );
        let within = Policy {
            within_ms: Some(parse_duration("1d").unwrap()),
            ..Default::default()
        };
        assert_eq!(kept(&within, &snaps), vec![216, 222, 228, 234]);
        let weekly = Policy {
            weekly: Some(5),
            ..Default::default()
        };
        assert_eq!(
            kept(&weekly, &snaps),
            vec![162, 234],
            "two weeks have snapshots"
        );
        let all = Policy::default();
        assert_eq!(kept(&all, &snaps).len(), 40);
    }

    #[test]
    fn monthly_yearly_tags_and_groups() {
        let snaps = vec![
            snap(T0 - 40 * DAY, "h", &[]),       // 2023-11
            snap(T0 - 20 * DAY, "h", &[]),       // 2023-12
            snap(T0 - 10 * DAY, "h", &["keep"]), // 2023-12
            snap(T0 + DAY, "h", &[]),            // 2024-01
            snap(T0 + 2 * DAY, "other-host", &[]),
        ];
        let monthly = Policy {
            monthly: Some(2),
            ..Default::default()
        };
        let decisions = monthly.apply(&snaps);
        let keep: Vec<bool> = decisions.iter().map(|d| d.keep).collect();
        assert_eq!(keep, vec![false, false, true, true, true]);
        let yearly = Policy {
            yearly: Some(1),
            tags: vec!["keep".into()],
            ..Default::default()
        };
        let keep: Vec<bool> = yearly.apply(&snaps).iter().map(|d| d.keep).collect();
        assert_eq!(keep, vec![false, false, true, true, true]);
        assert_eq!(yearly.apply(&snaps)[2].reasons, vec!["tag"]);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("2h").unwrap(), 2 * HOUR);
        assert_eq!(
            parse_duration("1y1m1w1d").unwrap(),
            (365 + 30 + 7 + 1) * DAY
        );
        for bad in ["", "5", "d", "3x", "99999999999999999999y"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(civil(0), (1970, 1));
        assert_eq!(month(T0), (2024 * 12 + 1, 2024));
    }
}
