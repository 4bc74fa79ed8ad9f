//! Directory trees: one tree blob per directory, listing its entries sorted by
//! name. Names and link targets are raw bytes, so names that are not UTF-8
//! survive a backup and restore. Serialized with postcard behind a version:
//! version 2 added each entry's owner and group, version 3 extended
//! attributes (POSIX ACLs among them), hard links, sparse files, FIFOs and
//! device nodes. Trees of versions 1 and 2 still decode, their entries with
//! what those versions did not record left empty.

use serde::{Deserialize, Serialize};

use crate::format::blob::BlobId;

/// Version of the tree format.
pub const TREE_VERSION: u32 = 3;
/// The version before extended attributes, hard links and special files.
const TREE_VERSION_2: u32 = 2;
/// The version before owners.
const TREE_VERSION_1: u32 = 1;
/// Most extended attributes kept on one entry.
pub const MAX_XATTRS: usize = 1024;
/// Longest extended attribute name (Linux's `XATTR_NAME_MAX`).
pub const MAX_XATTR_NAME: usize = 255;
/// Largest extended attribute value (Linux's `XATTR_SIZE_MAX`).
pub const MAX_XATTR_VALUE: usize = 64 * 1024;
/// Longest user or group name kept.
pub const MAX_OWNER_NAME: usize = 256;
/// Most entries in one directory.
pub const MAX_ENTRIES: usize = 4_000_000;
/// Longest name or link target.
pub const MAX_NAME_BYTES: usize = 4096;

/// One chunk of a file: its blob and its plaintext length, so a restore knows
/// where each chunk goes before decrypting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub id: BlobId,
    pub len: u32,
}

/// What an entry is, with what it needs to be restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A regular file: its chunks, in order; `size` is their total length.
    File { size: u64, content: Vec<ChunkRef> },
    /// A directory: its own tree blob.
    Dir { subtree: BlobId },
    /// A symbolic link and its target, as raw bytes.
    Symlink { target: Vec<u8> },
    /// A named pipe (version 3).
    Fifo,
    /// A character (`block: false`) or block device node and its device
    /// number, as `st_rdev` (version 3).
    Device { block: bool, rdev: u64 },
}

/// One extended attribute: its full name (`user.comment`,
/// `system.posix_acl_access`) and value, raw bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

/// Who owned an entry: ids, and the names they had on the backed-up host
/// (when it knew them), so a restore on another host can map by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub user: Option<String>,
    pub group: Option<String>,
}

/// One entry of a directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The name, raw bytes (`OsStrExt`).
    pub name: Vec<u8>,
    pub kind: EntryKind,
    /// Permission bits (and the file type bits, ignored on restore).
    pub mode: u32,
    pub mtime_secs: i64,
    pub mtime_nanos: u32,
    /// `None` in trees written before owners were kept (version 1).
    pub owner: Option<Owner>,
    /// Extended attributes, sorted by name; POSIX ACLs are the
    /// `system.posix_acl_access` and `system.posix_acl_default` ones.
    pub xattrs: Vec<Xattr>,
    /// Files that were hard links to one another carry the same number,
    /// unique within their snapshot; each still lists its whole content.
    pub link_group: Option<u64>,
    /// The file had holes: a restore leaves its zero blocks unwritten.
    pub sparse: bool,
}

impl Entry {
    /// An entry with nothing beyond what every version records.
    pub fn plain(name: Vec<u8>, kind: EntryKind, mode: u32, mtime: (i64, u32)) -> Self {
        Entry {
            name,
            kind,
            mode,
            mtime_secs: mtime.0,
            mtime_nanos: mtime.1,
            owner: None,
            xattrs: Vec::new(),
            link_group: None,
            sparse: false,
        }
    }
}

/// An entry of a version 2 tree.
#[derive(Deserialize)]
struct EntryV2 {
    name: Vec<u8>,
    kind: EntryKind,
    mode: u32,
    mtime_secs: i64,
    mtime_nanos: u32,
    owner: Option<Owner>,
}

impl From<EntryV2> for Entry {
    fn from(e: EntryV2) -> Self {
        Entry {
            owner: e.owner,
            ..Entry::plain(e.name, e.kind, e.mode, (e.mtime_secs, e.mtime_nanos))
        }
    }
}

/// An entry of a version 1 tree.
#[derive(Deserialize)]
struct EntryV1 {
    name: Vec<u8>,
    kind: EntryKind,
    mode: u32,
    mtime_secs: i64,
    mtime_nanos: u32,
}

impl From<EntryV1> for Entry {
    fn from(e: EntryV1) -> Self {
        Entry::plain(e.name, e.kind, e.mode, (e.mtime_secs, e.mtime_nanos))
    }
}

/// One directory's listing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tree {
    entries: Vec<Entry>,
}

/// A tree blob that does not decode.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error(
        "tree has format version {0}; this client reads version {TREE_VERSION}, upgrade offsite"
    )]
    Version(u32),
    #[error("tree does not decode: {0}; the snapshot's tree blob is corrupt")]
    Decode(postcard::Error),
    #[error("tree entry {name:?} is invalid: {problem}; the snapshot's tree blob is corrupt")]
    Entry { name: String, problem: &'static str },
    #[error("tree has {0} entries, more than the {MAX_ENTRIES} allowed")]
    TooMany(usize),
}

impl Tree {
    /// Builds a tree, sorting the entries by name.
    pub fn new(mut entries: Vec<Entry>) -> Self {
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Self { entries }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The tree's stored bytes (the plaintext of its blob).
    pub fn encode(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Borrowed<'a> {
            version: u32,
            entries: &'a [Entry],
        }
        // Serializing plain data into a Vec cannot fail.
        postcard::to_stdvec(&Borrowed {
            version: TREE_VERSION,
            entries: &self.entries,
        })
        .unwrap_or_default()
    }

    /// Decodes and checks a tree: version, bounds, safe names, sorted and unique.
    pub fn decode(bytes: &[u8]) -> Result<Self, TreeError> {
        let (version, rest) = postcard::take_from_bytes::<u32>(bytes).map_err(TreeError::Decode)?;
        let entries: Vec<Entry> = match version {
            TREE_VERSION => postcard::from_bytes(rest).map_err(TreeError::Decode)?,
            TREE_VERSION_2 => postcard::from_bytes::<Vec<EntryV2>>(rest)
                .map_err(TreeError::Decode)?
                .into_iter()
                .map(Entry::from)
                .collect(),
            TREE_VERSION_1 => postcard::from_bytes::<Vec<EntryV1>>(rest)
                .map_err(TreeError::Decode)?
                .into_iter()
                .map(Entry::from)
                .collect(),
            other => return Err(TreeError::Version(other)),
        };
        if entries.len() > MAX_ENTRIES {
            return Err(TreeError::TooMany(entries.len()));
        }
        for (i, entry) in entries.iter().enumerate() {
            check_entry(entry)?;
            if i > 0 && entries[i - 1].name >= entry.name {
                return Err(entry_error(entry, "entries are not sorted and unique"));
            }
        }
        Ok(Self { entries })
    }
}

fn entry_error(entry: &Entry, problem: &'static str) -> TreeError {
    TreeError::Entry {
        name: String::from_utf8_lossy(&entry.name).into_owned(),
        problem,
    }
}

/// A name must be one path component: restoring must never escape the target.
fn check_entry(entry: &Entry) -> Result<(), TreeError> {
    let name = &entry.name;
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(entry_error(entry, "name is empty or too long"));
    }
    if name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(entry_error(entry, "name is not a single path component"));
    }
    if entry.mtime_nanos >= 1_000_000_000 {
        return Err(entry_error(entry, "mtime nanoseconds out of range"));
    }
    if let Some(owner) = &entry.owner {
        let too_long = |n: &Option<String>| n.as_ref().is_some_and(|n| n.len() > MAX_OWNER_NAME);
        if too_long(&owner.user) || too_long(&owner.group) {
            return Err(entry_error(entry, "owner or group name too long"));
        }
    }
    check_xattrs(entry)?;
    let file = matches!(entry.kind, EntryKind::File { .. });
    if (entry.sparse || entry.link_group.is_some()) && !file {
        return Err(entry_error(
            entry,
            "only a file can be sparse or a hard link",
        ));
    }
    if let EntryKind::File { size, content } = &entry.kind {
        let total: u64 = content.iter().map(|c| u64::from(c.len)).sum();
        let max = crate::format::chunker::MAX_CHUNK;
        if total != *size || content.iter().any(|c| c.len == 0 || c.len > max) {
            return Err(entry_error(entry, "file size does not match its chunks"));
        }
    }
    if let EntryKind::Symlink { target } = &entry.kind {
        if target.is_empty() || target.len() > MAX_NAME_BYTES || target.contains(&0) {
            return Err(entry_error(
                entry,
                "link target is empty, too long or has NUL",
            ));
        }
    }
    Ok(())
}

/// At most [`MAX_XATTRS`], each name and value within Linux's limits,
/// sorted by name and unique.
fn check_xattrs(entry: &Entry) -> Result<(), TreeError> {
    let xattrs = &entry.xattrs;
    if xattrs.len() > MAX_XATTRS {
        return Err(entry_error(entry, "too many extended attributes"));
    }
    for (i, x) in xattrs.iter().enumerate() {
        if x.name.is_empty() || x.name.len() > MAX_XATTR_NAME || x.name.contains(&0) {
            return Err(entry_error(
                entry,
                "extended attribute name is empty, too long or has NUL",
            ));
        }
        if x.value.len() > MAX_XATTR_VALUE {
            return Err(entry_error(entry, "extended attribute value too long"));
        }
        if i > 0 && xattrs[i - 1].name >= x.name {
            return Err(entry_error(
                entry,
                "extended attributes are not sorted and unique",
            ));
        }
    }
    Ok(())
}

/// A tree of every entry kind, with names that are not UTF-8 (for tests).
#[cfg(test)]
pub(crate) fn sample_tree() -> Tree {
    use tests::entry;
    Tree::new(vec![
        entry(
            b"zeta",
            EntryKind::Symlink {
                target: b"../a\xff".to_vec(),
            },
        ),
        entry(
            b"caf\xe9",
            EntryKind::File {
                size: 3,
                content: vec![ChunkRef {
                    id: BlobId([1; 32]),
                    len: 3,
                }],
            },
        ),
        entry(
            b"dir",
            EntryKind::Dir {
                subtree: BlobId([2; 32]),
            },
        ),
        entry(
            b"empty",
            EntryKind::File {
                size: 0,
                content: vec![],
            },
        ),
        entry(b"pipe", EntryKind::Fifo),
        Entry {
            xattrs: vec![Xattr {
                name: b"user.note".to_vec(),
                value: b"\0\xff".to_vec(),
            }],
            ..entry(
                b"null",
                EntryKind::Device {
                    block: false,
                    rdev: 0x103,
                },
            )
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn entry(name: &[u8], kind: EntryKind) -> Entry {
        Entry {
            owner: Some(Owner {
                uid: 1000,
                gid: 100,
                user: Some("me".into()),
                group: None,
            }),
            ..Entry::plain(name.to_vec(), kind, 0o644, (1_700_000_000, 5))
        }
    }

    /// A tree written by version 1 (no owners) still decodes, its entries
    /// without an owner.
    #[test]
    fn version_1_trees_decode_without_owners() {
        #[derive(Serialize)]
        struct V1<'a> {
            name: &'a [u8],
            kind: EntryKind,
            mode: u32,
            mtime_secs: i64,
            mtime_nanos: u32,
        }
        let old = V1 {
            name: b"f",
            kind: EntryKind::Symlink {
                target: b"t".to_vec(),
            },
            mode: 0o777,
            mtime_secs: 7,
            mtime_nanos: 8,
        };
        let bytes = postcard::to_stdvec(&(1u32, vec![old])).unwrap();
        let tree = Tree::decode(&bytes).unwrap();
        let entry = &tree.entries()[0];
        assert_eq!((entry.name.as_slice(), entry.mtime_secs), (&b"f"[..], 7));
        assert_eq!(entry.owner, None);
        // And version 3 keeps the owner.
        let kept = Tree::decode(&sample_tree().encode()).unwrap();
        assert_eq!(kept.entries()[0].owner.as_ref().unwrap().uid, 1000);
    }

    /// A tree written by version 2 (owners, no extended attributes, links
    /// or special files) still decodes, keeping its owners.
    #[test]
    fn version_2_trees_decode_with_owners() {
        #[derive(Serialize)]
        struct V2<'a> {
            name: &'a [u8],
            kind: EntryKind,
            mode: u32,
            mtime_secs: i64,
            mtime_nanos: u32,
            owner: Option<Owner>,
        }
        let old = V2 {
            name: b"f",
            kind: EntryKind::File {
                size: 0,
                content: vec![],
            },
            mode: 0o4755,
            mtime_secs: 7,
            mtime_nanos: 8,
            owner: Some(Owner {
                uid: 0,
                gid: 0,
                user: Some("root".into()),
                group: Some("root".into()),
            }),
        };
        let bytes = postcard::to_stdvec(&(2u32, vec![old])).unwrap();
        let entry = Tree::decode(&bytes).unwrap().entries()[0].clone();
        assert_eq!(entry.owner.unwrap().user.as_deref(), Some("root"));
        assert_eq!((entry.mode, entry.mtime_nanos), (0o4755, 8));
        assert!(entry.xattrs.is_empty() && entry.link_group.is_none() && !entry.sparse);
    }

    #[test]
    fn bad_extended_attributes_and_misplaced_flags_are_refused() {
        let with = |xattrs: Vec<(&[u8], usize)>| Entry {
            xattrs: xattrs
                .into_iter()
                .map(|(name, len)| Xattr {
                    name: name.to_vec(),
                    value: vec![7; len],
                })
                .collect(),
            ..entry(b"f", EntryKind::Fifo)
        };
        let long_name = vec![b'u'; MAX_XATTR_NAME + 1];
        for bad in [
            with(vec![(b"user.b", 1), (b"user.a", 1)]),
            with(vec![(b"user.a", 1), (b"user.a", 1)]),
            with(vec![(b"", 1)]),
            with(vec![(b"user.\0", 1)]),
            with(vec![(&long_name, 1)]),
            with(vec![(b"user.a", MAX_XATTR_VALUE + 1)]),
            Entry {
                sparse: true,
                ..entry(b"f", EntryKind::Fifo)
            },
            Entry {
                link_group: Some(1),
                ..entry(
                    b"f",
                    EntryKind::Dir {
                        subtree: BlobId([2; 32]),
                    },
                )
            },
        ] {
            let tree = Tree { entries: vec![bad] };
            assert!(Tree::decode(&tree.encode()).is_err(), "{tree:?}");
        }
        let good = with(vec![(b"user.a", MAX_XATTR_VALUE), (b"user.b", 0)]);
        let tree = Tree {
            entries: vec![good],
        };
        assert_eq!(Tree::decode(&tree.encode()).unwrap(), tree);
    }

    #[test]
    fn round_trips_sorted_with_non_utf8_names() {
        let tree = sample_tree();
        let names: Vec<&[u8]> = tree.entries().iter().map(|e| e.name.as_slice()).collect();
        assert_eq!(
            names,
            vec![&b"caf\xe9"[..], b"dir", b"empty", b"null", b"pipe", b"zeta"]
        );
        assert_eq!(Tree::decode(&tree.encode()).unwrap(), tree);
    }

    #[test]
    fn escaping_or_unsorted_names_are_refused() {
        let long = vec![b'x'; MAX_NAME_BYTES + 1];
        for bad in [&b".."[..], b"a/b", b"", b".", b"a\0b", b"/", b"/etc", &long] {
            let tree = Tree {
                entries: vec![entry(
                    bad,
                    EntryKind::Symlink {
                        target: b"x".to_vec(),
                    },
                )],
            };
            assert!(Tree::decode(&tree.encode()).is_err(), "{bad:?}");
        }
        let unsorted = Tree {
            entries: vec![
                entry(
                    b"b",
                    EntryKind::Symlink {
                        target: b"x".to_vec(),
                    },
                ),
                entry(
                    b"a",
                    EntryKind::Symlink {
                        target: b"x".to_vec(),
                    },
                ),
            ],
        };
        assert!(Tree::decode(&unsorted.encode()).is_err());
        // A symlink and a directory of one name: `a -> /etc` and `a/passwd`.
        let twice = Tree::new(vec![
            entry(
                b"a",
                EntryKind::Symlink {
                    target: b"/etc".to_vec(),
                },
            ),
            entry(
                b"a",
                EntryKind::Dir {
                    subtree: BlobId([2; 32]),
                },
            ),
        ]);
        assert!(Tree::decode(&twice.encode()).is_err());
        let lying = Tree::new(vec![entry(
            b"f",
            EntryKind::File {
                size: 9,
                content: vec![ChunkRef {
                    id: BlobId([1; 32]),
                    len: 3,
                }],
            },
        )]);
        assert!(Tree::decode(&lying.encode()).is_err());
        let mut wrong_version = Tree::default().encode();
        wrong_version[0] = 9;
        assert!(matches!(
            Tree::decode(&wrong_version),
            Err(TreeError::Version(9))
        ));
    }
}
