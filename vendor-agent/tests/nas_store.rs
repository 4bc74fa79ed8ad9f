//! `NasStore` passes the shared piece-store suite against a minimal NAS device
//! served from a piece directory in this test (the end-to-end tests run the
//! same suite against the real `offsite-nas`), and reports an unreachable
//! device, and one that hangs, as unavailable, the hung one within its
//! timeouts.

mod common;

use offsite_identity::Role;
use offsite_piece_store::{PieceDir, PieceError};
use offsite_proto::pb::nas::nas_server::{Nas, NasServer};
use offsite_proto::pb::nas::{
    put_frame, CapacityRequest, CapacityResponse, DeleteResponse, GetFrame, GetRequest,
    ListRequest, ListResponse, PieceRequest, PutFrame, PutResponse, StatResponse,
};
use offsite_proto::{Hash, PieceId};
use offsite_vendor::{NasStore, NasTimeouts, PieceStore, StoreError};
use tonic::{Request, Response, Status, Streaming};

#[derive(Clone)]
struct DirNas(PieceDir);

fn status(err: PieceError) -> Status {
    match err {
        PieceError::NotFound(_) => Status::not_found(err.to_string()),
        PieceError::Corrupt { .. } => Status::data_loss(err.to_string()),
        PieceError::Full { .. } => Status::resource_exhausted(err.to_string()),
        _ => Status::invalid_argument(err.to_string()),
    }
}

fn piece(id: String) -> Result<PieceId, Status> {
    PieceId::new(id).map_err(|e| Status::invalid_argument(e.to_string()))
}

#[tonic::async_trait]
impl Nas for DirNas {
    async fn put(
        &self,
        request: Request<Streaming<PutFrame>>,
    ) -> Result<Response<PutResponse>, Status> {
        let mut stream = request.into_inner();
        let Some(PutFrame {
            frame: Some(put_frame::Frame::Header(header)),
        }) = stream.message().await?
        else {
            return Err(Status::invalid_argument("header first"));
        };
        let mut data = Vec::new();
        while let Some(frame) = stream.message().await? {
            if let Some(put_frame::Frame::Data(bytes)) = frame.frame {
                data.extend_from_slice(&bytes);
            }
        }
        let expected = Hash::from_wire("hash", &header.hash)?;
        let hash = self
            .0
            .put(&piece(header.piece_id)?, &data, &expected)
            .map_err(status)?;
        Ok(Response::new(PutResponse {
            hash: hash.to_vec(),
        }))
    }

    type GetStream = tokio_stream::Iter<std::vec::IntoIter<Result<GetFrame, Status>>>;

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<Self::GetStream>, Status> {
        let data = self
            .0
            .get(&piece(request.into_inner().piece_id)?)
            .map_err(status)?;
        let frames: Vec<_> = data
            .chunks(300_000)
            .map(|c| {
                Ok(GetFrame {
                    data: c.to_vec().into(),
                })
            })
            .collect();
        Ok(Response::new(tokio_stream::iter(frames)))
    }

    async fn delete(
        &self,
        request: Request<PieceRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let existed = self
            .0
            .delete(&piece(request.into_inner().piece_id)?)
            .map_err(status)?;
        Ok(Response::new(DeleteResponse { existed }))
    }

    async fn stat(&self, _: Request<PieceRequest>) -> Result<Response<StatResponse>, Status> {
        Err(Status::unimplemented("not needed by the vendor"))
    }

    async fn capacity(
        &self,
        _: Request<CapacityRequest>,
    ) -> Result<Response<CapacityResponse>, Status> {
        let c = self.0.capacity().map_err(status)?;
        let fs = self.0.filesystem().map_err(status)?;
        Ok(Response::new(CapacityResponse {
            capacity_bytes: c.capacity_bytes,
            used_bytes: c.used_bytes,
            free_bytes: c.free_bytes,
            filesystem_total_bytes: fs.total_bytes,
            filesystem_available_bytes: fs.available_bytes,
        }))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let request = request.into_inner();
        let after = (!request.after.is_empty())
            .then(|| piece(request.after))
            .transpose()?;
        let ids = self
            .0
            .list(after.as_ref(), request.limit as usize)
            .map_err(status)?;
        Ok(Response::new(ListResponse {
            piece_ids: ids.into_iter().map(|id| id.as_str().to_owned()).collect(),
        }))
    }
}

/// What the filesystem holding `dir` can still take.
fn nas_dir_filesystem(dir: &std::path::Path) -> u64 {
    fs4::statvfs(dir).unwrap().available_space()
}

#[tokio::test]
async fn nas_store_passes_the_piece_store_suite() {
    let dir = tempfile::tempdir().unwrap();
    let nas = DirNas(PieceDir::open(dir.path(), Some(1 << 30)).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(common::credentials(Role::Nas, "nas-1").server_tls())
            .unwrap()
            .add_service(NasServer::new(nas))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    let store = |keep_free_share| {
        NasStore::connect_lazy(
            &address,
            "nas-1",
            &common::credentials(Role::Vendor, "v1"),
            NasTimeouts::default(),
            keep_free_share,
        )
        .unwrap()
    };
    offsite_vendor::testing::piece_store_suite(&store(0.0)).await;
    // keep_free_share applies to the device's disk as to a local one: all
    // but a sliver of it kept free leaves nothing to offer beyond what is
    // held, where no share kept offers the device's whole capacity.
    let all = store(0.0).capacity().await.unwrap();
    let kept = store(0.9999).capacity().await.unwrap();
    if nas_dir_filesystem(dir.path()) > 2 << 30 {
        assert_eq!(all.offered_bytes, 1 << 30, "{all:?}");
    }
    assert_eq!(kept.offered_bytes, kept.used_bytes, "{kept:?}");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_unreachable_nas_is_unavailable() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    let store = NasStore::connect_lazy(
        &address,
        "nas-1",
        &common::credentials(Role::Vendor, "v1"),
        NasTimeouts::default(),
        0.0,
    )
    .unwrap();
    let err = store.capacity().await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
}

/// A device that accepts every call and then hangs: it reads no frame of a
/// put and answers nothing.
struct HungNas;

#[tonic::async_trait]
impl Nas for HungNas {
    async fn put(
        &self,
        request: Request<Streaming<PutFrame>>,
    ) -> Result<Response<PutResponse>, Status> {
        let _unread = request.into_inner();
        std::future::pending().await
    }

    type GetStream = tokio_stream::Iter<std::vec::IntoIter<Result<GetFrame, Status>>>;

    async fn get(&self, _: Request<GetRequest>) -> Result<Response<Self::GetStream>, Status> {
        std::future::pending().await
    }

    async fn delete(&self, _: Request<PieceRequest>) -> Result<Response<DeleteResponse>, Status> {
        std::future::pending().await
    }

    async fn stat(&self, _: Request<PieceRequest>) -> Result<Response<StatResponse>, Status> {
        std::future::pending().await
    }

    async fn capacity(
        &self,
        _: Request<CapacityRequest>,
    ) -> Result<Response<CapacityResponse>, Status> {
        std::future::pending().await
    }

    async fn list(&self, _: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        std::future::pending().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_nas_is_cut_off_within_its_timeouts() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(common::credentials(Role::Nas, "nas-1").server_tls())
            .unwrap()
            .add_service(NasServer::new(HungNas))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let timeouts = NasTimeouts {
        frame: std::time::Duration::from_millis(300),
        answer: std::time::Duration::from_millis(600),
    };
    let store = NasStore::connect_lazy(
        &address,
        "nas-1",
        &common::credentials(Role::Vendor, "v1"),
        timeouts,
        0.0,
    )
    .unwrap();
    // Far more than the timeouts above, far less than the channel's own.
    let bound = std::time::Duration::from_secs(10);
    // More than the HTTP/2 windows hold, so the put's frames stop being taken.
    let data = offsite_vendor::testing::test_bytes(8 * 1024 * 1024, 31);
    let (id, hash) = (PieceId::new("ab".repeat(16)).unwrap(), Hash::of(&data));
    let put = tokio::time::timeout(bound, store.put(&id, data, &hash)).await;
    let get = tokio::time::timeout(bound, store.get(&id, &hash)).await;
    let delete = tokio::time::timeout(bound, store.delete(&id)).await;
    let capacity = tokio::time::timeout(bound, store.capacity()).await;
    let put = put.expect("a put to a hung device hung").unwrap_err();
    assert!(matches!(put, StoreError::Unavailable { .. }), "{put}");
    assert!(put.to_string().contains("a hung device"), "{put}");
    let get = get.expect("a get from a hung device hung").unwrap_err();
    assert!(matches!(get, StoreError::Unavailable { .. }), "{get}");
    let delete = delete.expect("a delete at a hung device hung").unwrap_err();
    assert!(matches!(delete, StoreError::Unavailable { .. }), "{delete}");
    let capacity = capacity
        .expect("a capacity call to a hung device hung")
        .unwrap_err();
    assert!(
        matches!(capacity, StoreError::Unavailable { .. }),
        "{capacity}"
    );
    server.abort();
}
