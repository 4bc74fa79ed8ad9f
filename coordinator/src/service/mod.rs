//! The gRPC services, as thin adapters: convert the request to domain types
//! at the edge, stamp the time and the choices, propose the command to the
//! FAT store, and convert the outcome back. Errors become `tonic::Status` in
//! [`status_of`] only. The caller's tenant or vendor id comes from its client
//! certificate only (`offsite_identity::require_tenant`, `require_vendor`),
//! never from a field of the request.

mod admin;
mod convert;
mod departures;
pub(crate) mod grants;
mod market;
mod registry;
mod tenant_api;

use offsite_proto::VendorId;
use tonic::Status;

use crate::fat::FatError;
use crate::store::{ProposeError, StoreError};

pub(crate) use admin::AdminService;
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
        FatError::NotEnoughCapacity { .. } if err.is_too_few_vendors() => {
            let mut status = Status::resource_exhausted(message);
            status.metadata_mut().insert(
                offsite_proto::refusal::REFUSAL_KEY,
                tonic::metadata::MetadataValue::from_static(
                    offsite_proto::refusal::TOO_FEW_VENDORS,
                ),
            );
            status
        }
        FatError::NotEnoughCapacity { .. } => Status::resource_exhausted(message),
        FatError::Invalid(_) => Status::invalid_argument(message),
        FatError::Forbidden(_) => Status::permission_denied(message),
        FatError::LimitReached(_) => Status::resource_exhausted(message),
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

/// A vendor may register and report only as itself.
pub(crate) fn check_same_vendor(caller: &VendorId, claimed: &VendorId) -> Result<(), Status> {
    if caller == claimed {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "the certificate is vendor {caller:?}'s; it cannot speak for vendor {claimed:?} \
             (set vendor_id to the certificate's name, or issue a certificate for {claimed:?})"
        )))
    }
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
        // Room enough in sum but too few vendors: marked, and said so.
        let few = FatError::NotEnoughCapacity {
            asked_bytes: 160,
            replication: 5,
            needed_bytes: 800,
            free_bytes: 1 << 40,
            vendors: 4,
        };
        let status = status_of(few.into());
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status
                .metadata()
                .get(offsite_proto::refusal::REFUSAL_KEY)
                .unwrap(),
            offsite_proto::refusal::TOO_FEW_VENDORS
        );
        assert!(
            status.message().contains("needs at least 5 vendors")
                && status.message().contains("4 are up"),
            "{}",
            status.message()
        );
        assert!(
            !status.message().contains("ask for less"),
            "{}",
            status.message()
        );
        let room = status_of(
            FatError::NotEnoughCapacity {
                asked_bytes: 160,
                replication: 2,
                needed_bytes: 320,
                free_bytes: 10,
                vendors: 4,
            }
            .into(),
        );
        assert!(room
            .metadata()
            .get(offsite_proto::refusal::REFUSAL_KEY)
            .is_none());
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
    fn a_vendor_speaks_only_for_itself() {
        // (A call without a certificate names no tenant and no vendor:
        // offsite_identity's caller tests.)
        let one = VendorId::new("vendor-1").unwrap();
        let two = VendorId::new("vendor-2").unwrap();
        check_same_vendor(&one, &one).unwrap();
        let refused = check_same_vendor(&one, &two).unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied);
        assert!(
            refused.message().contains("vendor-2"),
            "{}",
            refused.message()
        );
    }
}
