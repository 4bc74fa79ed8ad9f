//! What a refusal means where one status code covers several kinds: the
//! coordinator adds the metadata key [`REFUSAL_KEY`] naming the kind, so a
//! client tells them apart without reading the message.

/// Metadata key of a refused call's kind.
pub const REFUSAL_KEY: &str = "offsite-refusal";

/// `ResourceExhausted` because fewer vendors are up with room than the
/// replication asked for: asking for fewer bytes does not help; more
/// vendors, or a lower replication, does.
pub const TOO_FEW_VENDORS: &str = "too-few-vendors";
