//! How the coordinator group encodes what it stores and sends: postcard
//! behind one format version byte, so stored records can be migrated and a
//! peer of another build is refused with a clear error.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Version byte in front of every log entry, vote, snapshot and message.
pub const FORMAT_VERSION: u8 = 9;
/// The version before ours, and the oldest one still read. Their log
/// entries, votes, log ids and stored snapshot records have our layout (7,
/// 8 and 9 only appended commands and outcomes), so [`decode_stored`] reads
/// them as they are; the FAT inside a snapshot gained the ledger in 7, the
/// vendors' reputation in 8, and the bad copies and the departures (exits,
/// reliefs) in 9, and is migrated by `fat::decode_snapshot` (9 also
/// appended a reservation state). Version 9 also signs receipts with their
/// reservation: a peer of version 8 would refuse commits this one accepts,
/// so the two do not talk.
pub const PREVIOUS_FORMAT_VERSION: u8 = 8;
pub const OLDEST_FORMAT_VERSION: u8 = 6;

/// Encodes `value` behind the format version byte.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    let mut bytes = vec![FORMAT_VERSION];
    postcard::to_io(value, &mut bytes).map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// Decodes a record written by [`encode`]; names the version it found when
/// it is not ours.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, body)) => postcard::from_bytes(body).map_err(|e| e.to_string()),
        Some((version, _)) => Err(format!(
            "format version {version}, but this build reads version {FORMAT_VERSION}"
        )),
        None => Err("empty record".into()),
    }
}

/// Decodes a stored record whose layout is the same in our version and the
/// one before (log entries, votes, log ids, the snapshot record around the
/// FAT).
pub fn decode_stored<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        Some((&(OLDEST_FORMAT_VERSION..=PREVIOUS_FORMAT_VERSION), body)) => {
            postcard::from_bytes(body).map_err(|e| e.to_string())
        }
        _ => decode(bytes),
    }
}

/// The version byte and the body after it.
pub fn split_version(bytes: &[u8]) -> Result<(u8, &[u8]), String> {
    bytes
        .split_first()
        .map(|(v, body)| (*v, body))
        .ok_or_else(|| "empty record".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_another_version_is_named() {
        let bytes = encode(&(7u64, "x".to_string())).unwrap();
        assert_eq!(decode::<(u64, String)>(&bytes).unwrap(), (7, "x".into()));
        let mut other = bytes.clone();
        other[0] = FORMAT_VERSION + 1;
        let err = decode::<(u64, String)>(&other).unwrap_err();
        assert!(
            err.contains(&format!("format version {}", FORMAT_VERSION + 1)),
            "{err}"
        );
        assert!(decode::<u64>(&[]).is_err());
    }

    #[test]
    fn a_stored_record_of_the_previous_versions_is_read_and_an_older_one_is_named() {
        let mut bytes = encode(&(7u64, "x".to_string())).unwrap();
        for old in OLDEST_FORMAT_VERSION..=PREVIOUS_FORMAT_VERSION {
            bytes[0] = old;
            assert_eq!(
                decode_stored::<(u64, String)>(&bytes).unwrap(),
                (7, "x".into())
            );
            assert!(decode::<(u64, String)>(&bytes).is_err());
        }
        bytes[0] = OLDEST_FORMAT_VERSION - 1;
        let err = decode_stored::<(u64, String)>(&bytes).unwrap_err();
        assert!(
            err.contains(&format!("format version {}", OLDEST_FORMAT_VERSION - 1)),
            "{err}"
        );
    }
}
