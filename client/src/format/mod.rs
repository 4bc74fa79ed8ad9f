//! The stored formats: what the client writes and reads back, each behind a
//! version marker. A file is cut into chunks ([`chunker`]); a chunk, a
//! directory [`tree`] or a snapshot [`manifest`] is sealed into a [`blob`];
//! blobs are packed into a [`portion`], the unit vendors store. [`records`]
//! frames the client's own record files, and [`keys`] is the key file and
//! the keys it unlocks. Nothing here does I/O beyond reading a key file.

pub(crate) mod blob;
pub(crate) mod chunker;
pub(crate) mod keys;
pub(crate) mod manifest;
pub(crate) mod portion;
pub(crate) mod records;
pub(crate) mod tree;
