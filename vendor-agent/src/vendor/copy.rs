//! Re-replication at the source: the coordinator asks this vendor, in the
//! answer to a capacity report, to send a copy of a portion it holds to
//! another vendor. The copy is a `Store` call to the target under the
//! target's store grant, fed from the local pieces (each checked on the
//! way, as a fetch does). The target's signed receipt, or why there is
//! none, goes back in the next report. At most [`MAX_RUNNING_COPIES`] run
//! at once; a task asked again while it runs is not started twice.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use offsite_proto::limits::{
    DEFAULT_PIECE_BYTES, MAX_COPIES_PER_REPORT, MAX_PIECE_BYTES, MIN_PIECE_BYTES,
};
use offsite_proto::{CopyResult, CopyTask, Receipt, ReservationId, RoutingHeader};

use super::claim::ClaimKind;
use super::forward::Forwarder;
use super::read::{chunk_channel, stream_range};
use super::Vendor;

/// Copies sent at the same time.
pub(crate) const MAX_RUNNING_COPIES: usize = 2;

/// The copies running and those ended but not yet reported.
#[derive(Default)]
pub(crate) struct Copies {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    running: HashSet<ReservationId>,
    ended: Vec<CopyResult>,
}

impl Copies {
    /// Starts the tasks not already running or ended, while fewer than
    /// [`MAX_RUNNING_COPIES`] run; the rest are asked again next report.
    pub fn start(&self, vendor: &Arc<Vendor>, tasks: Vec<CopyTask>) {
        let mut state = self.lock();
        for task in tasks {
            let known = state.running.contains(&task.repair)
                || state.ended.iter().any(|r| r.repair == task.repair);
            if known || state.running.len() >= MAX_RUNNING_COPIES {
                continue;
            }
            state.running.insert(task.repair);
            let running = Running {
                repair: task.repair,
                state: Arc::clone(&self.state),
                outcome: None,
            };
            let vendor = Arc::clone(vendor);
            tokio::spawn(async move {
                let mut running = running;
                let outcome = send_copy(&vendor, task).await;
                match &outcome {
                    Ok(_) => {
                        tracing::info!(repair = %running.repair, "copy sent; the target holds it")
                    }
                    Err(why) => tracing::warn!(repair = %running.repair, %why, "copy failed"),
                }
                running.outcome = Some(outcome);
            });
        }
    }

    /// Takes up to [`MAX_COPIES_PER_REPORT`] ended copies for a report.
    pub fn take_ended(&self, room: usize) -> Vec<CopyResult> {
        let mut state = self.lock();
        let n = state.ended.len().min(room.min(MAX_COPIES_PER_REPORT));
        state.ended.drain(..n).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// A running copy; however its task ends (a panic included), it leaves
/// `running`, and its outcome (if it has one) joins `ended`.
struct Running {
    repair: ReservationId,
    state: Arc<Mutex<State>>,
    outcome: Option<Result<Receipt, String>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        state.running.remove(&self.repair);
        if let Some(outcome) = self.outcome.take() {
            state.ended.push(CopyResult {
                repair: self.repair,
                outcome,
            });
        }
    }
}

/// Sends this vendor's copy of the task's portion to its target; the
/// target's receipt.
async fn send_copy(vendor: &Arc<Vendor>, task: CopyTask) -> Result<Receipt, String> {
    let wait = vendor.limits().claim_wait();
    let _claim = vendor
        .claim(&task.tenant, &task.portion, ClaimKind::Other, wait)
        .await
        .map_err(|e| e.to_string())?;
    let record = vendor
        .fat
        .get(&task.tenant, &task.portion)
        .map_err(|e| e.to_string())?
        .filter(|r| r.hash == task.hash && r.size == task.size)
        .ok_or_else(|| {
            format!(
                "vendor {} does not hold portion {} of tenant {} with the asked hash and size",
                vendor.id, task.portion, task.tenant
            )
        })?;
    let piece_size = Some(record.piece_size)
        .filter(|s| (MIN_PIECE_BYTES..=MAX_PIECE_BYTES).contains(s))
        .unwrap_or(DEFAULT_PIECE_BYTES);
    let header = RoutingHeader {
        tenant: task.tenant,
        portion: task.portion,
        hash: task.hash,
        size: task.size,
        route: vec![task.target.clone()],
        piece_size,
        grants: vec![task.grant],
        reservation: task.repair,
    };
    let limits = vendor.limits();
    let mut forwarder = Forwarder::start(header, limits.next_vendor(0), vendor.credentials.clone());
    let (sink, mut chunks) = chunk_channel(4, limits.fetch_idle);
    let reader = {
        let (vendor, record) = (Arc::clone(vendor), record.clone());
        tokio::spawn(async move { stream_range(&vendor, &record, 0, record.size, &sink).await })
    };
    while let Some(chunk) = chunks.next().await {
        let Ok(chunk) = chunk else { break };
        forwarder.send(chunk).await;
    }
    // The reader may still be sending: let it see the channel closed.
    drop(chunks);
    let read = reader
        .await
        .map_err(|e| format!("the reading task failed: {e}"))?;
    if let Err(err) = read {
        // The target gets fewer bytes than announced and keeps nothing.
        drop(forwarder.finish().await);
        return Err(format!("reading the local copy failed: {err}"));
    }
    let downstream = forwarder.finish().await;
    let target = task.target.id;
    if let Some(receipt) = downstream.receipts.into_iter().find(|r| r.vendor == target) {
        return Ok(receipt);
    }
    let why: Vec<String> = downstream.failures.into_iter().map(|f| f.error).collect();
    Err(format!(
        "target {target} returned no receipt: {}",
        if why.is_empty() {
            "no reason given".to_string()
        } else {
            why.join("; ")
        }
    ))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use offsite_proto::signing::{GrantBody, GrantOp, GrantSubject, GroupKey};
    use offsite_proto::{Hash, PortionId, TenantId, VendorId, VendorRef};

    use super::*;

    fn task(portion: PortionId, hash: Hash, size: u64) -> CopyTask {
        let group = GroupKey::from_secret(1, &[2; 32]);
        let tenant = TenantId::new("t").unwrap();
        let target = VendorId::new("v2").unwrap();
        CopyTask {
            repair: ReservationId::random(),
            tenant: tenant.clone(),
            portion,
            hash,
            size,
            // Nothing listens on port 1.
            target: VendorRef {
                id: target.clone(),
                address: "127.0.0.1:1".into(),
            },
            grant: group.grant(&GrantBody {
                op: GrantOp::Store,
                tenant,
                vendor: target,
                subject: GrantSubject::Reservation(ReservationId::random()),
                max_bytes: size,
                expires_unix_ms: u64::MAX,
                address: String::new(),
            }),
        }
    }

    /// Waits for `n` ended copies, taking them.
    async fn ended(copies: &Copies, n: usize) -> Vec<CopyResult> {
        let mut out = Vec::new();
        for _ in 0..200 {
            out.extend(copies.take_ended(MAX_COPIES_PER_REPORT));
            if out.len() >= n {
                return out;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("only {} of {n} copies ended: {out:?}", out.len());
    }

    #[tokio::test]
    async fn a_copy_not_held_or_not_received_fails_with_why_and_is_reported_once() {
        let (vendor, held, _dirs) =
            super::super::vendor_holding(crate::testing::test_bytes(70_000, 3)).await;

        let copies = Copies::default();
        let not_held = task(PortionId::random(), held.hash, held.size);
        let unreachable = task(held.portion, held.hash, held.size);
        let wrong_hash = task(held.portion, Hash::of(b"other"), held.size);
        copies.start(
            &vendor,
            vec![not_held.clone(), unreachable.clone(), wrong_hash.clone()],
        );
        // Asked again while they run (or ended, not yet reported): not
        // started twice.
        copies.start(&vendor, vec![not_held.clone(), unreachable.clone()]);
        let mut results = ended(&copies, 2).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        results.extend(copies.take_ended(MAX_COPIES_PER_REPORT));
        assert_eq!(results.len(), 2, "a copy ran twice: {results:?}");
        // Two ran at once; the third starts when asked again.
        copies.start(&vendor, vec![wrong_hash.clone()]);
        results.extend(ended(&copies, 1).await);

        let why = |t: &CopyTask| {
            let r = results.iter().find(|r| r.repair == t.repair).unwrap();
            r.outcome.clone().unwrap_err()
        };
        assert!(
            why(&not_held).contains("does not hold portion"),
            "{}",
            why(&not_held)
        );
        assert!(
            why(&wrong_hash).contains("does not hold portion"),
            "{}",
            why(&wrong_hash)
        );
        let refused = why(&unreachable);
        assert!(
            refused.contains("target v2 returned no receipt"),
            "{refused}"
        );
        assert!(refused.contains("127.0.0.1:1"), "{refused}");
        // The local copy is untouched.
        assert!(vendor
            .fat
            .get(&held.tenant, &held.portion)
            .unwrap()
            .is_some());
    }
}
