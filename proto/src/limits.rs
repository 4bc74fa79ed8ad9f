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
/// Most portions released in one call.
pub const MAX_RELEASE_PER_CALL: usize = 10_000;
/// Most portions in one page of a portion list.
pub const MAX_LISTED_PORTIONS: usize = 10_000;
/// Most held portions one reconciliation request lists.
pub const MAX_RECONCILE_HELD: usize = 10_000;
/// Most piece ids one `Nas.List` page returns.
pub const MAX_LISTED_PIECES: usize = 10_000;
/// Most deletions asked of (or acknowledged by) a vendor in one capacity report.
pub const MAX_DELETIONS_PER_REPORT: usize = 1_000;
/// Most copies asked of (or reported by) a vendor in one capacity report.
pub const MAX_COPIES_PER_REPORT: usize = 64;
/// Most served fetches a vendor reports in one capacity report; the rest
/// wait for the next.
pub const MAX_SERVED_PER_REPORT: usize = 1024;
/// Largest fetch grant in a served-fetch report (the coordinator's fetch
/// grants are about 250 bytes).
pub const MAX_SERVED_GRANT_BYTES: usize = 1024;
/// Highest price a vendor may set (micro-units per TiB-month or per TiB).
pub const MAX_PRICE_MICROS: u64 = 1_000_000_000_000_000;
/// Most bad copies a vendor reports in one capacity report (what its scrub
/// found); the rest wait for the next.
pub const MAX_BAD_COPIES_PER_REPORT: usize = 256;
/// Most copies a tenant reports bad in one call (`Fat.ReportBadCopies`);
/// each costs the vendor an audit, a whole portion read.
pub const MAX_BAD_COPY_REPORTS_PER_CALL: usize = 16;
/// Longest reason a vendor or a tenant gives for a bad copy.
pub const MAX_BAD_COPY_REASON_LEN: usize = 1024;
/// Longest error text a vendor reports for a failed copy.
pub const MAX_COPY_ERROR_LEN: usize = 1024;
/// Most snapshot records rewritten in one call (after a repack).
pub const MAX_SNAPSHOT_REWRITES: usize = 1_000;
/// Most paths or tags on one snapshot record; longest path or tag.
pub const MAX_SNAPSHOT_LIST: usize = 1024;
pub const MAX_SNAPSHOT_STRING: usize = 4096;
/// Largest encoded FAT command: one entry of the coordinators' Raft log.
/// A leader sends a follower a batch of entries within one heartbeat
/// (150 ms by default), so one entry must stay small; a commit of more
/// portions than fit is refused with this limit named, and is made over
/// several reservations.
pub const MAX_COMMAND_BYTES: usize = 1024 * 1024;
/// Most portions a client puts in one commit. A receipt with 32-character
/// vendor and tenant ids encodes to about 200 bytes, so even at
/// [`MAX_REPLICATION`] (16 receipts a portion, about 3.2 KB) a commit of
/// this many portions takes under 0.8 MiB of [`MAX_COMMAND_BYTES`], leaving
/// room for the snapshot record that rides on the last commit.
pub const MAX_PORTIONS_PER_COMMIT: usize = 250;
/// Most portion ids in one locate call.
pub const MAX_LOCATE_PER_CALL: usize = 10_000;
/// Largest request the coordinator's tenant-facing `Fat` service decodes: a
/// command of [`MAX_COMMAND_BYTES`] whose 16-byte ids and 32-byte hashes
/// travel as text and with protobuf's field tags (at most about three times
/// larger), with room to spare. A larger request is refused before it is
/// read into memory.
pub const MAX_TENANT_REQUEST_BYTES: usize = 4 * MAX_COMMAND_BYTES;
/// Largest request the coordinator's `VendorRegistry` and `Admin` services
/// decode: a capacity report with [`MAX_DELETIONS_PER_REPORT`] deletions
/// (about 300 bytes each) and [`MAX_COPIES_PER_REPORT`] copy results (a
/// receipt with a signature of at most [`MAX_GRANT_BYTES`] and an error of
/// [`MAX_COPY_ERROR_LEN`]), [`MAX_SERVED_PER_REPORT`] served fetches and
/// [`MAX_BAD_COPIES_PER_REPORT`] bad copies, or
/// a registration, with room to spare.
pub const MAX_CONTROL_REQUEST_BYTES: usize = 3 * 1024 * 1024;

const _: () = assert!(
    MAX_DELETIONS_PER_REPORT * (2 * MAX_ID_LEN + 64)
        + MAX_COPIES_PER_REPORT * (3 * MAX_ID_LEN + MAX_GRANT_BYTES + MAX_COPY_ERROR_LEN + 128)
        + MAX_SERVED_PER_REPORT * (MAX_SERVED_GRANT_BYTES + 32)
        + MAX_BAD_COPIES_PER_REPORT * (2 * MAX_ID_LEN + MAX_BAD_COPY_REASON_LEN + 64)
        + 64 * 1024
        <= MAX_CONTROL_REQUEST_BYTES
);

// A reconciliation's second round: each held portion names a tenant and
// two 32-digit ids; its first round's digests are far smaller.
const _: () = assert!(
    MAX_RECONCILE_HELD * (MAX_ID_LEN + 2 * 32 + 16) + 64 * 1024 <= MAX_CONTROL_REQUEST_BYTES
);

/// Largest gRPC message any Offsite service decodes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Largest gRPC message a vendor agent or a NAS device decodes: a data frame
/// with its envelope, a probe, or a routing header with a grant per vendor
/// of the longest route, with room to spare. A larger message is refused
/// before it is read into memory.
pub const MAX_STREAM_MESSAGE_BYTES: usize = 2 * 1024 * 1024;

const _: () = assert!(
    MAX_FRAME_BYTES + 64 * 1024 <= MAX_STREAM_MESSAGE_BYTES
        && MAX_PROBE_BYTES + 64 * 1024 <= MAX_STREAM_MESSAGE_BYTES
        && MAX_ROUTE_LEN * (2 * MAX_GRANT_BYTES + 2 * MAX_ADDRESS_LEN) + 64 * 1024
            <= MAX_STREAM_MESSAGE_BYTES
);
/// Largest replication factor.
pub const MAX_REPLICATION: u32 = 16;
