//! Streams and memory: a tenant that opens hundreds of fetch streams from a
//! vendor and never reads them holds a bounded share of the vendor's memory
//! (its read budget), and another tenant's restore from the same vendors
//! still succeeds while the streams are open.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use offsite_identity::Role;
use offsite_proto::pb::coordinator::GetSnapshotRequest;
use offsite_proto::pb::vendor::FetchRequest;
use offsite_tests::checks::{json_stdout, snapshot_ids};
use offsite_tests::tree::{self, TreeSpec};
use offsite_tests::{client_command_with, rpc, run_bounded, Devnet, DevnetOptions, CLIENT_TIMEOUT};

const MIB: u64 = 1024 * 1024;
/// Fetch streams the greedy tenant opens and never reads...
const STREAMS: usize = 300;
/// ...over this many connections (under a server's streams per connection).
const CONNECTIONS: usize = 6;
/// Far above a vendor with its read budget (256 MiB, a quarter per tenant),
/// far below one that reads a 5 MiB piece for every open stream.
const RSS_BOUND_MIB: u64 = 512;
/// How long the vendor's memory is watched once the streams are open.
const WATCH: Duration = Duration::from_secs(6);

fn spec(seed: u64, big: u64) -> TreeSpec {
    TreeSpec {
        seed,
        big_files: vec![big],
        small_files: 20,
        small_max: 4096,
        specials: false,
    }
}

/// The resident memory of process `pid`, in MiB (VmRSS in /proc/PID/status).
fn rss_mib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kib / 1024)
}

/// A client config for another tenant, `other`, with its own key, cache
/// and certificate; the tree it backed up.
fn other_tenant(devnet: &Devnet, dir: &Path) -> PathBuf {
    let tls = devnet.rpc().tls(Role::Tenant, "other").unwrap();
    let path = |p: &Path| toml::Value::String(p.display().to_string());
    let mut tls_table = toml::Table::new();
    tls_table.insert("ca".into(), path(&tls.ca));
    tls_table.insert("cert".into(), path(&tls.cert));
    tls_table.insert("key".into(), path(&tls.key));
    let config = devnet
        .client_config_with(
            &dir.join("other.toml"),
            &[
                ("tenant", "other".into()),
                ("host", "other-host".into()),
                ("key_file", path(&dir.join("other-key.json"))),
                ("cache_dir", path(&dir.join("other-cache"))),
                ("tls", toml::Value::Table(tls_table)),
            ],
        )
        .unwrap();
    let source = dir.join("other-source");
    tree::generate(&source, &spec(12, 8 * MIB)).unwrap();
    other_ok(&config, [OsString::from("init")]);
    other_ok(&config, [OsString::from("backup"), source.into()]);
    config
}

fn other_ok(config: &Path, args: impl IntoIterator<Item = OsString>) {
    let output = run_bounded(client_command_with(config, args).unwrap(), CLIENT_TIMEOUT).unwrap();
    assert!(
        output.status.success(),
        "the other tenant's client failed:\n{}",
        offsite_tests::describe(&output)
    );
}

#[test]
fn unread_fetch_streams_hold_bounded_vendor_memory_and_other_tenants_still_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let devnet = Devnet::start(&tmp.path().join("devnet"), DevnetOptions::default()).unwrap();
    let source = tmp.path().join("source");
    tree::generate(&source, &spec(11, 24 * MIB)).unwrap();
    devnet.client_ok(["init"]).unwrap();
    devnet
        .client_ok([OsString::from("backup"), source.into()])
        .unwrap();
    let other = other_tenant(&devnet, tmp.path());

    // The devnet tenant's largest portion, and the first vendor holding it.
    let snapshots = json_stdout(&devnet.client_ok(["--json", "snapshots"]).unwrap()).unwrap();
    let snapshot_id = snapshot_ids(&snapshots).pop().unwrap();
    let coordinator = devnet.coordinator_addr();
    let snapshot = rpc::block_on(async move {
        let request = rpc::as_tenant(GetSnapshotRequest { snapshot_id }, rpc::DEVNET_TENANT)?;
        anyhow::Ok(
            rpc::fat(coordinator)
                .await?
                .get_snapshot(request)
                .await?
                .into_inner(),
        )
    })
    .unwrap()
    .unwrap();
    let portion = snapshot.portions.iter().max_by_key(|p| p.size).unwrap();
    let holder = &portion.vendors[0].vendor_id;
    let index = devnet
        .vendor_ids()
        .iter()
        .position(|id| id == holder)
        .unwrap();
    let pid = devnet.vendor_pid(index).unwrap();
    let request = FetchRequest {
        tenant_id: rpc::DEVNET_TENANT.into(),
        portion_id: portion.portion_id.clone(),
        grant: portion.fetch_grants.first().cloned(),
        ..Default::default()
    };
    let before = rss_mib(pid).unwrap();

    let runtime = rpc::runtime().unwrap();
    let address = devnet.vendor_addr(index);
    let unread = runtime.block_on(async {
        let mut unread = Vec::with_capacity(STREAMS);
        for _ in 0..CONNECTIONS {
            let client = rpc::vendor(address).await.unwrap();
            for _ in 0..STREAMS / CONNECTIONS {
                let call = rpc::as_tenant(request.clone(), rpc::DEVNET_TENANT).unwrap();
                let stream = client.clone().fetch(call).await.unwrap().into_inner();
                unread.push(stream);
            }
        }
        unread
    });
    let watch_until = Instant::now() + WATCH;
    let mut peak = before;
    while Instant::now() < watch_until {
        peak = peak.max(rss_mib(pid).unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "{holder} resident memory: {before} MiB before, at most {peak} MiB with {} unread fetch \
         streams of a {} MiB portion open",
        unread.len(),
        portion.size / MIB
    );

    // Another tenant's restore goes through while the streams are open.
    let other_source = tmp.path().join("other-source");
    let target = tmp.path().join("other-restore");
    let restore = ["restore", "latest", "--target"].map(OsString::from);
    other_ok(&other, restore.into_iter().chain([target.clone().into()]));
    tree::compare(&other_source, &tree::restored_root(&target, &other_source)).unwrap();
    let after = rss_mib(pid).unwrap();
    println!("{holder} resident memory after the other tenant's restore: {after} MiB");
    drop(unread);

    assert!(
        peak.max(after) < RSS_BOUND_MIB,
        "{holder} grew from {before} MiB to {} MiB with {STREAMS} unread fetch streams open",
        peak.max(after)
    );
}
