//! Which paths a backup leaves out: `--exclude` glob patterns (and those of
//! `--exclude-file`), directories holding an `--exclude-if-present` marker,
//! and, with `--one-file-system`, anything on another filesystem than the
//! backup path it was reached from.
//!
//! A pattern without `/` matches any single path component (`*.o`, `target`);
//! a pattern with `/` matches the whole absolute path (a relative one may
//! start anywhere: `build/cache` is `**/build/cache`). `**` spans directories.

use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// Most patterns a backup accepts.
pub const MAX_PATTERNS: usize = 10_000;
/// Largest `--exclude-file` read.
const MAX_EXCLUDE_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// What to leave out of a backup, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct ExcludeOptions {
    pub patterns: Vec<String>,
    pub pattern_files: Vec<PathBuf>,
    pub if_present: Vec<String>,
    pub one_file_system: bool,
}

/// A pattern or pattern file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("exclude pattern {pattern:?} is not a valid glob: {reason}")]
    Pattern { pattern: String, reason: String },
    #[error("cannot read exclude file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("exclude file {0} is larger than 4 MiB")]
    FileTooLarge(PathBuf),
    #[error("more than {MAX_PATTERNS} exclude patterns")]
    TooMany,
    #[error("--exclude-if-present {0:?} must be a plain file name")]
    Marker(String),
}

/// The compiled exclusion rules.
#[derive(Debug, Clone)]
pub struct Filter {
    names: GlobSet,
    paths: GlobSet,
    markers: Vec<String>,
    one_file_system: bool,
}

impl Default for Filter {
    fn default() -> Self {
        Self {
            names: GlobSet::empty(),
            paths: GlobSet::empty(),
            markers: Vec::new(),
            one_file_system: false,
        }
    }
}

impl Filter {
    /// Compiles `options`, reading every pattern file.
    pub fn new(options: &ExcludeOptions) -> Result<Self, FilterError> {
        let mut patterns = options.patterns.clone();
        for path in &options.pattern_files {
            patterns.extend(read_pattern_file(path)?);
        }
        if patterns.len() > MAX_PATTERNS {
            return Err(FilterError::TooMany);
        }
        let (mut names, mut paths) = (GlobSetBuilder::new(), GlobSetBuilder::new());
        for pattern in &patterns {
            let invalid = |e: globset::Error| FilterError::Pattern {
                pattern: pattern.clone(),
                reason: e.kind().to_string(),
            };
            let trimmed = pattern.trim_end_matches('/');
            if trimmed.contains('/') {
                let full = if trimmed.starts_with('/') || trimmed.starts_with("**") {
                    trimmed.to_string()
                } else {
                    format!("**/{trimmed}")
                };
                paths.add(glob(&full).map_err(invalid)?);
            } else {
                names.add(glob(trimmed).map_err(invalid)?);
            }
        }
        for marker in &options.if_present {
            if marker.is_empty() || marker.contains('/') || marker == "." || marker == ".." {
                return Err(FilterError::Marker(marker.clone()));
            }
        }
        let built = |b: GlobSetBuilder, p: &str| {
            b.build().map_err(|e| FilterError::Pattern {
                pattern: p.to_string(),
                reason: e.to_string(),
            })
        };
        Ok(Self {
            names: built(names, "(name patterns)")?,
            paths: built(paths, "(path patterns)")?,
            markers: options.if_present.clone(),
            one_file_system: options.one_file_system,
        })
    }

    /// True when `path` (absolute) matches an exclude pattern.
    pub fn excludes(&self, path: &Path) -> bool {
        self.matches(path)
    }

    /// True when `path` (absolute) matches one of the patterns (a restore's
    /// `--include` uses the same rules).
    pub fn matches(&self, path: &Path) -> bool {
        if let Some(name) = path.file_name() {
            if self.names.is_match(Path::new(name)) {
                return true;
            }
        }
        !self.paths.is_empty() && self.paths.is_match(path)
    }

    /// True when directory `dir` holds one of the marker files.
    pub fn marked(&self, dir: &Path) -> bool {
        self.markers
            .iter()
            .any(|m| dir.join(m).symlink_metadata().is_ok())
    }

    /// True when directory `dir` (on device `dev`, under a backup path on
    /// device `root_dev`) is left out with all it holds: it is on another
    /// filesystem under `--one-file-system`, or holds an
    /// `--exclude-if-present` marker. The walk and the size estimate both ask.
    pub fn leaves_out_dir(&self, dir: &Path, dev: u64, root_dev: u64) -> bool {
        (self.one_file_system && dev != root_dev) || self.marked(dir)
    }
}

fn glob(pattern: &str) -> Result<globset::Glob, globset::Error> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
}

/// One pattern per line; blank lines and lines starting with `#` are ignored.
fn read_pattern_file(path: &Path) -> Result<Vec<String>, FilterError> {
    let err = |source| FilterError::File {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(err)?;
    if meta.len() > MAX_EXCLUDE_FILE_BYTES {
        return Err(FilterError::FileTooLarge(path.to_path_buf()));
    }
    let bytes = std::fs::read(path).map_err(err)?;
    Ok(String::from_utf8_lossy(&bytes)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(patterns: &[&str]) -> Filter {
        Filter::new(&ExcludeOptions {
            patterns: patterns.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn names_and_paths_match_as_documented() {
        let f = filter(&["*.o", "target", "build/cache", "/srv/tmp/**"]);
        assert!(f.excludes(Path::new("/src/a/main.o")));
        assert!(!f.excludes(Path::new("/src/a/main.c")));
        assert!(f.excludes(Path::new("/src/target")));
        assert!(!f.excludes(Path::new("/src/targets")));
        assert!(f.excludes(Path::new("/x/build/cache")));
        assert!(!f.excludes(Path::new("/x/build/cachex")));
        assert!(f.excludes(Path::new("/srv/tmp/a/b")));
        assert!(!f.excludes(Path::new("/srv/tmpx")));
        assert!(!filter(&[]).excludes(Path::new("/anything")));
    }

    #[test]
    fn pattern_files_and_markers() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("excludes");
        std::fs::write(&list, "# comment\n\n*.log\n").unwrap();
        std::fs::write(dir.path().join(".nobackup"), b"").unwrap();
        let f = Filter::new(&ExcludeOptions {
            pattern_files: vec![list],
            if_present: vec![".nobackup".into()],
            ..Default::default()
        })
        .unwrap();
        assert!(f.excludes(Path::new("/var/app.log")));
        assert!(f.marked(dir.path()));
        assert!(!f.marked(Path::new("/")));
        assert!(Filter::new(&ExcludeOptions {
            if_present: vec!["a/b".into()],
            ..Default::default()
        })
        .is_err());
        assert!(Filter::new(&ExcludeOptions {
            patterns: vec!["a[".into()],
            ..Default::default()
        })
        .is_err());
    }
}
