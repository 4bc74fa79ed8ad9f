//! The piece file format, version 1: 8-byte magic `OFPIECE` + version byte,
//! the 32-byte blake3 hash of the data, the data length as u64 little-endian,
//! then the data. Pure functions, no I/O, so every check is unit-testable.

use offsite_proto::Hash;

/// `OFPIECE` followed by the format version.
pub(crate) const MAGIC: &[u8; 7] = b"OFPIECE";
/// The only format version this build writes and reads.
pub(crate) const VERSION: u8 = 1;
/// Magic + version, hash, length.
pub(crate) const HEADER_LEN: usize = 8 + 32 + 8;

/// What the header of a piece file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub hash: Hash,
    pub len: u64,
}

/// The header bytes for a piece with this hash and length.
pub(crate) fn encode_header(hash: &Hash, len: u64) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[..7].copy_from_slice(MAGIC);
    out[7] = VERSION;
    out[8..40].copy_from_slice(&hash.0);
    out[40..48].copy_from_slice(&len.to_le_bytes());
    out
}

/// Parses a header; the error says what is wrong with it.
pub(crate) fn decode_header(bytes: &[u8]) -> Result<Header, String> {
    if bytes.len() < HEADER_LEN {
        return Err(format!(
            "file is {} bytes, shorter than the {HEADER_LEN}-byte header",
            bytes.len()
        ));
    }
    if &bytes[..7] != MAGIC {
        return Err("file does not start with the OFPIECE magic".to_string());
    }
    if bytes[7] != VERSION {
        return Err(format!(
            "format version {} is unknown; this build reads version {VERSION}",
            bytes[7]
        ));
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&bytes[8..40]);
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[40..48]);
    Ok(Header {
        hash: Hash(hash),
        len: u64::from_le_bytes(len),
    })
}

/// Checks that the header's length matches the file's length.
pub(crate) fn check_length(header: &Header, file_len: u64) -> Result<(), String> {
    let body = file_len.saturating_sub(HEADER_LEN as u64);
    if header.len != body {
        return Err(format!(
            "header says {} data bytes but the file holds {body}",
            header.len
        ));
    }
    Ok(())
}

/// Checks a whole piece file and returns its data and hash.
pub(crate) fn decode(file: &[u8]) -> Result<(Header, &[u8]), String> {
    let header = decode_header(file)?;
    check_length(&header, file.len() as u64)?;
    let data = &file[HEADER_LEN..];
    let actual = Hash::of(data);
    if actual != header.hash {
        return Err(format!(
            "data hashes to {actual}, not the stored {}",
            header.hash
        ));
    }
    Ok((header, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(data: &[u8]) -> Vec<u8> {
        let mut file = encode_header(&Hash::of(data), data.len() as u64).to_vec();
        file.extend_from_slice(data);
        file
    }

    #[test]
    fn round_trip() {
        let file = encode(b"hello piece");
        let (header, data) = decode(&file).unwrap();
        assert_eq!(data, b"hello piece");
        assert_eq!(header.hash, Hash::of(b"hello piece"));
        assert_eq!(header.len, 11);
    }

    #[test]
    fn unknown_version_is_named() {
        let mut file = encode(b"x");
        file[7] = 2;
        let err = decode(&file).unwrap_err();
        assert!(err.contains("version 2"), "{err}");
    }

    #[test]
    fn truncated_file_is_refused() {
        let file = encode(b"some data");
        assert!(decode(&file[..file.len() - 1]).is_err());
        assert!(decode(&file[..10]).unwrap_err().contains("shorter"));
    }

    proptest! {
        #[test]
        fn any_flipped_byte_is_detected(
            data in proptest::collection::vec(any::<u8>(), 0..512),
            pos in any::<prop::sample::Index>(),
            mask in 1u8..=255,
        ) {
            let mut file = encode(&data);
            let at = pos.index(file.len());
            file[at] ^= mask;
            prop_assert!(decode(&file).is_err());
        }
    }
}
