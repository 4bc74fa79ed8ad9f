//! A store of pieces on an `offsite-nas` device, reached over gRPC. The vendor
//! does not take the device's word for it: the validation hash a put returns
//! must equal the expected one, and bytes from a get must hash to what the
//! local FAT recorded.

use std::time::Duration;

use bytes::Bytes;
use offsite_identity::{Credentials, PeerIdentity, Role};
use offsite_proto::limits::{MAX_MESSAGE_BYTES, MAX_PIECE_BYTES};
use offsite_proto::pb::nas::{
    nas_client::NasClient, put_frame, CapacityRequest, GetRequest, PieceHeader, PieceRequest,
    PutFrame,
};
use offsite_proto::{Hash, PieceId};
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::{verify_piece, PieceStore, StoreCapacity, StoreError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Long enough for the largest piece over a slow local network.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Pieces on one NAS device.
#[derive(Clone)]
pub struct NasStore {
    name: String,
    client: NasClient<Channel>,
}

impl NasStore {
    /// Prepares a mutual-TLS connection to the device `device` (the name in
    /// its certificate) at `address` (`host:port`); it is made on first use,
    /// so a device that is down now does not stop the vendor.
    pub fn connect_lazy(
        address: &str,
        device: &str,
        credentials: &Credentials,
    ) -> Result<Self, StoreError> {
        let name = format!("nas:{address}");
        let expected =
            PeerIdentity::new(Role::Nas, device).map_err(|problem| StoreError::Failed {
                store: name.clone(),
                detail: problem,
            })?;
        let endpoint = credentials
            .endpoint(address, &expected.dns_name())
            .map_err(|e| StoreError::Failed {
                store: name.clone(),
                detail: format!("not a usable address: {e}"),
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT);
        let client = NasClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Self { name, client })
    }

    fn error(&self, status: Status, piece: Option<&PieceId>) -> StoreError {
        let store = self.name.clone();
        let detail = format!("{:?}: {}", status.code(), status.message());
        match (status.code(), piece.cloned()) {
            (Code::NotFound, Some(piece)) => StoreError::NotFound { store, piece },
            (Code::DataLoss, Some(piece)) => StoreError::Corrupt {
                store,
                piece,
                detail,
            },
            (
                Code::InvalidArgument | Code::FailedPrecondition | Code::AlreadyExists,
                Some(piece),
            ) => StoreError::Refused {
                store,
                piece,
                detail,
            },
            (Code::ResourceExhausted, _) => StoreError::Full { store, detail },
            (Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled, _) => {
                StoreError::Unavailable { store, detail }
            }
            _ => StoreError::Failed { store, detail },
        }
    }
}

/// The put stream: the header, then the piece in frames (slices, not copies).
fn put_frames(id: &PieceId, data: Bytes, expected: &Hash) -> impl futures::Stream<Item = PutFrame> {
    let header = PutFrame {
        frame: Some(put_frame::Frame::Header(PieceHeader {
            piece_id: id.to_string(),
            hash: expected.to_vec(),
            size: data.len() as u64,
        })),
    };
    let frames = offsite_proto::stream::frames(data).map(|data| PutFrame {
        frame: Some(put_frame::Frame::Data(data)),
    });
    futures::stream::iter(std::iter::once(header).chain(frames))
}

#[tonic::async_trait]
impl PieceStore for NasStore {
    fn name(&self) -> &str {
        &self.name
    }

    async fn put(&self, id: &PieceId, data: Bytes, expected: &Hash) -> Result<Hash, StoreError> {
        let mut client = self.client.clone();
        let response = client
            .put(put_frames(id, data, expected))
            .await
            .map_err(|s| self.error(s, Some(id)))?
            .into_inner();
        let validated =
            Hash::from_wire("hash", &response.hash).map_err(|e| StoreError::Failed {
                store: self.name.clone(),
                detail: format!("put of piece {id} answered a malformed validation: {e}"),
            })?;
        if validated != *expected {
            return Err(StoreError::HashMismatch {
                store: self.name.clone(),
                piece: id.clone(),
                detail: format!("the device validated {validated}, not the expected {expected}"),
            });
        }
        Ok(validated)
    }

    async fn get(&self, id: &PieceId, expected: &Hash) -> Result<Bytes, StoreError> {
        let mut client = self.client.clone();
        let request = GetRequest {
            piece_id: id.to_string(),
        };
        let mut stream = client
            .get(request)
            .await
            .map_err(|s| self.error(s, Some(id)))?
            .into_inner();
        // The frames are kept as they come and joined once at the end: a
        // buffer grown frame by frame would copy the piece again and again.
        let (mut frames, mut len) = (Vec::new(), 0usize);
        while let Some(frame) = stream
            .message()
            .await
            .map_err(|s| self.error(s, Some(id)))?
        {
            len += frame.data.len();
            if len as u64 > MAX_PIECE_BYTES {
                return Err(StoreError::Corrupt {
                    store: self.name.clone(),
                    piece: id.clone(),
                    detail: format!("the device sent more than {MAX_PIECE_BYTES} bytes"),
                });
            }
            frames.push(frame.data);
        }
        let data = match frames.len() {
            1 => frames.swap_remove(0),
            _ => Bytes::from(frames.concat()),
        };
        verify_piece(&self.name, id, data, expected)
    }

    async fn delete(&self, id: &PieceId) -> Result<bool, StoreError> {
        let mut client = self.client.clone();
        let request = PieceRequest {
            piece_id: id.to_string(),
        };
        let response = client
            .delete(request)
            .await
            .map_err(|s| self.error(s, Some(id)))?;
        Ok(response.into_inner().existed)
    }

    async fn capacity(&self) -> Result<StoreCapacity, StoreError> {
        let mut client = self.client.clone();
        let response = client
            .capacity(CapacityRequest {})
            .await
            .map_err(|s| self.error(s, None))?
            .into_inner();
        Ok(StoreCapacity {
            offered_bytes: response.capacity_bytes,
            used_bytes: response.used_bytes,
            free_bytes: response
                .free_bytes
                .min(response.capacity_bytes.saturating_sub(response.used_bytes)),
        })
    }
}
