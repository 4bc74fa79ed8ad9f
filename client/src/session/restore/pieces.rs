//! A file's chunks as a reader of it needs them (`dump`, `mount`): where
//! each sealed blob lies and where its plaintext goes, in file order, and
//! the last few portions fetched, so that consecutive chunks, which mostly
//! share a portion, fetch it once.

use std::collections::VecDeque;
use std::sync::Arc;

use offsite_proto::PortionId;

use super::plan::Plan;
use super::RestoreError;
use crate::format::blob::{open, BlobId, BlobKind};
use crate::format::keys::Keys;
use crate::format::portion::blob_at;

/// Portions held at once: files are packed in the order they were walked.
pub(crate) const KEPT_PORTIONS: usize = 4;

/// One chunk of a file: where its sealed blob is and where it goes.
pub(crate) struct Piece {
    pub offset: u64,
    pub portion: PortionId,
    /// Offset and length of the sealed blob in its portion.
    pub at: (u64, u64),
    pub id: BlobId,
    pub plain_len: u32,
}

impl Piece {
    /// The chunk's plaintext, cut from its fetched portion and opened.
    pub fn open(&self, keys: &Keys, portion: &[u8]) -> Result<Vec<u8>, RestoreError> {
        let sealed = blob_at(self.portion, portion, self.at.0, self.at.1)?;
        let plain = open(keys, BlobKind::Data, &self.id, sealed)?;
        if plain.len() != self.plain_len as usize {
            return Err(RestoreError::ChunkLength(self.id));
        }
        Ok(plain)
    }

    /// One past the chunk's last byte in its file.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.plain_len)
    }
}

/// Each file's chunks in file order.
pub(crate) fn pieces_by_file(plan: &Plan) -> Vec<Vec<Piece>> {
    let mut by_file: Vec<Vec<Piece>> = plan.files.iter().map(|_| Vec::new()).collect();
    for (portion, writes) in &plan.portions {
        for write in writes {
            for &(file, offset) in &write.targets {
                if let Some(pieces) = by_file.get_mut(file) {
                    pieces.push(Piece {
                        offset,
                        portion: *portion,
                        at: (write.offset, write.length),
                        id: write.id,
                        plain_len: write.plain_len,
                    });
                }
            }
        }
    }
    for pieces in &mut by_file {
        pieces.sort_by_key(|p| p.offset);
    }
    by_file
}

/// The last [`KEPT_PORTIONS`] portions fetched, the oldest dropped first.
#[derive(Default)]
pub(crate) struct HeldPortions(VecDeque<(PortionId, Arc<Vec<u8>>)>);

impl HeldPortions {
    pub fn get(&self, id: PortionId) -> Option<Arc<Vec<u8>>> {
        self.0
            .iter()
            .find(|(p, _)| *p == id)
            .map(|(_, b)| b.clone())
    }

    pub fn keep(&mut self, id: PortionId, bytes: Arc<Vec<u8>>) {
        if self.0.len() >= KEPT_PORTIONS {
            self.0.pop_front();
        }
        self.0.push_back((id, bytes));
    }
}
