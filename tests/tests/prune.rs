//! `offsite prune` through the real client against a devnet: after three
//! backups of a changing tree and `forget --keep-last 1`, a prune releases in
//! the FAT exactly the portions the remaining snapshot does not need, the
//! vendors delete them at their next capacity reports (used and stored bytes
//! and the piece files on the NAS devices shrink), a repack moves the live
//! blobs of a mostly unused portion into new ones and rewrites the snapshot
//! onto them, the remaining snapshot still restores byte for byte after
//! each step, `prune --dry-run` changes nothing, and a backup after the
//! prune is whole.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use offsite_identity::Role;
use offsite_proto::pb::admin::MarketplaceStatusResponse;
use offsite_proto::pb::coordinator::{GetSnapshotRequest, ListPortionsRequest};
use offsite_tests::checks::{json_stdout, used_bytes};
use offsite_tests::rpc;
use offsite_tests::tree::{self, noise};
use offsite_tests::{describe, run_bounded, Devnet, DevnetOptions, CLIENT_TIMEOUT};
use serde_json::Value;

/// Long enough for a few capacity reports (one a second on a devnet).
const DELETION_TIMEOUT: Duration = Duration::from_secs(30);

fn json_ok(devnet: &Devnet, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    json_stdout(&devnet.client_ok(&all).unwrap()).unwrap()
}

/// A tree with a part every snapshot shares and a part that changes with `round`.
fn write_tree(src: &Path, round: u32) {
    std::fs::create_dir_all(src.join("docs")).unwrap();
    std::fs::write(src.join("stable.bin"), noise("stable", 1_200_000)).unwrap();
    std::fs::write(
        src.join("changing.bin"),
        noise(&format!("round {round}"), 1_500_000),
    )
    .unwrap();
    std::fs::write(
        src.join("docs/notes.txt"),
        format!("notes of round {round}\n"),
    )
    .unwrap();
}

/// Every portion of the tenant in the FAT (the coordinator's own list).
fn fat_portions(devnet: &Devnet) -> BTreeSet<String> {
    fat_portion_sizes(devnet).into_keys().collect()
}

/// Every portion of the tenant in the FAT with its size.
fn fat_portion_sizes(devnet: &Devnet) -> BTreeMap<String, u64> {
    let (addr, harness) = (devnet.coordinator_addr(), devnet.rpc());
    rpc::block_on(async move {
        let mut client = harness.fat(addr).await.unwrap();
        let mut all = BTreeMap::new();
        let mut after = String::new();
        loop {
            let request = ListPortionsRequest {
                after_portion_id: after.clone(),
                limit: 2,
            };
            let page = client.list_portions(request).await.unwrap().into_inner();
            all.extend(page.portions.iter().map(|p| (p.portion_id.clone(), p.size)));
            match page.portions.last() {
                Some(last) if page.more => after = last.portion_id.clone(),
                _ => return all,
            }
        }
    })
    .unwrap()
}

/// The portions a snapshot needs, as its record names them (manifest included).
fn snapshot_portions(devnet: &Devnet, id: &str) -> BTreeSet<String> {
    let (addr, harness) = (devnet.coordinator_addr(), devnet.rpc());
    let request = GetSnapshotRequest {
        snapshot_id: id.to_string(),
    };
    let reply = rpc::block_on(async move {
        let mut client = harness.fat(addr).await.unwrap();
        client.get_snapshot(request).await.unwrap().into_inner()
    })
    .unwrap();
    let record = reply.snapshot.unwrap();
    let mut portions: BTreeSet<String> = record.portion_ids.into_iter().collect();
    portions.insert(record.manifest.unwrap().portion_id);
    portions
}

/// Bytes of piece files on every NAS device.
fn piece_bytes_on_disk(dirs: &[PathBuf]) -> u64 {
    dirs.iter()
        .flat_map(|d| tree::files_under(&d.join("pieces")))
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .sum()
}

fn stored_bytes(status: &MarketplaceStatusResponse) -> u64 {
    status.vendors.iter().map(|v| v.stored_bytes).sum()
}

/// Waits until the vendors deleted every released portion: no deletion
/// pending, and used and stored bytes at what the FAT's portions take.
fn wait_deleted(devnet: &Devnet, used: u64, stored: u64) -> MarketplaceStatusResponse {
    devnet
        .wait_status(
            "the vendors to delete the released portions",
            DELETION_TIMEOUT,
            |s| s.pending_deletions == 0 && used_bytes(s) == used && stored_bytes(s) == stored,
        )
        .unwrap_or_else(|e| {
            let now = devnet.status().unwrap();
            panic!(
                "{e:#}: pending {} used {} (want {used}) stored {} (want {stored})",
                now.pending_deletions,
                used_bytes(&now),
                stored_bytes(&now)
            )
        })
}

/// Sets the devnet tenant's storage quota (0: none) with the admin's certificate.
fn set_quota(devnet: &Devnet, bytes: u64) {
    let mut cli = devnet
        .coordinator_cli("tenant", Role::Admin, rpc::HARNESS_ADMIN)
        .unwrap();
    cli.args([
        "set",
        "--tenant",
        "devnet",
        "--quota-bytes",
        &bytes.to_string(),
    ]);
    let output = run_bounded(cli, Duration::from_secs(60)).unwrap();
    assert!(output.status.success(), "{}", describe(&output));
}

fn restores_byte_for_byte(devnet: &Devnet, src: &Path, target: &Path) {
    devnet.restore_latest_matches(src, target).unwrap();
}

#[test]
fn forget_then_prune_releases_and_repacks_what_no_snapshot_needs() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    // Portions large enough that a round's data shares one portion: after
    // the forget, the first round's data portion is mostly unused (only the
    // stable file in it is still needed).
    let options = DevnetOptions {
        portion_bytes: 4 * 1024 * 1024,
        ..DevnetOptions::default()
    };
    let replication = u64::from(options.replication);
    let devnet = Devnet::start(&tmp.path().join("devnet"), options).unwrap();
    devnet.client_ok(["init"]).unwrap();
    let src_arg = src.to_str().unwrap();

    let mut snapshots = Vec::new();
    for round in 0..3 {
        write_tree(&src, round);
        let backup = json_ok(&devnet, &["backup", src_arg]);
        snapshots.push(backup["snapshot_id"].as_str().unwrap().to_string());
    }
    let all_before = fat_portions(&devnet);
    let disk_before = piece_bytes_on_disk(&devnet.all_nas_data_dirs());
    // The vendors' stored bytes lag by a report; wait until they hold what
    // the FAT counts as used.
    let status_before = devnet
        .wait_status(
            "the vendors to report what they store",
            DELETION_TIMEOUT,
            |s| stored_bytes(s) >= used_bytes(s),
        )
        .unwrap();
    assert_eq!(status_before.portions as usize, all_before.len());

    // With every snapshot still there, nothing is unneeded.
    let nothing = json_ok(&devnet, &["prune", "--dry-run"]);
    assert_eq!(nothing["portions_released"], 0, "{nothing:#}");
    assert_eq!(nothing["portions_repacked"], 0, "{nothing:#}");
    assert_eq!(nothing["portions_total"], all_before.len(), "{nothing:#}");

    let forget = json_ok(&devnet, &["forget", "--keep-last", "1"]);
    assert_eq!(forget["remove"].as_array().unwrap().len(), 2, "{forget:#}");
    let kept = &snapshots[2];
    let needed = snapshot_portions(&devnet, kept);
    let unneeded: BTreeSet<String> = all_before.difference(&needed).cloned().collect();
    assert!(
        unneeded.len() >= 2,
        "each earlier round left portions only it needed: {} of {}",
        unneeded.len(),
        all_before.len()
    );

    // A dry run, with repacking, changes nothing.
    let dry = json_ok(&devnet, &["prune", "--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["portions_released"], unneeded.len(), "{dry:#}");
    assert_eq!(dry["portions_needed"], needed.len(), "{dry:#}");
    assert_eq!(dry["portions_kept_recent"], 0, "{dry:#}");
    assert_eq!(
        dry["portions_repacked"], 1,
        "the first round's data portion: {dry:#}"
    );
    assert_eq!(
        fat_portions(&devnet),
        all_before,
        "a dry run released something"
    );
    assert_eq!(
        snapshot_portions(&devnet, kept),
        needed,
        "a dry run rewrote the snapshot"
    );
    let status = devnet.status().unwrap();
    assert_eq!(
        (status.pending_deletions, used_bytes(&status)),
        (0, used_bytes(&status_before)),
        "a dry run queued deletions"
    );

    // Release only: the FAT keeps exactly the remaining snapshot's portions.
    let pruned = json_ok(&devnet, &["prune", "--repack-below", "0"]);
    assert_eq!(pruned["dry_run"], false);
    assert_eq!(pruned["portions_repacked"], 0, "{pruned:#}");
    assert_eq!(pruned["portions_released"], unneeded.len(), "{pruned:#}");
    assert_eq!(
        pruned["bytes_released"], dry["bytes_released"],
        "{pruned:#}"
    );
    let released_bytes = pruned["bytes_released"].as_u64().unwrap();
    assert!(released_bytes > 1_000_000, "a round of changes: {pruned:#}");
    assert_eq!(
        fat_portions(&devnet),
        needed,
        "the FAT holds only the kept snapshot's portions"
    );

    // The vendors delete at their next reports; then their used and stored
    // bytes lose every copy of the released portions, and so do their disks.
    let settled = wait_deleted(
        &devnet,
        used_bytes(&status_before) - released_bytes * replication,
        stored_bytes(&status_before) - released_bytes * replication,
    );
    assert_eq!(settled.portions as usize, needed.len());
    let disk_after = piece_bytes_on_disk(&devnet.all_nas_data_dirs());
    assert!(
        disk_before - disk_after >= released_bytes * replication,
        "the NAS devices' piece files shrank by {} bytes, less than the {} bytes released x{replication}",
        disk_before - disk_after,
        released_bytes
    );
    restores_byte_for_byte(&devnet, &src, &tmp.path().join("restore"));

    // Repack: the mostly unused portion's live blobs move to new portions,
    // the snapshot is rewritten onto them, and the old portion is released.
    let repacked = json_ok(&devnet, &["prune"]);
    assert_eq!(repacked["portions_repacked"], 1, "{repacked:#}");
    assert_eq!(repacked["snapshots_rewritten"], 1, "{repacked:#}");
    assert!(
        repacked["new_portions"].as_u64().unwrap() >= 1,
        "{repacked:#}"
    );
    assert_eq!(
        repacked["portions_released"], 1,
        "the repacked portion: {repacked:#}"
    );
    let moved = snapshot_portions(&devnet, kept);
    assert_ne!(moved, needed, "the snapshot now needs the new portions");
    assert_eq!(
        fat_portions(&devnet),
        moved,
        "the FAT holds only the rewritten snapshot's portions"
    );
    // Every vendor ends up holding R copies of what the FAT has left; the
    // new portions add to stored bytes what they add to used bytes.
    let used = replication * fat_portion_sizes(&devnet).values().sum::<u64>();
    let stored = stored_bytes(&settled) - used_bytes(&settled) + used;
    assert!(used < used_bytes(&settled), "the repack freed room");
    wait_deleted(&devnet, used, stored);
    let check = json_ok(&devnet, &["check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check:#}");
    restores_byte_for_byte(&devnet, &src, &tmp.path().join("restore-repacked"));
    // Nothing is left to release (repacking again is not asked for).
    let again = json_ok(&devnet, &["prune", "--repack-below", "0"]);
    assert_eq!(again["portions_released"], 0, "{again:#}");
    assert_eq!(again["portions_total"], moved.len(), "{again:#}");

    // A backup after the prune dedups only against what is still stored: it
    // saves, checks clean and restores byte for byte.
    write_tree(&src, 3);
    let next = json_ok(&devnet, &["backup", src_arg]);
    assert!(next["snapshot_id"].is_string(), "{next:#}");
    let check = json_ok(&devnet, &["check"]);
    assert_eq!(check["ok"], true, "{check:#}");
    restores_byte_for_byte(&devnet, &src, &tmp.path().join("restore-next"));
}

/// A repacked portion shared by two remaining snapshots: both are rewritten
/// in one step, and both still restore byte for byte; a tenant at its quota
/// still gets its unneeded portions released, the repack skipped; without a coordinator
/// quorum a prune exits with the no-quorum code.
#[test]
fn a_repack_rewrites_every_snapshot_that_shares_the_portion() {
    let tmp = tempfile::tempdir().unwrap();
    let options = DevnetOptions {
        portion_bytes: 4 * 1024 * 1024,
        ..DevnetOptions::default()
    };
    let mut devnet = Devnet::start(&tmp.path().join("devnet"), options).unwrap();
    devnet.client_ok(["init"]).unwrap();
    let src = tmp.path().join("src");
    let src_arg = src.to_str().unwrap();
    let mut snapshots = Vec::new();
    for round in 0..3 {
        write_tree(&src, round);
        let backup = json_ok(&devnet, &["backup", src_arg]);
        snapshots.push(backup["snapshot_id"].as_str().unwrap().to_string());
    }
    json_ok(&devnet, &["forget", "--keep-last", "2"]);

    // A tenant at its quota (a full marketplace answers a reserve the same
    // way) cannot repack, but what no snapshot needs is still released.
    set_quota(&devnet, 1000);
    let all_before = fat_portions(&devnet);
    let full = json_ok(&devnet, &["prune"]);
    assert_eq!(full["repack_skipped"], true, "{full:#}");
    assert_eq!(full["portions_repacked"], 0, "{full:#}");
    assert_eq!(full["snapshots_rewritten"], 0, "{full:#}");
    let released = full["portions_released"].as_u64().unwrap();
    assert!(
        released >= 1,
        "the forgotten round's own portions: {full:#}"
    );
    assert_eq!(
        fat_portions(&devnet).len() as u64,
        all_before.len() as u64 - released,
        "{full:#}"
    );
    set_quota(&devnet, 0);

    let before: Vec<BTreeSet<String>> = snapshots[1..]
        .iter()
        .map(|id| snapshot_portions(&devnet, id))
        .collect();

    // With no manifest cached (another host, say), the prune fetches them.
    let manifests = devnet.tenant_cache_dir().join("manifests");
    assert!(manifests.is_dir(), "the backups cached their manifests");
    std::fs::remove_dir_all(&manifests).unwrap();
    let pruned = json_ok(&devnet, &["prune"]);
    assert_eq!(pruned["portions_repacked"], 1, "{pruned:#}");
    assert_eq!(pruned["snapshots_rewritten"], 2, "{pruned:#}");
    assert_eq!(
        std::fs::read_dir(&manifests).unwrap().count(),
        2,
        "the prune cached the manifests of both snapshots it rewrote"
    );
    let after: Vec<BTreeSet<String>> = snapshots[1..]
        .iter()
        .map(|id| snapshot_portions(&devnet, id))
        .collect();
    let in_fat = fat_portions(&devnet);
    for (old, new) in before.iter().zip(&after) {
        assert_ne!(old, new, "both snapshots moved");
        assert!(
            new.is_subset(&in_fat),
            "a snapshot needs a portion the FAT lost"
        );
    }
    let listed = json_ok(&devnet, &["snapshots"]);
    assert_eq!(
        listed["snapshots"].as_array().unwrap().len(),
        2,
        "{listed:#}"
    );

    // Each snapshot restores its own round's contents.
    for (round, id) in [(1u32, &snapshots[1]), (2, &snapshots[2])] {
        let expected = tmp.path().join(format!("expected-{round}"));
        write_tree(&expected, round);
        let target = tmp.path().join(format!("restore-{round}"));
        devnet
            .client_ok(["restore", id, "--target", target.to_str().unwrap()])
            .unwrap();
        let restored = tree::restored_root(&target, &src);
        for file in ["stable.bin", "changing.bin", "docs/notes.txt"] {
            assert_eq!(
                tree::hash_file(&restored.join(file)).unwrap(),
                tree::hash_file(&expected.join(file)).unwrap(),
                "{file} of round {round}"
            );
        }
    }

    // Without the coordinator group a prune changes nothing and says "no
    // quorum" in its exit code (never from the cache).
    for i in 0..3 {
        devnet.kill_coordinator(i).unwrap();
    }
    let offline = devnet.run_client(["prune"]).unwrap();
    assert_eq!(offline.status.code(), Some(5), "{}", describe(&offline));
}

/// A backup with the dedup index cache's debug line on stderr: the JSON
/// report and what the line says.
fn backup_logged(devnet: &Devnet, src: &str) -> (Value, String) {
    let mut command = devnet.client_command(["--json", "backup", src]).unwrap();
    command.env("RUST_LOG", "offsite_client::session::backup=debug");
    let output = run_bounded(command, CLIENT_TIMEOUT).unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("dedup index"))
        .unwrap_or_else(|| panic!("no dedup index line in {stderr}"))
        .to_string();
    (json_stdout(&output).unwrap(), line)
}

/// The dedup index cache: written once a backup has decoded several
/// manifests, used by the next (which decodes only the newest manifest and
/// still dedups a copied file), and fitted to the snapshot list after a
/// forget and prune: its entries in the released portion are dropped, so
/// the backup after it stores those contents again, checks clean and
/// restores byte for byte.
#[test]
fn the_dedup_index_cache_is_used_and_never_points_at_a_released_portion() {
    let tmp = tempfile::tempdir().unwrap();
    let options = DevnetOptions {
        portion_bytes: 4 * 1024 * 1024,
        ..DevnetOptions::default()
    };
    let devnet = Devnet::start(&tmp.path().join("devnet"), options).unwrap();
    devnet.client_ok(["init"]).unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let src_arg = src.to_str().unwrap();
    let index = devnet.tenant_cache_dir().join("index");
    let first = noise("first contents", 1_500_000);
    let later = noise("later contents", 1_500_000);
    std::fs::write(src.join("data.bin"), &first).unwrap();
    json_ok(&devnet, &["backup", src_arg]);
    std::fs::write(src.join("data.bin"), &later).unwrap();
    // The second to fourth backups decode one to three manifests; the fifth
    // decodes four and writes the union.
    for n in 2..=5 {
        assert!(!index.exists(), "written before backup {n}");
        json_ok(&devnet, &["backup", src_arg]);
    }
    assert!(
        index.is_file(),
        "the fifth backup wrote the dedup index cache"
    );
    let written = std::fs::read(&index).unwrap();

    // The sixth starts from the union and decodes only the fifth's manifest;
    // a copy of a stored file is found in it and not uploaded again.
    std::fs::write(src.join("copy.bin"), &later).unwrap();
    let (sixth, line) = backup_logged(&devnet, src_arg);
    assert!(
        line.contains("cached=4") && line.contains("decoded=1"),
        "{line}"
    );
    let copies = u64::from(DevnetOptions::default().replication);
    assert!(
        sixth["bytes_uploaded"].as_u64().unwrap() < 100_000 * copies,
        "only the new trees and the manifest: {sixth:#}"
    );

    let forget = json_ok(&devnet, &["forget", "--keep-last", "1"]);
    assert_eq!(forget["remove"].as_array().unwrap().len(), 5, "{forget:#}");
    let pruned = json_ok(&devnet, &["prune", "--repack-below", "0"]);
    assert!(
        pruned["portions_released"].as_u64().unwrap() >= 1,
        "the first contents' portion: {pruned:#}"
    );
    assert_eq!(
        std::fs::read(&index).unwrap(),
        written,
        "forget and prune leave the union to be fitted by the next backup"
    );

    std::fs::write(src.join("data.bin"), &first).unwrap();
    let (next, line) = backup_logged(&devnet, src_arg);
    assert!(
        line.contains("cached=0") && !line.contains("dropped=0"),
        "{line}"
    );
    assert!(
        next["new_blobs"].as_u64().unwrap() >= 1,
        "the first contents were stored again: {next:#}"
    );
    assert!(
        next["bytes_uploaded"].as_u64().unwrap() >= 1_500_000,
        "{next:#}"
    );
    let check = json_ok(&devnet, &["check"]);
    assert_eq!(check["ok"], true, "{check:#}");
    restores_byte_for_byte(&devnet, &src, &tmp.path().join("restore"));
}
