//! Id newtypes, so the compiler keeps tenants, vendors, portions and the rest
//! apart. Named ids (tenant, vendor, piece, request) are short strings of
//! `[A-Za-z0-9._-]`; generated ids (portion, snapshot, reservation) are 16
//! random bytes written as 32 hex digits.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::limits::MAX_ID_LEN;
use crate::WireError;

fn check_name(field: &'static str, value: &str) -> Result<(), WireError> {
    if value.is_empty() {
        return Err(WireError::missing(field));
    }
    if value.len() > MAX_ID_LEN {
        return Err(WireError::new(
            field,
            format!(
                "{} characters, more than the {MAX_ID_LEN} allowed",
                value.len()
            ),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(WireError::new(
            field,
            format!("{value:?} contains {bad:?}; use only letters, digits, '.', '_' and '-'"),
        ));
    }
    Ok(())
}

macro_rules! named_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Checks the id's characters and length.
            pub fn new(value: impl Into<String>) -> Result<Self, WireError> {
                let value = value.into();
                check_name($field, &value)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = WireError;
            fn from_str(s: &str) -> Result<Self, WireError> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = WireError;
            fn try_from(s: String) -> Result<Self, WireError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

named_id!(
    /// A customer account.
    TenantId,
    "tenant_id"
);
named_id!(
    /// A storage provider running `offsite-vendor`.
    VendorId,
    "vendor_id"
);
named_id!(
    /// A vendor's re-chunk of a portion, stored on one NAS device.
    PieceId,
    "piece_id"
);
named_id!(
    /// Makes a retried write apply once.
    RequestId,
    "request_id"
);

macro_rules! random_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name([u8; 16]);

        impl $name {
            pub fn random() -> Self {
                Self(rand::random())
            }

            pub const fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(bytes)
            }

            pub fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }

            /// Parses the 32-hex-digit form, naming the field on error.
            pub fn parse(value: &str) -> Result<Self, WireError> {
                let mut bytes = [0u8; 16];
                if value.is_empty() {
                    return Err(WireError::missing($field));
                }
                hex::decode_to_slice(value, &mut bytes).map_err(|_| {
                    WireError::new(
                        $field,
                        format!("{:?} is not 32 hex digits", truncate(value)),
                    )
                })?;
                Ok(Self(bytes))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), hex::encode(self.0))
            }
        }

        impl FromStr for $name {
            type Err = WireError;
            fn from_str(s: &str) -> Result<Self, WireError> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = WireError;
            fn try_from(s: String) -> Result<Self, WireError> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.to_string()
            }
        }
    };
}

random_id!(
    /// A pack of blobs, the unit of placement and upload.
    PortionId,
    "portion_id"
);
random_id!(
    /// One backup.
    SnapshotId,
    "snapshot_id"
);
random_id!(
    /// Provisional FAT held for one client under a lease.
    ReservationId,
    "reservation_id"
);

/// A blake3 hash of a portion or piece.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// Checks a hash field from the wire.
    pub fn from_wire(field: &'static str, bytes: &[u8]) -> Result<Self, WireError> {
        let array: [u8; 32] = bytes.try_into().map_err(|_| {
            WireError::new(
                field,
                format!("{} bytes; a blake3 hash is 32 bytes", bytes.len()),
            )
        })?;
        Ok(Self(array))
    }

    pub fn to_vec(self) -> Vec<u8> {
        self.0.to_vec()
    }
}

impl From<[u8; 32]> for Hash {
    fn from(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", &hex::encode(self.0)[..16])
    }
}

fn truncate(value: &str) -> &str {
    match value.char_indices().nth(40) {
        Some((end, _)) => &value[..end],
        None => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_ids_refuse_bad_characters_and_length() {
        assert!(TenantId::new("acme-corp_1.eu").is_ok());
        let err = TenantId::new("acme/../x").unwrap_err();
        assert_eq!(err.field, "tenant_id");
        assert!(err.problem.contains("'/'"), "{err}");
        assert!(VendorId::new("").is_err());
        assert!(VendorId::new("v".repeat(MAX_ID_LEN + 1)).is_err());
    }

    #[test]
    fn random_ids_round_trip_through_text_and_serde() {
        let id = ReservationId::random();
        assert_eq!(ReservationId::parse(&id.to_string()).unwrap(), id);
        assert_eq!(id.to_string().len(), 32);
        assert!(PortionId::parse("xyz").is_err());
        assert!(PortionId::parse("").is_err());
    }

    #[test]
    fn hash_from_wire_checks_length() {
        assert!(Hash::from_wire("hash", &[0u8; 32]).is_ok());
        let err = Hash::from_wire("hash", &[0u8; 31]).unwrap_err();
        assert!(err.problem.contains("31 bytes"));
    }
}
