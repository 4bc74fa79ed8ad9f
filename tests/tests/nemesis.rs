//! The nemesis test: several clients, each its own tenant, back up, restore,
//! forget and prune against a devnet (3 coordinators, 5 vendors with 2 NAS
//! devices of 16 MiB each, R = 3) while a nemesis kills and restarts,
//! pauses (SIGSTOP) and continues, or partitions and heals coordinators,
//! vendor agents and NAS devices at random, at most one of each kind at a
//! time (see `offsite_tests::nemesis`). Operations may fail while a fault lasts; they
//! are counted, not asserted. What is asserted:
//!
//! - no client command hangs: each is bounded and a timeout fails the test;
//! - every snapshot a client reported saved (and did not forget) restores
//!   byte for byte, during the run and at the end, with every process back;
//! - at the end, once repairs, deletions and reservations have settled,
//!   `check --read-data` is clean for every tenant;
//! - no vendor was overbooked: used + reserved never exceeded the offer it
//!   reported, as sampled from the coordinators about once a second (see
//!   `sample_status` for a vendor whose offer a NAS device out lowered).
//!
//! It prints the seed first, then a summary: operations by kind and outcome,
//! the errors they failed with, faults injected by kind, and the longest any
//! operation waited.
//!
//! Environment: `OFFSITE_NEMESIS_SECS` (how long faults are injected,
//! default 90), `OFFSITE_NEMESIS_SEED` (default random), `OFFSITE_NEMESIS_CLIENTS`
//! (default 3), `OFFSITE_NEMESIS_OP_TIMEOUT_SECS` (default 120),
//! `OFFSITE_NEMESIS_PAUSE`, `OFFSITE_NEMESIS_PARTITION` (`0` leaves pauses,
//! partitions out).
//!
//! Partitions: every coordinator, vendor agent and NAS device runs in a
//! network namespace of its own (root and `ip netns` needed, as for the
//! partition test); a coordinator is cut off from its peers or from
//! everything, a vendor agent from everything or from its NAS devices, a
//! NAS device from its vendor. The clients and the harness stay in the
//! test's namespace and reach them over the bridge.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use offsite_tests::nemesis::{FaultKinds, Nemesis, Tally, Timings, Worker};
use offsite_tests::rpc::Rpc;
use offsite_tests::{Devnet, DevnetOptions};
use rand::Rng;

/// Small enough that the clients' data and reservations take a real share
/// of every vendor's offer, so "never overbooked" is tested near the edge.
const NAS_CAP_BYTES: u64 = 16 * 1024 * 1024;

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a whole number")),
    )
}

/// Sets the flag when dropped: a thread that ends, also by panicking, stops
/// the others.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// What the status samples showed.
#[derive(Debug, Default)]
struct Samples {
    taken: u64,
    unanswered: u64,
    /// The highest (used + reserved) / reported offer seen, and where.
    highest_share: f64,
    highest: String,
    /// Samples where a vendor held more than a lowered offer (a NAS device
    /// down or hung counts as offering nothing), which is no overbooking.
    over_lowered_offer: u64,
    /// When more than one vendor was not up (the nemesis takes down one
    /// vendor agent at a time): seconds since the start, and which.
    not_up: Vec<(f64, Vec<String>)>,
    violations: Vec<String>,
}

/// One vendor as one replica showed it at the last sample.
#[derive(Debug, Clone, Copy)]
struct Seen {
    offer: u64,
    reserved: u64,
    held: u64,
}

/// Asks the coordinators in turn for the marketplace status about once a
/// second until `stop`, and checks that no replica ever shows a vendor
/// overbooked: holding more (used + reserved) than the offer it reported
/// while that offer is its full one (the most it ever reported), or a
/// reservation growing on a vendor already over a lowered offer. A vendor
/// whose NAS device is down reports a lower offer and then holds more than
/// it offers; that is counted apart (the FAT notes the vendor as short and
/// moves its portions if that lasts), not as
/// overbooking.
fn sample_status(rpc: &Rpc, coordinators: &[SocketAddr], stop: &AtomicBool) -> Samples {
    let runtime = offsite_tests::rpc::runtime().unwrap();
    let mut samples = Samples::default();
    let mut full_offer: BTreeMap<String, u64> = BTreeMap::new();
    let mut seen: BTreeMap<(SocketAddr, String), Seen> = BTreeMap::new();
    let mut turn = 0;
    let begun = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let addr = coordinators[turn % coordinators.len()];
        turn += 1;
        let status = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), rpc.status(addr)).await
        });
        let Ok(Ok(status)) = status else {
            samples.unanswered += 1;
            std::thread::sleep(Duration::from_secs(1));
            continue;
        };
        samples.taken += 1;
        let not_up = offsite_tests::checks::vendors_not_up(&status);
        if not_up.len() > 1 {
            samples.not_up.push((begun.elapsed().as_secs_f64(), not_up));
        }
        for v in &status.vendors {
            let now = Seen {
                offer: v.reported_offered_bytes,
                reserved: v.reserved_bytes,
                held: v.used_bytes.saturating_add(v.reserved_bytes),
            };
            let full = full_offer.entry(v.vendor_id.clone()).or_default();
            *full = (*full).max(now.offer);
            if now.offer > 0 {
                let share = now.held as f64 / now.offer as f64;
                if share > samples.highest_share {
                    samples.highest_share = share;
                    samples.highest = format!(
                        "{} held {} + {} of {} offered",
                        v.vendor_id, v.used_bytes, v.reserved_bytes, now.offer
                    );
                }
            }
            let before = seen.insert((addr, v.vendor_id.clone()), now);
            if now.held <= now.offer {
                continue;
            }
            let grew_while_over =
                before.is_some_and(|b| now.reserved > b.reserved && b.held > b.offer);
            if now.offer >= *full || grew_while_over {
                samples.violations.push(format!(
                    "{addr}: {} holds {} used + {} reserved > {} offered (full offer {full}, before {before:?})",
                    v.vendor_id, v.used_bytes, v.reserved_bytes, now.offer
                ));
            } else {
                samples.over_lowered_offer += 1;
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    samples
}

/// Waits until no repair, deletion or reservation is open.
fn settle(devnet: &Devnet, timeout: Duration) {
    devnet
        .wait_status(
            "repairs, deletions and reservations to settle",
            timeout,
            |s| s.open_repairs == 0 && s.pending_deletions == 0 && s.open_reservations == 0,
        )
        .unwrap_or_else(|e| panic!("{e:#}; status: {:?}", devnet.status()));
}

#[test]
fn clients_keep_every_saved_snapshot_through_a_nemesis() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_test_writer()
        .try_init();
    let seed = env_u64("OFFSITE_NEMESIS_SEED").unwrap_or_else(|| rand::thread_rng().gen());
    let secs = env_u64("OFFSITE_NEMESIS_SECS").unwrap_or(90);
    let clients = env_u64("OFFSITE_NEMESIS_CLIENTS").unwrap_or(3) as usize;
    let op_timeout = Duration::from_secs(env_u64("OFFSITE_NEMESIS_OP_TIMEOUT_SECS").unwrap_or(120));
    let kinds = FaultKinds {
        kill: true,
        pause: env_u64("OFFSITE_NEMESIS_PAUSE") != Some(0),
        partition: env_u64("OFFSITE_NEMESIS_PARTITION") != Some(0),
    };
    eprintln!(
        "nemesis: OFFSITE_NEMESIS_SEED={seed} OFFSITE_NEMESIS_SECS={secs} \
         clients={clients} faults={kinds:?}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let options = DevnetOptions {
        vendors: 5,
        nas_per_vendor: 2,
        lease_secs: 30,
        nas_cap_bytes: Some(NAS_CAP_BYTES),
        coordinator_namespaces: kinds.partition,
        vendor_namespaces: kinds.partition,
        ..DevnetOptions::default()
    };
    let mut devnet = Devnet::start(&tmp.path().join("devnet"), options).unwrap();
    let mut workers: Vec<Worker> = (1..=clients)
        .map(|n| {
            let dir = tmp.path().join(format!("client-{n}"));
            Worker::new(&devnet, &dir, n, seed.wrapping_add(n as u64), op_timeout).unwrap()
        })
        .collect();

    let tally = Mutex::new(Tally::default());
    let stop = AtomicBool::new(false);
    let rpc = devnet.rpc();
    let coordinators = devnet.coordinator_addrs();
    let mut nemesis = Nemesis::new(seed, kinds, Timings::default());
    let begun = Instant::now();
    let until = begun + Duration::from_secs(secs);
    let samples = std::thread::scope(|scope| {
        for worker in &mut workers {
            let (tally, stop) = (&tally, &stop);
            scope.spawn(move || {
                let _stop = StopOnDrop(stop);
                while !stop.load(Ordering::SeqCst) {
                    worker.step(tally).unwrap();
                }
            });
        }
        let sampler = scope.spawn(|| sample_status(&rpc, &coordinators, &stop));
        {
            let _stop = StopOnDrop(&stop);
            nemesis.run(&mut devnet, until, &stop).unwrap();
        }
        sampler.join().unwrap()
    });
    let ran = begun.elapsed();

    // Every process is back. Let what the faults left open settle, then check.
    let end = Instant::now();
    devnet.wait_ready(Duration::from_secs(60)).unwrap();
    settle(&devnet, Duration::from_secs(120));
    let settled = end.elapsed();
    let mut tally = tally.into_inner().unwrap();
    let mut checked = BTreeMap::new();
    for worker in &workers {
        match worker.check_read_data() {
            Ok(report) => {
                checked.insert(worker.name.clone(), report["portions"].clone());
            }
            Err(e) => tally.finding(format!("{e:#}")),
        }
    }
    let checked_in = end.elapsed();
    let mut restored = 0;
    for worker in &workers {
        let (matched, problems) = worker.verify_saved().unwrap();
        restored += matched;
        for problem in problems {
            tally.finding(problem);
        }
    }
    for violation in &samples.violations {
        tally.finding(format!("overbooked: {violation}"));
    }

    let saved: usize = workers.iter().map(|w| w.saved.len()).sum();
    eprintln!(
        "nemesis summary (seed {seed}, {:.0} s with faults, {:.0} s in all):\n{}\
         faults injected (kind, count):\n{}\
         longest fault held: {:.1} s; longest heal: {:.1} s\n\
         snapshots saved: {saved}; restored byte for byte at the end: {restored}\n\
         the end: settled after {:.1} s, checked after {:.1} s, restored after {:.1} s\n\
         check --read-data portions per tenant: {checked:?}\n\
         status samples: {} taken, {} unanswered; highest (used + reserved) / offer: {:.4} ({}); \
         vendors over a lowered offer (a NAS device out): {}\n\
         samples with more than one vendor not up: {:?}\n\
         findings: {}",
        ran.as_secs_f64(),
        begun.elapsed().as_secs_f64(),
        tally.summary(),
        nemesis
            .injected
            .iter()
            .map(|(kind, n)| format!("  {kind:<34} {n:>5}\n"))
            .collect::<String>(),
        nemesis.longest_fault.as_secs_f64(),
        nemesis.longest_heal.as_secs_f64(),
        settled.as_secs_f64(),
        checked_in.as_secs_f64(),
        end.elapsed().as_secs_f64(),
        samples.taken,
        samples.unanswered,
        samples.highest_share,
        samples.highest,
        samples.over_lowered_offer,
        samples.not_up,
        tally.findings.len()
    );
    assert!(
        tally.findings.is_empty(),
        "the nemesis run (OFFSITE_NEMESIS_SEED={seed}) broke promises:\n  {}",
        tally.findings.join("\n  ")
    );
}
