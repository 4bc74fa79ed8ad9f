//! The gRPC services, as thin adapters: convert the request to domain types
//! at the edge, stamp the time and the choices, propose the command to the
//! FAT store, and convert the outcome back. Errors become `tonic::Status` in
//! [`status_of`] only, and the calling tenant is read in [`tenant_of`] only.

mod convert;
mod registry;
mod tenant_api;

use std::time::{SystemTime, UNIX_EPOCH};

use offsite_proto::{TenantId, TENANT_METADATA_KEY};
use tonic::{Request, Status};

use crate::fat::FatError;
use crate::store::{ProposeError, StoreError};

pub(crate) use registry::RegistryService;
pub(crate) use tenant_api::{FatService, FatServiceConfig};

/// The one place where a refused or failed command becomes a gRPC status.
pub(crate) fn status_of(err: ProposeError) -> Status {
    match err {
        ProposeError::Refused(refused) => refused_status(refused),
        ProposeError::Store(store) => store_status(store),
    }
}

fn refused_status(err: FatError) -> Status {
    let message = err.to_string();
    match err {
        FatError::NotFound(_) => Status::not_found(message),
        FatError::Expired(_) | FatError::Conflict(_) => Status::failed_precondition(message),
        FatError::NotEnoughCapacity { .. } => Status::resource_exhausted(message),
        FatError::Invalid(_) => Status::invalid_argument(message),
        FatError::Forbidden(_) => Status::permission_denied(message),
    }
}

/// The one place where a failure of the coordinator group becomes a gRPC
/// status. Unavailable tells clients and vendors to try another coordinator.
pub(crate) fn store_status(err: StoreError) -> Status {
    tracing::warn!(error = %err, "the coordinator group could not serve a call");
    match err {
        StoreError::NoQuorum { .. }
        | StoreError::Timeout { .. }
        | StoreError::Leader { .. }
        | StoreError::Stopped(_) => Status::unavailable(err.to_string()),
        StoreError::Membership(_) => Status::failed_precondition(err.to_string()),
    }
}

/// The calling tenant. Until certificates carry it, it is named in the gRPC
/// metadata key `offsite-tenant`; this is the only function that reads it.
pub(crate) fn tenant_of<T>(request: &Request<T>) -> Result<TenantId, Status> {
    let value = request.metadata().get(TENANT_METADATA_KEY).ok_or_else(|| {
        Status::unauthenticated(format!(
            "no tenant named; set the gRPC metadata key {TENANT_METADATA_KEY}"
        ))
    })?;
    let text = value.to_str().map_err(|_| {
        Status::unauthenticated(format!(
            "the {TENANT_METADATA_KEY} metadata is not text; name the tenant in ASCII"
        ))
    })?;
    TenantId::new(text).map_err(|e| Status::unauthenticated(format!("{TENANT_METADATA_KEY}: {e}")))
}

/// Wall-clock time for stamping commands (never read inside the FAT).
pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn each_kind_of_refusal_has_its_status_code() {
        let cases = [
            (FatError::NotFound("x".into()), Code::NotFound),
            (FatError::Expired("x".into()), Code::FailedPrecondition),
            (FatError::Conflict("x".into()), Code::FailedPrecondition),
            (FatError::Invalid("x".into()), Code::InvalidArgument),
            (FatError::Forbidden("x".into()), Code::PermissionDenied),
            (
                FatError::NotEnoughCapacity {
                    asked_bytes: 1,
                    replication: 1,
                    needed_bytes: 1,
                    free_bytes: 0,
                    vendors: 0,
                },
                Code::ResourceExhausted,
            ),
        ];
        for (err, code) in cases {
            let status = status_of(err.clone().into());
            assert_eq!(status.code(), code, "{err}");
            assert_eq!(status.message(), err.to_string());
        }
        let stopped = status_of(StoreError::Stopped("x".into()).into());
        assert_eq!(stopped.code(), Code::Unavailable);
        let lost = status_of(
            StoreError::NoQuorum {
                reachable: 1,
                members: 3,
                unreachable: String::new(),
            }
            .into(),
        );
        assert_eq!(lost.code(), Code::Unavailable);
        assert!(
            lost.message().starts_with("no quorum: 1 of 3"),
            "{}",
            lost.message()
        );
    }

    #[test]
    fn the_tenant_comes_from_the_metadata() {
        let mut request = Request::new(());
        assert_eq!(
            tenant_of(&request).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        request
            .metadata_mut()
            .insert(TENANT_METADATA_KEY, "acme".parse().unwrap());
        assert_eq!(tenant_of(&request).unwrap().as_str(), "acme");
        request
            .metadata_mut()
            .insert(TENANT_METADATA_KEY, "a/b".parse().unwrap());
        assert!(tenant_of(&request).is_err());
    }
}
