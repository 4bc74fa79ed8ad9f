//! `dump`: one file of a snapshot to a writer as it is, or a directory (or
//! a file) as a tar or zip stream, without writing anything to disk but a
//! zip's spool. Only the portions that hold the selection are fetched, each
//! hash-checked and each blob opened as in a restore; a few portions are
//! kept at once, so memory stays bounded however large the selection.
//!
//! The fetching runs on the async side; the archive is written on a blocking
//! thread that takes each file's bytes, in order, from a bounded channel.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

use offsite_proto::{PortionId, PortionLocation};
use tokio::sync::mpsc;

use super::pieces::{pieces_by_file, HeldPortions};
use super::plan::Plan;
use super::RestoreError;
use crate::format::keys::Keys;
use crate::format::tree::{EntryKind, Owner, Xattr};
use crate::market::fetch::PortionSource;

/// Chunks on their way to the writer.
const CHANNEL_CHUNKS: usize = 8;

/// How a dump is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Archive {
    Tar,
    Zip,
}

impl std::str::FromStr for Archive {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tar" => Ok(Archive::Tar),
            "zip" => Ok(Archive::Zip),
            other => Err(format!("--archive {other:?} is not one of tar, zip")),
        }
    }
}

/// What a dump wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DumpStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    pub portions_fetched: u64,
}

/// Writes what `plan` selects to `out`: the one file as it is when `archive`
/// is `None` (the plan must hold exactly one file), else a tar or zip
/// stream.
pub async fn dump<S: PortionSource>(
    source: &S,
    keys: Arc<Keys>,
    plan: Plan,
    locations: &HashMap<PortionId, PortionLocation>,
    archive: Option<Archive>,
    out: Box<dyn Write + Send>,
) -> Result<DumpStats, RestoreError> {
    let mut plan = plan;
    if archive == Some(Archive::Tar) {
        // A tar stream keeps hard links as links: one copy of the content.
        plan.defer_hard_links();
    }
    let pieces = pieces_by_file(&plan);
    let plan = Arc::new(plan);
    let (tx, rx) = mpsc::channel::<Vec<u8>>(CHANNEL_CHUNKS);
    let writer = {
        let plan = plan.clone();
        tokio::task::spawn_blocking(move || write_out(&plan, archive, rx, out))
    };
    let mut held = HeldPortions::default();
    let mut fetched = 0u64;
    let mut bytes = 0u64;
    let produced = async {
        let in_order = files_in_order(&plan).into_iter().map(|i| &pieces[i]);
        for piece in in_order.flatten() {
            let portion = match held.get(piece.portion) {
                Some(bytes) => bytes,
                None => {
                    let location = locations
                        .get(&piece.portion)
                        .ok_or(RestoreError::NoLocation(piece.portion))?;
                    let fresh = Arc::new(source.portion(location, Vec::new()).await?);
                    fetched += 1;
                    held.keep(piece.portion, fresh.clone());
                    fresh
                }
            };
            let plain = piece.open(&keys, &portion)?;
            bytes += plain.len() as u64;
            if tx.send(plain).await.is_err() {
                // The writer stopped; its error is the one reported.
                break;
            }
        }
        Ok::<(), RestoreError>(())
    };
    let produced = produced.await;
    drop(tx);
    let written = writer
        .await
        .map_err(|e| RestoreError::Worker(e.to_string()))?;
    written?;
    produced?;
    Ok(DumpStats {
        files: plan.files.len() as u64,
        dirs: plan.dirs.len() as u64,
        symlinks: plan.links.len() as u64,
        bytes,
        portions_fetched: fetched,
    })
}

/// The indexes of the plan's files in path order: the order the writer
/// takes them in.
fn files_in_order(plan: &Plan) -> Vec<usize> {
    let mut order: Vec<usize> = (0..plan.files.len()).collect();
    order.sort_by(|a, b| plan.files[*a].path.cmp(&plan.files[*b].path));
    order
}

/// One entry of the archive.
enum Item<'a> {
    Dir(&'a super::plan::DirPlan),
    File(&'a super::plan::FilePlan),
    Link(&'a super::plan::LinkPlan),
    Special(&'a super::plan::SpecialPlan),
}

/// Every entry in path order, so each directory is followed by what it
/// holds (an extracting `tar` sets a directory's mtime once it has left it).
fn items(plan: &Plan) -> Vec<Item<'_>> {
    let mut items: Vec<(&std::path::Path, Item<'_>)> = Vec::new();
    items.extend(plan.dirs.iter().map(|d| (d.path.as_path(), Item::Dir(d))));
    items.extend(plan.files.iter().map(|f| (f.path.as_path(), Item::File(f))));
    items.extend(plan.links.iter().map(|l| (l.path.as_path(), Item::Link(l))));
    items.extend(
        plan.specials
            .iter()
            .map(|s| (s.path.as_path(), Item::Special(s))),
    );
    items.sort_by(|a, b| a.0.cmp(b.0));
    items.into_iter().map(|(_, item)| item).collect()
}

/// A file's bytes as they arrive from the fetching side.
struct Incoming<'a> {
    rx: &'a mut mpsc::Receiver<Vec<u8>>,
    left: u64,
    chunk: Vec<u8>,
    at: usize,
}

impl<'a> Incoming<'a> {
    /// The next `size` bytes the fetching side sends.
    fn new(rx: &'a mut mpsc::Receiver<Vec<u8>>, size: u64) -> Self {
        Self {
            rx,
            left: size,
            chunk: Vec::new(),
            at: 0,
        }
    }
}

impl Read for Incoming<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        if self.at == self.chunk.len() {
            self.chunk = self.rx.blocking_recv().ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the fetching side stopped before the file's end",
                )
            })?;
            self.at = 0;
        }
        let n = buf
            .len()
            .min(self.chunk.len() - self.at)
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        self.left -= n as u64;
        Ok(n)
    }
}

fn io(what: &'static str, path: PathBuf) -> impl Fn(std::io::Error) -> RestoreError {
    move |source| RestoreError::Io {
        path: path.clone(),
        what,
        source,
    }
}

/// The blocking half: every entry of `plan`, each file's bytes from `rx`.
fn write_out(
    plan: &Plan,
    archive: Option<Archive>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    mut out: Box<dyn Write + Send>,
) -> Result<(), RestoreError> {
    let stdout = || PathBuf::from("(output)");
    match archive {
        None => {
            let file = plan.files.first();
            let others = plan.dirs.len() + plan.links.len() + plan.specials.len();
            if plan.files.len() != 1 || others > 0 {
                return Err(RestoreError::Worker(
                    "a dump without --archive writes one file; name a file, or add \
                     --archive tar"
                        .into(),
                ));
            }
            let Some(file) = file else { return Ok(()) };
            let mut reader = Incoming::new(&mut rx, file.size);
            std::io::copy(&mut reader, &mut out).map_err(io("write", stdout()))?;
            out.flush().map_err(io("write", stdout()))
        }
        Some(Archive::Tar) => write_tar(plan, &mut rx, out),
        Some(Archive::Zip) => write_zip(plan, &mut rx, out),
    }
}

/// A tar header of `kind` with an entry's mode, mtime and owner (ids and
/// names, when recorded).
fn tar_header(
    kind: tar::EntryType,
    mode: u32,
    mtime: (i64, u32),
    owner: Option<&Owner>,
) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode & 0o7777);
    header.set_mtime(mtime.0.max(0) as u64);
    header.set_size(0);
    if let Some(owner) = owner {
        header.set_uid(owner.uid.into());
        header.set_gid(owner.gid.into());
        // A name that does not fit the header is left out; the ids stay.
        if let Some(user) = &owner.user {
            let _ = header.set_username(user);
        }
        if let Some(group) = &owner.group {
            let _ = header.set_groupname(group);
        }
    }
    header
}

/// Extended attributes as the PAX records GNU tar and bsdtar read
/// (`SCHILY.xattr.NAME`), before the entry they belong to.
fn append_xattrs<W: Write>(tar: &mut tar::Builder<W>, xattrs: &[Xattr]) -> std::io::Result<()> {
    if xattrs.is_empty() {
        return Ok(());
    }
    let records: Vec<(String, &[u8])> = xattrs
        .iter()
        .map(|x| {
            let name = String::from_utf8_lossy(&x.name);
            (format!("SCHILY.xattr.{name}"), x.value.as_slice())
        })
        .collect();
    tar.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
}

fn write_tar(
    plan: &Plan,
    rx: &mut mpsc::Receiver<Vec<u8>>,
    out: Box<dyn Write + Send>,
) -> Result<(), RestoreError> {
    let mut tar = tar::Builder::new(out);
    let err = |path: &PathBuf| io("write to the tar stream", path.clone());
    for item in items(plan) {
        match item {
            Item::Dir(dir) => {
                let mut header = tar_header(
                    tar::EntryType::Directory,
                    dir.mode,
                    dir.mtime,
                    dir.owner.as_ref(),
                );
                append_xattrs(&mut tar, &dir.xattrs).map_err(err(&dir.path))?;
                tar.append_data(&mut header, &dir.path, std::io::empty())
                    .map_err(err(&dir.path))?;
            }
            Item::File(file) => {
                let mut header = tar_header(
                    tar::EntryType::Regular,
                    file.mode,
                    file.mtime,
                    file.owner.as_ref(),
                );
                header.set_size(file.size);
                append_xattrs(&mut tar, &file.xattrs).map_err(err(&file.path))?;
                let reader = Incoming::new(&mut *rx, file.size);
                tar.append_data(&mut header, &file.path, reader)
                    .map_err(err(&file.path))?;
            }
            Item::Link(link) => {
                let mut header = tar_header(
                    tar::EntryType::Symlink,
                    0o777,
                    link.mtime,
                    link.owner.as_ref(),
                );
                let target = PathBuf::from(OsStr::from_bytes(&link.target));
                tar.append_link(&mut header, &link.path, &target)
                    .map_err(err(&link.path))?;
            }
            Item::Special(special) => {
                let (kind, rdev) = match special.kind {
                    EntryKind::Device { block: true, rdev } => (tar::EntryType::Block, rdev),
                    EntryKind::Device { block: false, rdev } => (tar::EntryType::Char, rdev),
                    _ => (tar::EntryType::Fifo, 0),
                };
                let mut header =
                    tar_header(kind, special.mode, special.mtime, special.owner.as_ref());
                header
                    .set_device_major(libc::major(rdev))
                    .and_then(|()| header.set_device_minor(libc::minor(rdev)))
                    .map_err(err(&special.path))?;
                append_xattrs(&mut tar, &special.xattrs).map_err(err(&special.path))?;
                tar.append_data(&mut header, &special.path, std::io::empty())
                    .map_err(err(&special.path))?;
            }
        }
    }
    // After every file, so each link's target is already in the archive.
    for link in &plan.hard_links {
        let mut header = tar_header(tar::EntryType::Link, 0, (0, 0), None);
        tar.append_link(&mut header, &link.path, &link.to)
            .map_err(err(&link.path))?;
    }
    let mut out = tar.into_inner().map_err(err(&PathBuf::from("(end)")))?;
    out.flush().map_err(err(&PathBuf::from("(end)")))
}

fn write_zip(
    plan: &Plan,
    rx: &mut mpsc::Receiver<Vec<u8>>,
    mut out: Box<dyn Write + Send>,
) -> Result<(), RestoreError> {
    // A zip's directory goes at its end with every entry's offset: it is
    // spooled to an unnamed temporary file, then copied out.
    let spool_path = || PathBuf::from("(zip spool)");
    let spool = tempfile::tempfile().map_err(io("create a temporary file for", spool_path()))?;
    let mut zip = zip::ZipWriter::new(spool);
    let zip_err = |path: &PathBuf| {
        let path = path.clone();
        move |e: zip::result::ZipError| RestoreError::Io {
            path: path.clone(),
            what: "write to the zip archive",
            source: std::io::Error::other(e),
        }
    };
    let name = |path: &PathBuf| path.to_string_lossy().into_owned();
    let options = |mode: u32, mtime: (i64, u32)| {
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(mode & 0o7777)
            .large_file(true);
        match zip_time(mtime.0) {
            Some(time) => options.last_modified_time(time),
            None => options,
        }
    };
    for item in items(plan) {
        match item {
            Item::Dir(dir) => zip
                .add_directory(name(&dir.path), options(dir.mode, dir.mtime))
                .map_err(zip_err(&dir.path))?,
            Item::File(file) => {
                zip.start_file(name(&file.path), options(file.mode, file.mtime))
                    .map_err(zip_err(&file.path))?;
                let mut reader = Incoming::new(&mut *rx, file.size);
                std::io::copy(&mut reader, &mut zip)
                    .map_err(io("write to the zip archive", file.path.clone()))?;
            }
            Item::Link(link) => {
                let target = String::from_utf8_lossy(&link.target).into_owned();
                zip.add_symlink(name(&link.path), target, options(0o777, link.mtime))
                    .map_err(zip_err(&link.path))?;
            }
            Item::Special(special) => tracing::warn!(
                path = %special.path.display(),
                "a zip archive cannot hold a FIFO or device node; left out (use --archive tar)"
            ),
        }
    }
    let mut spool = zip.finish().map_err(zip_err(&spool_path()))?;
    spool.rewind().map_err(io("read back", spool_path()))?;
    std::io::copy(&mut spool, &mut out).map_err(io("write", PathBuf::from("(output)")))?;
    out.flush().map_err(io("write", PathBuf::from("(output)")))
}

/// A zip's local time from Unix seconds (zip stores no zone; UTC is used),
/// when within the years a zip can hold (1980 to 2107).
fn zip_time(secs: i64) -> Option<zip::DateTime> {
    let t = crate::calendar::DateTime::from_unix_secs(secs);
    let year = u16::try_from(t.year).ok()?;
    zip::DateTime::from_date_and_time(year, t.month, t.day, t.hour, t.minute, t.second).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zip_times_are_within_the_years_a_zip_holds() {
        assert!(zip_time(0).is_none(), "before 1980");
        assert!(zip_time(1_700_000_000).is_some());
    }
}
