//! Portions: packs of sealed blobs, the unit of placement and upload. A
//! portion is the 7-byte magic `OFPORT\0` and a version byte, then blob
//! envelopes back to back; the snapshot manifest says where each blob is.

use offsite_proto::limits::MAX_PORTION_BYTES;
use offsite_proto::{BlobLocation, Hash, PortionId};

use crate::format::blob::{BlobId, BlobKind};

/// Magic that opens every portion.
pub const MAGIC: &[u8; 7] = b"OFPORT\0";
/// Version of the portion format.
pub const PORTION_VERSION: u8 = 1;
/// Bytes before the first blob.
pub const HEADER_BYTES: usize = 8;

/// A finished portion, ready to upload.
#[derive(Debug, Clone)]
pub struct Portion {
    pub id: PortionId,
    pub hash: Hash,
    pub bytes: bytes::Bytes,
    /// Each blob in the portion: (id, offset, length); for the resume journal.
    pub blobs: Vec<(BlobId, u64, u64)>,
}

/// Packs sealed blobs into one portion of about `target` bytes.
#[derive(Debug)]
pub struct PortionBuilder {
    id: PortionId,
    target: usize,
    bytes: Vec<u8>,
    blobs: Vec<(BlobId, u64, u64)>,
}

impl PortionBuilder {
    pub fn new(target: u64) -> Self {
        // Room for the whole portion at once: growing by doubling would copy
        // it twice; pages never written are never touched.
        let mut bytes = Vec::with_capacity(target.min(MAX_PORTION_BYTES) as usize);
        bytes.extend_from_slice(MAGIC);
        bytes.push(PORTION_VERSION);
        Self {
            id: PortionId::random(),
            target: target as usize,
            bytes,
            blobs: Vec::new(),
        }
    }

    pub fn id(&self) -> PortionId {
        self.id
    }

    /// True when no blob has been added.
    pub fn is_empty(&self) -> bool {
        self.bytes.len() == HEADER_BYTES
    }

    /// Whether a blob of `len` bytes still fits (an empty portion takes any blob).
    pub fn fits(&self, len: usize) -> bool {
        self.is_empty() || self.bytes.len() + len <= self.target
    }

    /// Appends a sealed blob; returns its (offset, length) in the portion.
    pub fn add(&mut self, id: BlobId, sealed: &[u8]) -> (u64, u64) {
        let offset = self.bytes.len() as u64;
        self.bytes.extend_from_slice(sealed);
        self.blobs.push((id, offset, sealed.len() as u64));
        (offset, sealed.len() as u64)
    }

    /// The finished portion with its blake3 hash.
    pub fn finish(self) -> Portion {
        Portion {
            id: self.id,
            hash: Hash::of(&self.bytes),
            bytes: bytes::Bytes::from(self.bytes),
            blobs: self.blobs,
        }
    }
}

/// A portion's bytes that do not hold what the manifest says.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PortionError {
    #[error("portion {0} does not start with the OFPORT magic; the copy is corrupt")]
    Magic(PortionId),
    #[error("portion {0} has format version {1}; this client reads version {PORTION_VERSION}, upgrade offsite")]
    Version(PortionId, u8),
    #[error("portion {portion} is {len} bytes; a blob at {offset}+{length} lies outside it; the manifest or the copy is corrupt")]
    OutOfBounds {
        portion: PortionId,
        len: usize,
        offset: u64,
        length: u64,
    },
}

/// Packs sealed blobs into portions of about `target` bytes, file data apart
/// from trees and manifests: listing a snapshot or planning its restore then
/// reads a few metadata portions instead of a range of every data portion.
#[derive(Debug)]
pub struct SplitPacker {
    target: u64,
    data: PortionBuilder,
    meta: PortionBuilder,
    /// Portions finished so far.
    pub finished: u64,
}

impl SplitPacker {
    pub fn new(target: u64) -> Self {
        Self {
            target,
            data: PortionBuilder::new(target),
            meta: PortionBuilder::new(target),
            finished: 0,
        }
    }

    /// Adds a blob; returns where it went and the portion it closed, if any.
    pub fn add(
        &mut self,
        kind: BlobKind,
        id: BlobId,
        sealed: &[u8],
    ) -> (BlobLocation, Option<Portion>) {
        let target = self.target;
        let builder = match kind {
            BlobKind::Data => &mut self.data,
            BlobKind::Tree | BlobKind::Manifest => &mut self.meta,
        };
        let closed = (!builder.fits(sealed.len()))
            .then(|| std::mem::replace(builder, PortionBuilder::new(target)).finish());
        let (offset, length) = builder.add(id, sealed);
        let location = BlobLocation {
            portion: builder.id(),
            offset,
            length,
        };
        self.finished += u64::from(closed.is_some());
        (location, closed)
    }

    /// The portions still open, data first (so a manifest is in the last);
    /// empty ones are dropped.
    pub fn take_rest(&mut self) -> Vec<Portion> {
        let mut rest = Vec::with_capacity(2);
        for builder in [&mut self.data, &mut self.meta] {
            if !builder.is_empty() {
                self.finished += 1;
                rest.push(std::mem::replace(builder, PortionBuilder::new(self.target)).finish());
            }
        }
        rest
    }
}

/// Checks a fetched portion's header.
pub fn check_header(portion: PortionId, bytes: &[u8]) -> Result<(), PortionError> {
    if bytes.len() < HEADER_BYTES || &bytes[..7] != MAGIC {
        return Err(PortionError::Magic(portion));
    }
    if bytes[7] != PORTION_VERSION {
        return Err(PortionError::Version(portion, bytes[7]));
    }
    Ok(())
}

/// The blob at `offset..offset+length` of a fetched portion, bounds-checked.
pub fn blob_at(
    portion: PortionId,
    bytes: &[u8],
    offset: u64,
    length: u64,
) -> Result<&[u8], PortionError> {
    let range = blob_range(portion, bytes.len(), offset, length)?;
    Ok(&bytes[range])
}

/// [`blob_at`], mutable: for opening a blob where it lies.
pub fn blob_at_mut(
    portion: PortionId,
    bytes: &mut [u8],
    offset: u64,
    length: u64,
) -> Result<&mut [u8], PortionError> {
    let range = blob_range(portion, bytes.len(), offset, length)?;
    Ok(&mut bytes[range])
}

/// Where `offset`..`offset + length` lies in a portion of `len` bytes,
/// refused if it overlaps the portion's header or runs past its end.
fn blob_range(
    portion: PortionId,
    len: usize,
    offset: u64,
    length: u64,
) -> Result<std::ops::Range<usize>, PortionError> {
    let out_of_bounds = || PortionError::OutOfBounds {
        portion,
        len,
        offset,
        length,
    };
    let start = usize::try_from(offset).map_err(|_| out_of_bounds())?;
    let blob_len = usize::try_from(length).map_err(|_| out_of_bounds())?;
    let end = start.checked_add(blob_len).ok_or_else(out_of_bounds)?;
    if start < HEADER_BYTES || end > len {
        return Err(out_of_bounds());
    }
    Ok(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_come_back_from_where_they_were_put() {
        let mut builder = PortionBuilder::new(100);
        assert!(builder.fits(1000), "an empty portion takes any blob");
        let a = builder.add(BlobId([1; 32]), b"first blob");
        assert!(builder.fits(50));
        assert!(!builder.fits(90));
        let b = builder.add(BlobId([2; 32]), b"second");
        let portion = builder.finish();
        assert_eq!(portion.hash, Hash::of(&portion.bytes));
        check_header(portion.id, &portion.bytes).unwrap();
        assert_eq!(
            blob_at(portion.id, &portion.bytes, a.0, a.1).unwrap(),
            b"first blob"
        );
        assert_eq!(
            blob_at(portion.id, &portion.bytes, b.0, b.1).unwrap(),
            b"second"
        );
    }

    #[test]
    fn out_of_bounds_and_bad_headers_are_refused() {
        let mut builder = PortionBuilder::new(100);
        builder.add(BlobId([3; 32]), b"blob");
        let portion = builder.finish();
        let (id, bytes) = (portion.id, &portion.bytes);
        assert!(blob_at(id, bytes, 8, 5).is_err());
        assert!(blob_at(id, bytes, 0, 4).is_err(), "the header is no blob");
        assert!(blob_at(id, bytes, u64::MAX, 2).is_err());
        assert!(blob_at(id, bytes, 9, u64::MAX).is_err());
        assert_eq!(
            check_header(id, b"OFPORX\0\x01"),
            Err(PortionError::Magic(id))
        );
        assert_eq!(
            check_header(id, b"OFPORT\0\x07"),
            Err(PortionError::Version(id, 7))
        );
        assert!(check_header(id, b"OF").is_err());
    }
}
