//! Faults injected on purpose into a running devnet: a vendor killed in the
//! middle of an upload, a vendor down during a restore, a vendor and a NAS
//! device that hang (SIGSTOP) during a backup and during a restore, and piece
//! files corrupted on NAS devices' disks. Each time the backup or restore
//! must still succeed and the restored tree be identical.

use std::ffi::OsString;
use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use offsite_proto::pb::coordinator::{GetSnapshotRequest, GetSnapshotResponse, PortionLocation};
use offsite_proto::pb::vendor::FetchRequest;
use offsite_tests::checks::{json_stdout, snapshot_ids};
use offsite_tests::tree::{self, files_under, TreeSpec};
use offsite_tests::{
    rpc, wait_for, Devnet, DevnetOptions, KillOnDrop, Paused, VendorWaits, HUNG_CLIENT_STALL_SECS,
};

fn spec(seed: u64, big_files: Vec<u64>, small_files: usize) -> TreeSpec {
    TreeSpec {
        seed,
        big_files,
        small_files,
        small_max: 4096,
        specials: true,
    }
}

/// A default devnet under `tmp` that has backed up a tree of `spec`; the
/// tree's path.
fn backed_up(tmp: &Path, spec: &TreeSpec) -> (std::path::PathBuf, Devnet) {
    let source = tmp.join("source");
    tree::generate(&source, spec).unwrap();
    let devnet = Devnet::start(&tmp.join("devnet"), DevnetOptions::default()).unwrap();
    devnet.client_ok(["init"]).unwrap();
    devnet
        .client_ok([OsString::from("backup"), source.clone().into()])
        .unwrap();
    (source, devnet)
}

fn restore_and_compare(devnet: &Devnet, source: &Path, target: &Path) {
    devnet.restore_latest_matches(source, target).unwrap();
}

fn pieces_of_vendor(devnet: &Devnet, vendor: usize) -> Vec<std::path::PathBuf> {
    devnet
        .nas_data_dirs(vendor)
        .iter()
        .flat_map(|dir| files_under(&dir.join("pieces")))
        .collect()
}

/// A client command running in the background, its output in
/// `dir/NAME.out` and `dir/NAME.err`; killed if the test ends first.
struct Background {
    child: KillOnDrop,
    dir: std::path::PathBuf,
    name: &'static str,
}

impl Background {
    fn spawn(devnet: &Devnet, dir: &Path, name: &'static str, args: Vec<OsString>) -> Self {
        let mut command = devnet.client_command(args).unwrap();
        command
            .stdin(Stdio::null())
            .stdout(File::create(dir.join(format!("{name}.out"))).unwrap())
            .stderr(File::create(dir.join(format!("{name}.err"))).unwrap());
        Self {
            child: KillOnDrop(command.spawn().unwrap()),
            dir: dir.to_path_buf(),
            name,
        }
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn log(&self) -> String {
        let read = |ext: &str| {
            std::fs::read_to_string(self.dir.join(format!("{}.{ext}", self.name)))
                .unwrap_or_default()
        };
        format!("stdout:\n{}\nstderr:\n{}", read("out"), read("err"))
    }

    /// Waits for the command to end and fails, with its output, unless it
    /// succeeded; the output.
    fn succeeds(&mut self, within: Duration, after: &str) -> String {
        let what = format!("the {} to finish", self.name);
        let status = wait_for(&what, within, || self.child.try_wait()).unwrap();
        let log = self.log();
        assert!(
            status.success(),
            "the {} failed ({status}) after {after}:\n{log}",
            self.name
        );
        log
    }
}

/// Starts a backup of `source` in the background and returns once the
/// first vendor holds pieces of it (a vendor the upload is going through),
/// with that vendor's index.
fn backup_under_way(devnet: &Devnet, tmp: &Path, source: &Path) -> (Background, usize) {
    let args = vec![OsString::from("backup"), source.into()];
    let mut backup = Background::spawn(devnet, tmp, "backup", args);
    let first = wait_for("a vendor to hold pieces", Duration::from_secs(120), || {
        anyhow::ensure!(
            backup.running(),
            "the backup ended before any vendor held a piece:\n{}",
            backup.log()
        );
        Ok((0..devnet.vendor_ids().len()).find(|v| !pieces_of_vendor(devnet, *v).is_empty()))
    })
    .unwrap();
    assert!(
        backup.running(),
        "the backup finished before a fault could be injected; the tree is too small"
    );
    (backup, first)
}

#[test]
fn a_vendor_killed_mid_upload_does_not_fail_the_backup() {
    const MIB: u64 = 1024 * 1024;
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    tree::generate(&source, &spec(4, vec![64 * MIB, 48 * MIB, 38 * MIB], 100)).unwrap();
    let mut devnet = Devnet::start(&tmp.path().join("devnet"), DevnetOptions::default()).unwrap();
    devnet.client_ok(["init"]).unwrap();

    let (mut backup, victim) = backup_under_way(&devnet, tmp.path(), &source);
    devnet.kill_vendor(victim).unwrap();
    let killed = format!("vendor-{} was killed", victim + 1);
    let log = backup.succeeds(Duration::from_secs(400), &killed);
    // A copy was under way on the victim when it died: the client saw a
    // stream fail and sent that copy elsewhere.
    assert!(
        log.contains("did not store the portion") || log.contains("store failed"),
        "no copy failed when vendor-{} was killed, so no live stream was cut:\n{log}",
        victim + 1
    );
    assert_every_portion_has_its_copies(&devnet);
    restore_and_compare(&devnet, &source, &tmp.path().join("restore"));
}

/// Every portion was committed with R copies on distinct vendors.
fn assert_every_portion_has_its_copies(devnet: &Devnet) {
    let out = devnet.run_client(["--json", "check"]).unwrap();
    let report = json_stdout(&out).unwrap();
    assert!(
        out.status.success() && report["ok"] == true && report["portions"].as_u64() > Some(0),
        "check after the backup: {report}"
    );
}

/// What went wrong on the way (which stores were cut off, which resent).
fn print_warnings(log: &str) {
    for line in log.lines().filter(|l| l.contains("WARN")) {
        println!("{line}");
    }
}

/// A devnet whose vendors and client cut a hung peer off within seconds.
fn hang_devnet(tmp: &Path) -> Devnet {
    let options = DevnetOptions {
        vendor_waits: VendorWaits::short(),
        client_stall_secs: Some(HUNG_CLIENT_STALL_SECS),
        ..DevnetOptions::default()
    };
    let devnet = Devnet::start(&tmp.join("devnet"), options).unwrap();
    devnet.client_ok(["init"]).unwrap();
    devnet
}

/// About six portions: enough that the upload is still going through the
/// first vendor when it is hung, and that the restore is still fetching
/// when a process is hung under it.
fn hang_tree(tmp: &Path, seed: u64) -> std::path::PathBuf {
    const MIB: u64 = 1024 * 1024;
    let source = tmp.join("source");
    tree::generate(
        &source,
        &spec(seed, vec![40 * MIB, 32 * MIB, 24 * MIB], 100),
    )
    .unwrap();
    source
}

/// The vendor holding the most bytes.
fn busiest_vendor(devnet: &Devnet) -> usize {
    let status = devnet.status().unwrap();
    let busiest = status.vendors.iter().max_by_key(|v| v.used_bytes).unwrap();
    devnet
        .vendor_ids()
        .iter()
        .position(|id| *id == busiest.vendor_id)
        .unwrap()
}

/// Restores the latest snapshot while `hang` hangs a process as soon as the
/// restore has begun writing; the restore must succeed and match `source`.
fn restore_while_hung(devnet: &Devnet, tmp: &Path, source: &Path, hang: impl FnOnce() -> Paused) {
    let target = tmp.join("restore");
    let args = ["restore", "latest", "--target"].map(OsString::from);
    let args = args.into_iter().chain([target.clone().into()]).collect();
    let mut restore = Background::spawn(devnet, tmp, "restore", args);
    wait_for(
        "the restore to begin writing",
        Duration::from_secs(120),
        || {
            anyhow::ensure!(
                restore.running(),
                "the restore ended at once:\n{}",
                restore.log()
            );
            Ok((!files_under(&target).is_empty()).then_some(()))
        },
    )
    .unwrap();
    let paused = hang();
    assert!(
        restore.running(),
        "the restore finished before {} could be hung; the tree is too small",
        paused.name()
    );
    let hung = format!("{} was hung", paused.name());
    restore.succeeds(Duration::from_secs(300), &hung);
    drop(paused);
    tree::compare(source, &tree::restored_root(&target, source)).unwrap();
}

#[test]
fn a_vendor_that_hangs_during_a_backup_and_a_restore_is_cut_off_and_routed_around() {
    let tmp = tempfile::tempdir().unwrap();
    let source = hang_tree(tmp.path(), 7);
    let devnet = hang_devnet(tmp.path());

    let (mut backup, victim) = backup_under_way(&devnet, tmp.path(), &source);
    let paused = devnet.pause_vendor(victim).unwrap();
    let log = backup.succeeds(Duration::from_secs(300), &format!("{} hung", paused.name()));
    print_warnings(&log);
    // A store was under way through the hung vendor: it was cut off as hung
    // (by the client, or by the vendor before it on the route) and the copy
    // went elsewhere, past the stores stuck behind it.
    assert!(
        log.contains("hung"),
        "no store was cut off when {} hung, so no live stream was stuck:\n{log}",
        paused.name()
    );
    drop(paused);
    assert_every_portion_has_its_copies(&devnet);

    let busiest = busiest_vendor(&devnet);
    restore_while_hung(&devnet, tmp.path(), &source, || {
        devnet.pause_vendor(busiest).unwrap()
    });
}

#[test]
fn a_nas_device_that_hangs_during_a_backup_and_a_restore_is_cut_off_and_routed_around() {
    let tmp = tempfile::tempdir().unwrap();
    let source = hang_tree(tmp.path(), 8);
    let devnet = hang_devnet(tmp.path());

    // Pieces go round-robin over a vendor's devices: its first device gets
    // some of every portion it stores.
    let (mut backup, victim) = backup_under_way(&devnet, tmp.path(), &source);
    let paused = devnet.pause_nas(victim, 0).unwrap();
    let log = backup.succeeds(Duration::from_secs(300), &format!("{} hung", paused.name()));
    print_warnings(&log);
    // A put was under way to the hung device: its vendor cut it off (and put
    // the piece on its other device, or failed the copy for the client to
    // store elsewhere).
    let vendor_log = std::fs::read_to_string(
        devnet
            .dir()
            .join(format!("vendor-{}", victim + 1))
            .join("log"),
    )
    .unwrap();
    assert!(
        vendor_log.contains("NAS device hung; cutting the call off"),
        "vendor-{} cut no call to {} off, so no live put was stuck:\n{log}",
        victim + 1,
        paused.name()
    );
    drop(paused);
    assert_every_portion_has_its_copies(&devnet);

    let busiest = busiest_vendor(&devnet);
    restore_while_hung(&devnet, tmp.path(), &source, || {
        devnet.pause_nas(busiest, 0).unwrap()
    });
}

#[test]
fn restore_works_with_one_vendor_down() {
    let tmp = tempfile::tempdir().unwrap();
    let (source, mut devnet) = backed_up(tmp.path(), &spec(5, vec![20 * 1024 * 1024], 200));

    // Take down the vendor holding the most, so the restore must do without it.
    let status = devnet.status().unwrap();
    let busiest = status.vendors.iter().max_by_key(|v| v.used_bytes).unwrap();
    assert!(
        busiest.used_bytes > 0,
        "no vendor holds anything: {status:?}"
    );
    let index = busiest_vendor(&devnet);
    devnet.kill_vendor(index).unwrap();
    assert!(rpc::block_on(rpc::probe(devnet.vendor_addr(index)))
        .unwrap()
        .is_err());

    restore_and_compare(&devnet, &source, &tmp.path().join("restore"));

    // Back with the same config and data, it serves its portions again.
    devnet.restart_vendor(index).unwrap();
    let probe = rpc::block_on(rpc::probe(devnet.vendor_addr(index)))
        .unwrap()
        .unwrap();
    assert_eq!(probe.vendor_id, busiest.vendor_id);
}

/// The latest snapshot's final FAT, as the coordinator answers it.
fn latest_snapshot(devnet: &Devnet) -> anyhow::Result<GetSnapshotResponse> {
    let snapshots = json_stdout(&devnet.client_ok(["--json", "snapshots"])?)?;
    let snapshot_id = snapshot_ids(&snapshots)
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no snapshot: {snapshots}"))?;
    let coordinator = devnet.coordinator_addr();
    rpc::block_on(async move {
        let request = rpc::as_tenant(GetSnapshotRequest { snapshot_id }, rpc::DEVNET_TENANT)?;
        let mut fat = rpc::fat(coordinator).await?;
        anyhow::Ok(fat.get_snapshot(request).await?.into_inner())
    })?
}

/// The portions of the latest snapshot with the vendor ids holding each.
fn holders_of_latest(devnet: &Devnet) -> Vec<Vec<String>> {
    latest_snapshot(devnet)
        .unwrap()
        .portions
        .iter()
        .map(|p| p.vendors.iter().map(|v| v.vendor_id.clone()).collect())
        .collect()
}

#[test]
fn restore_works_with_r_minus_1_holders_of_a_portion_down() {
    let tmp = tempfile::tempdir().unwrap();
    let (source, mut devnet) = backed_up(tmp.path(), &spec(6, vec![40 * 1024 * 1024], 100));

    // Two vendors that hold some portion together: with R = 3, that portion
    // keeps one holder, and every other portion at least one.
    let holders = holders_of_latest(&devnet);
    let ids = devnet.vendor_ids();
    let (a, b) = (0..ids.len())
        .flat_map(|a| (a + 1..ids.len()).map(move |b| (a, b)))
        .find(|(a, b)| {
            holders
                .iter()
                .any(|h| h.contains(&ids[*a]) && h.contains(&ids[*b]))
        })
        .expect("no two vendors share a portion");
    assert!(
        holders.iter().all(|h| h.len() == 3),
        "a portion without 3 holders: {holders:?}"
    );
    devnet.kill_vendor(a).unwrap();
    devnet.kill_vendor(b).unwrap();
    restore_and_compare(&devnet, &source, &tmp.path().join("restore"));
}

#[test]
fn corrupted_pieces_on_disk_do_not_spoil_a_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let (source, devnet) = backed_up(tmp.path(), &spec(6, vec![24 * 1024 * 1024], 100));

    // Every piece of two of the four vendors: with three copies of each portion,
    // at least one copy of each stays sound, and the restore must find it.
    let mut corrupted = 0;
    for vendor in [0, 1] {
        for piece in pieces_of_vendor(&devnet, vendor) {
            tree::corrupt_piece(&piece);
            corrupted += 1;
        }
    }
    assert!(
        corrupted > 0,
        "no piece files under the NAS data directories"
    );

    // The damage is real: vendor-1 refuses to serve a portion it holds, which
    // a vendor with untouched pieces serves whole.
    let snapshot = latest_snapshot(&devnet).unwrap();
    let addresses: Vec<_> = (0..4).map(|i| devnet.vendor_addr(i)).collect();
    let (corrupt_fetch, sound_fetch, size) = rpc::block_on(async move {
        let holds = |p: &PortionLocation, id: &str| p.vendors.iter().any(|v| v.vendor_id == id);
        let Some(held) = snapshot.portions.iter().find(|p| holds(p, "vendor-1")) else {
            anyhow::bail!("vendor-1 holds no portion of the snapshot");
        };
        let (sound, sound_id) = if holds(held, "vendor-3") {
            (addresses[2], "vendor-3")
        } else {
            (addresses[3], "vendor-4")
        };
        // The fetch grant the coordinator signed for each vendor.
        let grant = |id: &str| {
            held.vendors
                .iter()
                .position(|v| v.vendor_id == id)
                .and_then(|i| held.fetch_grants.get(i).cloned())
        };
        let corrupt_fetch = fetch_portion(addresses[0], &held.portion_id, grant("vendor-1")).await;
        let sound_fetch = fetch_portion(sound, &held.portion_id, grant(sound_id)).await;
        anyhow::Ok((corrupt_fetch, sound_fetch, held.size))
    })
    .unwrap()
    .unwrap();
    assert!(
        corrupt_fetch.is_err(),
        "vendor-1 served a corrupted portion: {corrupt_fetch:?}"
    );
    assert!(
        corrupt_fetch
            .as_ref()
            .is_err_and(|s| s.code() != tonic::Code::PermissionDenied),
        "vendor-1 refused the fetch grant instead: {corrupt_fetch:?}"
    );
    assert_eq!(sound_fetch.unwrap(), size);

    restore_and_compare(&devnet, &source, &tmp.path().join("restore"));
}

/// Fetches a whole portion from a vendor; the number of bytes it sent.
async fn fetch_portion(
    vendor: SocketAddr,
    portion_id: &str,
    grant: Option<offsite_proto::pb::common::Grant>,
) -> Result<u64, tonic::Status> {
    let request = FetchRequest {
        tenant_id: rpc::DEVNET_TENANT.into(),
        portion_id: portion_id.into(),
        grant,
        ..Default::default()
    };
    let mut client = rpc::vendor(vendor)
        .await
        .map_err(|e| tonic::Status::unavailable(format!("{e:#}")))?;
    let request = rpc::as_tenant(request, rpc::DEVNET_TENANT)
        .map_err(|e| tonic::Status::internal(format!("{e:#}")))?;
    let mut stream = client.fetch(request).await?.into_inner();
    let mut bytes = 0;
    while let Some(frame) = stream.message().await? {
        bytes += frame.data.len() as u64;
    }
    Ok(bytes)
}
