//! The leader's audits (see `fat::audits` for the record and the
//! standings): every round, for each vendor the FAT places copies on, one
//! copy at random and one slice of it at random, asked of the vendor over
//! mutual TLS (`Vendor.Audit`) and checked against the portion's hash; no
//! answer within the timeout, an error, or a proof that does not verify is
//! a failed audit. Vendors that are not up are recorded as down for the
//! round. The results, with what was asked, go into one `RecordAudits`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use offsite_identity::{Credentials, PeerIdentity, Role};
use offsite_proto::audit::{verify, AUDIT_ALIGN, MAX_AUDIT_LENGTH};
use offsite_proto::clock::now_unix_ms;
use offsite_proto::limits::MAX_MESSAGE_BYTES;
use offsite_proto::pb::vendor::vendor_client::VendorClient;
use offsite_proto::pb::vendor::AuditRequest;
use offsite_proto::{PortionId, TenantId, VendorId};
use rand::Rng;
use tonic::Code;

use crate::fat::{Audit, AuditCandidate, AuditResult, Command, Liveness, Outcome, RecordAudits};
use crate::store::FatStore;

/// Bytes an audit asks for.
pub(crate) const SLICE_BYTES: u64 = 16 * 1024;

/// How often and how patiently the leader audits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditPolicy {
    /// Between rounds (each round audits every vendor once).
    pub every: Duration,
    /// For one vendor's answer.
    pub timeout: Duration,
    /// Bytes asked per audit (at most [`MAX_AUDIT_LENGTH`]).
    pub slice_bytes: u64,
}

/// One audit to make: the copy and slice chosen, and where to ask.
pub(crate) struct Chosen {
    pub vendor: VendorId,
    pub address: String,
    pub tenant: TenantId,
    pub portion: PortionId,
    pub hash: [u8; 32],
    pub size: u64,
    pub offset: u64,
    pub length: u64,
}

impl Chosen {
    /// An audit of `copy` at `address`: a 1 KiB-aligned slice of at most
    /// `slice_bytes` at random.
    pub fn slice_of(copy: AuditCandidate, address: String, slice_bytes: u64) -> Self {
        let offset = if copy.size == 0 {
            0
        } else {
            rand::thread_rng().gen_range(0..copy.size) / AUDIT_ALIGN * AUDIT_ALIGN
        };
        let length = (copy.size - offset).min(slice_bytes.clamp(1, MAX_AUDIT_LENGTH));
        Chosen {
            vendor: copy.vendor,
            address,
            tenant: copy.tenant,
            portion: copy.portion,
            hash: copy.hash,
            size: copy.size,
            offset,
            length,
        }
    }

    /// The audit as the FAT records it.
    pub fn audit(&self, result: AuditResult) -> Audit {
        Audit {
            vendor: self.vendor.clone(),
            tenant: self.tenant.clone(),
            portion: self.portion,
            offset: self.offset,
            length: self.length,
            result,
        }
    }
}

/// How asking a vendor for a proof went.
pub(crate) enum Answer {
    /// The proof verified.
    Passed,
    /// The vendor answered, with an error or a proof that does not verify.
    Wrong(String),
    /// No answer: unreachable, busy, or not within the timeout.
    Silent(String),
}

/// On the leader, a round of audits every `policy.every`.
pub async fn audit_loop<S: FatStore>(store: Arc<S>, credentials: Credentials, policy: AuditPolicy) {
    let mut ticks = tokio::time::interval(policy.every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if store.is_leader() {
            audit_round(&*store, &credentials, policy).await;
        }
    }
}

/// One round: choose, ask, check, record.
pub async fn audit_round<S: FatStore>(store: &S, credentials: &Credentials, policy: AuditPolicy) {
    let (chosen, down) = store.read_local(|fat| choose(fat, policy.slice_bytes));
    if chosen.is_empty() && down.is_empty() {
        return;
    }
    // In a round, no answer counts against the vendor as a wrong one does.
    let asked = chosen.into_iter().map(|c| async move {
        let result = match ask(credentials, &c, policy.timeout).await {
            Answer::Passed => AuditResult::Passed,
            Answer::Wrong(reason) | Answer::Silent(reason) => AuditResult::Failed { reason },
        };
        c.audit(result)
    });
    let mut audits = join_all(asked).await;
    audits.extend(down);
    for audit in &audits {
        if let AuditResult::Failed { reason } = &audit.result {
            tracing::warn!(vendor = %audit.vendor, portion = %audit.portion, offset = audit.offset, %reason, "audit failed");
        }
    }
    let command = Command::RecordAudits(RecordAudits {
        audits,
        now_unix_ms: now_unix_ms(),
    });
    match store.propose(command).await {
        Ok(Outcome::AuditsRecorded { disqualified }) => {
            for vendor in disqualified {
                tracing::warn!(%vendor, "vendor disqualified by its audits; its copies will be made again elsewhere");
            }
        }
        Ok(other) => tracing::warn!(?other, "unexpected outcome of recording audits"),
        Err(e) => tracing::warn!(error = %e, "audits not recorded; the next round audits again"),
    }
}

/// For every up vendor holding a copy, one copy and an aligned slice at
/// random; for every vendor that is not up, a round of downtime.
fn choose(fat: &crate::fat::Fat, slice_bytes: u64) -> (Vec<Chosen>, Vec<Audit>) {
    let mut by_vendor: BTreeMap<VendorId, Vec<AuditCandidate>> = BTreeMap::new();
    for candidate in fat.audit_candidates() {
        by_vendor
            .entry(candidate.vendor.clone())
            .or_default()
            .push(candidate);
    }
    let statuses: BTreeMap<VendorId, (Liveness, String)> = fat
        .vendor_statuses()
        .into_iter()
        .map(|s| (s.vendor.id, (s.liveness, s.vendor.address)))
        .collect();
    let mut rng = rand::thread_rng();
    let mut chosen = Vec::new();
    let mut down = Vec::new();
    for (vendor, copies) in by_vendor {
        let Some((liveness, address)) = statuses.get(&vendor) else {
            continue;
        };
        let AuditCandidate {
            tenant,
            portion,
            size,
            hash,
            ..
        } = copies[rng.gen_range(0..copies.len())].clone();
        if *liveness != Liveness::Up {
            down.push(Audit {
                vendor,
                tenant,
                portion,
                offset: 0,
                length: 0,
                result: AuditResult::Down,
            });
            continue;
        }
        if size == 0 {
            continue;
        }
        let copy = AuditCandidate {
            vendor,
            tenant,
            portion,
            size,
            hash,
        };
        chosen.push(Chosen::slice_of(copy, address.clone(), slice_bytes));
    }
    (chosen, down)
}

/// Asks the vendor for the slice and checks its proof.
pub(crate) async fn ask(credentials: &Credentials, c: &Chosen, timeout: Duration) -> Answer {
    let answer = tokio::time::timeout(timeout, call(credentials, c)).await;
    let proof = match answer {
        Err(_) => return Answer::Silent(format!("no answer within {} s", timeout.as_secs_f64())),
        Ok(Err(answer)) => return answer,
        Ok(Ok(proof)) => proof,
    };
    match verify(&proof, &c.hash, c.size, c.offset, c.length) {
        Ok(_) => Answer::Passed,
        Err(e) => Answer::Wrong(e.to_string()),
    }
}

async fn call(credentials: &Credentials, c: &Chosen) -> Result<Vec<u8>, Answer> {
    let expected = PeerIdentity::new(Role::Vendor, c.vendor.as_str())
        .map_err(|e| Answer::Silent(e.to_string()))?;
    let endpoint = credentials
        .endpoint(&c.address, &expected.dns_name())
        .map_err(|e| Answer::Silent(e.to_string()))?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| Answer::Silent(format!("cannot connect to {}: {e}", c.address)))?;
    let mut client = VendorClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let request = AuditRequest {
        tenant_id: c.tenant.to_string(),
        portion_id: c.portion.to_string(),
        offset: c.offset,
        length: c.length,
    };
    client
        .audit(request)
        .await
        .map(|r| r.into_inner().proof)
        .map_err(|status| {
            let reason = format!("{}: {}", status.code(), status.message());
            // A busy or overloaded vendor has not said it lost anything.
            match status.code() {
                Code::Unavailable
                | Code::Aborted
                | Code::ResourceExhausted
                | Code::DeadlineExceeded
                | Code::Cancelled => Answer::Silent(reason),
                _ => Answer::Wrong(reason),
            }
        })
}
