//! `ls`, `diff` and `find`: reading what snapshots hold from their trees.
//! A diff compares two snapshots path by path (files by the digest of their
//! chunk ids, so no data is fetched); find matches a glob against the names
//! (a pattern without `/`) or the paths of every entry of every snapshot.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use globset::GlobBuilder;
use offsite_proto::SnapshotRecord;

use super::hosts::FindFilter;
use super::{Session, SessionError};
use crate::filter::FilterError;
use crate::format::keys::Keys;
use crate::format::tree::{EntryKind, Owner, Xattr};
use crate::session::restore::Plan;

/// One entry of a snapshot, as `ls`, `diff` and `find` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub snapshot: offsite_proto::SnapshotId,
    pub path: String,
    pub kind: &'static str,
    pub size: u64,
    pub mode: u32,
    pub mtime_unix: i64,
    /// The recorded owner (none in snapshots from before owners were kept).
    pub owner: Option<crate::format::tree::Owner>,
    /// The names of its extended attributes (POSIX ACLs are
    /// `system.posix_acl_access` and `system.posix_acl_default`).
    pub xattrs: Vec<String>,
    /// For a file that was a hard link: the path of the first of its links.
    pub hard_link_to: Option<String>,
    pub sparse: bool,
    /// A device node's device number.
    pub rdev: Option<u64>,
}

/// What changed at one path between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub path: String,
    /// `added`, `removed` or `modified`.
    pub change: &'static str,
    /// For `modified`: which of `type`, `content`, `target`, `mode`,
    /// `mtime`, `owner`, `xattrs`.
    pub what: Vec<&'static str>,
}

/// The changes from one snapshot to another, sorted by path.
#[derive(Debug, Clone)]
pub struct Diff {
    pub from: SnapshotRecord,
    pub to: SnapshotRecord,
    pub changes: Vec<Change>,
}

/// What identifies an entry's content and metadata, for the diff.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shape {
    kind: &'static str,
    content: Vec<u8>,
    mode: u32,
    mtime: (i64, u32),
    /// (uid, gid), when recorded.
    owner: Option<(u32, u32)>,
    xattrs: Vec<Xattr>,
}

/// What `ls` calls a FIFO or device node.
fn special_kind(kind: &EntryKind) -> &'static str {
    match kind {
        EntryKind::Device { block: true, .. } => "blockdev",
        EntryKind::Device { block: false, .. } => "chardev",
        _ => "fifo",
    }
}

fn shapes(plan: &Plan) -> BTreeMap<String, Shape> {
    let name = |p: &Path| p.to_string_lossy().into_owned();
    let ids = |o: &Option<Owner>| o.as_ref().map(|o| (o.uid, o.gid));
    let mut out = BTreeMap::new();
    for d in &plan.dirs {
        let shape = Shape {
            kind: "dir",
            content: Vec::new(),
            mode: d.mode & 0o7777,
            mtime: d.mtime,
            owner: ids(&d.owner),
            xattrs: d.xattrs.clone(),
        };
        out.insert(name(&d.path), shape);
    }
    for f in &plan.files {
        let shape = Shape {
            kind: "file",
            content: f.digest.to_vec(),
            mode: f.mode & 0o7777,
            mtime: f.mtime,
            owner: ids(&f.owner),
            xattrs: f.xattrs.clone(),
        };
        out.insert(name(&f.path), shape);
    }
    for l in &plan.links {
        let shape = Shape {
            kind: "symlink",
            content: l.target.clone(),
            mode: 0o777,
            mtime: l.mtime,
            owner: ids(&l.owner),
            xattrs: Vec::new(),
        };
        out.insert(name(&l.path), shape);
    }
    for s in &plan.specials {
        let rdev = match s.kind {
            EntryKind::Device { rdev, .. } => rdev,
            _ => 0,
        };
        let shape = Shape {
            kind: special_kind(&s.kind),
            content: rdev.to_le_bytes().to_vec(),
            mode: s.mode & 0o7777,
            mtime: s.mtime,
            owner: ids(&s.owner),
            xattrs: s.xattrs.clone(),
        };
        out.insert(name(&s.path), shape);
    }
    out
}

/// Every entry of a plan, sorted by path.
pub fn entries(snapshot: offsite_proto::SnapshotId, plan: &Plan) -> Vec<Found> {
    let name = |p: &Path| p.to_string_lossy().into_owned();
    let names = |xattrs: &[Xattr]| -> Vec<String> {
        xattrs
            .iter()
            .map(|x| String::from_utf8_lossy(&x.name).into_owned())
            .collect()
    };
    let found = |path: &Path, kind, mode: u32, mtime: (i64, u32), owner: &Option<Owner>| Found {
        snapshot,
        path: name(path),
        kind,
        size: 0,
        mode: mode & 0o7777,
        mtime_unix: mtime.0,
        owner: owner.clone(),
        xattrs: Vec::new(),
        hard_link_to: None,
        sparse: false,
        rdev: None,
    };
    // The first link of each group by path is the one the others name.
    let mut first_link: HashMap<u64, &Path> = HashMap::new();
    for f in &plan.files {
        if let Some(group) = f.link_group {
            let first = first_link.entry(group).or_insert(&f.path);
            if f.path < **first {
                *first = &f.path;
            }
        }
    }
    let mut out: Vec<Found> = Vec::new();
    for d in &plan.dirs {
        out.push(Found {
            xattrs: names(&d.xattrs),
            ..found(&d.path, "dir", d.mode, d.mtime, &d.owner)
        });
    }
    for f in &plan.files {
        let first = f.link_group.and_then(|g| first_link.get(&g));
        out.push(Found {
            size: f.size,
            xattrs: names(&f.xattrs),
            hard_link_to: first.filter(|p| ***p != f.path).map(|p| name(p)),
            sparse: f.sparse,
            ..found(&f.path, "file", f.mode, f.mtime, &f.owner)
        });
    }
    for l in &plan.links {
        out.push(found(&l.path, "symlink", 0o777, l.mtime, &l.owner));
    }
    for s in &plan.specials {
        let kind = special_kind(&s.kind);
        out.push(Found {
            xattrs: names(&s.xattrs),
            rdev: match s.kind {
                EntryKind::Device { rdev, .. } => Some(rdev),
                _ => None,
            },
            ..found(&s.path, kind, s.mode, s.mtime, &s.owner)
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// The changes between two plans.
fn compare(from: &Plan, to: &Plan) -> Vec<Change> {
    let (a, b) = (shapes(from), shapes(to));
    let mut changes = Vec::new();
    for (path, old) in &a {
        match b.get(path) {
            None => changes.push(Change {
                path: path.clone(),
                change: "removed",
                what: Vec::new(),
            }),
            Some(new) => {
                let mut what = Vec::new();
                if old.kind != new.kind {
                    what.push("type");
                } else if old.content != new.content {
                    what.push(if old.kind == "symlink" {
                        "target"
                    } else {
                        "content"
                    });
                }
                if old.kind == new.kind && old.mode != new.mode {
                    what.push("mode");
                }
                if old.kind == "file" && old.kind == new.kind && old.mtime != new.mtime {
                    what.push("mtime");
                }
                if old.owner.is_some() && new.owner.is_some() && old.owner != new.owner {
                    what.push("owner");
                }
                if old.kind == new.kind && old.xattrs != new.xattrs {
                    what.push("xattrs");
                }
                if !what.is_empty() {
                    changes.push(Change {
                        path: path.clone(),
                        change: "modified",
                        what,
                    });
                }
            }
        }
    }
    for path in b.keys().filter(|p| !a.contains_key(*p)) {
        changes.push(Change {
            path: path.clone(),
            change: "added",
            what: Vec::new(),
        });
    }
    changes.sort_by(|x, y| x.path.cmp(&y.path));
    changes
}

impl Session {
    /// What changed from snapshot `from` to snapshot `to`.
    pub async fn diff(&self, keys: &Keys, from: &str, to: &str) -> Result<Diff, SessionError> {
        let (from, plan_a) = self.list(keys, from).await?;
        let (to, plan_b) = self.list(keys, to).await?;
        Ok(Diff {
            changes: compare(&plan_a, &plan_b),
            from,
            to,
        })
    }

    /// Entries whose name (or, for a pattern with `/`, path) matches
    /// `pattern` and `filter` (host, tags, mtime, size), in every snapshot
    /// the filter takes, or only `snapshot`.
    pub async fn find(
        &self,
        keys: &Keys,
        pattern: &str,
        snapshot: Option<&str>,
        filter: &FindFilter,
    ) -> Result<Vec<Found>, SessionError> {
        let glob = GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| FilterError::Pattern {
                pattern: pattern.to_string(),
                reason: e.kind().to_string(),
            })?
            .compile_matcher();
        let on_path = pattern.contains('/');
        let records = match snapshot {
            Some(spec) => vec![self.resolve(spec).await?],
            None => self
                .snapshots()
                .await?
                .into_iter()
                .filter(|s| filter.snapshots.matches(s))
                .collect(),
        };
        let mut found = Vec::new();
        for record in records {
            let plan = self.listing(keys, &record).await?;
            found.extend(entries(record.id, &plan).into_iter().filter(|e| {
                if !filter.admits(e.size, e.mtime_unix) {
                    return false;
                }
                let path = Path::new(&e.path);
                if on_path {
                    glob.is_match(path) || glob.is_match(Path::new("/").join(path))
                } else {
                    path.file_name().is_some_and(|n| glob.is_match(n))
                }
            }));
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::restore::plan::{FilePlan, LinkPlan};
    use std::path::PathBuf;

    fn file(path: &str, digest: u8, mode: u32) -> FilePlan {
        FilePlan {
            path: PathBuf::from(path),
            size: 1,
            mode,
            mtime: (1, 0),
            digest: [digest; 32],
            owner: None,
            xattrs: Vec::new(),
            sparse: false,
            link_group: None,
        }
    }

    #[test]
    fn diff_sees_added_removed_and_modified() {
        let from = Plan {
            files: vec![
                file("a", 1, 0o644),
                file("b", 2, 0o644),
                file("c", 3, 0o644),
            ],
            ..Default::default()
        };
        let to = Plan {
            files: vec![
                file("a", 1, 0o644),
                file("b", 9, 0o644),
                file("c", 3, 0o600),
            ],
            links: vec![LinkPlan {
                path: PathBuf::from("d"),
                target: b"a".to_vec(),
                mtime: (1, 0),
                owner: None,
            }],
            ..Default::default()
        };
        let changes = compare(&from, &to);
        let shown: Vec<(&str, &str, Vec<&str>)> = changes
            .iter()
            .map(|c| (c.path.as_str(), c.change, c.what.clone()))
            .collect();
        assert_eq!(
            shown,
            vec![
                ("b", "modified", vec!["content"]),
                ("c", "modified", vec!["mode"]),
                ("d", "added", vec![]),
            ]
        );
        let back = compare(&to, &from);
        assert!(back.iter().any(|c| c.path == "d" && c.change == "removed"));
    }
}
