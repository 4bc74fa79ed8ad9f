//! Audits on a running devnet (one audit of each vendor a second): every
//! piece of one vendor corrupted on its NAS device's disk makes its audits
//! fail, it is disqualified (status `standing`), its copies are made again
//! on the other vendors from the healthy holders, and `check --read-data`
//! is clean afterwards; the honest vendors pass every audit of the run.

use std::ffi::OsString;
use std::time::Duration;

use offsite_proto::pb::admin::{MarketplaceStatusResponse, VendorStatus};
use offsite_tests::checks::json_stdout;
use offsite_tests::tree::{self, files_under, TreeSpec};
use offsite_tests::{Devnet, DevnetOptions};

fn vendor<'a>(status: &'a MarketplaceStatusResponse, id: &str) -> &'a VendorStatus {
    status.vendors.iter().find(|v| v.vendor_id == id).unwrap()
}

#[test]
fn a_vendor_that_corrupts_its_data_is_found_disqualified_and_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let options = DevnetOptions {
        vendors: 4,
        // The audits must find the damage: a vendor's own scrub would
        // report it first, and an honest report is no failed audit
        // (tests/tests/scrub.rs).
        scrub_period_secs: Some(0),
        ..DevnetOptions::small().fast()
    };
    let devnet = Devnet::start(&tmp.path().join("devnet"), options).unwrap();
    devnet.client_ok(["init"]).unwrap();
    let source = tmp.path().join("source");
    let spec = TreeSpec {
        seed: 17,
        big_files: vec![6 << 20, 5 << 20],
        small_files: 40,
        small_max: 20_000,
        specials: false,
    };
    tree::generate(&source, &spec).unwrap();
    devnet
        .client_ok([OsString::from("backup"), source.clone().into()])
        .unwrap();

    // Honest vendors pass their audits.
    let status = devnet
        .wait_status(
            "every vendor holding data audited",
            Duration::from_secs(60),
            |s| {
                s.vendors
                    .iter()
                    .all(|v| v.used_bytes == 0 || v.audits_passed >= 3)
            },
        )
        .unwrap();
    assert!(
        status.vendors.iter().all(|v| v.audits_failed == 0),
        "{status:?}"
    );

    // The busiest vendor's every piece goes bad on disk.
    let bad = status.vendors.iter().max_by_key(|v| v.used_bytes).unwrap();
    let bad_id = bad.vendor_id.clone();
    let index = devnet
        .vendor_ids()
        .iter()
        .position(|id| *id == bad_id)
        .unwrap();
    let mut pieces = 0;
    for dir in devnet.nas_data_dirs(index) {
        for piece in files_under(&dir.join("pieces")) {
            tree::corrupt_piece(&piece);
            pieces += 1;
        }
    }
    assert!(pieces > 0);

    let status = devnet
        .wait_status(
            "the corrupting vendor disqualified",
            Duration::from_secs(60),
            |s| vendor(s, &bad_id).standing == "disqualified",
        )
        .unwrap();
    let found = vendor(&status, &bad_id);
    assert!(found.audits_failed >= 6, "{found:?}");
    assert!(!found.last_audit_failure.is_empty(), "{found:?}");

    // Its copies are made again elsewhere, from the healthy holders.
    devnet
        .wait_status("its copies replaced", Duration::from_secs(120), |s| {
            vendor(s, &bad_id).used_bytes == 0 && s.open_repairs == 0
        })
        .unwrap();
    let out = devnet
        .run_client(["--json", "check", "--read-data"])
        .unwrap();
    let report = json_stdout(&out).unwrap();
    assert_eq!(report["ok"], true, "{report:#}");
    let status = devnet.status().unwrap();
    for v in &status.vendors {
        if v.vendor_id != bad_id {
            assert_eq!(v.audits_failed, 0, "an honest vendor failed: {v:?}");
            assert_eq!(v.standing, "good");
        }
    }
    // A restore is whole without it.
    devnet
        .restore_latest_matches(&source, &tmp.path().join("restored"))
        .unwrap();
}
