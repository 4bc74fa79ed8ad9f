//! `fat-bench`: committed FAT operations per second, and p50/p99 latency of
//! reserve+commit pairs, against a coordinator group of three on loopback and
//! against a group of one, all in this process over real gRPC.
//!
//! `cargo run --release -p offsite-coordinator --bin fat-bench -- --seconds 10 --concurrency 64`

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use offsite_coordinator::{Coordinator, CoordinatorConfig, MemberConfig};
use offsite_identity::pki::CertificateAuthority;
use offsite_identity::{Credentials, PeerIdentity, Role};
use offsite_proto::pb::common as pbc;
use offsite_proto::pb::coordinator as pb;
use offsite_proto::pb::coordinator::fat_client::FatClient;
use offsite_proto::pb::coordinator::vendor_registry_client::VendorRegistryClient;
use offsite_proto::{Hash, PortionId};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Mutex};
use tonic::transport::Channel;
use tonic::Request;

#[derive(Parser)]
#[command(
    name = "fat-bench",
    about = "Reserve+commit throughput and latency of the coordinator group"
)]
struct Args {
    /// How long each run lasts, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent clients, each doing reserve then commit in a loop.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Group sizes to measure, in order.
    #[arg(long, value_delimiter = ',', default_value = "3,1")]
    groups: Vec<usize>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for &size in &args.groups {
        let root = tempfile::tempdir().context("temp dir")?;
        let ca = CertificateAuthority::generate()?;
        let (addresses, stops) = start_group(size, root.path(), &ca).await?;
        let tenant =
            ca.credentials(&PeerIdentity::new(Role::Tenant, "bench").map_err(anyhow::Error::msg)?)?;
        let result = run(
            &tenant,
            &addresses,
            args.concurrency,
            Duration::from_secs(args.seconds),
        )
        .await?;
        println!(
            "group of {size}: {:.0} committed FAT ops/s ({} reserve+commit pairs in {:.1} s, concurrency {}), pair latency p50 {:.1} ms, p99 {:.1} ms",
            result.ops as f64 / result.elapsed.as_secs_f64(),
            result.latencies.len(),
            result.elapsed.as_secs_f64(),
            args.concurrency,
            result.percentile(0.50),
            result.percentile(0.99),
        );
        for stop in stops {
            let _ = stop.send(());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(())
}

async fn start_group(
    size: usize,
    root: &std::path::Path,
    ca: &CertificateAuthority,
) -> anyhow::Result<(Vec<String>, Vec<oneshot::Sender<()>>)> {
    let mut listeners = Vec::new();
    for _ in 0..size {
        listeners.push(TcpListener::bind("127.0.0.1:0").await?);
    }
    let members: Vec<MemberConfig> = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| {
            Ok(MemberConfig {
                id: i as u64 + 1,
                address: l.local_addr()?.to_string(),
                name: Some(format!("c{i}")),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let mut stops = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let config = CoordinatorConfig {
            node_id: i as u64 + 1,
            listen: listener.local_addr()?,
            data_dir: root.join(format!("c{i}")),
            initial_members: members.clone(),
            tls: ca.write_tls(
                root,
                &PeerIdentity::new(Role::Coordinator, format!("c{i}"))
                    .map_err(anyhow::Error::msg)?,
            )?,
            ..CoordinatorConfig::default()
        };
        let coordinator = Coordinator::start_on(config, listener).await?;
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(coordinator.serve(async {
            let _ = stopped.await;
        }));
        stops.push(stop);
    }
    let addresses: Vec<String> = members.iter().map(|m| m.address.clone()).collect();
    // Register vendors through the first coordinator once a leader exists.
    for v in 0..12 {
        let vendor =
            PeerIdentity::new(Role::Vendor, format!("vendor-{v}")).map_err(anyhow::Error::msg)?;
        let channel = connect(&ca.credentials(&vendor)?, &addresses[0]).await?;
        let mut registry = VendorRegistryClient::new(channel);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let call = registry
                .register(pb::RegisterVendorRequest {
                    vendor_id: format!("vendor-{v}"),
                    address: format!("127.0.0.1:{}", 7100 + v),
                    region: ["eu", "us", "ap"][v % 3].into(),
                    offered_bytes: u64::MAX / 64,
                    network_bytes_per_sec: 0,
                    identity_key: bench_vendor_key(&format!("vendor-{v}"))
                        .public_key()
                        .to_vec(),
                    ..Default::default()
                })
                .await;
            match call {
                Ok(_) => break,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e).context("registering vendors"),
            }
        }
    }
    Ok((addresses, stops))
}

struct RunResult {
    ops: u64,
    elapsed: Duration,
    latencies: Vec<f64>,
}

impl RunResult {
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies.len() - 1) as f64 * p).round() as usize;
        self.latencies[i]
    }
}

/// The tenant is the one named by the bench's tenant certificate.
fn as_tenant<T>(message: T) -> Request<T> {
    Request::new(message)
}

/// A mutual-TLS channel to the coordinator at `address`.
async fn connect(credentials: &Credentials, address: &str) -> anyhow::Result<Channel> {
    Ok(credentials
        .endpoint(address, &Role::Coordinator.dns_name())?
        .connect()
        .await?)
}

/// The identity key of bench vendor `name` (derived from its name).
fn bench_vendor_key(name: &str) -> offsite_proto::signing::VendorKey {
    offsite_proto::signing::VendorKey::from_secret(blake3::hash(name.as_bytes()).as_bytes())
}

/// The receipt `vendor` would sign for a 500-byte portion stored under
/// `reservation`.
fn bench_receipt(
    vendor: &str,
    portion: PortionId,
    hash: &[u8],
    reservation: &str,
) -> anyhow::Result<pbc::Receipt> {
    let reservation =
        offsite_proto::ReservationId::parse(reservation).map_err(anyhow::Error::msg)?;
    let mut receipt = offsite_proto::Receipt {
        vendor: offsite_proto::VendorId::new(vendor).map_err(anyhow::Error::msg)?,
        tenant: offsite_proto::TenantId::new("bench").map_err(anyhow::Error::msg)?,
        portion,
        hash: Hash::from_wire("hash", hash).map_err(anyhow::Error::msg)?,
        size: 500,
        signature: vec![],
    };
    bench_vendor_key(vendor).sign(&mut receipt, &reservation);
    Ok(receipt.into())
}

/// One reserve+commit pair; the client is the leader's or a follower's.
async fn pair(fat: &mut FatClient<Channel>, n: u64) -> anyhow::Result<()> {
    let reservation = fat
        .reserve(as_tenant(pb::ReserveRequest {
            request_id: format!("r-{n}"),
            bytes: 1000,
            replication: 1,
            ..Default::default()
        }))
        .await?
        .into_inner();
    let vendor = reservation
        .candidates
        .first()
        .and_then(|c| c.vendor.as_ref())
        .context("a reservation without candidates")?
        .vendor_id
        .clone();
    let portion = PortionId::random();
    let hash = Hash::of(portion.as_bytes()).to_vec();
    fat.commit(as_tenant(pb::CommitRequest {
        request_id: format!("c-{n}"),
        portions: vec![pb::PortionPlacement {
            portion_id: portion.to_string(),
            hash: hash.clone(),
            size: 500,
            receipts: vec![bench_receipt(
                &vendor,
                portion,
                &hash,
                &reservation.reservation_id,
            )?],
        }],
        reservation_id: reservation.reservation_id,
        snapshot: None,
    }))
    .await?;
    Ok(())
}

async fn run(
    tenant: &Credentials,
    addresses: &[String],
    concurrency: usize,
    length: Duration,
) -> anyhow::Result<RunResult> {
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        // Clients spread over every coordinator, as configured clients do.
        let address = addresses[w % addresses.len()].clone();
        let latencies = Arc::clone(&latencies);
        let tenant = tenant.clone();
        workers.push(tokio::spawn(async move {
            let mut fat = FatClient::new(connect(&tenant, &address).await?);
            let mut n = (w as u64) << 32;
            while started.elapsed() < length {
                let t = Instant::now();
                pair(&mut fat, n).await?;
                latencies
                    .lock()
                    .await
                    .push(t.elapsed().as_secs_f64() * 1000.0);
                n += 1;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for worker in workers {
        worker.await.context("a bench worker panicked")??;
    }
    let elapsed = started.elapsed();
    let mut latencies = std::mem::take(&mut *latencies.lock().await);
    latencies.sort_by(|a, b| a.total_cmp(b));
    Ok(RunResult {
        ops: latencies.len() as u64 * 2,
        elapsed,
        latencies,
    })
}
