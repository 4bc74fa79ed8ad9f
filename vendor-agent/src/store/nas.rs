//! A store of pieces on an `offsite-nas` device, reached over gRPC. The vendor
//! does not take the device's word for it: the validation hash a put returns
//! must equal the expected one, and bytes from a get must hash to what the
//! local FAT recorded. Nor does it wait on the device for long: a device
//! that takes no frame of a put, sends no frame of a get, or does not answer
//! a call within its [`NasTimeouts`] is cut off and counts as unavailable
//! (a hung device cannot hold a store, and the locks it holds, forever).

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use offsite_identity::{Credentials, PeerIdentity, Role};
use offsite_proto::limits::{MAX_LISTED_PIECES, MAX_MESSAGE_BYTES, MAX_PIECE_BYTES};
use offsite_proto::pb::nas::{
    nas_client::NasClient, put_frame, CapacityRequest, GetRequest, ListRequest, PieceHeader,
    PieceRequest, PutFrame,
};
use offsite_proto::stream::{next_within, watched, Idle};
use offsite_proto::{Hash, PieceId};
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::local::offered_capacity;
use super::{verify_piece, PieceStore, StoreCapacity, StoreError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Long enough for the largest piece over a slow local network.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// How long a vendor waits on a NAS device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NasTimeouts {
    /// For the device to take one frame of a put, or send one of a get.
    pub frame: Duration,
    /// For the device to answer a call (a put once it has every frame).
    pub answer: Duration,
}

impl Default for NasTimeouts {
    /// What a vendor with the default `hop_timeout_secs` waits.
    fn default() -> Self {
        crate::vendor::Limits::default().nas()
    }
}

/// Pieces on one NAS device.
#[derive(Clone)]
pub struct NasStore {
    name: String,
    client: NasClient<Channel>,
    timeouts: NasTimeouts,
    /// The share of the device's disk kept free (the vendor's
    /// `keep_free_share`).
    keep_free_share: f64,
}

impl NasStore {
    /// Prepares a mutual-TLS connection to the device `device` (the name in
    /// its certificate) at `address` (`host:port`); it is made on first use,
    /// so a device that is down now does not stop the vendor.
    pub fn connect_lazy(
        address: &str,
        device: &str,
        credentials: &Credentials,
        timeouts: NasTimeouts,
        keep_free_share: f64,
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
        Ok(Self {
            name,
            client,
            timeouts,
            keep_free_share,
        })
    }

    /// The device did not keep up: it counts as unavailable.
    fn hung(&self, what: &str, after: impl std::fmt::Display) -> StoreError {
        tracing::warn!(store = %self.name, what, %after, "NAS device hung; cutting the call off");
        StoreError::Unavailable {
            store: self.name.clone(),
            detail: format!(
                "the device {after} during a {what}, so the vendor cut the call off \
                 (a hung device; hop_timeout_secs)"
            ),
        }
    }

    /// `call`, unless the device takes longer than its answer timeout.
    async fn answered<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let within = self.timeouts.answer;
        tokio::time::timeout(within, call).await.map_err(|_| {
            self.hung(
                what,
                format_args!("did not answer for {:.1} s", within.as_secs_f64()),
            )
        })?
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
        let (frames, progress) = watched(put_frames(id, data, expected));
        let NasTimeouts { frame, answer } = self.timeouts;
        let response = tokio::select! {
            response = client.put(frames) => response.map_err(|s| self.error(s, Some(id)))?,
            stall = progress.stalled(frame, answer) => return Err(self.hung("put", stall)),
        }
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
        let call = async {
            client
                .get(request)
                .await
                .map_err(|s| self.error(s, Some(id)))
        };
        let mut stream = self.answered("get", call).await?.into_inner();
        let frame = self.timeouts.frame;
        // The frames are kept as they come and joined once at the end: a
        // buffer grown frame by frame would copy the piece again and again.
        let (mut frames, mut len) = (Vec::new(), 0usize);
        loop {
            let next = next_within(&mut stream, frame)
                .await
                .map_err(|Idle(frame)| {
                    self.hung(
                        "get",
                        format_args!("sent no frame for {:.1} s", frame.as_secs_f64()),
                    )
                })?
                .transpose()
                .map_err(|s| self.error(s, Some(id)))?;
            let Some(frame) = next else { break };
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
        let call = async {
            client
                .delete(request)
                .await
                .map_err(|s| self.error(s, Some(id)))
        };
        Ok(self.answered("delete", call).await?.into_inner().existed)
    }

    async fn capacity(&self) -> Result<StoreCapacity, StoreError> {
        let mut client = self.client.clone();
        let call = async {
            client
                .capacity(CapacityRequest {})
                .await
                .map_err(|s| self.error(s, None))
        };
        let response = self.answered("capacity call", call).await?.into_inner();
        if response.filesystem_total_bytes == 0 {
            // A device from before it reported its filesystem.
            return Ok(StoreCapacity {
                offered_bytes: response.capacity_bytes,
                used_bytes: response.used_bytes,
                free_bytes: response
                    .free_bytes
                    .min(response.capacity_bytes.saturating_sub(response.used_bytes)),
            });
        }
        Ok(offered_capacity(
            response.capacity_bytes,
            response.used_bytes,
            response.filesystem_total_bytes,
            response.filesystem_available_bytes,
            self.keep_free_share,
        ))
    }

    async fn list(
        &self,
        after: Option<&PieceId>,
        limit: usize,
    ) -> Result<Vec<PieceId>, StoreError> {
        let mut client = self.client.clone();
        let limit = limit.clamp(1, MAX_LISTED_PIECES);
        let request = ListRequest {
            after: after.map(|a| a.as_str().to_owned()).unwrap_or_default(),
            // At most MAX_LISTED_PIECES, which fits a u32.
            limit: limit as u32,
        };
        let call = async { client.list(request).await.map_err(|s| self.error(s, None)) };
        let ids = self.answered("list", call).await?.into_inner().piece_ids;
        if ids.len() > limit {
            return Err(StoreError::Failed {
                store: self.name.clone(),
                detail: format!(
                    "the device listed {} pieces, more than the {limit} asked",
                    ids.len()
                ),
            });
        }
        ids.into_iter()
            .map(|id| {
                PieceId::new(id).map_err(|e| StoreError::Failed {
                    store: self.name.clone(),
                    detail: format!("the device listed a malformed piece id: {e}"),
                })
            })
            .collect()
    }
}
