//! Local state: what the client keeps under `<cache_dir>/<tenant>/` between
//! runs. The [`cache`] of snapshot lists, final FATs and sealed manifests;
//! the dedup [`index_cache`]; each snapshot's [`listing`]; each snapshot's
//! file metadata cache
//! ([`filecache`], the parent of the next backup); and the [`resume`]
//! journal of an interrupted backup. All of it only saves work: anything
//! missing or unreadable is fetched or done again.

pub(crate) mod cache;
pub(crate) mod filecache;
pub(crate) mod index_cache;
pub(crate) mod listing;
pub(crate) mod resume;
