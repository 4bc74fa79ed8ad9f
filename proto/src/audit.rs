//! Audit proofs: a slice of a portion with the blake3 tree nodes that link
//! it to the portion's hash (the bao encoding of a slice). The vendor makes
//! one from the portion's bytes; the coordinator checks it against the hash
//! in the FAT without holding the portion. The portion hash is plain
//! blake3, which is bao's root hash, so nothing extra is stored at upload.

use std::io::{Cursor, Read};

/// Longest slice an audit asks for.
pub const MAX_AUDIT_LENGTH: u64 = 64 * 1024;
/// Slices start on blake3 chunk boundaries (1 KiB), which keeps proofs small.
pub const AUDIT_ALIGN: u64 = 1024;

/// Why a slice could not be proved or did not verify.
#[derive(Debug, thiserror::Error)]
pub enum AuditProofError {
    #[error("slice at {offset} of {length} bytes is outside the portion of {size} bytes or longer than {MAX_AUDIT_LENGTH}")]
    Range { offset: u64, length: u64, size: u64 },
    #[error("the held copy does not hash to the portion's hash: it is damaged")]
    Damaged,
    #[error("the slice does not verify against the portion's hash: {0}")]
    Invalid(std::io::Error),
    #[error("the slice holds {got} bytes of content, not the {wanted} asked for")]
    Short { got: usize, wanted: u64 },
}

fn check_range(size: u64, offset: u64, length: u64) -> Result<(), AuditProofError> {
    let end = offset.checked_add(length);
    if length == 0 || length > MAX_AUDIT_LENGTH || end.is_none_or(|end| end > size) {
        return Err(AuditProofError::Range {
            offset,
            length,
            size,
        });
    }
    Ok(())
}

/// The proof of `portion[offset..offset + length]` against `hash` (the
/// portion's blake3). A copy that no longer hashes to `hash` is damaged and
/// gets no proof.
pub fn prove(
    portion: &[u8],
    hash: &[u8; 32],
    offset: u64,
    length: u64,
) -> Result<Vec<u8>, AuditProofError> {
    check_range(portion.len() as u64, offset, length)?;
    let (outboard, root) = bao::encode::outboard(portion);
    if root.as_bytes() != hash {
        return Err(AuditProofError::Damaged);
    }
    let mut extractor = bao::encode::SliceExtractor::new_outboard(
        Cursor::new(portion),
        Cursor::new(&outboard),
        offset,
        length,
    );
    let mut slice = Vec::new();
    extractor
        .read_to_end(&mut slice)
        .map_err(AuditProofError::Invalid)?;
    Ok(slice)
}

/// Checks a proof of `length` bytes at `offset` of a portion of `size`
/// bytes hashing to `hash`; the slice's content when it verifies.
pub fn verify(
    proof: &[u8],
    hash: &[u8; 32],
    size: u64,
    offset: u64,
    length: u64,
) -> Result<Vec<u8>, AuditProofError> {
    check_range(size, offset, length)?;
    // Bounded: a proof of 64 KiB carries at most a few KiB of tree nodes.
    if proof.len() as u64 > 2 * MAX_AUDIT_LENGTH + 64 * 1024 {
        return Err(AuditProofError::Invalid(std::io::Error::other(
            "the proof is far longer than a slice's",
        )));
    }
    let root = bao::Hash::from(*hash);
    let mut decoder = bao::decode::SliceDecoder::new(Cursor::new(proof), &root, offset, length);
    let mut content = Vec::new();
    decoder
        .read_to_end(&mut content)
        .map_err(AuditProofError::Invalid)?;
    if content.len() as u64 != length {
        return Err(AuditProofError::Short {
            got: content.len(),
            wanted: length,
        });
    }
    Ok(content)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Many random audits of honest copies all pass, with the real proof
    /// code; a copy with one byte changed never does where it matters.
    #[test]
    fn honest_copies_pass_every_audit_and_damaged_ones_fail() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for round in 0..200 {
            let size = rng.gen_range(1..=3 << 20);
            let mut portion = vec![0u8; size];
            rng.fill(&mut portion[..]);
            let hash = *blake3::hash(&portion).as_bytes();
            let offset = rng.gen_range(0..size as u64) / AUDIT_ALIGN * AUDIT_ALIGN;
            let length = (size as u64 - offset).min(MAX_AUDIT_LENGTH);
            let proof = prove(&portion, &hash, offset, length).unwrap();
            let content = verify(&proof, &hash, size as u64, offset, length).unwrap();
            assert_eq!(
                content,
                &portion[offset as usize..(offset + length) as usize],
                "{round}"
            );
            // A proof of the right bytes against another hash fails.
            let mut other = hash;
            other[0] ^= 1;
            assert!(verify(&proof, &other, size as u64, offset, length).is_err());
            // A flipped bit anywhere in the proof fails.
            let mut bad = proof.clone();
            let at = rng.gen_range(0..bad.len());
            bad[at] ^= 1 << rng.gen_range(0..8);
            assert!(
                verify(&bad, &hash, size as u64, offset, length).is_err(),
                "{round}"
            );
            // A damaged copy gets no proof at all.
            let mut damaged = portion.clone();
            damaged[rng.gen_range(0..size)] ^= 1;
            assert!(matches!(
                prove(&damaged, &hash, offset, length),
                Err(AuditProofError::Damaged)
            ));
        }
    }

    #[test]
    fn ranges_outside_the_portion_are_refused() {
        let portion = vec![1u8; 4096];
        let hash = *blake3::hash(&portion).as_bytes();
        for (offset, length) in [
            (0, 0),
            (4000, 200),
            (0, MAX_AUDIT_LENGTH + 1),
            (u64::MAX, 2),
        ] {
            assert!(prove(&portion, &hash, offset, length).is_err());
            assert!(verify(&[], &hash, 4096, offset, length).is_err());
        }
    }
}
