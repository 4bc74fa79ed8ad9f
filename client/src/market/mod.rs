//! Talking to the marketplace: mutual-TLS connections ([`connect`]), the
//! coordinator group with failover ([`coordinator`]), vendor agents
//! ([`vendor`]) and probing them ([`probe`]), uploading portions under
//! reservations ([`upload`]) and fetching them back from the best replica
//! ([`fetch`]); and the group answered from the local cache when it cannot
//! be reached ([`cached`]).

pub(crate) mod cached;
pub(crate) mod connect;
pub(crate) mod coordinator;
pub(crate) mod fetch;
pub(crate) mod probe;
pub(crate) mod upload;
pub(crate) mod vendor;
