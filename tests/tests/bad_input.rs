//! Bad input gets a clear error and changes nothing: a wrong passphrase (to a
//! restore and to a backup), a
//! restore target that is a file, missing or malformed configs for every
//! binary, and malformed uploads sent straight to a vendor.

use std::ffi::OsString;
use std::process::Command;
use std::time::Duration;

use offsite_proto::pb::admin::MarketplaceStatusResponse;
use offsite_proto::pb::common::VendorRef;
use offsite_proto::pb::coordinator::ReserveRequest;
use offsite_proto::pb::vendor::{store_frame, RoutingHeader, StoreFrame};
use offsite_tests::checks::{json_stdout, snapshot_ids};
use offsite_tests::tree::{self, files_under, TreeSpec};
use offsite_tests::{binary, describe, rpc, run_bounded, Devnet, DevnetOptions};
use tonic::Code;

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn the_client_refuses_a_wrong_passphrase_and_a_file_as_restore_target() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    let spec = TreeSpec {
        big_files: vec![256 * 1024],
        small_files: 10,
        ..TreeSpec::small()
    };
    tree::generate(&source, &spec).unwrap();
    let options = DevnetOptions {
        nas_per_vendor: 1,
        ..DevnetOptions::default()
    };
    let devnet = Devnet::start(&tmp.path().join("devnet"), options).unwrap();
    devnet.client_ok(["init"]).unwrap();
    devnet
        .client_ok([OsString::from("backup"), source.clone().into()])
        .unwrap();

    let target = tmp.path().join("restore");
    let mut wrong = devnet
        .client_command([
            OsString::from("restore"),
            "latest".into(),
            "--target".into(),
            target.clone().into(),
        ])
        .unwrap();
    wrong.env("OFFSITE_PASSWORD", "not the passphrase");
    let output = run_bounded(wrong, Duration::from_secs(120)).unwrap();
    assert_eq!(output.status.code(), Some(4), "{}", describe(&output));
    assert!(
        stderr(&output).contains("passphrase"),
        "{}",
        describe(&output)
    );
    assert!(
        tree::files_under(&target).is_empty(),
        "a refused restore wrote files into {}",
        target.display()
    );

    // A backup with the wrong passphrase saves nothing, and says so by its
    // exit code even when its exclude file is missing as well.
    let mut wrong = devnet
        .client_command([
            OsString::from("backup"),
            "--exclude-file".into(),
            tmp.path().join("no-such-exclude-file").into(),
            source.clone().into(),
        ])
        .unwrap();
    wrong.env("OFFSITE_PASSWORD", "not the passphrase");
    let output = run_bounded(wrong, Duration::from_secs(120)).unwrap();
    assert_eq!(output.status.code(), Some(4), "{}", describe(&output));
    let snapshots = json_stdout(&devnet.client_ok(["--json", "snapshots"]).unwrap()).unwrap();
    assert_eq!(snapshot_ids(&snapshots).len(), 1, "{snapshots:#}");

    let file = tmp.path().join("a-file");
    std::fs::write(&file, "keep me").unwrap();
    let output = devnet
        .run_client([
            OsString::from("restore"),
            "latest".into(),
            "--target".into(),
            file.clone().into(),
        ])
        .unwrap();
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(
        stderr(&output).contains(&*file.to_string_lossy()),
        "{}",
        describe(&output)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

/// Runs `BINARY ARGS...`; it must exit (not hang) with a failure whose stderr
/// contains `needle`.
fn must_fail_naming(binary_name: &str, args: &[&std::ffi::OsStr], needle: &str) {
    let mut command = Command::new(binary(binary_name).unwrap());
    command.args(args);
    let output = run_bounded(command, Duration::from_secs(30)).unwrap();
    assert!(
        !output.status.success() && output.status.code().is_some(),
        "{binary_name} {args:?} should exit with an error:\n{}",
        describe(&output)
    );
    assert!(
        stderr(&output).contains(needle),
        "{binary_name} {args:?} should name {needle}:\n{}",
        describe(&output)
    );
}

#[test]
fn every_binary_refuses_missing_and_malformed_configs() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.toml");
    let malformed = tmp.path().join("malformed.toml");
    std::fs::write(&malformed, "listen = [\"127.0.0.1:7000\"\ndata_dir = \n").unwrap();
    let unknown = tmp.path().join("unknown.toml");
    std::fs::write(&unknown, "no_such_setting_anywhere = 1\n").unwrap();

    for daemon in [
        offsite_tests::COORDINATOR,
        offsite_tests::VENDOR,
        offsite_tests::NAS,
    ] {
        for (config, needle) in [
            (&missing, missing.to_string_lossy().into_owned()),
            (&malformed, malformed.to_string_lossy().into_owned()),
            (&unknown, "no_such_setting_anywhere".to_string()),
        ] {
            must_fail_naming(
                daemon,
                &["run".as_ref(), "--config".as_ref(), config.as_os_str()],
                &needle,
            );
        }
    }
    for (config, needle) in [
        (&missing, missing.to_string_lossy().into_owned()),
        (&malformed, malformed.to_string_lossy().into_owned()),
    ] {
        must_fail_naming(
            offsite_tests::CLIENT,
            &[
                "--config".as_ref(),
                config.as_os_str(),
                "snapshots".as_ref(),
            ],
            &needle,
        );
    }
}

fn vendor_ref(devnet: &Devnet, index: usize) -> VendorRef {
    VendorRef {
        vendor_id: devnet.vendor_ids()[index].clone(),
        address: devnet.vendor_addr(index).to_string(),
    }
}

/// What the FAT holds, without the clocks that move on their own.
fn fat_view(status: &MarketplaceStatusResponse) -> Vec<(String, u64, u64)> {
    let mut view: Vec<_> = status
        .vendors
        .iter()
        .map(|v| (v.vendor_id.clone(), v.used_bytes, v.reserved_bytes))
        .collect();
    view.push(("portions".into(), status.portions, status.snapshots));
    view.push(("open reservations".into(), status.open_reservations, 0));
    view
}

fn no_pieces(devnet: &Devnet) -> Vec<std::path::PathBuf> {
    devnet
        .all_nas_data_dirs()
        .iter()
        .flat_map(|d| files_under(&d.join("pieces")))
        .collect()
}

#[test]
fn a_vendor_refuses_malformed_uploads_and_keeps_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let options = DevnetOptions {
        vendors: 2,
        nas_per_vendor: 1,
        ..DevnetOptions::default()
    };
    let devnet = Devnet::start(tmp.path(), options).unwrap();
    let (coordinator, first) = (devnet.coordinator_addr(), devnet.vendor_addr(0));
    let reservation = rpc::block_on(async move {
        let request = ReserveRequest {
            request_id: "malformed-uploads".into(),
            bytes: 2 * 1024 * 1024,
            replication: 1,
            ..Default::default()
        };
        let mut fat = rpc::fat(coordinator).await?;
        anyhow::Ok(
            fat.reserve(rpc::as_tenant(request, rpc::DEVNET_TENANT)?)
                .await?
                .into_inner(),
        )
    })
    .unwrap()
    .unwrap();
    let before = fat_view(&devnet.status().unwrap());
    let store_grant = |index: usize| {
        let id = vendor_ref(&devnet, index).vendor_id;
        reservation
            .candidates
            .iter()
            .find(|c| c.vendor.as_ref().is_some_and(|v| v.vendor_id == id))
            .and_then(|c| c.store_grant.clone())
            .expect("every vendor is a candidate with a store grant")
    };

    let data: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    let good = RoutingHeader {
        tenant_id: rpc::DEVNET_TENANT.into(),
        portion_id: "0123456789abcdef0123456789abcdef".into(),
        hash: blake3::hash(&data).as_bytes().to_vec(),
        size: data.len() as u64,
        route: vec![vendor_ref(&devnet, 0), vendor_ref(&devnet, 1)],
        piece_size: 64 * 1024,
        // The reservation's store grants, in route order: the refusals
        // below are about the bytes, not the permission.
        grants: (0..2).map(store_grant).collect(),
        reservation_id: reservation.reservation_id.clone(),
    };
    let header = |h: RoutingHeader| StoreFrame {
        frame: Some(store_frame::Frame::Header(h)),
    };
    let chunks = |bytes: &[u8]| -> Vec<StoreFrame> {
        bytes
            .chunks(256 * 1024)
            .map(|c| StoreFrame {
                frame: Some(store_frame::Frame::Data(c.to_vec().into())),
            })
            .collect()
    };

    let mut short_hash = good.clone();
    short_hash.hash.pop();
    let mut twice = good.clone();
    twice.route.push(vendor_ref(&devnet, 0));
    let mut wrong_hash = good.clone();
    wrong_hash.hash = blake3::hash(b"other bytes").as_bytes().to_vec();
    let cases: Vec<(&str, Vec<StoreFrame>)> = vec![
        ("data before the header", chunks(&data)),
        (
            "a 31-byte hash",
            [vec![header(short_hash)], chunks(&data)].concat(),
        ),
        (
            "a route naming a vendor twice",
            [vec![header(twice)], chunks(&data)].concat(),
        ),
        (
            "bytes that do not match the hash",
            [vec![header(wrong_hash)], chunks(&data)].concat(),
        ),
    ];
    for (what, frames) in cases {
        let result = rpc::block_on(async move {
            let mut vendor = rpc::vendor(first).await.unwrap();
            vendor.store(tokio_stream::iter(frames)).await
        })
        .unwrap();
        let status = result.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    }

    // Shorter than the header says: refused too (any code), nothing kept.
    let frames = [vec![header(good.clone())], chunks(&data[..data.len() / 2])].concat();
    let result = rpc::block_on(async move {
        rpc::vendor(first)
            .await
            .unwrap()
            .store(tokio_stream::iter(frames))
            .await
    })
    .unwrap();
    assert!(
        result.is_err(),
        "a stream shorter than its header's size was accepted"
    );

    // The refusals left nothing behind, on disk or in the FAT.
    let left = offsite_tests::wait_for("refused pieces to be gone", Duration::from_secs(5), || {
        let left = no_pieces(&devnet);
        Ok(left.is_empty().then_some(()))
    });
    assert!(
        left.is_ok(),
        "pieces left after refused uploads: {:?}",
        no_pieces(&devnet)
    );
    assert_eq!(fat_view(&devnet.status().unwrap()), before);

    // The same upload with the right hash is stored by both vendors, so the
    // checks above could see pieces had there been any.
    let frames = [vec![header(good)], chunks(&data)].concat();
    let response = rpc::block_on(async move {
        rpc::vendor(first)
            .await
            .unwrap()
            .store(tokio_stream::iter(frames))
            .await
    })
    .unwrap()
    .unwrap()
    .into_inner();
    assert_eq!(response.receipts.len(), 2, "{response:?}");
    for vendor in 0..2 {
        let dirs = devnet.nas_data_dirs(vendor);
        assert!(
            dirs.iter()
                .any(|d| !files_under(&d.join("pieces")).is_empty()),
            "vendor-{} holds no piece of a stored portion",
            vendor + 1
        );
    }
}
