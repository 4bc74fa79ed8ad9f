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
use offsite_proto::pb::common as pbc;
use offsite_proto::pb::coordinator as pb;
use offsite_proto::pb::coordinator::fat_client::FatClient;
use offsite_proto::pb::coordinator::vendor_registry_client::VendorRegistryClient;
use offsite_proto::{Hash, PortionId, TENANT_METADATA_KEY};
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
        let (addresses, stops) = start_group(size, root.path()).await?;
        let result = run(
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
    let mut registry = VendorRegistryClient::connect(format!("http://{}", addresses[0])).await?;
    for v in 0..12 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let call = registry
                .register(pb::RegisterVendorRequest {
                    vendor_id: format!("vendor-{v}"),
                    address: format!("127.0.0.1:{}", 7100 + v),
                    region: ["eu", "us", "ap"][v % 3].into(),
                    offered_bytes: u64::MAX / 64,
                    network_bytes_per_sec: 0,
                    identity_key: vec![],
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

fn as_tenant<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    if let Ok(tenant) = "bench".parse() {
        request.metadata_mut().insert(TENANT_METADATA_KEY, tenant);
    }
    request
}

/// One reserve+commit pair; the client is the leader's or a follower's.
async fn pair(fat: &mut FatClient<Channel>, n: u64) -> anyhow::Result<()> {
    let reservation = fat
        .reserve(as_tenant(pb::ReserveRequest {
            request_id: format!("r-{n}"),
            bytes: 1000,
            replication: 1,
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
        reservation_id: reservation.reservation_id,
        portions: vec![pb::PortionPlacement {
            portion_id: portion.to_string(),
            hash: hash.clone(),
            size: 500,
            receipts: vec![pbc::Receipt {
                vendor_id: vendor,
                tenant_id: "bench".into(),
                portion_id: portion.to_string(),
                hash,
                size: 500,
                signature: vec![],
            }],
        }],
        snapshot: None,
    }))
    .await?;
    Ok(())
}

async fn run(
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
        workers.push(tokio::spawn(async move {
            let mut fat = FatClient::connect(format!("http://{address}")).await?;
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
