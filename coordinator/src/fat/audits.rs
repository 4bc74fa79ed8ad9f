//! Audits and reputation. The leader audits vendors continuously: it picks
//! a (vendor, portion, offset) at random among the copies the FAT places on
//! up vendors, asks the vendor for that slice with a blake3 (bao) proof,
//! checks the proof against the portion's hash here, and proposes the
//! results with the choices in the command ([`RecordAudits`]), so every
//! replica keeps the same record. A vendor that is not up is not audited;
//! its round counts against its uptime instead.
//!
//! Standing, from the last [`AUDIT_WINDOW`] audits of a vendor:
//! - [`SUSPEND_FAILURES`] or more failed: *suspended*, no new placements
//!   (nor repair targets) until enough passes push the failures out;
//! - [`DISQUALIFY_FAILURES`] or more failed: *disqualified*, for good: every
//!   copy it holds is made again elsewhere from the healthy holders (repair
//!   treats it as leaving) and it gets no more data.
//!
//! Why these numbers: an honest vendor whose disk loses 1% of its pieces
//! (scrubbing repairs them) fails 1% of audits; the chance of 3 failures in
//! 20 is about 0.1% (a brief suspension now and then), of 6 in 20 about
//! 4e-8 (never, in practice). A vendor that deleted everything fails every
//! audit: suspended after its 3rd, disqualified after its 6th, so within 6
//! audit intervals (30 minutes at the default 12 audits an hour; seconds
//! with the devnet's `--fast` rate).

use offsite_proto::{PortionId, TenantId, VendorId};
use serde::{Deserialize, Serialize};

use super::{Fat, FatError, Outcome};

/// Audits a vendor's standing is judged over.
pub const AUDIT_WINDOW: u32 = 20;
/// Failures within the window that suspend a vendor.
pub const SUSPEND_FAILURES: u32 = 3;
/// Failures within the window that disqualify a vendor.
pub const DISQUALIFY_FAILURES: u32 = 6;
/// Most audits in one command.
pub const MAX_AUDITS_PER_COMMAND: usize = 1024;
/// Longest failure reason kept.
const MAX_REASON: usize = 200;

/// What one audit found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditResult {
    /// The slice verified against the portion's hash.
    Passed,
    /// No answer in time, an error, or a slice that does not verify.
    Failed { reason: String },
    /// The vendor was not up: not audited, a round of downtime.
    Down,
}

/// One audit, with the leader's choice of what to ask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    pub vendor: VendorId,
    pub tenant: TenantId,
    pub portion: PortionId,
    pub offset: u64,
    pub length: u64,
    pub result: AuditResult,
}

/// The leader records a round of audits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordAudits {
    pub audits: Vec<Audit>,
    pub now_unix_ms: u64,
}

/// A copy an audit can ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCandidate {
    pub vendor: VendorId,
    pub tenant: TenantId,
    pub portion: PortionId,
    pub size: u64,
    /// The portion's blake3.
    pub hash: [u8; 32],
}

/// How a vendor stands after its audits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Standing {
    Good,
    Suspended,
    Disqualified,
}

impl Standing {
    pub fn as_str(self) -> &'static str {
        match self {
            Standing::Good => "good",
            Standing::Suspended => "suspended",
            Standing::Disqualified => "disqualified",
        }
    }
}

/// A vendor's audit and uptime record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reputation {
    pub audits_passed: u64,
    pub audits_failed: u64,
    /// Audit rounds the vendor was not up for.
    pub rounds_down: u64,
    /// The last audits, newest in bit 0, a set bit a failure; `recent_len`
    /// of them count (at most [`AUDIT_WINDOW`]).
    recent: u32,
    recent_len: u32,
    pub last_audit_unix_ms: u64,
    /// The last failure's reason.
    pub last_failure: Option<String>,
    pub disqualified_unix_ms: Option<u64>,
}

impl Reputation {
    /// Failures among the last [`AUDIT_WINDOW`] audits.
    pub fn recent_failures(&self) -> u32 {
        let mask = match self.recent_len {
            32.. => u32::MAX,
            n => (1u32 << n) - 1,
        };
        (self.recent & mask).count_ones()
    }

    pub fn standing(&self) -> Standing {
        if self.disqualified_unix_ms.is_some() {
            Standing::Disqualified
        } else if self.recent_failures() >= SUSPEND_FAILURES {
            Standing::Suspended
        } else {
            Standing::Good
        }
    }

    pub(super) fn record(&mut self, result: &AuditResult, now_unix_ms: u64) {
        let failed = match result {
            AuditResult::Down => {
                self.rounds_down += 1;
                return;
            }
            AuditResult::Passed => {
                self.audits_passed += 1;
                false
            }
            AuditResult::Failed { reason } => {
                self.audits_failed += 1;
                let mut reason = reason.clone();
                reason.truncate(MAX_REASON);
                self.last_failure = Some(reason);
                true
            }
        };
        self.recent = (self.recent << 1) | u32::from(failed);
        self.recent_len = (self.recent_len + 1).min(AUDIT_WINDOW);
        self.last_audit_unix_ms = now_unix_ms;
        if self.disqualified_unix_ms.is_none() && self.recent_failures() >= DISQUALIFY_FAILURES {
            self.disqualified_unix_ms = Some(now_unix_ms);
        }
    }
}

impl Fat {
    /// A vendor's record (empty for one never audited).
    pub fn reputation(&self, vendor: &VendorId) -> Reputation {
        self.reputation.get(vendor).cloned().unwrap_or_default()
    }

    pub fn standing(&self, vendor: &VendorId) -> Standing {
        self.reputation
            .get(vendor)
            .map_or(Standing::Good, Reputation::standing)
    }

    /// Whether the vendor may take new placements and repair copies.
    pub(crate) fn in_good_standing(&self, vendor: &VendorId) -> bool {
        self.standing(vendor) == Standing::Good
    }

    pub(crate) fn disqualified(&self, vendor: &VendorId) -> bool {
        self.standing(vendor) == Standing::Disqualified
    }

    /// What an audit round can ask: every copy the FAT places on vendors
    /// not disqualified, but for copies already known bad (being repaired).
    pub fn audit_candidates(&self) -> Vec<AuditCandidate> {
        let mut out = Vec::new();
        for (tenant, held) in &self.portions {
            for (portion, record) in held {
                for vendor in &record.vendors {
                    if !self.disqualified(vendor) && !self.is_bad_copy(tenant, *portion, vendor) {
                        out.push(AuditCandidate {
                            vendor: vendor.clone(),
                            tenant: tenant.clone(),
                            portion: *portion,
                            size: record.size,
                            hash: record.hash.0,
                        });
                    }
                }
            }
        }
        out
    }

    pub(super) fn record_audits(&mut self, c: RecordAudits) -> Result<Outcome, FatError> {
        if c.audits.len() > MAX_AUDITS_PER_COMMAND {
            return Err(FatError::Invalid(format!(
                "{} audits in one command, more than {MAX_AUDITS_PER_COMMAND}",
                c.audits.len()
            )));
        }
        let mut disqualified = Vec::new();
        for audit in &c.audits {
            if !self.vendors.contains_key(&audit.vendor) {
                continue;
            }
            let reputation = self.reputation.entry(audit.vendor.clone()).or_default();
            let before = reputation.standing();
            reputation.record(&audit.result, c.now_unix_ms);
            if before != Standing::Disqualified && reputation.standing() == Standing::Disqualified {
                disqualified.push(audit.vendor.clone());
            }
        }
        Ok(Outcome::AuditsRecorded { disqualified })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> AuditResult {
        AuditResult::Failed {
            reason: "no answer".into(),
        }
    }

    #[test]
    fn failures_suspend_then_disqualify_and_passes_lift_a_suspension() {
        let mut r = Reputation::default();
        for _ in 0..SUSPEND_FAILURES - 1 {
            r.record(&failed(), 1);
        }
        assert_eq!(r.standing(), Standing::Good);
        r.record(&failed(), 2);
        assert_eq!(r.standing(), Standing::Suspended);
        // Passes push the failures out of the window.
        for _ in 0..AUDIT_WINDOW {
            r.record(&AuditResult::Passed, 3);
        }
        assert_eq!(r.standing(), Standing::Good);
        assert_eq!(r.recent_failures(), 0);
        // Downtime is uptime lost, not a failed audit.
        for _ in 0..100 {
            r.record(&AuditResult::Down, 4);
        }
        assert_eq!((r.standing(), r.rounds_down), (Standing::Good, 100));
        for _ in 0..DISQUALIFY_FAILURES {
            r.record(&failed(), 5);
        }
        assert_eq!(r.standing(), Standing::Disqualified);
        assert_eq!(r.disqualified_unix_ms, Some(5));
        for _ in 0..AUDIT_WINDOW {
            r.record(&AuditResult::Passed, 6);
        }
        assert_eq!(r.standing(), Standing::Disqualified, "for good");
        assert_eq!(
            (r.audits_passed, r.audits_failed),
            (
                2 * u64::from(AUDIT_WINDOW),
                u64::from(SUSPEND_FAILURES + DISQUALIFY_FAILURES)
            )
        );
    }

    #[test]
    fn scattered_failures_of_an_honest_vendor_do_not_disqualify() {
        let mut r = Reputation::default();
        // One failure in every ten audits, for a long time.
        for i in 0..10_000 {
            let result = if i % 10 == 0 {
                failed()
            } else {
                AuditResult::Passed
            };
            r.record(&result, i);
            assert_ne!(r.standing(), Standing::Disqualified, "after {i}");
        }
    }
}
