//! The one place piece-store errors become gRPC statuses, with messages that
//! tell the vendor what to do.

use std::io::ErrorKind;

use offsite_piece_store::PieceError;
use tonic::Status;

/// Maps a piece-store error to the status the vendor sees.
pub(crate) fn from_piece_error(err: PieceError) -> Status {
    match &err {
        PieceError::NotFound(id) => Status::not_found(format!(
            "piece {id} is not on this device; fetch another replica"
        )),
        PieceError::Corrupt { id, problem } => Status::data_loss(format!(
            "piece {id} on this device is corrupt: {problem}; fetch another replica"
        )),
        PieceError::HashMismatch { .. } | PieceError::TooLarge { .. } => {
            Status::invalid_argument(err.to_string())
        }
        PieceError::Full { .. } => Status::resource_exhausted(err.to_string()),
        PieceError::Conflict(_) => Status::already_exists(err.to_string()),
        PieceError::Io { source, .. } if source.kind() == ErrorKind::InvalidInput => {
            Status::invalid_argument(err.to_string())
        }
        PieceError::Io { .. } => {
            tracing::error!(%err, "piece store I/O failed");
            Status::internal(err.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use offsite_proto::PieceId;
    use tonic::Code;

    #[test]
    fn corrupt_is_data_loss_naming_the_piece() {
        let id = PieceId::new("p-1").unwrap();
        let status = from_piece_error(PieceError::Corrupt {
            id,
            problem: "bad hash".into(),
        });
        assert_eq!(status.code(), Code::DataLoss);
        assert!(status
            .message()
            .contains("piece p-1 on this device is corrupt: bad hash"));
    }

    #[test]
    fn full_is_resource_exhausted() {
        let status = from_piece_error(PieceError::Full { needed: 9, free: 1 });
        assert_eq!(status.code(), Code::ResourceExhausted);
    }
}
