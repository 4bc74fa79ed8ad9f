//! Source trees for backups and the comparer that checks a restore: a
//! generator of deterministic trees with the awkward cases a backup tool must
//! keep (nested and empty directories, empty files, large random files, many
//! small files, relative/absolute/dangling symlinks, unicode and non-UTF-8
//! names, permission bits, past mtimes) and a byte-for-byte comparison of
//! content, kind, mode bits, mtime and symlink targets.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use filetime::FileTime;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

/// What to put in a generated tree.
#[derive(Debug, Clone)]
pub struct TreeSpec {
    /// Seeds every random byte and size, so a spec always gives the same tree.
    pub seed: u64,
    /// Sizes of the large random files, under `big/`.
    pub big_files: Vec<u64>,
    /// How many small files, spread over 30 nested directories under `small/`.
    pub small_files: usize,
    /// Largest small file; sizes run from 0 (empty) to this.
    pub small_max: usize,
    /// Add the awkward cases: symlinks, unicode and non-UTF-8 names,
    /// permissions, empty directories, a deep chain of directories.
    pub specials: bool,
}

impl TreeSpec {
    /// The full tree: a 50 MiB file, 3000 small files and every special case.
    pub fn full() -> TreeSpec {
        TreeSpec {
            seed: 1,
            big_files: vec![50 * 1024 * 1024],
            small_files: 3000,
            small_max: 4096,
            specials: true,
        }
    }

    /// A few MiB with every special case (the demo's sample tree).
    pub fn small() -> TreeSpec {
        TreeSpec {
            seed: 2,
            big_files: vec![3 * 1024 * 1024],
            small_files: 60,
            small_max: 8192,
            specials: true,
        }
    }
}

/// What a generated tree holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeSummary {
    pub files: u64,
    pub bytes: u64,
}

/// Mtimes of generated entries start here (2001-09-09) and step an hour.
const MTIME_BASE: i64 = 1_000_000_000;

/// Generates `spec` under `root` (created; must not hold anything yet).
pub fn generate(root: &Path, spec: &TreeSpec) -> Result<TreeSummary> {
    std::fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
    let mut gen = Generator {
        rng: StdRng::seed_from_u64(spec.seed),
        summary: TreeSummary::default(),
    };
    for (i, size) in spec.big_files.iter().enumerate() {
        gen.random_file(&root.join("big").join(format!("big-{i}.bin")), *size)?;
    }
    for i in 0..spec.small_files {
        let dir = root
            .join("small")
            .join(format!("a{}", i % 6))
            .join(format!("b{}", i / 6 % 5));
        let size = gen.rng.gen_range(0..=spec.small_max) as u64;
        gen.random_file(&dir.join(format!("file-{i:05}.dat")), size)?;
    }
    if spec.specials {
        gen.specials(root)?;
    }
    set_mtimes(root)?;
    Ok(gen.summary)
}

struct Generator {
    rng: StdRng,
    summary: TreeSummary,
}

impl Generator {
    fn random_file(&mut self, path: &Path, size: u64) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            self.rng.fill_bytes(&mut buf[..n]);
            file.write_all(&buf[..n])?;
            left -= n as u64;
        }
        self.summary.files += 1;
        self.summary.bytes += size;
        Ok(())
    }

    fn text_file(&mut self, path: &Path, text: &str, mode: Option<u32>) -> Result<()> {
        self.random_file(path, 0)?;
        std::fs::write(path, text)?;
        self.summary.bytes += text.len() as u64;
        if let Some(mode) = mode {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    }

    fn specials(&mut self, root: &Path) -> Result<()> {
        // Empty files and an empty directory.
        let empty = root.join("empty");
        self.random_file(&empty.join("zero-1"), 0)?;
        self.random_file(&empty.join("zero-2"), 0)?;
        std::fs::create_dir_all(empty.join("empty-dir"))?;

        // A deep chain of directories.
        let mut deep = root.join("deep");
        for level in 1..=12 {
            deep = deep.join(format!("level-{level}"));
        }
        self.text_file(&deep.join("bottom.txt"), "the bottom of the chain\n", None)?;

        // Symlinks: relative, absolute, dangling, and one to a directory.
        let links = root.join("links");
        std::fs::create_dir_all(&links)?;
        symlink("../empty/zero-1", links.join("relative"))?;
        symlink("/etc/hostname", links.join("absolute"))?;
        symlink("does/not/exist", links.join("dangling"))?;
        symlink("../deep", links.join("to-dir"))?;

        // Unicode names.
        let unicode = root.join("unicode");
        self.text_file(&unicode.join("naïve café — 日本語.txt"), "unicode\n", None)?;
        self.text_file(
            &unicode.join("Ελληνικά").join("файл.txt"),
            "κείμενο\n",
            None,
        )?;
        self.text_file(&unicode.join("📦 box.bin"), "📦\n", None)?;

        // Names that are not UTF-8.
        let bytes = root.join("bytes");
        let latin1 = OsStr::from_bytes(b"latin1-\xe9t\xe9.txt");
        self.text_file(&bytes.join(latin1), "latin-1 name\n", None)?;
        let odd_dir = bytes.join(OsStr::from_bytes(b"dir-\xff\xfe"));
        self.text_file(
            &odd_dir.join("inside.txt"),
            "inside a non-UTF-8 directory\n",
            None,
        )?;

        // Permission bits.
        let perms = root.join("perms");
        self.text_file(&perms.join("secret"), "0600\n", Some(0o600))?;
        self.text_file(
            &perms.join("script.sh"),
            "#!/bin/sh\necho hi\n",
            Some(0o755),
        )?;
        self.text_file(&perms.join("shared"), "0640\n", Some(0o640))?;
        self.text_file(
            &perms.join("private").join("file"),
            "in 0700\n",
            Some(0o644),
        )?;
        std::fs::set_permissions(
            perms.join("private"),
            std::fs::Permissions::from_mode(0o700),
        )?;
        std::fs::set_permissions(&odd_dir, std::fs::Permissions::from_mode(0o750))?;
        Ok(())
    }
}

/// Gives every file and directory under `root` (not symlinks, not `root`
/// itself) a distinct known mtime in the past; directories last, deepest
/// first, so writing their children does not change them again.
fn set_mtimes(root: &Path) -> Result<()> {
    let mut entries = Vec::new();
    walk(root, &mut entries)?;
    let mut dirs = Vec::new();
    for (i, (path, meta)) in entries.iter().enumerate() {
        let time = FileTime::from_unix_time(MTIME_BASE + 3600 * i as i64, 0);
        if meta.is_dir() {
            dirs.push((path, time));
        } else if meta.is_file() {
            filetime::set_file_times(path, time, time)?;
        }
    }
    dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (path, time) in dirs {
        filetime::set_file_times(path, time, time)?;
    }
    Ok(())
}

/// Every entry under `dir` (not `dir` itself), parents before children.
fn walk(dir: &Path, out: &mut Vec<(PathBuf, std::fs::Metadata)>) -> Result<()> {
    let mut names: Vec<OsString> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let meta = std::fs::symlink_metadata(&path)?;
        let is_dir = meta.is_dir();
        out.push((path.clone(), meta));
        if is_dir {
            walk(&path, out)?;
        }
    }
    Ok(())
}

/// Every path under `dir` (symlinks not followed) with the length and hash
/// of its bytes, its link target, or `<dir>`: what a test checks did not
/// change.
pub fn listing(dir: &Path) -> Result<std::collections::BTreeMap<PathBuf, String>> {
    let mut entries = Vec::new();
    walk(dir, &mut entries)?;
    let mut all = std::collections::BTreeMap::new();
    for (path, meta) in entries {
        let content = if meta.is_dir() {
            b"<dir>".to_vec()
        } else if meta.file_type().is_symlink() {
            std::fs::read_link(&path)?
                .into_os_string()
                .into_encoded_bytes()
        } else {
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?
        };
        let hash = blake3::hash(&content).to_hex();
        let line = format!("{} bytes, blake3 {}", content.len(), &hash[..16]);
        all.insert(path, line);
    }
    Ok(all)
}

/// Compares the tree at `actual` with `expected`: the same entries, kinds,
/// bytes, permission bits, mtimes (seconds) and symlink targets. The error
/// lists the first differences.
pub fn compare(expected: &Path, actual: &Path) -> Result<()> {
    let mut differences = Vec::new();
    compare_dir(expected, actual, Path::new(""), &mut differences)?;
    if differences.is_empty() {
        return Ok(());
    }
    let total = differences.len();
    differences.truncate(20);
    anyhow::bail!(
        "{} differs from {} in {total} places:\n  {}",
        actual.display(),
        expected.display(),
        differences.join("\n  ")
    )
}

fn compare_dir(expected: &Path, actual: &Path, rel: &Path, out: &mut Vec<String>) -> Result<()> {
    let names = |dir: &Path| -> Result<std::collections::BTreeSet<OsString>> {
        std::fs::read_dir(dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .map(|e| Ok(e?.file_name()))
            .collect()
    };
    let want = names(&expected.join(rel))?;
    let have = match names(&actual.join(rel)) {
        Ok(have) => have,
        Err(e) => {
            out.push(format!("{}: {e:#}", rel.display()));
            return Ok(());
        }
    };
    for extra in have.difference(&want) {
        out.push(format!("{}: not in the source", rel.join(extra).display()));
    }
    for name in &want {
        let rel = rel.join(name);
        if !have.contains(name) {
            out.push(format!("{}: missing", rel.display()));
            continue;
        }
        compare_entry(expected, actual, &rel, out)?;
    }
    Ok(())
}

fn compare_entry(expected: &Path, actual: &Path, rel: &Path, out: &mut Vec<String>) -> Result<()> {
    let (want_path, have_path) = (expected.join(rel), actual.join(rel));
    let want = std::fs::symlink_metadata(&want_path)?;
    let have = std::fs::symlink_metadata(&have_path)?;
    let shown = rel.display();
    let kind = |m: &std::fs::Metadata| match m.file_type() {
        t if t.is_symlink() => "symlink",
        t if t.is_dir() => "directory",
        t if t.is_file() => "file",
        _ => "special file",
    };
    if kind(&want) != kind(&have) {
        out.push(format!(
            "{shown}: a {} instead of a {}",
            kind(&have),
            kind(&want)
        ));
        return Ok(());
    }
    if want.file_type().is_symlink() {
        let (a, b) = (
            std::fs::read_link(&want_path)?,
            std::fs::read_link(&have_path)?,
        );
        if a != b {
            out.push(format!(
                "{shown}: links to {} instead of {}",
                b.display(),
                a.display()
            ));
        }
        return Ok(());
    }
    let (want_mode, have_mode) = (
        want.permissions().mode() & 0o7777,
        have.permissions().mode() & 0o7777,
    );
    if want_mode != have_mode {
        out.push(format!(
            "{shown}: mode {have_mode:o} instead of {want_mode:o}"
        ));
    }
    let (want_mtime, have_mtime) = (
        FileTime::from_last_modification_time(&want).unix_seconds(),
        FileTime::from_last_modification_time(&have).unix_seconds(),
    );
    if want_mtime != have_mtime {
        out.push(format!(
            "{shown}: mtime {have_mtime} instead of {want_mtime}"
        ));
    }
    if want.is_dir() {
        return compare_dir(expected, actual, rel, out);
    }
    if want.len() != have.len() {
        out.push(format!(
            "{shown}: {} bytes instead of {}",
            have.len(),
            want.len()
        ));
    } else if hash_file(&want_path)? != hash_file(&have_path)? {
        out.push(format!("{shown}: different bytes"));
    }
    Ok(())
}

/// The blake3 hash of a file's bytes.
pub fn hash_file(path: &Path) -> Result<blake3::Hash> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finalize());
        }
        hasher.update(&buf[..n]);
    }
}

/// Where a restore of `source` into `target` put the source's top directory:
/// `target/<source path without its leading />` (a restore that keeps full
/// paths), else `target/<source's name>`, else `target` itself.
pub fn restored_root(target: &Path, source: &Path) -> PathBuf {
    let full = target.join(source.strip_prefix("/").unwrap_or(source));
    if full.is_dir() {
        return full;
    }
    if let Some(name) = source.file_name() {
        let named = target.join(name);
        if named.is_dir() {
            return named;
        }
    }
    target.to_path_buf()
}

/// Bytes in front of a piece's data in a NAS store (magic and version,
/// blake3, length).
pub const PIECE_HEADER: u64 = 8 + 32 + 8;

/// Flips one byte in the middle of a piece file's data, past its header, as
/// a failing disk would.
pub fn corrupt_piece(piece: &Path) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(piece)
        .unwrap();
    let len = file.metadata().unwrap().len();
    assert!(
        len > PIECE_HEADER,
        "{} is only {len} bytes",
        piece.display()
    );
    let at = PIECE_HEADER + (len - PIECE_HEADER) / 2;
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x5a], at).unwrap();
    file.sync_all().unwrap();
}

/// Every regular file under `dir` (recursively), e.g. the pieces of a NAS device.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut entries = Vec::new();
    if walk(dir, &mut entries).is_err() {
        return Vec::new();
    }
    entries
        .into_iter()
        .filter(|(_, meta)| meta.is_file())
        .map(|(path, _)| path)
        .collect()
}

/// `len` pseudo-random bytes from `seed` (incompressible, so every change
/// makes new chunks and new portions).
pub fn noise(seed: &str, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    blake3::Hasher::new()
        .update(seed.as_bytes())
        .finalize_xof()
        .fill(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_equals_its_copy_and_not_a_changed_one() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = TreeSpec {
            big_files: vec![100_000],
            small_files: 20,
            ..TreeSpec::small()
        };
        let a = tmp.path().join("a");
        let summary = generate(&a, &spec).unwrap();
        assert!(summary.files > 30, "{summary:?}");
        let b = tmp.path().join("b");
        generate(&b, &spec).unwrap();
        compare(&a, &b).unwrap();

        std::fs::write(b.join("perms/shared"), "0641\n").unwrap();
        std::fs::set_permissions(
            b.join("perms/secret"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        std::fs::remove_file(b.join("links/dangling")).unwrap();
        let err = compare(&a, &b).unwrap_err().to_string();
        assert!(err.contains("perms/shared: different bytes"), "{err}");
        assert!(
            err.contains("perms/secret: mode 644 instead of 600"),
            "{err}"
        );
        assert!(err.contains("links/dangling: missing"), "{err}");
        assert!(err.contains("links: mtime"), "{err}");
    }
}
