//! How the coordinator group encodes what it stores and sends: postcard
//! behind one format version byte, so stored records can be migrated and a
//! peer of another build is refused with a clear error.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Version byte in front of every log entry, vote, snapshot and message.
pub const FORMAT_VERSION: u8 = 6;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_another_version_is_named() {
        let bytes = encode(&(7u64, "x".to_string())).unwrap();
        assert_eq!(decode::<(u64, String)>(&bytes).unwrap(), (7, "x".into()));
        let mut other = bytes.clone();
        other[0] = 9;
        let err = decode::<(u64, String)>(&other).unwrap_err();
        assert!(err.contains("format version 9"), "{err}");
        assert!(decode::<u64>(&[]).is_err());
    }
}
