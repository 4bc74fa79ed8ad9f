//! Judging a tenant's report of bad copies (`Fat.ReportBadCopies`, from
//! `offsite check --read-data`). A tenant could accuse an honest vendor, so
//! its word marks nothing: each reported copy gets a targeted audit (the
//! machinery of [`crate::audit`]: a slice with its bao proof, for which
//! the vendor reads and hashes the whole portion from its checked pieces,
//! so one audit finds any bad piece). Only an audit the vendor answers
//! wrongly (an error, or a proof that does not verify) marks the copy bad
//! and is recorded as a failed audit, in one `MarkBadCopies`. A vendor that
//! is not up, busy, or silent is not judged: liveness deals with it. Audits
//! cost the vendor a portion read each, so a call names at most
//! `MAX_BAD_COPY_REPORTS_PER_CALL` copies and at most [`AUDITS_AT_ONCE`]
//! run at once over all tenants.

use std::time::Duration;

use futures::future::join_all;
use offsite_identity::Credentials;
use offsite_proto::clock::now_unix_ms;
use offsite_proto::{BadCopyReport, TenantId};
use tokio::sync::Semaphore;
use tonic::Status;

use crate::audit::{ask, Answer, Chosen};
use crate::fat::{AuditResult, BadCopyMark, Command, CopyState, MarkBadCopies, Outcome};
use crate::service::status_of;
use crate::store::FatStore;

/// Targeted audits running at once on this coordinator.
const AUDITS_AT_ONCE: usize = 4;

/// What became of one reported copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The audit failed: the copy is marked bad (the reason).
    Confirmed(String),
    /// The vendor proved the copy whole: nothing changed.
    NotConfirmed,
    /// Known bad already.
    AlreadyKnown,
    /// The FAT does not place the portion of this tenant on that vendor.
    NotPlaced,
    /// Not judged (the reason): the vendor is not up or did not answer.
    Unverified(String),
}

/// The coordinator's judge of reported copies.
pub(crate) struct BadCopyAuditor {
    credentials: Credentials,
    timeout: Duration,
    slice_bytes: u64,
    permits: Semaphore,
}

impl BadCopyAuditor {
    pub fn new(credentials: Credentials, timeout: Duration, slice_bytes: u64) -> Self {
        Self {
            credentials,
            timeout,
            slice_bytes,
            permits: Semaphore::new(AUDITS_AT_ONCE),
        }
    }

    /// Audits each reported copy of `tenant`'s portions and marks those
    /// whose audit failed; the verdicts in the order reported.
    pub async fn judge<S: FatStore>(
        &self,
        store: &S,
        tenant: &TenantId,
        reports: Vec<BadCopyReport>,
    ) -> Result<Vec<(BadCopyReport, Verdict)>, Status> {
        let asked: Vec<(BadCopyReport, CopyState)> = {
            let (tenant, reports) = (tenant.clone(), reports.clone());
            store
                .read(move |fat| {
                    reports
                        .into_iter()
                        .map(|r| {
                            let state = fat.copy_state(&tenant, r.portion, &r.vendor);
                            (r, state)
                        })
                        .collect()
                })
                .await
                .map_err(crate::service::store_status)?
        };
        let judged = join_all(asked.into_iter().map(|(report, state)| async move {
            let verdict = self.audit(state).await;
            (report, verdict)
        }))
        .await;
        let failed: Vec<BadCopyMark> = judged
            .iter()
            .filter_map(|(_, (_, audit))| audit.clone().map(BadCopyMark::FailedAudit))
            .collect();
        if !failed.is_empty() {
            let command = Command::MarkBadCopies(MarkBadCopies {
                marks: failed,
                now_unix_ms: now_unix_ms(),
            });
            match store.propose(command).await.map_err(status_of)? {
                Outcome::BadCopiesMarked { marked } => {
                    tracing::warn!(%tenant, marked, "copies a tenant reported failed their audits; they will be made again")
                }
                other => {
                    return Err(Status::internal(format!(
                        "the FAT answered marking bad copies with {other:?}; this is a \
                         coordinator bug, please report it"
                    )))
                }
            }
        }
        Ok(judged
            .into_iter()
            .map(|(report, (verdict, _))| (report, verdict))
            .collect())
    }

    /// One copy's verdict, with the failed audit to record.
    async fn audit(&self, state: CopyState) -> (Verdict, Option<crate::fat::Audit>) {
        let (copy, address) = match state {
            CopyState::NotPlaced => return (Verdict::NotPlaced, None),
            CopyState::Bad => return (Verdict::AlreadyKnown, None),
            CopyState::Placed {
                copy, up: false, ..
            } => {
                let why = format!("vendor {} is not up, so it is not audited", copy.vendor);
                return (Verdict::Unverified(why), None);
            }
            CopyState::Placed { copy, address, .. } => (copy, address),
        };
        let chosen = Chosen::slice_of(copy, address, self.slice_bytes);
        let Ok(_permit) = self.permits.acquire().await else {
            return (
                Verdict::Unverified("the coordinator is stopping".into()),
                None,
            );
        };
        match ask(&self.credentials, &chosen, self.timeout).await {
            Answer::Passed => {
                tracing::info!(vendor = %chosen.vendor, portion = %chosen.portion, "a copy reported bad passed its audit; nothing changes");
                (Verdict::NotConfirmed, None)
            }
            Answer::Silent(why) => (Verdict::Unverified(why), None),
            Answer::Wrong(reason) => {
                tracing::warn!(vendor = %chosen.vendor, portion = %chosen.portion, %reason, "a copy reported bad failed its audit");
                let audit = chosen.audit(AuditResult::Failed {
                    reason: reason.clone(),
                });
                (Verdict::Confirmed(reason), Some(audit))
            }
        }
    }
}
