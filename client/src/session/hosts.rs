//! The view across hosts: which snapshots a host and a path have
//! (`snapshots --host --path`), every host with its latest backup (`hosts`),
//! `find`'s filters by host, time and size, the versions of one file or
//! folder across snapshots (`history`), and contents stored under more than
//! one host and path (`dups`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use offsite_proto::{SnapshotId, SnapshotRecord};

use super::restore::Selection;
use super::{has_tags, Session, SessionError};
use crate::format::keys::Keys;
use crate::session::forget::parse_duration;

/// Which snapshots a listing takes.
#[derive(Debug, Clone, Default)]
pub struct SnapshotFilter {
    /// Every one of these tags.
    pub tags: Vec<String>,
    pub host: Option<String>,
    /// A path the snapshot backed up, or one inside a path it backed up.
    pub path: Option<String>,
}

impl SnapshotFilter {
    pub fn matches(&self, record: &SnapshotRecord) -> bool {
        has_tags(record, &self.tags)
            && self.host.as_ref().is_none_or(|h| &record.host == h)
            && self.path.as_ref().is_none_or(|p| backs_up(record, p))
    }
}

/// True when `record` backed up `path` or a directory holding it.
fn backs_up(record: &SnapshotRecord, path: &str) -> bool {
    let path = Path::new(path.trim_end_matches('/'));
    record
        .paths
        .iter()
        .any(|p| path.starts_with(Path::new(p.trim_end_matches('/'))))
}

/// One host of the tenant and its latest backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSummary {
    pub host: String,
    pub snapshots: u64,
    pub latest: SnapshotId,
    pub latest_unix_ms: u64,
    pub logical_bytes: u64,
    pub file_count: u64,
    /// How long since its latest backup started, at `now`.
    pub since_ms: u64,
}

/// Every host among `records`, by name, with its latest snapshot.
pub fn hosts(records: &[SnapshotRecord], now_unix_ms: u64) -> Vec<HostSummary> {
    let mut by_host: BTreeMap<&str, HostSummary> = BTreeMap::new();
    for r in records {
        let entry = by_host.entry(&r.host).or_insert_with(|| HostSummary {
            host: r.host.clone(),
            snapshots: 0,
            latest: r.id,
            latest_unix_ms: r.time_unix_ms,
            logical_bytes: r.logical_bytes,
            file_count: r.file_count,
            since_ms: 0,
        });
        entry.snapshots += 1;
        if r.time_unix_ms >= entry.latest_unix_ms {
            entry.latest = r.id;
            entry.latest_unix_ms = r.time_unix_ms;
            entry.logical_bytes = r.logical_bytes;
            entry.file_count = r.file_count;
        }
    }
    by_host
        .into_values()
        .map(|mut h| {
            h.since_ms = now_unix_ms.saturating_sub(h.latest_unix_ms);
            h
        })
        .collect()
}

/// A `--size` test, as `find(1)` writes it: `+10M` (more than), `-4k`
/// (less than), `100` (exactly); suffixes k, M, G, T (powers of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeTest {
    Above(u64),
    Below(u64),
    Exactly(u64),
}

impl SizeTest {
    pub fn parse(text: &str) -> Result<Self, SessionError> {
        let bad = || {
            SessionError::Invalid(format!(
                "--size {text:?} is not a size: write +10M (more than), -4k (less than) or 100 \
                 (exactly), with k, M, G or T for powers of 1024"
            ))
        };
        let (kind, rest) = match text.as_bytes().first() {
            Some(b'+') => (1, &text[1..]),
            Some(b'-') => (-1, &text[1..]),
            _ => (0, text),
        };
        let (digits, unit) = match rest.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
            Some((i, _)) => rest.split_at(i),
            None => (rest, ""),
        };
        let shift = match unit {
            "" => 0,
            "k" | "K" => 10,
            "M" => 20,
            "G" => 30,
            "T" => 40,
            _ => return Err(bad()),
        };
        let number: u64 = digits.parse().map_err(|_| bad())?;
        let bytes = number.checked_mul(1 << shift).ok_or_else(bad)?;
        Ok(match kind {
            1 => SizeTest::Above(bytes),
            -1 => SizeTest::Below(bytes),
            _ => SizeTest::Exactly(bytes),
        })
    }

    pub fn admits(&self, size: u64) -> bool {
        match *self {
            SizeTest::Above(n) => size > n,
            SizeTest::Below(n) => size < n,
            SizeTest::Exactly(n) => size == n,
        }
    }
}

/// A point in time from `--newer`/`--older`: a duration back from `now`
/// (`7d`, `1y2m`) or a date (`2026-11-30`, midnight UTC); Unix seconds.
pub fn parse_when(text: &str, now_unix_ms: u64) -> Result<i64, SessionError> {
    if let Ok(ms) = parse_duration(text) {
        return Ok((now_unix_ms.saturating_sub(ms) / 1000) as i64);
    }
    let parts: Vec<&str> = text.split('-').collect();
    let date = match parts.as_slice() {
        [y, m, d] if y.len() == 4 && m.len() == 2 && d.len() == 2 => {
            match (y.parse::<i64>(), m.parse::<u32>(), d.parse::<u32>()) {
                (Ok(y), Ok(m @ 1..=12), Ok(d @ 1..=31)) => {
                    Some(crate::calendar::days_from_civil(y, m, d) * 86_400)
                }
                _ => None,
            }
        }
        _ => None,
    };
    date.ok_or_else(|| {
        SessionError::Invalid(format!(
            "{text:?} is neither a duration (7d, 1y2m, 12h) nor a date (2026-11-30)"
        ))
    })
}

/// Which entries `find` keeps besides its pattern.
#[derive(Debug, Clone, Default)]
pub struct FindFilter {
    pub snapshots: SnapshotFilter,
    /// Modified after / before these Unix seconds.
    pub newer: Option<i64>,
    pub older: Option<i64>,
    pub size: Option<SizeTest>,
}

impl FindFilter {
    pub fn admits(&self, size: u64, mtime_unix: i64) -> bool {
        self.newer.is_none_or(|t| mtime_unix > t)
            && self.older.is_none_or(|t| mtime_unix < t)
            && self.size.is_none_or(|s| s.admits(size))
    }
}

/// One version of a file or folder: its content in one or more snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub kind: &'static str,
    /// blake3 over the content ids (a folder: over every entry's path, kind
    /// and content), hex: equal ids, equal contents.
    pub content_id: String,
    pub size: u64,
    pub mtime_unix: i64,
    /// The first snapshot that has it, and when it was taken.
    pub first_seen_unix_ms: u64,
    pub snapshots: Vec<SnapshotId>,
}

impl Session {
    /// Every version of the file or folder at `path` (as `ls` shows it, or
    /// the absolute path backed up) across the snapshots `filter` takes,
    /// oldest first; snapshots without it are skipped.
    pub async fn history(
        &self,
        keys: &Keys,
        path: &str,
        filter: &SnapshotFilter,
    ) -> Result<Vec<Version>, SessionError> {
        let mut records: Vec<SnapshotRecord> = self
            .snapshots()
            .await?
            .into_iter()
            .filter(|r| filter.matches(r))
            .collect();
        records.sort_by_key(|r| r.time_unix_ms);
        let mut versions: Vec<Version> = Vec::new();
        for record in records {
            let selection = Selection::new(path, &record.paths, &[], &[])
                .map_err(super::restore::RestoreError::from)?;
            let listing = self.listing(keys, &record).await?;
            let Some(plan) = listing.subtree(&selection.subtree) else {
                continue;
            };
            let seen = version_of(&plan, &record);
            match versions
                .iter_mut()
                .find(|v| v.content_id == seen.content_id)
            {
                Some(v) => v.snapshots.push(record.id),
                None => versions.push(seen),
            }
        }
        Ok(versions)
    }
}

/// What `plan` (of one file or one folder) holds, as a version first seen
/// in `record`.
fn version_of(plan: &super::restore::Plan, record: &SnapshotRecord) -> Version {
    let mut hasher = blake3::Hasher::new();
    let (kind, size, mtime) = if plan.single_entry {
        match (plan.files.first(), plan.links.first()) {
            (Some(f), _) => {
                hasher.update(&f.digest);
                ("file", f.size, f.mtime.0)
            }
            (None, Some(l)) => {
                hasher.update(&l.target);
                ("symlink", 0, l.mtime.0)
            }
            (None, None) => ("file", 0, 0),
        }
    } else {
        let mut lines: Vec<(PathBuf, &'static str, Vec<u8>)> = Vec::new();
        lines.extend(
            plan.dirs
                .iter()
                .map(|d| (d.path.clone(), "dir", Vec::new())),
        );
        lines.extend(
            plan.files
                .iter()
                .map(|f| (f.path.clone(), "file", f.digest.to_vec())),
        );
        lines.extend(
            plan.links
                .iter()
                .map(|l| (l.path.clone(), "symlink", l.target.clone())),
        );
        lines.sort();
        for (path, kind, content) in &lines {
            hasher.update(path.as_os_str().as_encoded_bytes());
            hasher.update(&[0]);
            hasher.update(kind.as_bytes());
            hasher.update(&(content.len() as u64).to_le_bytes());
            hasher.update(content);
        }
        ("dir", plan.bytes, 0)
    };
    Version {
        kind,
        content_id: hasher.finalize().to_hex().to_string(),
        size,
        mtime_unix: mtime,
        first_seen_unix_ms: record.time_unix_ms,
        snapshots: vec![record.id],
    }
}

/// One content stored under more than one (host, path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// blake3 over the file's chunk ids, hex.
    pub content_id: String,
    pub size: u64,
    /// Every (host, path) that holds it, sorted.
    pub places: Vec<(String, String)>,
}

impl Duplicate {
    /// What deduplication saved: every copy but one.
    pub fn bytes_saved(&self) -> u64 {
        self.size
            .saturating_mul(self.places.len().saturating_sub(1) as u64)
    }
}

/// Files of `found` (host, path, size, digest) whose content is under
/// more than one (host, path), the most bytes saved first.
pub fn duplicates(
    found: impl IntoIterator<Item = (String, String, u64, [u8; 32])>,
) -> Vec<Duplicate> {
    type Places = std::collections::BTreeSet<(String, String)>;
    let mut by_content: BTreeMap<[u8; 32], (u64, Places)> = BTreeMap::new();
    for (host, path, size, digest) in found {
        if size == 0 {
            continue;
        }
        let entry = by_content.entry(digest).or_default();
        entry.0 = size;
        entry.1.insert((host, path));
    }
    let mut dups: Vec<Duplicate> = by_content
        .into_iter()
        .filter(|(_, (_, places))| places.len() > 1)
        .map(|(digest, (size, places))| Duplicate {
            content_id: hex::encode(digest),
            size,
            places: places.into_iter().collect(),
        })
        .collect();
    dups.sort_by(|a, b| {
        b.bytes_saved()
            .cmp(&a.bytes_saved())
            .then_with(|| a.content_id.cmp(&b.content_id))
    });
    dups
}

impl Session {
    /// Contents stored under more than one host and path, over every
    /// snapshot `filter` takes.
    pub async fn dups(
        &self,
        keys: &Keys,
        filter: &SnapshotFilter,
    ) -> Result<Vec<Duplicate>, SessionError> {
        let records: Vec<SnapshotRecord> = self
            .snapshots()
            .await?
            .into_iter()
            .filter(|r| filter.matches(r))
            .collect();
        let mut found = Vec::new();
        for record in records {
            let plan = self.listing(keys, &record).await?;
            found.extend(plan.files.iter().map(|f| {
                let path = f.path.to_string_lossy().into_owned();
                (record.host.clone(), path, f.size, f.digest)
            }));
        }
        Ok(duplicates(found))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use offsite_proto::{BlobLocation, PortionId};

    fn record(host: &str, time: u64, paths: &[&str]) -> SnapshotRecord {
        SnapshotRecord {
            id: SnapshotId::random(),
            host: host.into(),
            time_unix_ms: time,
            paths: paths.iter().map(|p| p.to_string()).collect(),
            tags: Vec::new(),
            manifest: BlobLocation {
                portion: PortionId::from_bytes([0; 16]),
                offset: 0,
                length: 0,
            },
            portions: Vec::new(),
            logical_bytes: time,
            file_count: 1,
        }
    }

    #[test]
    fn hosts_show_their_latest_backup_and_how_long_ago() {
        let all = [
            record("web", 1_000, &["/srv"]),
            record("db", 5_000, &["/var/lib"]),
            record("web", 9_000, &["/srv"]),
        ];
        let hosts = hosts(&all, 10_000);
        assert_eq!(hosts.len(), 2);
        assert_eq!((hosts[0].host.as_str(), hosts[0].snapshots), ("db", 1));
        assert_eq!(hosts[0].since_ms, 5_000);
        assert_eq!((hosts[1].host.as_str(), hosts[1].snapshots), ("web", 2));
        assert_eq!((hosts[1].latest, hosts[1].since_ms), (all[2].id, 1_000));
        assert_eq!(hosts[1].logical_bytes, 9_000);
    }

    #[test]
    fn snapshots_are_filtered_by_host_and_path() {
        let web = record("web", 1, &["/srv/www", "/etc"]);
        let by = |host: Option<&str>, path: Option<&str>| SnapshotFilter {
            host: host.map(str::to_string),
            path: path.map(str::to_string),
            ..SnapshotFilter::default()
        };
        assert!(by(Some("web"), None).matches(&web));
        assert!(!by(Some("db"), None).matches(&web));
        assert!(by(None, Some("/srv/www/")).matches(&web));
        assert!(by(None, Some("/etc/nginx/site.conf")).matches(&web));
        assert!(!by(None, Some("/srv")).matches(&web));
        assert!(!by(None, Some("/etcetera")).matches(&web));
    }

    #[test]
    fn duplicates_are_contents_under_several_places_largest_saving_first() {
        let f = |host: &str, path: &str, size: u64, d: u8| {
            (host.to_string(), path.to_string(), size, [d; 32])
        };
        let dups = duplicates([
            f("web", "a", 10, 1),
            f("web", "a", 10, 1),
            f("db", "b", 10, 1),
            f("web", "c", 100, 2),
            f("web", "d", 100, 2),
            f("web", "e", 100, 2),
            f("web", "only", 1000, 3),
            f("web", "x", 0, 4),
            f("db", "y", 0, 4),
        ]);
        assert_eq!(dups.len(), 2, "{dups:?}");
        assert_eq!((dups[0].size, dups[0].bytes_saved()), (100, 200));
        assert_eq!(
            dups[1].places,
            [("db".into(), "b".into()), ("web".into(), "a".into())]
        );
        assert_eq!(dups[1].bytes_saved(), 10);
    }

    #[test]
    fn sizes_and_times_parse_as_documented() {
        assert_eq!(SizeTest::parse("+10M").unwrap(), SizeTest::Above(10 << 20));
        assert_eq!(SizeTest::parse("-4k").unwrap(), SizeTest::Below(4096));
        assert_eq!(SizeTest::parse("100").unwrap(), SizeTest::Exactly(100));
        for bad in ["", "+", "10X", "+-1", "99999999999999999999T"] {
            assert!(SizeTest::parse(bad).is_err(), "{bad}");
        }
        assert!(SizeTest::Above(10).admits(11) && !SizeTest::Above(10).admits(10));
        assert_eq!(parse_when("2026-11-30", 0).unwrap(), 1_795_996_800);
        assert_eq!(parse_when("1970-01-02", 0).unwrap(), 86_400);
        assert_eq!(parse_when("1d", 2 * 86_400_000).unwrap(), 86_400);
        for bad in ["yesterday", "2026-13-01", "2026-1-1"] {
            assert!(parse_when(bad, 0).is_err(), "{bad}");
        }
    }
}
