//! Blobs: a chunk, a tree or a manifest after compression and encryption.
//!
//! A blob's id is the blake3 hash of its plaintext keyed with the blob-id key,
//! so ids reveal nothing to vendors (a manifest's id is derived from its
//! snapshot id instead, so the snapshot record suffices to open it). The sealed form (the blob envelope) is:
//! version byte, kind byte, 24-byte random nonce, then XChaCha20-Poly1305 over
//! the zstd-compressed plaintext with the id and kind as associated data.

use std::cell::RefCell;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::io::Read;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::format::keys::Keys;

/// Version byte of the blob envelope.
pub const BLOB_VERSION: u8 = 1;
/// Bytes of envelope before the ciphertext.
pub const HEADER_BYTES: usize = 2 + 24;
/// Bytes the AEAD adds.
pub const TAG_BYTES: usize = 16;

/// How hard a backup compresses its data and tree blobs: `compression` in
/// the config, `backup --compression` (manifests are always sealed at
/// `Auto`). Every level reads back the same way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// zstd level 1: about a quarter less compression CPU than `auto`, a
    /// few percent more bytes (6% on the bench tree).
    Fastest,
    /// zstd level 3.
    #[default]
    Auto,
    /// zstd level 9: about 12% smaller than `auto` for five times its CPU;
    /// for slow uplinks and storage that costs more than CPU.
    Max,
}

impl Compression {
    pub fn zstd_level(self) -> i32 {
        match self {
            Compression::Fastest => 1,
            Compression::Auto => 3,
            Compression::Max => 9,
        }
    }
}

/// A blob's id: keyed blake3 of its plaintext.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlobId(pub [u8; 32]);

/// An id hashes as its first eight bytes: ids are keyed blake3 outputs,
/// uniform and unpredictable without the tenant's key, so `BlobMap` and
/// `BlobSet` only mix that word (FxHash) instead of SipHashing all 32.
impl Hash for BlobId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut head = [0u8; 8];
        head.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(head));
    }
}

/// Blob id -> `V`, hashed with FxHash (see `impl Hash for BlobId`).
pub type BlobMap<V> = rustc_hash::FxHashMap<BlobId, V>;
/// A set of blob ids, hashed with FxHash.
pub type BlobSet = rustc_hash::FxHashSet<BlobId>;

impl BlobId {
    /// The id of `plaintext` under the tenant's blob-id key.
    pub fn of(keys: &Keys, plaintext: &[u8]) -> Self {
        Self(*blake3::keyed_hash(keys.blob_id_key(), plaintext).as_bytes())
    }

    /// The id of a snapshot's manifest: derived from the snapshot id (which the
    /// snapshot record carries), not from the plaintext.
    pub fn manifest(keys: &Keys, snapshot: offsite_proto::SnapshotId) -> Self {
        let mut input = b"offsite manifest of snapshot ".to_vec();
        input.extend_from_slice(snapshot.as_bytes());
        Self(*blake3::keyed_hash(keys.blob_id_key(), &input).as_bytes())
    }

    /// The id the client's dedup index cache is sealed under (see
    /// `local::index_cache`). A data blob holding exactly these words
    /// would share it, but not its kind, which the AEAD binds as well.
    pub fn index_cache(keys: &Keys) -> Self {
        Self(*blake3::keyed_hash(keys.blob_id_key(), b"offsite dedup index cache").as_bytes())
    }

    /// The id a snapshot's cached listing is sealed under (see
    /// `local::listing`): bound to the snapshot, so one snapshot's listing
    /// does not open as another's.
    pub fn listing(keys: &Keys, snapshot: &[u8; 16]) -> Self {
        let mut hasher = blake3::Hasher::new_keyed(keys.blob_id_key());
        hasher.update(b"offsite snapshot listing");
        hasher.update(snapshot);
        Self(*hasher.finalize().as_bytes())
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({})", &hex::encode(self.0)[..16])
    }
}

/// What a blob holds; each kind has its own bound on plaintext size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobKind {
    Data,
    Tree,
    Manifest,
}

impl BlobKind {
    fn byte(self) -> u8 {
        match self {
            BlobKind::Data => 1,
            BlobKind::Tree => 2,
            BlobKind::Manifest => 3,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(BlobKind::Data),
            2 => Some(BlobKind::Tree),
            3 => Some(BlobKind::Manifest),
            _ => None,
        }
    }

    /// Largest plaintext a blob of this kind may hold.
    pub fn max_plaintext(self) -> usize {
        match self {
            BlobKind::Data => crate::format::chunker::MAX_CHUNK as usize,
            BlobKind::Tree => 64 * 1024 * 1024,
            BlobKind::Manifest => 192 * 1024 * 1024,
        }
    }
}

/// The kind a sealed blob says it is, if its envelope is readable.
pub fn kind_of(sealed: &[u8]) -> Option<BlobKind> {
    sealed.get(1).copied().and_then(BlobKind::from_byte)
}

/// Why a blob could not be sealed or opened. Opening errors mean the copy is
/// corrupt or not ours: fetch another replica.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlobError {
    #[error("blob {id} is {len} bytes, shorter than any sealed blob; the copy is corrupt")]
    Truncated { id: BlobId, len: usize },
    #[error("blob {id} has envelope version {found}; this client reads version {BLOB_VERSION}, upgrade offsite")]
    Version { id: BlobId, found: u8 },
    #[error("blob {id} is a {found:?} blob where a {expected:?} blob was expected; the index is corrupt")]
    Kind {
        id: BlobId,
        expected: BlobKind,
        found: Option<BlobKind>,
    },
    #[error("blob {id} does not decrypt: it is corrupt or sealed under another key; fetch another replica")]
    Decrypt { id: BlobId },
    #[error("blob {id} decompresses to more than {max} bytes, beyond any {kind:?} blob; the copy is corrupt")]
    TooLarge {
        id: BlobId,
        kind: BlobKind,
        max: usize,
    },
    #[error("blob {id} holds malformed compressed data; the copy is corrupt")]
    Decompress { id: BlobId },
    #[error("blob {id}'s plaintext does not hash to its id; the copy is corrupt")]
    IdMismatch { id: BlobId },
    #[error("zstd could not compress a {kind:?} blob (out of memory?); nothing was stored, run the backup again")]
    Compress { kind: BlobKind },
    #[error("a {kind:?} plaintext of {len} bytes is larger than the {max} allowed")]
    PlaintextTooLarge {
        kind: BlobKind,
        len: usize,
        max: usize,
    },
}

fn associated_data(id: &BlobId, kind: BlobKind) -> [u8; 34] {
    let mut aad = [0u8; 34];
    aad[0] = BLOB_VERSION;
    aad[1] = kind.byte();
    aad[2..].copy_from_slice(&id.0);
    aad
}

/// Compresses (at [`Compression::Auto`]) and encrypts `plaintext` (whose id
/// is `id`) into a blob envelope.
pub fn seal(
    keys: &Keys,
    kind: BlobKind,
    id: &BlobId,
    plaintext: &[u8],
) -> Result<Vec<u8>, BlobError> {
    seal_with(keys, kind, id, plaintext, Compression::Auto)
}

/// [`seal`] at the given compression.
pub fn seal_with(
    keys: &Keys,
    kind: BlobKind,
    id: &BlobId,
    plaintext: &[u8],
    compression: Compression,
) -> Result<Vec<u8>, BlobError> {
    let max = kind.max_plaintext();
    if plaintext.len() > max {
        return Err(BlobError::PlaintextTooLarge {
            kind,
            len: plaintext.len(),
            max,
        });
    }
    let mut out = compress_after_header(plaintext, compression.zstd_level())
        .ok_or(BlobError::Compress { kind })?;
    let mut nonce = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    out[0] = BLOB_VERSION;
    out[1] = kind.byte();
    out[2..HEADER_BYTES].copy_from_slice(&nonce);
    let cipher = XChaCha20Poly1305::new(keys.encryption_key().into());
    let aad = associated_data(id, kind);
    let tag = cipher
        .encrypt_in_place_detached(XNonce::from_slice(&nonce), &aad, &mut out[HEADER_BYTES..])
        .map_err(|_| BlobError::PlaintextTooLarge {
            kind,
            len: plaintext.len(),
            max,
        })?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// `HEADER_BYTES` of room followed by the zstd frame of `plaintext`, with
/// room for the tag. zstd writes straight after the header room, so the
/// frame is not copied. Each thread keeps its compression context, so
/// sealing many small blobs does not set one up per blob. `None` when zstd
/// cannot compress (it could not allocate).
fn compress_after_header(plaintext: &[u8], level: i32) -> Option<Vec<u8>> {
    thread_local! {
        static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
            const { RefCell::new(None) };
    }
    let bound = zstd::zstd_safe::compress_bound(plaintext.len());
    let mut out = Vec::with_capacity(HEADER_BYTES + bound + TAG_BYTES);
    out.resize(HEADER_BYTES, 0);
    let mut after_header = std::io::Cursor::new(out);
    after_header.set_position(HEADER_BYTES as u64);
    let done = COMPRESSOR.with_borrow_mut(|compressor| {
        if compressor.as_ref().is_none_or(|(at, _)| *at != level) {
            *compressor = zstd::bulk::Compressor::new(level).ok().map(|c| (level, c));
        }
        // Compressing from memory into room of the bound's size fails only
        // if zstd cannot allocate; then the one-shot call is tried.
        compressor
            .as_mut()
            .is_some_and(|(_, c)| c.compress_to_buffer(plaintext, &mut after_header).is_ok())
    });
    let mut out = after_header.into_inner();
    if !done {
        out.truncate(HEADER_BYTES);
        out.extend_from_slice(&zstd::bulk::compress(plaintext, level).ok()?);
    }
    Some(out)
}

/// Checks, decrypts and decompresses a blob envelope, and checks the
/// plaintext hashes to `id`. Never returns data that was not sealed as `id`.
pub fn open(keys: &Keys, kind: BlobKind, id: &BlobId, sealed: &[u8]) -> Result<Vec<u8>, BlobError> {
    let mut envelope = sealed.to_vec();
    let mut plaintext = Vec::new();
    open_in_place(keys, kind, id, &mut envelope, &mut plaintext)?;
    Ok(plaintext)
}

/// [`open`] without allocating: decrypts `sealed` where it lies (its bytes
/// are then no longer a blob envelope) and decompresses into `plaintext`,
/// whose memory is reused. On an error `plaintext` holds nothing useful.
pub fn open_in_place(
    keys: &Keys,
    kind: BlobKind,
    id: &BlobId,
    sealed: &mut [u8],
    plaintext: &mut Vec<u8>,
) -> Result<(), BlobError> {
    let id = *id;
    if sealed.len() < HEADER_BYTES + TAG_BYTES {
        return Err(BlobError::Truncated {
            id,
            len: sealed.len(),
        });
    }
    if sealed[0] != BLOB_VERSION {
        return Err(BlobError::Version {
            id,
            found: sealed[0],
        });
    }
    if sealed[1] != kind.byte() {
        return Err(BlobError::Kind {
            id,
            expected: kind,
            found: BlobKind::from_byte(sealed[1]),
        });
    }
    let cipher = XChaCha20Poly1305::new(keys.encryption_key().into());
    let aad = associated_data(&id, kind);
    let (header, rest) = sealed.split_at_mut(HEADER_BYTES);
    let (ciphertext, tag) = rest.split_at_mut(rest.len() - TAG_BYTES);
    cipher
        .decrypt_in_place_detached(
            XNonce::from_slice(&header[2..]),
            &aad,
            ciphertext,
            Tag::from_slice(tag),
        )
        .map_err(|_| BlobError::Decrypt { id })?;
    decompress_bounded(ciphertext, kind, id, plaintext)?;
    // A manifest's id names its snapshot; the AEAD binds the two.
    if kind != BlobKind::Manifest && BlobId::of(keys, plaintext) != id {
        return Err(BlobError::IdMismatch { id });
    }
    Ok(())
}

/// Decompresses into `out` (cleared first), refusing more than `kind` allows.
fn decompress_bounded(
    compressed: &[u8],
    kind: BlobKind,
    id: BlobId,
    out: &mut Vec<u8>,
) -> Result<(), BlobError> {
    let max = kind.max_plaintext();
    out.clear();
    // Our frames say how large they are: decompress straight into a buffer of
    // that size (zstd refuses to write past it) with this thread's context.
    match zstd::zstd_safe::get_frame_content_size(compressed) {
        Ok(Some(size)) if size > max as u64 => return Err(BlobError::TooLarge { id, kind, max }),
        Ok(Some(size)) => return decompress_sized(compressed, size as usize, id, out),
        _ => {}
    }
    let decoder =
        zstd::stream::read::Decoder::new(compressed).map_err(|_| BlobError::Decompress { id })?;
    decoder
        .take(max as u64 + 1)
        .read_to_end(out)
        .map_err(|_| BlobError::Decompress { id })?;
    if out.len() > max {
        return Err(BlobError::TooLarge { id, kind, max });
    }
    Ok(())
}

fn decompress_sized(
    compressed: &[u8],
    size: usize,
    id: BlobId,
    out: &mut Vec<u8>,
) -> Result<(), BlobError> {
    thread_local! {
        static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { RefCell::new(None) };
    }
    DECOMPRESSOR.with_borrow_mut(|decompressor| {
        if decompressor.is_none() {
            *decompressor = zstd::bulk::Decompressor::new().ok();
        }
        let decompressor = decompressor.as_mut().ok_or(BlobError::Decompress { id })?;
        out.reserve(size);
        // zstd writes into the spare capacity, at most `capacity` bytes.
        match decompressor.decompress_to_buffer(compressed, out) {
            Ok(written) if written == size => Ok(()),
            _ => Err(BlobError::Decompress { id }),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys() -> Keys {
        Keys::from_data_key(&[7u8; 32])
    }

    #[test]
    fn id_maps_tell_ids_apart_beyond_the_hashed_head() {
        let keys = keys();
        let ids: Vec<BlobId> = (0u32..10_000)
            .map(|i| BlobId::of(&keys, &i.to_le_bytes()))
            .collect();
        let map: BlobMap<usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        assert_eq!(map.len(), ids.len());
        assert!(ids.iter().enumerate().all(|(i, id)| map[id] == i));
        // Same first eight bytes: one bucket, still two entries.
        let (mut a, mut b) = ([1u8; 32], [1u8; 32]);
        a[31] = 2;
        b[31] = 3;
        let set: BlobSet = [BlobId(a), BlobId(b), BlobId(a)].into_iter().collect();
        assert_eq!(set.len(), 2);
        assert!(!set.contains(&BlobId([1u8; 32])));
    }

    #[test]
    fn seal_then_open_round_trips() {
        let keys = keys();
        let plain = b"hello hello hello hello".repeat(100);
        let id = BlobId::of(&keys, &plain);
        let sealed = seal(&keys, BlobKind::Data, &id, &plain).unwrap();
        assert!(sealed.len() < plain.len(), "compressed before encryption");
        let frame = zstd::bulk::compress(&plain, Compression::Auto.zstd_level()).unwrap();
        assert_eq!(
            sealed.len(),
            HEADER_BYTES + frame.len() + TAG_BYTES,
            "the envelope is the header, the zstd frame and the tag, nothing else"
        );
        assert_eq!(open(&keys, BlobKind::Data, &id, &sealed).unwrap(), plain);
    }

    #[test]
    fn every_compression_opens_and_a_harder_one_is_smaller() {
        let keys = keys();
        // Source text: redundant the way a tree's text files are.
        let plain = [
            include_str!("blob.rs"),
            include_str!("manifest.rs"),
            include_str!("../config.rs"),
            include_str!("chunker.rs"),
        ]
        .concat()
        .into_bytes();
        let id = BlobId::of(&keys, &plain);
        let sizes: Vec<usize> = [Compression::Fastest, Compression::Auto, Compression::Max]
            .into_iter()
            .map(|compression| {
                let sealed = seal_with(&keys, BlobKind::Data, &id, &plain, compression).unwrap();
                assert_eq!(open(&keys, BlobKind::Data, &id, &sealed).unwrap(), plain);
                sealed.len()
            })
            .collect();
        assert!(sizes[0] > sizes[1] && sizes[1] > sizes[2], "{sizes:?}");
    }

    #[test]
    fn wrong_kind_id_or_key_is_refused() {
        let keys = keys();
        let plain = b"tree bytes".to_vec();
        let id = BlobId::of(&keys, &plain);
        let sealed = seal(&keys, BlobKind::Tree, &id, &plain).unwrap();
        assert!(matches!(
            open(&keys, BlobKind::Data, &id, &sealed),
            Err(BlobError::Kind { .. })
        ));
        let other = BlobId::of(&keys, b"other");
        assert_eq!(
            open(&keys, BlobKind::Tree, &other, &sealed),
            Err(BlobError::Decrypt { id: other })
        );
        let stranger = Keys::from_data_key(&[8u8; 32]);
        assert!(open(&stranger, BlobKind::Tree, &id, &sealed).is_err());
        assert!(matches!(
            open(&keys, BlobKind::Tree, &id, &sealed[..10]),
            Err(BlobError::Truncated { .. })
        ));
    }

    #[test]
    fn opening_in_place_reuses_one_plaintext_buffer() {
        let keys = keys();
        let large: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let small = b"a small chunk".to_vec();
        let mut plain = Vec::new();
        for (n, text) in [&large, &small, &Vec::new(), &large]
            .into_iter()
            .enumerate()
        {
            let id = BlobId::of(&keys, text);
            let mut sealed = seal(&keys, BlobKind::Data, &id, text).unwrap();
            open_in_place(&keys, BlobKind::Data, &id, &mut sealed, &mut plain).unwrap();
            assert_eq!(&plain, text, "blob {n}");
        }
        // A blob that does not open leaves the buffer reusable for the next.
        let id = BlobId::of(&keys, &small);
        let mut sealed = seal(&keys, BlobKind::Data, &id, &small).unwrap();
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert_eq!(
            open_in_place(&keys, BlobKind::Data, &id, &mut sealed, &mut plain),
            Err(BlobError::Decrypt { id })
        );
        let mut sealed = seal(&keys, BlobKind::Data, &id, &small).unwrap();
        open_in_place(&keys, BlobKind::Data, &id, &mut sealed, &mut plain).unwrap();
        assert_eq!(plain, small);
    }

    #[test]
    fn ids_are_keyed() {
        assert_ne!(
            BlobId::of(&keys(), b"x"),
            BlobId::of(&Keys::from_data_key(&[9u8; 32]), b"x")
        );
        assert_ne!(BlobId::of(&keys(), b"x").0, *blake3::hash(b"x").as_bytes());
    }

    proptest! {
        #[test]
        fn flipping_any_byte_never_yields_wrong_data(
            plain in proptest::collection::vec(any::<u8>(), 0..2000),
            pos in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let keys = keys();
            let id = BlobId::of(&keys, &plain);
            let mut sealed = seal(&keys, BlobKind::Data, &id, &plain).unwrap();
            let at = pos.index(sealed.len());
            sealed[at] ^= flip;
            prop_assert!(open(&keys, BlobKind::Data, &id, &sealed).is_err());
        }
    }
}
