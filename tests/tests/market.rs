//! The market end to end, with real processes: vendors at four prices, a
//! tenant whose client pays at most the third. Its data lands only on the
//! vendors within its limit, more of it on the cheaper ones; the ledger's stored byte-time per vendor equals
//! the sum over the vendor's copies of size times time held, recomputed
//! from the FAT's commit times; the charges equal the payouts plus the fee;
//! a restore books its egress once per fetched copy; a tenant over its quota
//! is refused with the limit named and nothing changes; a closed period's
//! statement does not change afterwards; forget and prune stop the accrual
//! once the vendors acknowledge the deletions.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use offsite_identity::Role;
use offsite_proto::pb::coordinator::{ListPortionsRequest, LocatePortionsRequest};
use offsite_tests::checks::json_stdout;
use offsite_tests::rpc;
use offsite_tests::tree::noise;
use offsite_tests::{describe, run_bounded, Devnet, DevnetOptions};
use serde_json::Value;

/// Micro-units per TiB-month, up to the highest price: a few MB held for
/// seconds cost a few micro-units.
const PRICES: [u64; 4] = [
    125_000_000_000_000,
    250_000_000_000_000,
    500_000_000_000_000,
    1_000_000_000_000_000,
];
const EGRESS_PRICE: u64 = 1_000_000_000_000_000;
const FEE_PPM: u32 = 100_000;
/// Long enough for a few capacity reports (one a second on a devnet).
const REPORTS: Duration = Duration::from_secs(30);

/// `offsite-coordinator ARGS... --coordinator ADDR` with the admin's
/// certificate, the subcommand first.
fn admin_cli(devnet: &Devnet, command: &str, args: &[&str]) -> Output {
    let mut cli = devnet
        .coordinator_cli(command, Role::Admin, rpc::HARNESS_ADMIN)
        .unwrap();
    cli.args(args);
    run_bounded(cli, Duration::from_secs(60)).unwrap()
}

fn ledger(devnet: &Devnet, args: &[&str]) -> Value {
    let mut all = vec!["show", "--json"];
    all.extend_from_slice(args);
    let output = admin_cli(devnet, "ledger", &all);
    assert!(output.status.success(), "{}", describe(&output));
    json_stdout(&output).unwrap()
}

fn u128_of(v: &Value) -> u128 {
    v.as_str().unwrap().parse().unwrap()
}

/// Every committed portion of the tenant: size, commit time and holders.
fn copies(devnet: &Devnet) -> Vec<(u64, u64, Vec<String>)> {
    let (addr, harness) = (devnet.coordinator_addr(), devnet.rpc());
    rpc::block_on(async move {
        let mut fat = harness.fat(addr).await.unwrap();
        let page = fat
            .list_portions(ListPortionsRequest {
                after_portion_id: String::new(),
                limit: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!page.more, "the test tree fits one page");
        let ids: Vec<String> = page.portions.iter().map(|p| p.portion_id.clone()).collect();
        let located = fat
            .locate_portions(LocatePortionsRequest { portion_ids: ids })
            .await
            .unwrap()
            .into_inner();
        let holders: BTreeMap<String, Vec<String>> = located
            .portions
            .into_iter()
            .map(|l| {
                (
                    l.portion_id,
                    l.vendors.into_iter().map(|v| v.vendor_id).collect(),
                )
            })
            .collect();
        page.portions
            .iter()
            .map(|p| (p.size, p.committed_unix_ms, holders[&p.portion_id].clone()))
            .collect()
    })
    .unwrap()
}

fn vendor_line<'a>(statement: &'a Value, vendor: &str) -> Option<&'a Value> {
    statement["vendors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vendor_id"] == vendor)
}

fn total_egress(statement: &Value) -> u64 {
    statement["vendors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["egress_bytes"].as_u64().unwrap())
        .sum()
}

/// Waits until the ledger's total egress stops at a value above `above`
/// (two reads a few reports apart agree).
fn settled_egress(devnet: &Devnet, above: u64) -> u64 {
    let deadline = Instant::now() + REPORTS;
    let mut last = total_egress(&ledger(devnet, &[]));
    loop {
        std::thread::sleep(Duration::from_secs(3));
        let now = total_egress(&ledger(devnet, &[]));
        if now > above && now == last {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "egress did not settle: {last} then {now}"
        );
        last = now;
    }
}

fn restore(devnet: &Devnet, src: &Path, target: &Path) {
    devnet.restore_latest_matches(src, target).unwrap();
}

#[test]
fn placement_metering_limits_and_periods_follow_the_market() {
    let dir = tempfile::tempdir().unwrap();
    let mut devnet = Devnet::start(
        dir.path(),
        DevnetOptions {
            vendors: 4,
            nas_per_vendor: 1,
            replication: 2,
            portion_bytes: 1024 * 1024,
            vendor_prices: PRICES.to_vec(),
            vendor_egress_prices: vec![EGRESS_PRICE; 4],
            fee_ppm: FEE_PPM,
            max_storage_price: Some(PRICES[2]),
            ..DevnetOptions::default()
        },
    )
    .unwrap();
    devnet.client_ok(["init"]).unwrap();
    let vendors = devnet.vendor_ids();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.bin"), noise("a", 4_500_000)).unwrap();
    std::fs::write(src.join("b.txt"), "small\n").unwrap();
    devnet.client_ok(["backup", src.to_str().unwrap()]).unwrap();

    // Only vendors within the tenant's limit hold its data.
    let held = copies(&devnet);
    assert!(held.len() >= 4, "{held:?}");
    for (_, _, holders) in &held {
        assert_eq!(holders.len(), 2, "{holders:?}");
        assert!(
            !holders.contains(&vendors[3]),
            "the vendor above the limit got a copy: {holders:?}"
        );
    }
    // More of it on the cheaper ones: the copies fall with the price.
    let held_by: Vec<usize> = vendors[..3]
        .iter()
        .map(|v| held.iter().filter(|(_, _, h)| h.contains(v)).count())
        .collect();
    assert!(
        held_by[0] >= held_by[1] && held_by[1] >= held_by[2] && held_by[0] > held_by[2],
        "copies per vendor, cheapest first: {held_by:?}"
    );

    // Stored byte-time per vendor is size times time held, from the commit.
    std::thread::sleep(Duration::from_secs(3));
    let statement = ledger(&devnet, &[]);
    let as_of = statement["as_of_unix_ms"].as_u64().unwrap();
    for vendor in &vendors {
        let expected: u128 = held
            .iter()
            .filter(|(_, _, holders)| holders.contains(vendor))
            .map(|(size, committed, _)| u128::from(*size) * u128::from(as_of - committed))
            .sum();
        let metered = vendor_line(&statement, vendor).map_or(0, |v| u128_of(&v["stored_byte_ms"]));
        assert_eq!(metered, expected, "vendor {vendor}");
    }
    let charges: u64 = statement["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["charge_micros"].as_u64().unwrap())
        .sum();
    let payouts: u64 = statement["vendors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["payout_micros"].as_u64().unwrap())
        .sum();
    assert_eq!(charges, payouts + statement["fee_micros"].as_u64().unwrap());
    assert!(charges > 0, "{statement}");

    // A restore books egress once per fetched copy: a second restore adds
    // exactly as much as the first.
    let before = total_egress(&statement);
    restore(&devnet, &src, &dir.path().join("r1"));
    let first = settled_egress(&devnet, before);
    let stored: u64 = held.iter().map(|(size, _, _)| size).sum();
    assert!(
        first - before <= stored,
        "booked {} for {stored} bytes",
        first - before
    );
    restore(&devnet, &src, &dir.path().join("r2"));
    let second = settled_egress(&devnet, first);
    assert_eq!(second - first, first - before);

    // Over its quota, a backup is refused, naming the limit, and nothing
    // changes.
    let set = admin_cli(
        &devnet,
        "tenant",
        &["set", "--tenant", "devnet", "--quota-bytes", "1000"],
    );
    assert!(set.status.success(), "{}", describe(&set));
    std::fs::write(src.join("c.bin"), noise("c", 200_000)).unwrap();
    let refused = devnet
        .run_client(["backup", src.to_str().unwrap()])
        .unwrap();
    assert!(!refused.status.success(), "{}", describe(&refused));
    let text = describe(&refused);
    assert!(
        text.contains("storage quota is 1000 bytes") && text.contains("--quota-bytes"),
        "{text}"
    );
    assert_eq!(copies(&devnet).len(), held.len());
    let cleared = admin_cli(
        &devnet,
        "tenant",
        &["set", "--tenant", "devnet", "--quota-bytes", "0"],
    );
    assert!(cleared.status.success(), "{}", describe(&cleared));

    // A closed period's statement does not change afterwards.
    let closed = admin_cli(&devnet, "ledger", &["close", "--json"]);
    assert!(closed.status.success(), "{}", describe(&closed));
    let closed = json_stdout(&closed).unwrap();
    assert_eq!(closed["period"], 1);
    devnet.client_ok(["backup", src.to_str().unwrap()]).unwrap();
    restore(&devnet, &src, &dir.path().join("r3"));
    assert_eq!(ledger(&devnet, &["--period", "1"]), closed);

    // Forget and prune: once the vendors acknowledge the deletions, the
    // tenant's copies stop accruing.
    devnet.client_ok(["forget", "--keep-last", "0"]).unwrap();
    devnet.client_ok(["prune"]).unwrap();
    devnet
        .wait_status(
            "the vendors to delete the released portions",
            REPORTS,
            |s| s.pending_deletions == 0 && s.vendors.iter().all(|v| v.used_bytes == 0),
        )
        .unwrap();
    let after = ledger(&devnet, &[]);
    std::thread::sleep(Duration::from_secs(2));
    let later = ledger(&devnet, &[]);
    for vendor in &vendors {
        let stored_ms =
            |s: &Value| vendor_line(s, vendor).map_or(0, |v| u128_of(&v["stored_byte_ms"]));
        assert_eq!(
            stored_ms(&after),
            stored_ms(&later),
            "vendor {vendor} still accrues"
        );
        assert_eq!(
            vendor_line(&later, vendor).map_or(0, |v| v["stored_bytes"].as_u64().unwrap()),
            0
        );
    }
    devnet.stop_all();
}
