//! The `Nas` gRPC service: a thin adapter from the wire to the piece store.
//! Requests are checked and converted to domain types here; the blocking piece
//! store runs on tokio's blocking pool.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, BoxStream, StreamExt};
use offsite_piece_store::{PieceDir, PieceError};
use offsite_proto::limits::MAX_LISTED_PIECES;
use offsite_proto::pb::nas::nas_server::Nas;
use offsite_proto::pb::nas::{
    CapacityRequest, CapacityResponse, DeleteResponse, GetFrame, GetRequest, ListRequest,
    ListResponse, PieceRequest, PutFrame, PutResponse, StatResponse,
};
use offsite_proto::PieceId;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status, Streaming};

use crate::{put, status};

/// Serves one piece directory.
pub(crate) struct NasService {
    dir: PieceDir,
    put_budget: Arc<Semaphore>,
    /// How long a `Put` stream may go without a frame.
    put_idle_timeout: Duration,
}

impl NasService {
    pub(crate) fn new(dir: PieceDir, put_idle_timeout: Duration) -> Self {
        Self {
            dir,
            put_budget: put::buffer_budget(),
            put_idle_timeout,
        }
    }

    /// Runs piece-store work on the blocking pool, mapping its errors.
    async fn blocking<T, F>(&self, work: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&PieceDir) -> Result<T, PieceError> + Send + 'static,
    {
        self.dir
            .run_blocking(work)
            .await
            .map_err(status::from_piece_error)
    }
}

#[tonic::async_trait]
impl Nas for NasService {
    async fn put(
        &self,
        request: Request<Streaming<PutFrame>>,
    ) -> Result<Response<PutResponse>, Status> {
        let piece = put::receive(
            request.into_inner(),
            self.put_budget.clone(),
            self.put_idle_timeout,
        )
        .await?;
        let (id, size) = (piece.id.clone(), piece.data.len());
        let hash = self
            .blocking(move |dir| dir.put(&piece.id, &piece.data, &piece.hash))
            .await?;
        tracing::debug!(piece = %id, size, "put piece");
        Ok(Response::new(PutResponse {
            hash: hash.to_vec(),
        }))
    }

    type GetStream = BoxStream<'static, Result<GetFrame, Status>>;

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<Self::GetStream>, Status> {
        let id = PieceId::new(request.into_inner().piece_id)?;
        let data = self.blocking(move |dir| dir.get(&id)).await?;
        Ok(Response::new(frames(data)))
    }

    async fn delete(
        &self,
        request: Request<PieceRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let id = PieceId::new(request.into_inner().piece_id)?;
        let existed = self.blocking(move |dir| dir.delete(&id)).await?;
        Ok(Response::new(DeleteResponse { existed }))
    }

    async fn stat(&self, request: Request<PieceRequest>) -> Result<Response<StatResponse>, Status> {
        let id = PieceId::new(request.into_inner().piece_id)?;
        let stat = self.blocking(move |dir| dir.stat(&id)).await?;
        Ok(Response::new(match stat {
            Some(stat) => StatResponse {
                exists: true,
                size: stat.size,
                hash: stat.hash.to_vec(),
            },
            None => StatResponse::default(),
        }))
    }

    async fn capacity(
        &self,
        _request: Request<CapacityRequest>,
    ) -> Result<Response<CapacityResponse>, Status> {
        let (capacity, fs) = self
            .blocking(|dir| Ok((dir.capacity()?, dir.filesystem()?)))
            .await?;
        Ok(Response::new(CapacityResponse {
            capacity_bytes: capacity.capacity_bytes,
            used_bytes: capacity.used_bytes,
            free_bytes: capacity.free_bytes,
            filesystem_total_bytes: fs.total_bytes,
            filesystem_available_bytes: fs.available_bytes,
        }))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let request = request.into_inner();
        let limit = usize::try_from(request.limit).unwrap_or(usize::MAX);
        if !(1..=MAX_LISTED_PIECES).contains(&limit) {
            return Err(Status::invalid_argument(format!(
                "limit {}: ask for 1 to {MAX_LISTED_PIECES} piece ids a page",
                request.limit
            )));
        }
        let after = match request.after.is_empty() {
            true => None,
            false => Some(PieceId::new(request.after)?),
        };
        let ids = self
            .blocking(move |dir| dir.list(after.as_ref(), limit))
            .await?;
        Ok(Response::new(ListResponse {
            piece_ids: ids.into_iter().map(|id| id.as_str().to_owned()).collect(),
        }))
    }
}

/// A verified piece as a stream of `FRAME_BYTES` frames.
fn frames(data: Vec<u8>) -> BoxStream<'static, Result<GetFrame, Status>> {
    stream::iter(offsite_proto::stream::frames(data.into()).map(|data| Ok(GetFrame { data })))
        .boxed()
}
