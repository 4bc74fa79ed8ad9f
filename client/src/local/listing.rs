//! A snapshot's listing, cached (`<cache>/listings/<snapshot>`): every
//! directory, file, symlink and special file with its metadata, as a
//! restore plan without its portions. Snapshots never change, so once a
//! snapshot's trees have been read, `ls`, `diff`, `find`, `history` and
//! `dups` read this instead: no tree is fetched or decrypted again, and
//! they answer with no vendor or coordinator reachable.
//!
//! Sealed like a manifest blob under [`BlobId::listing`], which binds it to
//! its snapshot: a listing damaged, foreign, or copied from another
//! snapshot does not open and is simply not cached. Format: a version,
//! then the plan's entries (postcard); paths as raw bytes.

use serde::{Deserialize, Serialize};

use offsite_proto::SnapshotId;

use crate::format::blob::{open, seal, BlobError, BlobId, BlobKind};
use crate::format::keys::Keys;
use crate::session::restore::plan::{DirPlan, FilePlan, LinkPlan, Plan, SpecialPlan};

/// Version of the listing format.
const LISTING_VERSION: u32 = 1;
/// Largest listing kept (plaintext; about a million entries): a bigger
/// snapshot's trees are read each time.
pub const MAX_LISTING_BYTES: usize = 200 * 1024 * 1024;

#[derive(Serialize)]
struct Borrowed<'a> {
    version: u32,
    dirs: &'a [DirPlan],
    files: &'a [FilePlan],
    links: &'a [LinkPlan],
    specials: &'a [SpecialPlan],
    single_entry: bool,
}

#[derive(Deserialize)]
struct Stored {
    version: u32,
    dirs: Vec<DirPlan>,
    files: Vec<FilePlan>,
    links: Vec<LinkPlan>,
    specials: Vec<SpecialPlan>,
    single_entry: bool,
}

/// A cached listing that does not open.
#[derive(Debug, thiserror::Error)]
pub enum ListingError {
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("listing does not decode: {0}")]
    Decode(postcard::Error),
    #[error("listing has format version {0}, not {LISTING_VERSION}")]
    Version(u32),
}

/// The sealed listing of `snapshot`'s `plan`; `None` when it is larger
/// than [`MAX_LISTING_BYTES`].
pub fn seal_listing(keys: &Keys, snapshot: SnapshotId, plan: &Plan) -> Option<Vec<u8>> {
    let listing = Borrowed {
        version: LISTING_VERSION,
        dirs: &plan.dirs,
        files: &plan.files,
        links: &plan.links,
        specials: &plan.specials,
        single_entry: plan.single_entry,
    };
    let plain = postcard::to_stdvec(&listing).ok()?;
    if plain.len() > MAX_LISTING_BYTES {
        return None;
    }
    let id = BlobId::listing(keys, snapshot.as_bytes());
    seal(keys, BlobKind::Manifest, &id, &plain).ok()
}

/// Opens `snapshot`'s sealed listing into a plan with no portions (it
/// lists, it does not restore).
pub fn open_listing(
    keys: &Keys,
    snapshot: SnapshotId,
    sealed: &[u8],
) -> Result<Plan, ListingError> {
    let id = BlobId::listing(keys, snapshot.as_bytes());
    let plain = open(keys, BlobKind::Manifest, &id, sealed)?;
    let stored: Stored = postcard::from_bytes(&plain).map_err(ListingError::Decode)?;
    if stored.version != LISTING_VERSION {
        return Err(ListingError::Version(stored.version));
    }
    let bytes = stored
        .files
        .iter()
        .map(|f| f.size)
        .fold(0, u64::saturating_add);
    Ok(Plan {
        dirs: stored.dirs,
        files: stored.files,
        links: stored.links,
        specials: stored.specials,
        single_entry: stored.single_entry,
        bytes,
        ..Plan::default()
    })
}

/// Serde for a path as its raw bytes, so names that are not UTF-8 survive.
pub mod path_bytes {
    use std::ffi::OsStr;
    use std::fmt;
    use std::os::unix::ffi::OsStrExt;
    use std::path::{Path, PathBuf};

    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(path: &Path, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(path.as_os_str().as_bytes())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PathBuf, D::Error> {
        deserializer.deserialize_byte_buf(PathVisitor)
    }

    struct PathVisitor;

    impl<'de> Visitor<'de> for PathVisitor {
        type Value = PathBuf;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a path as bytes")
        }

        fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<PathBuf, E> {
            Ok(PathBuf::from(OsStr::from_bytes(bytes)))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PathBuf, A::Error> {
            let mut bytes = Vec::new();
            while let Some(b) = seq.next_element::<u8>()? {
                bytes.push(b);
            }
            Ok(PathBuf::from(OsStr::from_bytes(&bytes)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tree::{EntryKind, Owner, Xattr};
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    use std::path::PathBuf;

    fn plan() -> Plan {
        Plan {
            dirs: vec![DirPlan {
                path: PathBuf::from(OsStr::from_bytes(b"caf\xe9")),
                mode: 0o755,
                mtime: (1, 2),
                depth: 1,
                owner: None,
                xattrs: vec![Xattr {
                    name: b"user.a".to_vec(),
                    value: vec![0, 1],
                }],
            }],
            files: vec![FilePlan {
                path: PathBuf::from("caf\u{e9}/f"),
                size: 9,
                mode: 0o4755,
                mtime: (3, 4),
                digest: [5; 32],
                owner: Some(Owner {
                    uid: 1,
                    gid: 2,
                    user: Some("u".into()),
                    group: None,
                }),
                xattrs: Vec::new(),
                sparse: true,
                link_group: Some(7),
            }],
            specials: vec![SpecialPlan {
                path: PathBuf::from("null"),
                kind: EntryKind::Device {
                    block: false,
                    rdev: 0x103,
                },
                mode: 0o666,
                mtime: (5, 6),
                owner: None,
                xattrs: Vec::new(),
            }],
            bytes: 9,
            ..Plan::default()
        }
    }

    #[test]
    fn a_listing_opens_as_its_snapshot_only() {
        let keys = Keys::from_data_key(&[3; 32]);
        let (one, other) = (SnapshotId::random(), SnapshotId::random());
        let sealed = seal_listing(&keys, one, &plan()).unwrap();
        assert_eq!(open_listing(&keys, one, &sealed).unwrap(), plan());
        assert!(open_listing(&keys, other, &sealed).is_err());
        let stranger = Keys::from_data_key(&[4; 32]);
        assert!(open_listing(&stranger, one, &sealed).is_err());
    }
}
