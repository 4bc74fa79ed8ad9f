//! What part of a snapshot a restore (or a dump) takes: a subtree named by
//! its path as `ls` shows it (`src/etc`, or the absolute path that was
//! backed up, `/home/me/src/etc`), narrowed by `--include` and `--exclude`
//! patterns matched against the entry's path from the snapshot's root
//! (`/src/etc/passwd`), with the syntax of a backup's `--exclude`: a pattern
//! without `/` matches any one name, a pattern with `/` the whole path (a
//! relative one may start anywhere), `**` spans directories.
//!
//! A directory selected as the subtree lands as the target itself (its
//! entries directly in the target); a file or symlink lands in the target
//! under its own name. An excluded directory is skipped with everything in
//! it; with includes, an entry is taken when it or a directory above it
//! matches one, and a directory is made only when it holds something taken.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::filter::{ExcludeOptions, Filter, FilterError};

/// The longest subtree path accepted.
const MAX_SUBTREE_BYTES: usize = 4096;

/// A part of a snapshot to restore; the default is all of it.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Names from the root to the subtree taken; empty for the whole snapshot.
    pub subtree: Vec<Vec<u8>>,
    include: Option<Filter>,
    exclude: Option<Filter>,
}

/// A selection that cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error("{0:?} is not a path inside the snapshot: use the path `ls` shows (such as src/etc) or the absolute path that was backed up, without `.` or `..`")]
    BadPath(String),
    #[error(transparent)]
    Pattern(#[from] FilterError),
}

impl Selection {
    /// The subtree at `path` (empty: all), narrowed by the patterns.
    /// `backed_up` are the snapshot's absolute backup paths, each of which
    /// is named in the root by its last component.
    pub fn new(
        path: &str,
        backed_up: &[String],
        include: &[String],
        exclude: &[String],
    ) -> Result<Self, SelectError> {
        let patterns = |list: &[String]| -> Result<Option<Filter>, FilterError> {
            if list.is_empty() {
                return Ok(None);
            }
            let options = ExcludeOptions {
                patterns: list.to_vec(),
                ..ExcludeOptions::default()
            };
            Filter::new(&options).map(Some)
        };
        Ok(Self {
            subtree: subtree_names(path, backed_up)?,
            include: patterns(include)?,
            exclude: patterns(exclude)?,
        })
    }

    /// True when `full` (an entry's path from the snapshot's root) is left
    /// out with everything under it.
    pub fn excludes(&self, full: &Path) -> bool {
        self.exclude
            .as_ref()
            .is_some_and(|f| f.matches(&rooted(full)))
    }

    /// True when `full` is taken by an include (or there are none).
    pub fn includes(&self, full: &Path) -> bool {
        self.include
            .as_ref()
            .is_none_or(|f| f.matches(&rooted(full)))
    }

    /// True when includes narrow the selection, so that directories are
    /// made only for what they hold.
    pub fn has_includes(&self) -> bool {
        self.include.is_some()
    }

    /// True when `rel`, a path in a target that stands for the selected
    /// directory, is one the selection takes: no directory on its way is
    /// excluded and, with includes, it or a directory above it is included.
    pub fn covers(&self, rel: &Path) -> bool {
        let full = self.subtree_display().join(rel);
        let mut included = self.include.is_none();
        let mut at = PathBuf::new();
        for component in full.components() {
            at.push(component);
            if self.excludes(&at) {
                return false;
            }
            included = included || self.includes(&at);
        }
        included
    }

    /// The subtree as `ls` shows it, for messages.
    pub fn subtree_display(&self) -> PathBuf {
        self.subtree
            .iter()
            .map(|name| OsStr::from_bytes(name))
            .collect()
    }
}

/// `/` + the path from the snapshot's root, as patterns see it.
fn rooted(full: &Path) -> PathBuf {
    Path::new("/").join(full)
}

/// The names from the root to `path`: an absolute path under one of the
/// backed-up paths starts with that path's last component; any other is
/// read as `ls` shows it.
fn subtree_names(path: &str, backed_up: &[String]) -> Result<Vec<Vec<u8>>, SelectError> {
    let bad = || SelectError::BadPath(path.to_string());
    if path.len() > MAX_SUBTREE_BYTES {
        return Err(bad());
    }
    let path = Path::new(path);
    let mut names = Vec::new();
    let mut rest = path;
    if path.is_absolute() {
        let under = backed_up.iter().map(Path::new).find_map(|root| {
            let tail = path.strip_prefix(root).ok()?;
            Some((root.file_name()?, tail))
        });
        if let Some((name, tail)) = under {
            names.push(name.as_bytes().to_vec());
            rest = tail;
        }
    }
    for component in rest.components() {
        match component {
            Component::Normal(name) => names.push(name.as_bytes().to_vec()),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return Err(bad()),
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(path: &str) -> Vec<String> {
        let backed_up = ["/home/me/src".to_string(), "/etc".to_string()];
        subtree_names(path, &backed_up)
            .unwrap()
            .into_iter()
            .map(|n| String::from_utf8(n).unwrap())
            .collect()
    }

    #[test]
    fn a_subtree_is_named_as_ls_shows_it_or_by_its_backed_up_path() {
        assert_eq!(names("src/lib"), ["src", "lib"]);
        assert_eq!(names("/home/me/src/lib/a.rs"), ["src", "lib", "a.rs"]);
        assert_eq!(names("/etc"), ["etc"]);
        assert_eq!(
            names("/src/lib"),
            ["src", "lib"],
            "not under a backed-up path"
        );
        assert!(names("").is_empty() && names("/").is_empty());
        assert!(subtree_names("src/../etc", &[]).is_err());
    }

    #[test]
    fn patterns_match_the_path_from_the_snapshot_root() {
        let selection = Selection::new(
            "",
            &[],
            &["*.conf".into(), "src/docs".into()],
            &["secret*".into()],
        )
        .unwrap();
        assert!(selection.includes(Path::new("etc/nginx/site.conf")));
        assert!(selection.includes(Path::new("src/docs")));
        assert!(!selection.includes(Path::new("src/docs2")));
        assert!(!selection.includes(Path::new("etc/passwd")));
        assert!(selection.excludes(Path::new("etc/secret.key")));
        assert!(!selection.excludes(Path::new("etc/site.conf")));
        assert!(Selection::default().covers(Path::new("any/thing")));
        assert!(Selection::new("", &[], &["a[".into()], &[]).is_err());
    }
}
