//! The market in the FAT: vendors' prices, tenants' limits, and the ledger
//! that meters every copy and every fetch and turns them into charges, the
//! marketplace's fee and payouts.
//!
//! Money is integer micro-units, never floats, so every replica agrees to
//! the micro-unit. A copy accrues stored byte-milliseconds from its commit
//! until its vendor acknowledges deleting it; a fetch books the bytes its
//! vendor reports having served under a fetch grant, at most the grant's
//! limit and once per grant. Figures are kept per line: one tenant at one
//! vendor at one price. A line's charge is rounded down to the micro-unit,
//! its fee is `charge * fee_ppm / 10^6` rounded down and its payout is the
//! rest, so for every period the tenants' charges equal the vendors' payouts
//! plus the fee exactly.
//!
//! A copy keeps the price it was placed at until the period ends; at the
//! close every copy still held moves to its vendor's price of that day.

use std::collections::BTreeMap;

use offsite_proto::limits::{MAX_PRICE_MICROS, MAX_SERVED_PER_REPORT};
use offsite_proto::{PortionId, TenantId, VendorId};
use serde::{Deserialize, Serialize};

use super::command::{BookEgress, ClosePeriod, SetMarketFee, SetTenantLimits, SetVendorPrices};
use super::{Fat, FatError, Outcome};

/// One tebibyte: prices are per TiB.
pub const TIB: u128 = 1 << 40;
/// A billing month (30 days), in milliseconds: storage prices are per
/// TiB-month, and a period's estimate runs to 30 days after its start.
pub const MONTH_MS: u64 = 30 * 24 * 60 * 60 * 1000;
/// The fee is a share in parts per million (50,000 is 5%).
pub const PPM: u64 = 1_000_000;
/// How long after a fetch grant expires its vendor may still book what it
/// served under it; booked grants are remembered this long.
pub const EGRESS_REPORT_WINDOW_MS: u64 = 60 * 60 * 1000;

/// What a vendor charges, in micro-units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prices {
    pub storage_micros_per_tib_month: u64,
    pub egress_micros_per_tib: u64,
}

impl Prices {
    pub fn check(&self) -> Result<(), FatError> {
        for (name, value) in [
            ("storage price", self.storage_micros_per_tib_month),
            ("egress price", self.egress_micros_per_tib),
        ] {
            if value > MAX_PRICE_MICROS {
                return Err(FatError::invalid(format!(
                    "a {name} of {value} micro-units is above the highest allowed, \
                     {MAX_PRICE_MICROS}; set a lower price in vendor.toml"
                )));
            }
        }
        Ok(())
    }
}

/// Limits the operator sets on a tenant; `None` is no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantLimits {
    /// Bytes of all copies, committed or held in open reservations.
    pub quota_bytes: Option<u64>,
    /// Most the tenant's charge may reach in one period.
    pub monthly_cap_micros: Option<u64>,
    pub max_open_reservations: Option<u32>,
}

/// Open reservations a tenant may hold when the operator set no limit.
pub const DEFAULT_MAX_OPEN_RESERVATIONS: u32 = 256;

/// Storage or egress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LineKind {
    Storage,
    Egress,
}

impl LineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LineKind::Storage => "storage",
            LineKind::Egress => "egress",
        }
    }
}

/// One line of a statement: a tenant's storage or egress at one vendor at
/// one price, with its money.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub tenant: TenantId,
    pub vendor: VendorId,
    pub kind: LineKind,
    pub price_micros: u64,
    /// Storage: byte-milliseconds. Egress: bytes.
    pub quantity: u128,
    /// Storage: bytes held now at this price (0 in a closed period).
    pub stored_bytes: u64,
    pub charge_micros: u64,
    pub fee_micros: u64,
    pub payout_micros: u64,
}

/// A period's figures, frozen at its close (or as of now while open).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    pub period: u32,
    pub started_unix_ms: u64,
    pub closed_unix_ms: Option<u64>,
    pub as_of_unix_ms: u64,
    pub fee_ppm: u32,
    pub lines: Vec<Line>,
}

impl Statement {
    /// The lines of one tenant, or of one vendor.
    pub fn only(mut self, keep: impl Fn(&Line) -> bool) -> Self {
        self.lines.retain(keep);
        self
    }

    pub fn charge_micros(&self) -> u64 {
        self.lines
            .iter()
            .fold(0, |sum, l| sum.saturating_add(l.charge_micros))
    }
}

/// A copy's bytes and the prices it was placed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct CopyTerms {
    bytes: u64,
    prices: Prices,
}

/// Bytes held at one price and the byte-time they accrued.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Accrual {
    bytes: u64,
    since_unix_ms: u64,
    byte_ms: u128,
}

impl Accrual {
    fn accrue(&mut self, now_unix_ms: u64) {
        let elapsed = now_unix_ms.saturating_sub(self.since_unix_ms);
        self.byte_ms = self
            .byte_ms
            .saturating_add(u128::from(self.bytes) * u128::from(elapsed));
        self.since_unix_ms = self.since_unix_ms.max(now_unix_ms);
    }
}

type LineKey = (TenantId, VendorId, u64);

/// The market's replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Ledger {
    period: u32,
    period_started_unix_ms: u64,
    /// The latest time a metering command (commit, capacity report, close,
    /// egress) carried: a repair's new copy, placed by a command without a
    /// time right after its source's report, accrues from it.
    clock_unix_ms: u64,
    fee_ppm: u32,
    prices: BTreeMap<VendorId, Prices>,
    limits: BTreeMap<TenantId, TenantLimits>,
    copies: BTreeMap<(VendorId, TenantId, PortionId), CopyTerms>,
    storage: BTreeMap<LineKey, Accrual>,
    egress: BTreeMap<LineKey, u64>,
    /// Fetch grants booked, by digest, with their expiry.
    booked: BTreeMap<[u8; 32], u64>,
    closed: BTreeMap<u32, Statement>,
    /// Off only in the metering bench, which measures what metering costs;
    /// never stored, so a FAT read back always meters.
    #[serde(skip, default = "metering_on")]
    metering: bool,
}

fn metering_on() -> bool {
    true
}

impl Default for Ledger {
    fn default() -> Self {
        Self {
            period: 1,
            period_started_unix_ms: 0,
            clock_unix_ms: 0,
            fee_ppm: 0,
            prices: BTreeMap::new(),
            limits: BTreeMap::new(),
            copies: BTreeMap::new(),
            storage: BTreeMap::new(),
            egress: BTreeMap::new(),
            booked: BTreeMap::new(),
            closed: BTreeMap::new(),
            metering: true,
        }
    }
}

/// `quantity * price / per`, rounded down, saturating at `u64::MAX`;
/// exact where `quantity * price` would overflow 128 bits.
fn charge(quantity: u128, price: u64, per: u128) -> u64 {
    let (whole, rest) = (quantity / per, quantity % per);
    let from_whole = whole.saturating_mul(u128::from(price));
    let from_rest = rest * u128::from(price) / per;
    u64::try_from(from_whole.saturating_add(from_rest)).unwrap_or(u64::MAX)
}

pub(super) fn check_fee(fee_ppm: u32) -> Result<(), FatError> {
    if u64::from(fee_ppm) > PPM {
        return Err(FatError::invalid(format!(
            "a fee of {fee_ppm} parts per million is more than the whole charge; set `fee_ppm` \
             to 0 ..= {PPM} (50000 is 5%)"
        )));
    }
    Ok(())
}

pub(super) fn check_served(c: &BookEgress) -> Result<(), FatError> {
    if c.served.len() > MAX_SERVED_PER_REPORT {
        return Err(FatError::invalid(format!(
            "{} served fetches in one report, more than {MAX_SERVED_PER_REPORT}; report the \
             rest next time",
            c.served.len()
        )));
    }
    Ok(())
}

fn fee_of(charge_micros: u64, fee_ppm: u32) -> u64 {
    (u128::from(charge_micros) * u128::from(fee_ppm) / u128::from(PPM)) as u64
}

impl Ledger {
    /// A ledger that starts metering `copies` (vendor, tenant, portion,
    /// bytes, since) at price 0: what a FAT from before the ledger holds.
    pub fn starting_with(
        copies: impl Iterator<Item = (VendorId, TenantId, PortionId, u64, u64)>,
    ) -> Self {
        let mut ledger = Self::default();
        for (vendor, tenant, portion, bytes, since) in copies {
            ledger.clock_unix_ms = ledger.clock_unix_ms.max(since);
            ledger.add_copy_at(vendor, tenant, portion, bytes, since);
        }
        ledger.period_started_unix_ms = ledger
            .storage
            .values()
            .map(|a| a.since_unix_ms)
            .min()
            .unwrap_or(0);
        ledger
    }

    /// Moves the ledger's clock to `now` (never back).
    pub fn tick(&mut self, now_unix_ms: u64) {
        self.clock_unix_ms = self.clock_unix_ms.max(now_unix_ms);
        // The first period starts with the marketplace's first metering.
        if self.period == 1 && self.period_started_unix_ms == 0 {
            self.period_started_unix_ms = now_unix_ms;
        }
    }

    #[cfg(test)]
    pub fn now(&self) -> u64 {
        self.clock_unix_ms
    }

    pub fn prices_of(&self, vendor: &VendorId) -> Prices {
        self.prices.get(vendor).copied().unwrap_or_default()
    }

    pub fn limits_of(&self, tenant: &TenantId) -> TenantLimits {
        self.limits.get(tenant).cloned().unwrap_or_default()
    }

    pub fn period(&self) -> u32 {
        self.period
    }

    /// A new copy starts accruing now at its vendor's price.
    pub fn add_copy(&mut self, vendor: VendorId, tenant: TenantId, portion: PortionId, bytes: u64) {
        let now = self.clock_unix_ms;
        self.add_copy_at(vendor, tenant, portion, bytes, now);
    }

    fn add_copy_at(
        &mut self,
        vendor: VendorId,
        tenant: TenantId,
        portion: PortionId,
        bytes: u64,
        now: u64,
    ) {
        let key = (vendor, tenant, portion);
        if !self.metering || self.copies.contains_key(&key) {
            return;
        }
        let prices = self.prices_of(&key.0);
        let line = (
            key.1.clone(),
            key.0.clone(),
            prices.storage_micros_per_tib_month,
        );
        let accrual = self.storage.entry(line).or_insert_with(|| Accrual {
            since_unix_ms: now,
            ..Accrual::default()
        });
        accrual.accrue(now);
        accrual.bytes = accrual.bytes.saturating_add(bytes);
        self.copies.insert(key, CopyTerms { bytes, prices });
    }

    /// A copy its vendor deleted stops accruing now.
    pub fn remove_copy(&mut self, vendor: &VendorId, tenant: &TenantId, portion: PortionId) {
        let key = (vendor.clone(), tenant.clone(), portion);
        let Some(terms) = self.copies.remove(&key) else {
            return;
        };
        let line = (
            tenant.clone(),
            vendor.clone(),
            terms.prices.storage_micros_per_tib_month,
        );
        if let Some(accrual) = self.storage.get_mut(&line) {
            accrual.accrue(self.clock_unix_ms);
            accrual.bytes = accrual.bytes.saturating_sub(terms.bytes);
        }
    }

    /// Bytes of all the tenant's copies that still accrue.
    pub fn stored_bytes_of(&self, tenant: &TenantId) -> u64 {
        self.tenant_storage(tenant)
            .fold(0u64, |sum, (_, a)| sum.saturating_add(a.bytes))
    }

    fn tenant_storage<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> impl Iterator<Item = (&'a LineKey, &'a Accrual)> + 'a {
        self.storage
            .iter()
            .filter(move |((t, _, _), _)| t == tenant)
    }

    /// The open period's statement as of `now`.
    pub fn open_statement(&self, now_unix_ms: u64) -> Statement {
        self.open_statement_where(now_unix_ms, |_| true)
    }

    /// One tenant's lines of the open period as of `now`.
    pub fn tenant_statement(&self, tenant: &TenantId, now_unix_ms: u64) -> Statement {
        self.open_statement_where(now_unix_ms, |t| t == tenant)
    }

    /// The open period's lines of the tenants `keep` admits, as of `now`.
    fn open_statement_where(
        &self,
        now_unix_ms: u64,
        keep: impl Fn(&TenantId) -> bool,
    ) -> Statement {
        let now = now_unix_ms.max(self.clock_unix_ms);
        let mut lines = Vec::new();
        let storage = self.storage.iter().filter(|((t, _, _), _)| keep(t));
        for ((tenant, vendor, price), accrual) in storage {
            let mut accrual = accrual.clone();
            accrual.accrue(now);
            if accrual.byte_ms == 0 && accrual.bytes == 0 {
                continue;
            }
            let charge_micros = charge(accrual.byte_ms, *price, TIB * u128::from(MONTH_MS));
            lines.push(self.line(
                tenant,
                vendor,
                LineKind::Storage,
                *price,
                accrual.byte_ms,
                accrual.bytes,
                charge_micros,
            ));
        }
        let egress = self.egress.iter().filter(|((t, _, _), _)| keep(t));
        for ((tenant, vendor, price), bytes) in egress {
            let charge_micros = charge(u128::from(*bytes), *price, TIB);
            lines.push(self.line(
                tenant,
                vendor,
                LineKind::Egress,
                *price,
                u128::from(*bytes),
                0,
                charge_micros,
            ));
        }
        Statement {
            period: self.period,
            started_unix_ms: self.period_started_unix_ms,
            closed_unix_ms: None,
            as_of_unix_ms: now,
            fee_ppm: self.fee_ppm,
            lines,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn line(
        &self,
        tenant: &TenantId,
        vendor: &VendorId,
        kind: LineKind,
        price_micros: u64,
        quantity: u128,
        stored_bytes: u64,
        charge_micros: u64,
    ) -> Line {
        let fee_micros = fee_of(charge_micros, self.fee_ppm);
        Line {
            tenant: tenant.clone(),
            vendor: vendor.clone(),
            kind,
            price_micros,
            quantity,
            stored_bytes,
            charge_micros,
            fee_micros,
            payout_micros: charge_micros - fee_micros,
        }
    }

    /// A period's statement: the open one as of `now`, or a closed one.
    pub fn statement(&self, period: Option<u32>, now_unix_ms: u64) -> Result<Statement, FatError> {
        match period {
            None => Ok(self.open_statement(now_unix_ms)),
            Some(p) if p == self.period => Ok(self.open_statement(now_unix_ms)),
            Some(p) => self.closed.get(&p).cloned().ok_or_else(|| {
                FatError::NotFound(format!(
                    "there is no period {p}: the open period is {} and periods are numbered \
                     from 1",
                    self.period
                ))
            }),
        }
    }

    /// Closed statements, newest first.
    pub fn closed_statements(&self) -> impl Iterator<Item = &Statement> {
        self.closed.values().rev()
    }

    /// A tenant's charge so far (`statement`, its open lines) plus what its
    /// stored bytes accrue until the period's nominal end at the prices
    /// they hold.
    pub fn estimate_micros(&self, statement: &Statement) -> u64 {
        let end = self.period_started_unix_ms.saturating_add(MONTH_MS);
        let remaining = u128::from(end.saturating_sub(statement.as_of_unix_ms));
        statement.lines.iter().fold(0u64, |sum, l| {
            let ahead = match l.kind {
                LineKind::Storage => charge(
                    l.quantity
                        .saturating_add(u128::from(l.stored_bytes) * remaining),
                    l.price_micros,
                    TIB * u128::from(MONTH_MS),
                ),
                LineKind::Egress => l.charge_micros,
            };
            sum.saturating_add(ahead)
        })
    }
}

impl Fat {
    pub(super) fn check_vendor_prices(&self, c: &SetVendorPrices) -> Result<(), FatError> {
        c.prices.check()?;
        if !self.vendors.contains_key(&c.vendor) {
            return Err(FatError::NotFound(format!(
                "vendor {} is not registered; register before setting prices",
                c.vendor
            )));
        }
        Ok(())
    }

    pub(super) fn set_vendor_prices(&mut self, c: SetVendorPrices) -> Result<Outcome, FatError> {
        self.check_vendor_prices(&c)?;
        self.ledger.prices.insert(c.vendor, c.prices);
        Ok(Outcome::MarketSet)
    }

    pub(super) fn set_market_fee(&mut self, c: SetMarketFee) -> Result<Outcome, FatError> {
        check_fee(c.fee_ppm)?;
        self.ledger.fee_ppm = c.fee_ppm;
        Ok(Outcome::MarketSet)
    }

    pub(super) fn set_tenant_limits(&mut self, c: SetTenantLimits) -> Result<Outcome, FatError> {
        if c.limits == TenantLimits::default() {
            self.ledger.limits.remove(&c.tenant);
        } else {
            self.ledger.limits.insert(c.tenant, c.limits);
        }
        Ok(Outcome::MarketSet)
    }

    pub(super) fn check_close_period(&self, c: &ClosePeriod) -> Result<(), FatError> {
        if c.period != self.ledger.period {
            return Err(FatError::Conflict(format!(
                "period {} is not the open period; the open period is {} (closed periods \
                 cannot change)",
                c.period, self.ledger.period
            )));
        }
        Ok(())
    }

    pub(super) fn close_period(&mut self, c: ClosePeriod) -> Result<Outcome, FatError> {
        self.check_close_period(&c)?;
        let ledger = &mut self.ledger;
        ledger.tick(c.now_unix_ms);
        let now = ledger.clock_unix_ms;
        let mut statement = ledger.open_statement(now);
        statement.closed_unix_ms = Some(now);
        ledger.closed.insert(ledger.period, statement);
        ledger.period = ledger.period.saturating_add(1);
        ledger.period_started_unix_ms = now;
        ledger.egress.clear();
        ledger.storage.clear();
        let copies = std::mem::take(&mut ledger.copies);
        for ((vendor, tenant, portion), terms) in copies {
            ledger.add_copy_at(vendor, tenant, portion, terms.bytes, now);
        }
        Ok(Outcome::PeriodClosed { period: c.period })
    }

    pub(super) fn book_egress(&mut self, c: BookEgress) -> Result<Outcome, FatError> {
        check_served(&c)?;
        let ledger = &mut self.ledger;
        ledger.tick(c.now_unix_ms);
        let now = ledger.clock_unix_ms;
        ledger
            .booked
            .retain(|_, expires| expires.saturating_add(EGRESS_REPORT_WINDOW_MS) >= now);
        let (mut grants, mut bytes) = (0u64, 0u64);
        for s in c.served {
            let late = s.expires_unix_ms.saturating_add(EGRESS_REPORT_WINDOW_MS) < now;
            let served = s.bytes.min(s.max_bytes);
            if late || served == 0 || ledger.booked.contains_key(&s.digest) {
                continue;
            }
            let price = match ledger
                .copies
                .get(&(c.vendor.clone(), s.tenant.clone(), s.portion))
            {
                Some(terms) => terms.prices.egress_micros_per_tib,
                None => ledger.prices_of(&c.vendor).egress_micros_per_tib,
            };
            let line = ledger
                .egress
                .entry((s.tenant, c.vendor.clone(), price))
                .or_default();
            *line = line.saturating_add(served);
            ledger.booked.insert(s.digest, s.expires_unix_ms);
            grants += 1;
            bytes = bytes.saturating_add(served);
        }
        Ok(Outcome::EgressBooked { grants, bytes })
    }

    /// Refuses a reservation that would take the tenant past a limit.
    pub(super) fn check_tenant_limits(&self, r: &super::Reserve) -> Result<(), FatError> {
        let limits = self.ledger.limits_of(&r.tenant);
        let raise = |flag: &str| {
            format!(
                "the marketplace operator can raise it with `offsite-coordinator tenant set \
                 --tenant {} {flag} N`",
                r.tenant
            )
        };
        let open: Vec<_> = self
            .reservations
            .values()
            .filter(|x| x.tenant == r.tenant && x.state == super::ReservationState::Open)
            .collect();
        let max_open = limits
            .max_open_reservations
            .unwrap_or(DEFAULT_MAX_OPEN_RESERVATIONS);
        if open.len() as u64 >= u64::from(max_open) {
            return Err(FatError::LimitReached(format!(
                "tenant {} holds {} open reservations, its limit of {max_open}; commit or \
                 release one first, or {}",
                r.tenant,
                open.len(),
                raise("--max-open-reservations")
            )));
        }
        if let Some(quota) = limits.quota_bytes {
            let stored = self.ledger.stored_bytes_of(&r.tenant);
            let held = open.iter().fold(0u64, |sum, x| {
                sum.saturating_add(x.bytes.saturating_mul(u64::from(x.replication)))
            });
            let asked = r.bytes.saturating_mul(u64::from(r.replication));
            if stored.saturating_add(held).saturating_add(asked) > quota {
                return Err(FatError::LimitReached(format!(
                    "tenant {}'s storage quota is {quota} bytes (all copies); it stores {stored} \
                     and holds {held} in open reservations, and this reservation needs {asked}; \
                     forget and prune old snapshots, or {}",
                    r.tenant,
                    raise("--quota-bytes")
                )));
            }
        }
        if let Some(cap) = limits.monthly_cap_micros {
            let charge = self
                .ledger
                .tenant_statement(&r.tenant, r.now_unix_ms)
                .charge_micros();
            if charge >= cap {
                return Err(FatError::LimitReached(format!(
                    "tenant {}'s spending cap for period {} is {cap} micro-units and its \
                     charge has reached {charge}; wait for the next period, or {}",
                    r.tenant,
                    self.ledger.period,
                    raise("--monthly-cap")
                )));
            }
        }
        Ok(())
    }
}

/// What a tenant sees of the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// The tenant's lines of the open period.
    pub statement: Statement,
    pub estimate_micros: u64,
    /// Bytes of the tenant's committed portions, one copy each.
    pub stored_bytes_one_copy: u64,
    /// Per host: bytes of the portions its snapshots need (one copy each)
    /// and its snapshot count.
    pub hosts: Vec<(String, u64, u64)>,
}

impl Fat {
    /// Stops metering copies (the metering bench compares a FAT with and
    /// without it; nothing else may call this: replicas must agree).
    #[doc(hidden)]
    pub fn without_metering(mut self) -> Self {
        self.ledger.metering = false;
        self
    }

    /// The prices a vendor set, if it ever set any.
    pub fn vendor_prices(&self, vendor: &VendorId) -> Option<Prices> {
        self.ledger.prices.get(vendor).copied()
    }

    pub fn market_fee_ppm(&self) -> u32 {
        self.ledger.fee_ppm
    }

    pub fn tenant_limits(&self, tenant: &TenantId) -> TenantLimits {
        self.ledger.limits_of(tenant)
    }

    pub fn open_period(&self) -> u32 {
        self.ledger.period()
    }

    /// A period's statement (the open one as of `now`).
    pub fn statement(&self, period: Option<u32>, now_unix_ms: u64) -> Result<Statement, FatError> {
        self.ledger.statement(period, now_unix_ms)
    }

    /// The open period as of `now`, then every closed one, newest first.
    pub fn statements(&self, now_unix_ms: u64) -> Vec<Statement> {
        std::iter::once(self.ledger.open_statement(now_unix_ms))
            .chain(self.ledger.closed_statements().cloned())
            .collect()
    }

    /// The tenant's figures as of `now`.
    pub fn usage(&self, tenant: &TenantId, now_unix_ms: u64) -> Usage {
        let held = self.portions.get(tenant);
        let size_of = |p: &PortionId| held.and_then(|h| h.get(p)).map_or(0, |r| r.size);
        let stored_bytes_one_copy = held
            .into_iter()
            .flat_map(|h| h.values())
            .fold(0u64, |sum, r| sum.saturating_add(r.size));
        let mut hosts: BTreeMap<&str, (std::collections::BTreeSet<PortionId>, u64)> =
            BTreeMap::new();
        for s in self
            .snapshots
            .get(tenant)
            .into_iter()
            .flat_map(|s| s.values())
        {
            let (portions, count) = hosts.entry(s.host.as_str()).or_default();
            portions.extend(s.portions.iter().chain([&s.manifest.portion]).copied());
            *count += 1;
        }
        let statement = self.ledger.tenant_statement(tenant, now_unix_ms);
        Usage {
            estimate_micros: self.ledger.estimate_micros(&statement),
            statement,
            stored_bytes_one_copy,
            hosts: hosts
                .into_iter()
                .map(|(host, (portions, count))| {
                    let bytes = portions
                        .iter()
                        .fold(0u64, |sum, p| sum.saturating_add(size_of(p)));
                    (host.to_string(), bytes, count)
                })
                .collect(),
        }
    }
}
