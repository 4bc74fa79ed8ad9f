//! Unit tests of the market in the FAT: metering from commit to the
//! acknowledged deletion, prices kept until the period ends, closed periods
//! frozen, egress booked once per grant within its limit, and tenants'
//! limits; plus a proptest that the money adds up to the micro-unit and the
//! stored byte-time equals a model's.

use offsite_proto::{PortionDeletion, PortionId, RequestId};
use proptest::prelude::*;

use super::tests::{placement, register, reserve, tid, vid, T0};
use super::*;

const MIB: u64 = 1 << 20;

/// Vendors a, b, c in three regions with room to spare, priced
/// (storage, egress) as given.
fn priced_market(prices: [(u64, u64); 3]) -> Fat {
    let mut fat = Fat::default();
    for ((v, region), (storage, egress)) in [("a", "eu"), ("b", "us"), ("c", "ap")]
        .into_iter()
        .zip(prices)
    {
        register(&mut fat, v, region, 1 << 50, T0).unwrap();
        set_price(&mut fat, v, storage, egress, T0);
    }
    fat
}

fn set_price(fat: &mut Fat, vendor: &str, storage: u64, egress: u64, now: u64) {
    fat.apply(Command::SetVendorPrices(SetVendorPrices {
        vendor: vid(vendor),
        prices: Prices {
            storage_micros_per_tib_month: storage,
            egress_micros_per_tib: egress,
        },
        now_unix_ms: now,
    }))
    .unwrap();
}

/// Commits one portion of `size` bytes of `tenant` on `vendors` at `now`
/// (with no snapshot, so it can be released).
fn put(fat: &mut Fat, tenant: &str, vendors: &[&str], size: u64, now: u64) -> PortionId {
    let request = format!("r{}", fat.reservations.len());
    let holds: Vec<(&str, u64)> = vendors.iter().map(|v| (*v, size)).collect();
    let mut r = reserve(tenant, &request, size, vendors.len() as u32, &holds);
    r.now_unix_ms = now;
    r.lease_expires_unix_ms = now + 60_000;
    let id = r.reservation;
    fat.apply(Command::Reserve(r)).unwrap();
    let p = placement(tenant, size, vendors);
    let portion = p.portion;
    fat.apply(Command::Commit(Commit {
        tenant: tid(tenant),
        request: RequestId::new(request).unwrap(),
        reservation: id,
        portions: super::tests::signed_for(id, vec![p]),
        snapshot: None,
        now_unix_ms: now,
    }))
    .unwrap();
    portion
}

/// Releases a portion and has every vendor in `acks` acknowledge deleting
/// it at `now`.
fn delete(fat: &mut Fat, tenant: &str, portion: PortionId, acks: &[&str], now: u64) {
    let _ = fat.apply(Command::ReleasePortions(ReleasePortions {
        tenant: tid(tenant),
        portions: vec![portion],
    }));
    for v in acks {
        fat.apply(Command::ReportCapacity(ReportCapacity {
            vendor: vid(v),
            offered_bytes: 1 << 50,
            stored_bytes: 0,
            deleted: vec![PortionDeletion {
                tenant: tid(tenant),
                portion,
            }],
            now_unix_ms: now,
        }))
        .unwrap();
    }
}

fn close(fat: &mut Fat, period: u32, now: u64) {
    assert_eq!(
        fat.apply(Command::ClosePeriod(ClosePeriod {
            period,
            now_unix_ms: now
        }))
        .unwrap(),
        Outcome::PeriodClosed { period }
    );
}

/// Every line's charge is its fee plus its payout, so the tenants' charges
/// equal the payouts plus the fee.
fn assert_adds_up(s: &Statement) {
    let sum = |f: fn(&Line) -> u64| s.lines.iter().map(|l| u128::from(f(l))).sum::<u128>();
    let (charges, payouts, fees) = (
        sum(|l| l.charge_micros),
        sum(|l| l.payout_micros),
        sum(|l| l.fee_micros),
    );
    assert_eq!(charges, payouts + fees, "{s:?}");
    for l in &s.lines {
        assert_eq!(
            u128::from(l.fee_micros),
            u128::from(l.charge_micros) * u128::from(s.fee_ppm) / u128::from(PPM)
        );
    }
}

/// Byte-milliseconds of a vendor's storage lines at `price`.
fn stored(s: &Statement, vendor: &str, price: u64) -> u128 {
    s.lines
        .iter()
        .filter(|l| l.kind == LineKind::Storage && l.vendor.as_str() == vendor)
        .filter(|l| l.price_micros == price)
        .map(|l| l.quantity)
        .sum()
}

#[test]
fn a_copy_accrues_from_its_commit_to_its_acknowledged_deletion_at_the_price_it_was_placed_at() {
    let month = MONTH_MS;
    let price = 1_000_000_000_000; // micro-units per TiB-month
    let mut fat = priced_market([(price, 0), (price, 0), (price, 0)]);
    fat.apply(Command::SetMarketFee(SetMarketFee {
        fee_ppm: 50_000,
        now_unix_ms: T0,
    }))
    .unwrap();
    let p = put(&mut fat, "acme", &["a", "b"], MIB, T0);
    set_price(&mut fat, "a", 2 * price, 0, T0 + 10);
    let q = put(&mut fat, "acme", &["a"], MIB, T0 + 10);

    let s = fat.statement(None, T0 + month).unwrap();
    assert_eq!(s.started_unix_ms, T0);
    // Halfway, the estimate is what the month will have cost by its end.
    let halfway = fat.usage(&tid("acme"), T0 + month / 2);
    assert_eq!(halfway.estimate_micros, s.charge_micros());
    assert!(halfway.statement.charge_micros() < s.charge_micros());
    assert_eq!(stored(&s, "a", price), u128::from(MIB * month));
    assert_eq!(stored(&s, "a", 2 * price), u128::from(MIB * (month - 10)));
    assert_eq!(stored(&s, "b", price), u128::from(MIB * month));
    // A mebibyte for a month at 10^12 per TiB-month: 10^12 / 2^20, rounded down.
    let line = |v: &str, price: u64| {
        s.lines
            .iter()
            .find(|l| l.vendor.as_str() == v && l.price_micros == price)
            .unwrap()
            .clone()
    };
    assert_eq!(line("b", price).charge_micros, price / (1 << 20));
    assert_eq!(line("b", price).fee_micros, price / (1 << 20) / 20);
    assert_adds_up(&s);

    // a acknowledges deleting p a month in; b has not deleted it yet.
    delete(&mut fat, "acme", p, &["a"], T0 + month);
    let later = fat.statement(None, T0 + 2 * month).unwrap();
    assert_eq!(stored(&later, "a", price), u128::from(MIB * month));
    assert_eq!(stored(&later, "b", price), u128::from(2 * MIB * month));
    assert_eq!(
        stored(&later, "a", 2 * price),
        u128::from(MIB * (2 * month - 10))
    );

    // Closing freezes the period; q moves to a's price of the day, p on b
    // to b's.
    close(&mut fat, 1, T0 + 2 * month);
    let frozen = fat.statement(Some(1), T0 + 3 * month).unwrap();
    assert_eq!(frozen.closed_unix_ms, Some(T0 + 2 * month));
    assert_adds_up(&frozen);
    set_price(&mut fat, "b", 5 * price, 0, T0 + 2 * month + 1);
    let _r = put(&mut fat, "acme", &["b"], MIB, T0 + 2 * month + 5);
    delete(&mut fat, "acme", q, &["a"], T0 + 3 * month);
    assert_eq!(fat.statement(Some(1), T0 + 4 * month).unwrap(), frozen);
    let open = fat.statement(None, T0 + 3 * month).unwrap();
    assert_eq!(open.period, 2);
    assert_eq!(stored(&open, "a", 2 * price), u128::from(MIB * month));
    assert_eq!(stored(&open, "b", price), u128::from(MIB * month));
    assert_eq!(stored(&open, "b", 5 * price), u128::from(MIB * (month - 5)));
    let err = fat
        .apply(Command::ClosePeriod(ClosePeriod {
            period: 1,
            now_unix_ms: T0 + 3 * month,
        }))
        .unwrap_err();
    assert!(matches!(err, FatError::Conflict(_)), "{err}");
}

fn served(digest: u8, portion: PortionId, max_bytes: u64, bytes: u64, expires: u64) -> ServedFetch {
    ServedFetch {
        digest: [digest; 32],
        tenant: tid("acme"),
        portion,
        max_bytes,
        expires_unix_ms: expires,
        bytes,
    }
}

fn book(fat: &mut Fat, vendor: &str, served: Vec<ServedFetch>, now: u64) -> (u64, u64) {
    match fat
        .apply(Command::BookEgress(BookEgress {
            vendor: vid(vendor),
            served,
            now_unix_ms: now,
        }))
        .unwrap()
    {
        Outcome::EgressBooked { grants, bytes } => (grants, bytes),
        other => panic!("{other:?}"),
    }
}

#[test]
fn egress_is_booked_once_per_grant_within_its_limit_and_in_time() {
    let tib = 1u64 << 40;
    let mut fat = priced_market([(0, 3_000_000), (0, 0), (0, 0)]);
    let p = put(&mut fat, "acme", &["a"], MIB, T0);
    set_price(&mut fat, "a", 0, 9_000_000, T0 + 1);
    let expires = T0 + 1000;
    // More than the grant allows is booked as the grant's limit.
    assert_eq!(
        book(
            &mut fat,
            "a",
            vec![served(1, p, MIB, 5 * MIB, expires)],
            T0 + 2
        ),
        (1, MIB)
    );
    // The same grant again, in the same report or a later one, is not.
    let again = vec![
        served(1, p, MIB, MIB, expires),
        served(2, p, MIB, 10, expires),
        served(2, p, MIB, 10, expires),
    ];
    assert_eq!(book(&mut fat, "a", again, T0 + 3), (1, 10));
    // Reported after the window: too late.
    let late = T0 + 1000 + EGRESS_REPORT_WINDOW_MS + 1;
    assert_eq!(
        book(&mut fat, "a", vec![served(3, p, MIB, 10, expires)], late),
        (0, 0)
    );
    let s = fat.statement(None, late).unwrap();
    let egress: Vec<_> = s
        .lines
        .iter()
        .filter(|l| l.kind == LineKind::Egress)
        .collect();
    assert_eq!(egress.len(), 1, "{egress:?}");
    // The copy's price when placed, not the vendor's new one.
    assert_eq!(egress[0].price_micros, 3_000_000);
    assert_eq!(egress[0].quantity, u128::from(MIB + 10));
    assert_eq!(egress[0].charge_micros, (MIB + 10) * 3_000_000 / tib);
}

fn limits(quota: Option<u64>, cap: Option<u64>, open: Option<u32>) -> Command {
    Command::SetTenantLimits(SetTenantLimits {
        tenant: tid("acme"),
        limits: TenantLimits {
            quota_bytes: quota,
            monthly_cap_micros: cap,
            max_open_reservations: open,
        },
        now_unix_ms: T0,
    })
}

#[test]
fn a_tenant_past_a_limit_is_refused_with_the_limit_what_is_used_and_who_can_raise_it() {
    let mut fat = priced_market([(1 << 40, 0), (1 << 40, 0), (1 << 40, 0)]);
    put(&mut fat, "acme", &["a", "b"], 100, T0);
    fat.apply(limits(Some(500), None, None)).unwrap();
    // An open reservation counts against the quota.
    let mut open = reserve("acme", "open", 100, 2, &[("a", 100), ("b", 100)]);
    open.now_unix_ms = T0 + 1;
    fat.apply(Command::Reserve(open)).unwrap();
    let mut r = reserve("acme", "over", 60, 2, &[("a", 60), ("b", 60)]);
    r.now_unix_ms = T0 + 2;
    let err = super::tests::refused(&mut fat, Command::Reserve(r.clone()));
    let message = err.to_string();
    assert!(matches!(err, FatError::LimitReached(_)), "{err}");
    for part in [
        "quota is 500 bytes",
        "stores 200",
        "holds 200",
        "needs 120",
        "--quota-bytes",
    ] {
        assert!(message.contains(part), "{message}");
    }
    // Another tenant is not limited.
    let mut other = r.clone();
    other.tenant = tid("globex");
    other.reservation = offsite_proto::ReservationId::random();
    fat.apply(Command::Reserve(other)).unwrap();

    fat.apply(limits(None, None, Some(1))).unwrap();
    let err = super::tests::refused(&mut fat, Command::Reserve(r.clone()));
    assert!(err.to_string().contains("1 open reservations"), "{err}");

    // 200 bytes for a month at 2^40 per TiB-month is 200 micro-units.
    fat.apply(limits(None, Some(150), None)).unwrap();
    r.now_unix_ms = T0 + MONTH_MS;
    r.lease_expires_unix_ms = r.now_unix_ms + 60_000;
    let err = super::tests::refused(&mut fat, Command::Reserve(r.clone()));
    assert!(err.to_string().contains("spending cap"), "{err}");
    fat.apply(limits(None, Some(1000), None)).unwrap();
    fat.apply(Command::Reserve(r)).unwrap();
}

#[test]
fn prices_and_fees_out_of_range_are_refused() {
    let mut fat = priced_market([(0, 0), (0, 0), (0, 0)]);
    let too_high = Command::SetVendorPrices(SetVendorPrices {
        vendor: vid("a"),
        prices: Prices {
            storage_micros_per_tib_month: offsite_proto::limits::MAX_PRICE_MICROS + 1,
            egress_micros_per_tib: 0,
        },
        now_unix_ms: T0,
    });
    assert!(fat.check(&too_high).is_err());
    super::tests::refused(&mut fat, too_high);
    let fee = Command::SetMarketFee(SetMarketFee {
        fee_ppm: 1_000_001,
        now_unix_ms: T0,
    });
    assert!(fat.check(&fee).is_err());
    super::tests::refused(&mut fat, fee);
}

#[derive(Debug, Clone)]
enum Op {
    Put {
        vendors: Vec<usize>,
        size: u64,
        dt: u64,
    },
    Delete {
        pick: usize,
        acks: Vec<usize>,
        dt: u64,
    },
    Price {
        vendor: usize,
        storage: u64,
        egress: u64,
    },
    Egress {
        pick: usize,
        bytes: u64,
        dt: u64,
    },
    Fee {
        ppm: u32,
    },
    Close {
        dt: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let price = prop_oneof![
        Just(0u64),
        0u64..1000,
        Just(offsite_proto::limits::MAX_PRICE_MICROS)
    ];
    prop_oneof![
        4 => (prop::collection::btree_set(0usize..3, 1..=3), 1u64..(16 * MIB), 0u64..MONTH_MS)
            .prop_map(|(v, size, dt)| Op::Put { vendors: v.into_iter().collect(), size, dt }),
        2 => (any::<usize>(), prop::collection::btree_set(0usize..3, 0..=3), 0u64..MONTH_MS)
            .prop_map(|(pick, a, dt)| Op::Delete { pick, acks: a.into_iter().collect(), dt }),
        2 => (0usize..3, price.clone(), price).prop_map(|(vendor, storage, egress)| Op::Price { vendor, storage, egress }),
        2 => (any::<usize>(), 0u64..(32 * MIB), 0u64..1000).prop_map(|(pick, bytes, dt)| Op::Egress { pick, bytes, dt }),
        1 => (0u32..=1_000_000).prop_map(|ppm| Op::Fee { ppm }),
        1 => (0u64..MONTH_MS).prop_map(|dt| Op::Close { dt }),
    ]
}

/// One copy as the model sees it: vendor, size, held from, held until.
struct ModelCopy {
    portion: PortionId,
    vendor: usize,
    size: u64,
    from: u64,
    until: Option<u64>,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Over random commits, deletions, price and fee changes, fetches and
    /// closes: every statement adds up to the micro-unit, and each
    /// vendor's stored byte-time in every period equals the model's sum of
    /// size times the part of the period each copy was held.
    #[test]
    fn the_ledger_adds_up_and_meters_what_was_held(ops in prop::collection::vec(op(), 1..40)) {
        let vendors = ["a", "b", "c"];
        let mut fat = priced_market([(7, 1), (70, 10), (700, 100)]);
        let mut now = T0;
        let mut portions: Vec<(PortionId, Vec<usize>, u64)> = Vec::new();
        let mut model: Vec<ModelCopy> = Vec::new();
        let mut periods = vec![T0];
        let mut grant = 0u8;
        for op in ops {
            match op {
                Op::Put { vendors: vs, size, dt } => {
                    now += dt;
                    let names: Vec<&str> = vs.iter().map(|v| vendors[*v]).collect();
                    let p = put(&mut fat, "acme", &names, size, now);
                    for v in &vs {
                        model.push(ModelCopy { portion: p, vendor: *v, size, from: now, until: None });
                    }
                    portions.push((p, vs, size));
                }
                Op::Delete { pick, acks, dt } if !portions.is_empty() => {
                    now += dt;
                    let (p, holders, _) = portions.remove(pick % portions.len());
                    let acks: Vec<usize> = acks.into_iter().filter(|a| holders.contains(a)).collect();
                    let names: Vec<&str> = acks.iter().map(|v| vendors[*v]).collect();
                    delete(&mut fat, "acme", p, &names, now);
                    for c in model.iter_mut() {
                        if c.portion == p && acks.contains(&c.vendor) {
                            c.until = Some(now);
                        }
                    }
                }
                Op::Delete { .. } => {}
                Op::Price { vendor, storage, egress } => {
                    set_price(&mut fat, vendors[vendor], storage, egress, now);
                }
                Op::Egress { pick, bytes, dt } if !portions.is_empty() => {
                    now += dt;
                    let (p, holders, size) = &portions[pick % portions.len()];
                    grant = grant.wrapping_add(1);
                    book(&mut fat, vendors[holders[0]], vec![served(grant, *p, *size, bytes, now + 1000)], now);
                }
                Op::Egress { .. } => {}
                Op::Fee { ppm } => {
                    fat.apply(Command::SetMarketFee(SetMarketFee { fee_ppm: ppm, now_unix_ms: now })).unwrap();
                }
                Op::Close { dt } => {
                    now += dt;
                    close(&mut fat, periods.len() as u32, now);
                    periods.push(now);
                }
            }
        }
        periods.push(now);
        for (i, window) in periods.windows(2).enumerate() {
            let s = fat.statement(Some(i as u32 + 1), now).unwrap();
            assert_adds_up(&s);
            for (v, name) in vendors.iter().enumerate() {
                let metered: u128 = s.lines.iter()
                    .filter(|l| l.kind == LineKind::Storage && l.vendor.as_str() == *name)
                    .map(|l| l.quantity)
                    .sum();
                let expected: u128 = model.iter().filter(|c| c.vendor == v).map(|c| {
                    let from = c.from.max(window[0]);
                    let until = c.until.unwrap_or(now).min(window[1]);
                    u128::from(c.size) * u128::from(until.saturating_sub(from))
                }).sum();
                prop_assert_eq!(metered, expected, "vendor {} period {}", name, i + 1);
            }
        }
    }
}
