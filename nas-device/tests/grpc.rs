//! The real `Nas` server started in-process on 127.0.0.1:0, driven through
//! the generated client.

use std::path::PathBuf;

use offsite_identity::pki::CertificateAuthority;
use offsite_identity::{PeerIdentity, Role};
use offsite_nas::{serve, NasConfig};
use offsite_proto::limits::{FRAME_BYTES, MAX_FRAME_BYTES};
use offsite_proto::pb::nas::nas_client::NasClient;
use offsite_proto::pb::nas::{
    put_frame::Frame, CapacityRequest, GetRequest, PieceHeader, PieceRequest, PutFrame,
};
use offsite_proto::Hash;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::Code;

struct Device {
    client: NasClient<Channel>,
    data_dir: tempfile::TempDir,
    addr: std::net::SocketAddr,
    ca: CertificateAuthority,
    stop: oneshot::Sender<()>,
    server: JoinHandle<Result<(), offsite_nas::ServeError>>,
}

impl Device {
    async fn start(cap_bytes: Option<u64>) -> Device {
        Self::start_with_idle_timeout(cap_bytes, 60).await
    }

    async fn start_with_idle_timeout(cap_bytes: Option<u64>, put_idle_timeout_secs: u64) -> Device {
        let data_dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate().unwrap();
        let tls = ca
            .write_tls(
                data_dir.path(),
                &PeerIdentity::new(Role::Nas, "nas-1").unwrap(),
            )
            .unwrap();
        let config = NasConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data_dir.path().to_path_buf(),
            cap_bytes,
            put_idle_timeout_secs,
            allowed_vendor: "vendor-1".into(),
            tls,
        };
        let listener = TcpListener::bind(config.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            serve(&config, listener, async {
                let _ = stopped.await;
            })
            .await
        });
        let client = client_as(&ca, Role::Vendor, "vendor-1", addr).await;
        Device {
            client,
            data_dir,
            addr,
            ca,
            stop,
            server,
        }
    }

    async fn shutdown(self) {
        drop(self.client);
        self.stop.send(()).unwrap();
        self.server.await.unwrap().unwrap();
    }

    fn piece_file(&self, id: &str) -> PathBuf {
        self.data_dir.path().join("pieces").join(&id[..2]).join(id)
    }

    async fn put_frames(&mut self, frames: Vec<PutFrame>) -> Result<Vec<u8>, tonic::Status> {
        let response = self.client.put(futures::stream::iter(frames)).await?;
        Ok(response.into_inner().hash)
    }

    async fn put(&mut self, id: &str, data: &[u8]) -> Result<Vec<u8>, tonic::Status> {
        let frames = piece_frames(id, data, Hash::of(data).to_vec(), data.len() as u64);
        self.put_frames(frames).await
    }

    async fn get(&mut self, id: &str) -> Result<Vec<u8>, tonic::Status> {
        let request = GetRequest {
            piece_id: id.into(),
        };
        let mut stream = self.client.get(request).await?.into_inner();
        let mut data = Vec::new();
        while let Some(frame) = stream.message().await? {
            assert!(frame.data.len() <= FRAME_BYTES);
            data.extend_from_slice(&frame.data);
        }
        Ok(data)
    }

    async fn exists(&mut self, id: &str) -> bool {
        let request = PieceRequest {
            piece_id: id.into(),
        };
        self.client.stat(request).await.unwrap().into_inner().exists
    }
}

/// A client of the device at `addr` presenting a `role`/`name` certificate of `ca`.
async fn client_as(
    ca: &CertificateAuthority,
    role: Role,
    name: &str,
    addr: std::net::SocketAddr,
) -> NasClient<Channel> {
    let credentials = ca
        .credentials(&PeerIdentity::new(role, name).unwrap())
        .unwrap();
    let channel = credentials
        .endpoint(&addr.to_string(), &Role::Nas.dns_name())
        .unwrap()
        .connect()
        .await
        .unwrap();
    NasClient::new(channel)
}

#[tokio::test]
async fn only_the_devices_own_vendor_is_served() {
    let device = Device::start(None).await;
    for (role, name) in [(Role::Vendor, "vendor-2"), (Role::Tenant, "vendor-1")] {
        let mut other = client_as(&device.ca, role, name, device.addr).await;
        let refused = other.capacity(CapacityRequest {}).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{role} {name}");
    }
    device.shutdown().await;
}

fn header(id: &str, hash: Vec<u8>, size: u64) -> PutFrame {
    PutFrame {
        frame: Some(Frame::Header(PieceHeader {
            piece_id: id.into(),
            hash,
            size,
        })),
    }
}

fn data_frame(bytes: &[u8]) -> PutFrame {
    PutFrame {
        frame: Some(Frame::Data(bytes.to_vec().into())),
    }
}

fn piece_frames(id: &str, data: &[u8], hash: Vec<u8>, size: u64) -> Vec<PutFrame> {
    let mut frames = vec![header(id, hash, size)];
    frames.extend(data.chunks(FRAME_BYTES).map(data_frame));
    frames
}

fn sample(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test]
async fn put_get_stat_delete_capacity() {
    let mut device = Device::start(Some(10 << 20)).await;
    let data = sample(FRAME_BYTES * 3 + 17);
    let hash = device.put("piece-1", &data).await.unwrap();
    assert_eq!(hash, Hash::of(&data).to_vec());
    assert_eq!(device.get("piece-1").await.unwrap(), data);

    let stat = device
        .client
        .stat(PieceRequest {
            piece_id: "piece-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stat.exists);
    assert_eq!((stat.size, stat.hash), (data.len() as u64, hash.clone()));

    let capacity = device
        .client
        .capacity(CapacityRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(capacity.capacity_bytes, 10 << 20);
    assert_eq!(capacity.used_bytes, data.len() as u64);
    assert_eq!(capacity.free_bytes, (10 << 20) - data.len() as u64);

    assert_eq!(
        device.put("piece-1", &data).await.unwrap(),
        hash,
        "idempotent"
    );
    let deleted = device
        .client
        .delete(PieceRequest {
            piece_id: "piece-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.existed);
    assert!(!device.exists("piece-1").await);
    let err = device.get("piece-1").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    device.shutdown().await;
}

#[tokio::test]
async fn wrong_hash_is_refused_and_nothing_stored() {
    let mut device = Device::start(None).await;
    let data = sample(1000);
    let frames = piece_frames("p-bad", &data, Hash::of(b"other").to_vec(), 1000);
    let err = device.put_frames(frames).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("hash"), "{}", err.message());
    assert!(!device.exists("p-bad").await);
    assert!(!device.piece_file("p-bad").exists());
    let capacity = device
        .client
        .capacity(CapacityRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(capacity.used_bytes, 0);
    device.shutdown().await;
}

#[tokio::test]
async fn malformed_put_streams_are_refused() {
    let mut device = Device::start(None).await;
    let err = device
        .put_frames(vec![data_frame(b"abc")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("header"), "{}", err.message());

    let big = vec![1u8; MAX_FRAME_BYTES + 1];
    let frames = vec![
        header("p-big", Hash::of(&big).to_vec(), big.len() as u64),
        data_frame(&big),
    ];
    let err = device.put_frames(frames).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains(&MAX_FRAME_BYTES.to_string()),
        "{}",
        err.message()
    );

    let data = sample(100);
    let frames = piece_frames("p-short", &data, Hash::of(&data).to_vec(), 101);
    let err = device.put_frames(frames).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err
        .message()
        .contains("after 100 bytes but the header announced 101"));

    let frames = piece_frames("p-long", &data, Hash::of(&data).to_vec(), 99);
    let err = device.put_frames(frames).await.unwrap_err();
    assert!(err
        .message()
        .contains("100 bytes received but the header announced 99"));

    for id in ["p-big", "p-short", "p-long"] {
        assert!(!device.exists(id).await, "{id}");
    }
    device.shutdown().await;
}

#[tokio::test]
async fn bad_piece_ids_are_refused() {
    let mut device = Device::start(None).await;
    let err = device
        .client
        .stat(PieceRequest {
            piece_id: "../etc".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("piece_id"), "{}", err.message());
    let err = device.put("..", b"x").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    device.shutdown().await;
}

#[tokio::test]
async fn a_piece_corrupted_on_disk_is_data_loss() {
    let mut device = Device::start(None).await;
    let data = sample(5000);
    device.put("p-rot", &data).await.unwrap();
    let path = device.piece_file("p-rot");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let err = device.get("p-rot").await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss);
    assert!(
        err.message()
            .contains("piece p-rot on this device is corrupt")
            && err.message().contains("fetch another replica"),
        "{}",
        err.message()
    );
    device.shutdown().await;
}

#[tokio::test]
async fn a_full_device_refuses_with_resource_exhausted() {
    let mut device = Device::start(Some(1000)).await;
    device.put("p-a", &sample(800)).await.unwrap();
    let err = device.put("p-b", &sample(300)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(!device.exists("p-b").await);
    device.shutdown().await;
}

#[tokio::test]
async fn a_put_stream_that_goes_silent_is_aborted() {
    let mut device = Device::start_with_idle_timeout(None, 1).await;
    let data = sample(1000);
    let (sender, frames) = tokio::sync::mpsc::channel(4);
    sender
        .send(header("p-idle", Hash::of(&data).to_vec(), 1000))
        .await
        .unwrap();
    sender.send(data_frame(&data[..10])).await.unwrap();
    // `sender` stays open and silent: only the device's idle timeout ends the call.
    let call = device
        .client
        .put(tokio_stream::wrappers::ReceiverStream::new(frames));
    let err = tokio::time::timeout(std::time::Duration::from_secs(20), call)
        .await
        .expect("the device never aborted the silent put stream")
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(
        err.message().contains("piece p-idle: no frame for 1 s"),
        "{}",
        err.message()
    );
    drop(sender);
    assert!(!device.exists("p-idle").await);
    device.put("p-after", &data).await.unwrap();
    device.shutdown().await;
}
