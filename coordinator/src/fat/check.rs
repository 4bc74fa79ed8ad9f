//! [`Fat::check`]: whether `apply` would refuse a command, decided on the
//! state as it is, without changing it. The leader runs it on its replica
//! before it proposes a command, so a refused command never becomes a log
//! entry every replica stores and applies. `apply` runs the same checks
//! again: the state may move between the check and the entry's turn.

use offsite_proto::signing::ReceiptRule;

use super::command::Command;
use super::ledger::{check_fee, check_served};
use super::tenant_keys::check_tenant_key;
use super::vendors::{check_identity_key, check_region};
use super::{Fat, FatError};

impl Fat {
    /// Refuses what `apply` would refuse on this state. Commands only the
    /// leader makes (leases, liveness, repairs, grant keys) pass: `apply`
    /// judges them, and none is large.
    pub fn check(&self, command: &Command) -> Result<(), FatError> {
        match command {
            Command::RegisterVendor(r) => {
                check_region(&r.region)?;
                check_identity_key(&r.vendor.id, &r.identity_key)?;
                self.check_not_exited(&r.vendor.id)
            }
            Command::Departure(d) => self.check_departure(d),
            Command::ReportCapacity(r) => self.check_reporting_vendor(&r.vendor),
            Command::Reserve(r) => self.check_reserve(r).map(drop),
            // A new commit takes only receipts that name its reservation.
            Command::Commit(c) => self.check_commit(c, ReceiptRule::Fresh).map(drop),
            Command::Release(r) => self.check_release_reservation(r),
            Command::RenewLease(r) => self.check_renew_lease(r),
            Command::Forget(f) => self.check_forget(f),
            Command::ReleasePortions(r) => self.check_release(r).map(drop),
            Command::RewriteSnapshots(r) => self.check_rewrite(r),
            Command::StoreTenantKey(c) => check_tenant_key(c),
            Command::SetVendorPrices(c) => self.check_vendor_prices(c),
            Command::SetMarketFee(c) => check_fee(c.fee_ppm),
            Command::ClosePeriod(c) => self.check_close_period(c),
            Command::BookEgress(c) => check_served(c),
            Command::SetTenantLimits(_) => Ok(()),
            Command::MarkBadCopies(c) => self.check_mark_bad_copies(c),
            Command::ExpireLeases { .. }
            | Command::UpdateLiveness(_)
            | Command::InstallGrantKey(_)
            | Command::PlanRepairs(_)
            | Command::FinishRepairs(_)
            | Command::RecordAudits(_)
            | Command::CollectReservations(_) => Ok(()),
        }
    }
}
