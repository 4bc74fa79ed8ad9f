//! Registration and capacity reports against a recording coordinator, and the
//! binary's handling of a bad config file.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::dead_address;
use offsite_identity::{PeerIdentity, Role};
use offsite_proto::pb::coordinator::vendor_registry_server::{
    VendorRegistry, VendorRegistryServer,
};
use offsite_proto::pb::coordinator::{
    CapacityReport, CapacityReportResponse, RegisterVendorRequest, RegisterVendorResponse,
};
use offsite_vendor::{VendorAgent, VendorConfig};
use tonic::{Request, Response, Status};

#[derive(Default)]
struct Calls {
    registers: Vec<RegisterVendorRequest>,
    reports: Vec<CapacityReport>,
    /// Reports to refuse before accepting.
    refuse_reports: usize,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Calls>>);

#[tonic::async_trait]
impl VendorRegistry for Recorder {
    async fn register(
        &self,
        request: Request<RegisterVendorRequest>,
    ) -> Result<Response<RegisterVendorResponse>, Status> {
        self.0.lock().unwrap().registers.push(request.into_inner());
        Ok(Response::new(RegisterVendorResponse { grant_keys: vec![] }))
    }

    async fn report_capacity(
        &self,
        request: Request<CapacityReport>,
    ) -> Result<Response<CapacityReportResponse>, Status> {
        let mut calls = self.0.lock().unwrap();
        if calls.refuse_reports > 0 {
            calls.refuse_reports -= 1;
            return Err(Status::failed_precondition(
                "unknown vendor; register first",
            ));
        }
        calls.reports.push(request.into_inner());
        Ok(Response::new(CapacityReportResponse::default()))
    }

    async fn earnings(
        &self,
        _request: Request<offsite_proto::pb::coordinator::EarningsRequest>,
    ) -> Result<Response<offsite_proto::pb::coordinator::EarningsResponse>, Status> {
        Err(Status::unimplemented("this recorder keeps no ledger"))
    }

    async fn reconcile(
        &self,
        _request: Request<offsite_proto::pb::coordinator::ReconcileRequest>,
    ) -> Result<Response<offsite_proto::pb::coordinator::ReconcileResponse>, Status> {
        Err(Status::unimplemented("this recorder keeps no FAT"))
    }

    async fn exit(
        &self,
        _request: Request<offsite_proto::pb::coordinator::ExitRequest>,
    ) -> Result<Response<offsite_proto::pb::coordinator::DepartureStatusResponse>, Status> {
        Err(Status::unimplemented("this recorder keeps no exits"))
    }

    async fn relieve(
        &self,
        _request: Request<offsite_proto::pb::coordinator::RelieveRequest>,
    ) -> Result<Response<offsite_proto::pb::coordinator::DepartureStatusResponse>, Status> {
        Err(Status::unimplemented("this recorder keeps no reliefs"))
    }

    async fn departure_status(
        &self,
        _request: Request<offsite_proto::pb::coordinator::DepartureStatusRequest>,
    ) -> Result<Response<offsite_proto::pb::coordinator::DepartureStatusResponse>, Status> {
        Err(Status::unimplemented("this recorder keeps no exits"))
    }
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn registers_over_a_dead_coordinator_reports_and_re_registers() {
    let recorder = Recorder::default();
    recorder.0.lock().unwrap().refuse_reports = 1;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let coordinator = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(common::credentials(Role::Coordinator, "c1").server_tls())
            .unwrap()
            .add_service(VendorRegistryServer::new(recorder.clone()))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );

    let store_dir = tempfile::tempdir().unwrap();
    let data_dir = tempfile::tempdir().unwrap();
    let tls = common::test_ca()
        .write_tls(
            data_dir.path(),
            &PeerIdentity::new(Role::Vendor, "vendor-r").unwrap(),
        )
        .unwrap();
    let config: VendorConfig = toml::from_str(&format!(
        r#"
vendor_id = "vendor-r"
advertise = "10.0.0.9:7101"
region = "eu-west"
coordinators = ["{dead}", "{coordinator}"]
data_dir = {data:?}
report_interval_secs = 1
network_bytes_per_sec = 1000
keep_free_share = 0.0
tls = {{ ca = {ca:?}, cert = {cert:?}, key = {key:?} }}
[[stores]]
kind = "local"
path = {store:?}
cap_bytes = 5000000
"#,
        dead = dead_address().await,
        data = data_dir.path(),
        store = store_dir.path(),
        ca = tls.ca,
        cert = tls.cert,
        key = tls.key,
    ))
    .unwrap();
    let agent = VendorAgent::open(&config).unwrap();
    let registration = tokio::spawn(agent.registration(&config));

    // One refused report sends the vendor back to registering.
    wait_for("two registrations and a report", || {
        let calls = recorder.0.lock().unwrap();
        calls.registers.len() >= 2 && !calls.reports.is_empty()
    })
    .await;
    {
        let calls = recorder.0.lock().unwrap();
        let first = &calls.registers[0];
        assert_eq!(first.vendor_id, "vendor-r");
        assert_eq!(first.address, "10.0.0.9:7101");
        assert_eq!(first.region, "eu-west");
        assert_eq!(first.network_bytes_per_sec, 1000);
        assert!(first.offered_bytes > 0 && first.offered_bytes <= 5_000_000);
        // The identity key the vendor signs receipts with, from its data dir.
        assert_eq!(first.identity_key, agent.identity_public_key().to_vec());
        assert!(data_dir.path().join("identity.key").exists());
        let report = &calls.reports[0];
        assert_eq!(report.vendor_id, "vendor-r");
        assert_eq!(report.stored_bytes, 0);
        assert_eq!(report.offered_bytes, first.offered_bytes);
    }
    registration.abort();
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[test]
fn the_binary_names_a_missing_or_malformed_config_file() {
    let binary = env!("CARGO_BIN_EXE_offsite-vendor");
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let output = std::process::Command::new(binary)
        .args(["run", "--config"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("missing.toml"), "{stderr}");

    let malformed = dir.path().join("malformed.toml");
    std::fs::write(&malformed, "vendor_id = \"v\"\nstores = 3\n").unwrap();
    let output = std::process::Command::new(binary)
        .args(["run", "--config"])
        .arg(&malformed)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("malformed.toml"), "{stderr}");
}
