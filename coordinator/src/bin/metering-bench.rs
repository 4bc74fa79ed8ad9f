//! `metering-bench`: what metering costs the coordinator group. Applies the
//! same commands (register, then reserve + commit of portions at R = 3, and
//! capacity reports acknowledging the deletions of released ones) to two
//! FATs, one metering and one not, interleaved in rounds in the same run,
//! and prints committed operations per second of each. The state machine is
//! where metering lives: replication and the log carry the same commands
//! either way (plus one `BookEgress` per vendor report that served fetches,
//! and a `SetVendorPrices` when a price changes).
//!
//! `cargo run --release -p offsite-coordinator --bin metering-bench -- --ops 20000`

use std::time::{Duration, Instant};

use clap::Parser;
use offsite_coordinator::fat::{
    Command, Commit, Fat, Hold, RegisterVendor, ReleasePortions, ReportCapacity, Reserve,
};
use offsite_proto::signing::VendorKey;
use offsite_proto::{
    Hash, PortionDeletion, PortionId, PortionPlacement, Receipt, RequestId, ReservationId,
    TenantId, VendorId, VendorRef,
};

#[derive(Parser)]
#[command(
    name = "metering-bench",
    about = "FAT operations per second with and without metering"
)]
struct Args {
    /// Reserve + commit pairs per FAT.
    #[arg(long, default_value_t = 20_000)]
    ops: usize,
    /// Rounds the pairs are split into (the two FATs alternate).
    #[arg(long, default_value_t = 10)]
    rounds: usize,
}

const VENDORS: usize = 16;
const SIZE: u64 = 16 << 20;
const T0: u64 = 1_700_000_000_000;

fn key(v: usize) -> VendorKey {
    VendorKey::from_secret(blake3::hash(format!("v{v}").as_bytes()).as_bytes())
}

fn vendor(v: usize) -> VendorId {
    VendorId::new(format!("v{v}")).expect("a valid id")
}

/// The commands of one reserve + commit pair, number `n`, at `now`.
fn pair(
    n: usize,
    now: u64,
    tenant: &TenantId,
    keys: &[VendorKey],
) -> (Command, Command, PortionId) {
    let chosen = [n % VENDORS, (n + 5) % VENDORS, (n + 11) % VENDORS];
    let reservation = ReservationId::random();
    let request = RequestId::new(format!("r{n}")).expect("a valid id");
    let reserve = Command::Reserve(Reserve {
        tenant: tenant.clone(),
        request: request.clone(),
        reservation,
        bytes: SIZE,
        replication: 3,
        holds: chosen
            .iter()
            .map(|v| Hold {
                vendor: vendor(*v),
                bytes: SIZE,
            })
            .collect(),
        now_unix_ms: now,
        lease_expires_unix_ms: now + 600_000,
    });
    let portion = PortionId::random();
    let hash = Hash::of(portion.as_bytes());
    let receipts = chosen
        .iter()
        .map(|v| {
            let mut r = Receipt {
                vendor: vendor(*v),
                tenant: tenant.clone(),
                portion,
                hash,
                size: SIZE,
                signature: vec![],
            };
            keys[*v].sign(&mut r, &reservation);
            r
        })
        .collect();
    let commit = Command::Commit(Commit {
        tenant: tenant.clone(),
        request,
        reservation,
        portions: vec![PortionPlacement {
            portion,
            hash,
            size: SIZE,
            receipts,
        }],
        snapshot: None,
        now_unix_ms: now + 1,
    });
    (reserve, commit, portion)
}

fn market(metering: bool) -> Fat {
    let mut fat = Fat::default();
    if !metering {
        fat = fat.without_metering();
    }
    for v in 0..VENDORS {
        fat.apply(Command::RegisterVendor(RegisterVendor {
            vendor: VendorRef {
                id: vendor(v),
                address: format!("v{v}.example:7100"),
            },
            region: format!("r{}", v % 4),
            offered_bytes: 1 << 60,
            network_bytes_per_sec: 0,
            identity_key: key(v).public_key().to_vec(),
            now_unix_ms: T0,
        }))
        .expect("registration");
    }
    fat
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let keys: Vec<VendorKey> = (0..VENDORS).map(key).collect();
    let tenant = TenantId::new("bench")?;
    let mut fats = [market(true), market(false)];
    let mut spent = [Duration::ZERO; 2];
    let per_round = args.ops / args.rounds.max(1);
    let mut n = 0;
    for round in 0..args.rounds {
        // The commands are made before the clock starts: signing receipts
        // is the vendors' work, not the group's.
        let now = T0 + 1_000 * round as u64;
        let batch: Vec<_> = (n..n + per_round)
            .map(|i| pair(i, now, &tenant, &keys))
            .collect();
        n += per_round;
        let release = Command::ReleasePortions(ReleasePortions {
            tenant: tenant.clone(),
            portions: batch
                .iter()
                .take(per_round / 2)
                .map(|(_, _, p)| *p)
                .collect(),
        });
        let reports: Vec<Command> = (0..VENDORS)
            .map(|v| {
                Command::ReportCapacity(ReportCapacity {
                    vendor: vendor(v),
                    offered_bytes: 1 << 60,
                    stored_bytes: 0,
                    deleted: batch
                        .iter()
                        .take(per_round / 2)
                        .map(|(_, _, p)| PortionDeletion {
                            tenant: tenant.clone(),
                            portion: *p,
                        })
                        .take(offsite_proto::limits::MAX_DELETIONS_PER_REPORT)
                        .collect(),
                    now_unix_ms: now + 500,
                })
            })
            .collect();
        for (fat, spent) in fats.iter_mut().zip(spent.iter_mut()) {
            let start = Instant::now();
            for (reserve, commit, _) in batch.iter().cloned() {
                fat.apply(reserve)?;
                fat.apply(commit)?;
            }
            fat.apply(release.clone())?;
            for report in reports.iter().cloned() {
                fat.apply(report)?;
            }
            *spent += start.elapsed();
        }
    }
    let ops = (2 * n + args.rounds * (1 + VENDORS)) as f64;
    let rate = |d: Duration| ops / d.as_secs_f64();
    println!(
        "metering-bench: {n} reserve+commit pairs at R = 3 over {VENDORS} vendors, {} rounds",
        args.rounds
    );
    println!("  with metering:    {:>10.0} ops/s", rate(spent[0]));
    println!("  without metering: {:>10.0} ops/s", rate(spent[1]));
    println!(
        "  metering costs {:.1}% of the state machine's time",
        100.0 * (spent[0].as_secs_f64() - spent[1].as_secs_f64()) / spent[1].as_secs_f64()
    );
    Ok(())
}
