//! The one place a [`VendorError`] becomes a `tonic::Status`: the code tells
//! the caller what to do (resend, go elsewhere, retry later, give up), the
//! message is the error's own.

use tonic::Status;

use crate::store::StoreError;
use crate::vendor::VendorError;

impl From<VendorError> for Status {
    fn from(err: VendorError) -> Self {
        let message = err.to_string();
        match err {
            VendorError::Wire(_)
            | VendorError::HeaderMissing
            | VendorError::HeaderRepeated
            | VendorError::EmptyFrame
            | VendorError::Misrouted { .. }
            | VendorError::FrameTooLarge { .. }
            | VendorError::TooManyBytes { .. }
            | VendorError::ShortStream { .. }
            | VendorError::HashMismatch { .. }
            | VendorError::ProbeTooLarge { .. } => Status::invalid_argument(message),
            VendorError::Inbound(source) => match source.downcast_ref::<Status>() {
                Some(status) => Status::new(status.code(), message),
                None => Status::unknown(message),
            },
            VendorError::NotYourTenant { .. } | VendorError::Grant { .. } => {
                Status::permission_denied(message)
            }
            VendorError::NotRegistered => Status::unavailable(message),
            VendorError::Idle { .. } | VendorError::ReaderIdle { .. } => {
                Status::deadline_exceeded(message)
            }
            VendorError::Superseded { .. } => Status::aborted(message),
            VendorError::ReadsBusy { .. } => Status::resource_exhausted(message),
            VendorError::HeldWithOtherHash { .. } => Status::already_exists(message),
            VendorError::Busy { .. } => Status::aborted(message),
            VendorError::NoRoom { .. } => Status::resource_exhausted(message),
            VendorError::PieceStore { source, .. } => store_status(&source, message),
            VendorError::NotHeld { .. } => Status::not_found(message),
            VendorError::OutOfRange { .. } => Status::out_of_range(message),
            VendorError::PieceLost { .. } => Status::data_loss(message),
            VendorError::DeleteIncomplete { .. } => Status::unavailable(message),
            VendorError::LocalFat(_) | VendorError::Internal(_) => Status::internal(message),
        }
    }
}

fn store_status(source: &StoreError, message: String) -> Status {
    match source {
        StoreError::Full { .. } => Status::resource_exhausted(message),
        StoreError::Unavailable { .. } => Status::unavailable(message),
        _ => Status::internal(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use offsite_proto::{Hash, PortionId};
    use tonic::Code;

    #[test]
    fn errors_map_to_the_code_the_caller_acts_on() {
        let portion = PortionId::random();
        let mismatch = VendorError::HashMismatch {
            portion,
            expected: Hash::of(b"a"),
            actual: Hash::of(b"b"),
        };
        let status = Status::from(mismatch);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("portion hash mismatch"));
        let lost = VendorError::PieceLost {
            portion,
            source: StoreError::Unavailable {
                store: "nas:x:1".into(),
                detail: "down".into(),
            },
        };
        let status = Status::from(lost);
        assert_eq!(status.code(), Code::DataLoss);
        assert!(status.message().contains(&portion.to_string()));
    }
}
