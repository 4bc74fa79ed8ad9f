//! Bounds on everything that arrives from the network. Each daemon checks
//! these where a message arrives; the client stays within them.

/// Largest data frame in a store or fetch stream.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;
/// Frame size senders use.
pub const FRAME_BYTES: usize = 256 * 1024;
/// Largest portion a vendor accepts.
pub const MAX_PORTION_BYTES: u64 = 256 * 1024 * 1024;
/// Most vendors on one route.
pub const MAX_ROUTE_LEN: usize = 16;
/// Smallest and largest re-chunk (piece) size.
pub const MIN_PIECE_BYTES: u64 = 64 * 1024;
pub const MAX_PIECE_BYTES: u64 = 64 * 1024 * 1024;
/// Default re-chunk size.
pub const DEFAULT_PIECE_BYTES: u64 = 5 * 1024 * 1024;
/// Longest id (tenant, vendor, piece, request).
pub const MAX_ID_LEN: usize = 128;
/// Longest `host:port` address.
pub const MAX_ADDRESS_LEN: usize = 255;
/// Largest grant or signature blob.
pub const MAX_GRANT_BYTES: usize = 4096;
/// Largest probe payload.
pub const MAX_PROBE_BYTES: usize = 1024 * 1024;
/// Most portions in one commit or locate call.
pub const MAX_PORTIONS_PER_CALL: usize = 100_000;
/// Most paths or tags on one snapshot record; longest path or tag.
pub const MAX_SNAPSHOT_LIST: usize = 1024;
pub const MAX_SNAPSHOT_STRING: usize = 4096;
/// Largest gRPC message any Offsite service decodes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Largest replication factor.
pub const MAX_REPLICATION: u32 = 16;
