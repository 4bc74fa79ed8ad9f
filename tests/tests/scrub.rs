//! Self-checks on a running devnet, with the coordinators' audit rounds
//! off, so only what is tested here finds the damage:
//! - a vendor's scrub (every 5 s under `--fast`) finds a damaged and a
//!   missing piece on its NAS device, reports both copies, the copies are
//!   made again from a healthy holder, the bad ones deleted, and
//!   `check --read-data` is clean; the vendor's honesty costs it no audit;
//! - with scrubbing off, `check --read-data` finds a damaged copy and
//!   reports it, the coordinator's targeted audit confirms it and it is
//!   repaired; a report of a copy that is fine changes nothing.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use offsite_proto::pb::admin::{MarketplaceStatusResponse, VendorStatus};
use offsite_proto::pb::coordinator::{
    BadCopyReport, BadCopyVerdict, ListPortionsRequest, LocatePortionsRequest,
    ReportBadCopiesRequest,
};
use offsite_tests::checks::json_stdout;
use offsite_tests::rpc::block_on;
use offsite_tests::tree::{self, files_under, TreeSpec};
use offsite_tests::{Devnet, DevnetOptions};
use serde_json::Value;

/// Long enough for a scrub, a report, a sweep, a copy and a deletion.
const REPAIRED_WITHIN: Duration = Duration::from_secs(90);

fn vendor<'a>(status: &'a MarketplaceStatusResponse, id: &str) -> &'a VendorStatus {
    status.vendors.iter().find(|v| v.vendor_id == id).unwrap()
}

/// Three vendors, R = 2, audit rounds off, scrubbing every
/// `scrub_period_secs` (0: off), with a small tree backed up.
fn backed_up(tmp: &Path, scrub_period_secs: u64) -> (PathBuf, Devnet) {
    let options = DevnetOptions {
        audits_per_vendor_per_hour: 0,
        scrub_period_secs: Some(scrub_period_secs),
        ..DevnetOptions::small().fast()
    };
    let devnet = Devnet::start(&tmp.join("devnet"), options).unwrap();
    devnet.client_ok(["init"]).unwrap();
    let source = tmp.join("source");
    let spec = TreeSpec {
        seed: 71,
        big_files: vec![3 << 20, 2 << 20],
        small_files: 20,
        small_max: 20_000,
        specials: false,
    };
    tree::generate(&source, &spec).unwrap();
    devnet
        .client_ok([OsString::from("backup"), source.clone().into()])
        .unwrap();
    (source, devnet)
}

/// The vendor holding the most, its index, and its piece files.
fn busiest(devnet: &Devnet) -> (String, usize, Vec<PathBuf>) {
    let status = devnet.status().unwrap();
    let id = status
        .vendors
        .iter()
        .max_by_key(|v| v.used_bytes)
        .unwrap()
        .vendor_id
        .clone();
    let index = devnet.vendor_ids().iter().position(|v| *v == id).unwrap();
    let pieces: Vec<PathBuf> = devnet
        .nas_data_dirs(index)
        .iter()
        .flat_map(|dir| files_under(&dir.join("pieces")))
        .collect();
    (id, index, pieces)
}

fn check_read_data(devnet: &Devnet) -> Value {
    let out = devnet
        .run_client(["--json", "check", "--read-data"])
        .unwrap();
    json_stdout(&out).unwrap()
}

/// Repaired: no copy known bad, no repair open, no deletion owed.
fn settled(s: &MarketplaceStatusResponse) -> bool {
    s.vendors.iter().all(|v| v.bad_copies == 0) && s.open_repairs == 0 && s.pending_deletions == 0
}

#[test]
fn the_scrub_finds_damaged_and_missing_pieces_and_they_are_made_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (source, devnet) = backed_up(tmp.path(), offsite_tests::FAST_SCRUB_PERIOD_SECS);
    let (bad_id, _, pieces) = busiest(&devnet);
    assert!(pieces.len() >= 2, "{bad_id} holds {} pieces", pieces.len());
    tree::corrupt_piece(&pieces[0]);
    std::fs::remove_file(&pieces[1]).unwrap();

    let status = devnet
        .wait_status(
            "both bad copies reported and made again",
            REPAIRED_WITHIN,
            |s| vendor(s, &bad_id).copies_reported_bad >= 2 && settled(s),
        )
        .unwrap();
    let found = vendor(&status, &bad_id);
    // Honest self-reporting is no failed audit.
    assert_eq!(
        (found.audits_failed, found.standing.as_str()),
        (0, "good"),
        "{found:?}"
    );
    // The bad pieces went with the deletion of their copies.
    assert!(!pieces[0].exists(), "the damaged piece is still there");

    let report = check_read_data(&devnet);
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["reported_bad_copies"], Value::Array(vec![]));
    devnet
        .restore_latest_matches(&source, &tmp.path().join("restored"))
        .unwrap();
}

#[test]
fn a_bad_copy_a_check_reports_is_confirmed_by_audit_and_repaired_and_a_false_report_changes_nothing(
) {
    let tmp = tempfile::tempdir().unwrap();
    let (_source, devnet) = backed_up(tmp.path(), 0);

    // A report of a copy that is fine: the vendor passes its audit.
    let rpc = devnet.rpc();
    let coordinator = devnet.coordinator_addr();
    let answer = block_on(async {
        let mut fat = rpc.fat(coordinator).await.unwrap();
        let listed = fat
            .list_portions(ListPortionsRequest::default())
            .await
            .unwrap()
            .into_inner();
        let portion = listed.portions[0].portion_id.clone();
        let located = fat
            .locate_portions(LocatePortionsRequest {
                portion_ids: vec![portion.clone()],
            })
            .await
            .unwrap()
            .into_inner();
        let vendor_id = located.portions[0].vendors[0].vendor_id.clone();
        fat.report_bad_copies(ReportBadCopiesRequest {
            copies: vec![BadCopyReport {
                portion_id: portion,
                vendor_id,
                problem: "a tenant that says so".into(),
            }],
        })
        .await
        .unwrap()
        .into_inner()
    })
    .unwrap();
    assert_eq!(answer.answers.len(), 1);
    assert_eq!(
        answer.answers[0].verdict,
        i32::from(BadCopyVerdict::NotConfirmed),
        "{answer:?}"
    );
    let status = devnet.status().unwrap();
    assert!(settled(&status), "{status:?}");
    assert!(
        status.vendors.iter().all(|v| v.audits_failed == 0),
        "{status:?}"
    );

    // A copy really damaged on disk (no scrub finds it).
    let (bad_id, _, pieces) = busiest(&devnet);
    tree::corrupt_piece(&pieces[0]);
    let report = check_read_data(&devnet);
    assert_eq!(report["ok"], false, "{report:#}");
    let reported = report["reported_bad_copies"].as_array().unwrap();
    assert_eq!(reported.len(), 1, "{report:#}");
    assert_eq!(reported[0]["vendor_id"], bad_id.as_str(), "{report:#}");
    assert_eq!(reported[0]["verdict"], "confirmed", "{report:#}");

    let status = devnet
        .wait_status("the confirmed copy made again", REPAIRED_WITHIN, |s| {
            settled(s) && !pieces[0].exists()
        })
        .unwrap();
    // A confirmed report is a failed audit of that vendor.
    assert_eq!(vendor(&status, &bad_id).audits_failed, 1, "{status:?}");
    let report = check_read_data(&devnet);
    assert_eq!(report["ok"], true, "{report:#}");
}
