//! Keeping R copies of each portion: receipts are checked against the portion
//! and the route, vendors that did not store are refunded and set aside, and
//! each missing copy is sent to another candidate not yet holding the portion.

use std::collections::HashSet;

use offsite_proto::{PortionId, PortionPlacement, VendorId};

use super::{Sent, UploadError, Uploader, EXTRA_SENDS};

impl Uploader {
    /// Takes in one send's outcome: keeps good receipts, refunds the rest.
    pub(super) fn absorb(&mut self, sent: Sent) {
        let Some(pending) = self.pending.get_mut(&sent.portion) else {
            return;
        };
        pending.in_flight -= 1;
        let size = pending.portion.bytes.len() as u64;
        let on_route: HashSet<&VendorId> = sent.route.iter().map(|v| &v.id).collect();
        let mut stored: HashSet<VendorId> = HashSet::new();
        let mut failed: HashSet<VendorId> = HashSet::new();
        match sent.result {
            Ok(outcome) => {
                for receipt in outcome.receipts {
                    let valid = receipt.tenant == self.settings.tenant
                        && receipt.portion == sent.portion
                        && receipt.hash == pending.portion.hash
                        && receipt.size == size
                        && on_route.contains(&receipt.vendor)
                        && !pending.receipts.iter().any(|r| r.vendor == receipt.vendor);
                    if valid {
                        stored.insert(receipt.vendor.clone());
                        pending.receipts.push(receipt);
                    } else {
                        tracing::warn!(vendor = %receipt.vendor, portion = %sent.portion, "receipt does not match the portion sent; ignored");
                    }
                }
                for (vendor, error) in outcome.failures {
                    tracing::warn!(%vendor, portion = %sent.portion, %error, "vendor on the route did not store the portion");
                    pending.last_error = format!("vendor {vendor}: {error}");
                }
                // Along a route, the first vendor that did not store is the one
                // that failed; the vendors after it were never reached and stay
                // candidates for a resend.
                let mut unstored = sent.route.iter().filter(|v| !stored.contains(&v.id));
                if let Some(first) = unstored.next() {
                    failed.insert(first.id.clone());
                }
                for unreached in unstored {
                    pending.tried.remove(&unreached.id);
                }
            }
            Err(e) => {
                tracing::warn!(portion = %sent.portion, error = %e, "store failed");
                pending.last_error = e.to_string();
                // Only the receiver is known to have failed; the rest were not reached.
                if let Some(first) = sent.route.first() {
                    failed.insert(first.id.clone());
                }
                for later in sent.route.iter().skip(1) {
                    pending.tried.remove(&later.id);
                }
            }
        }
        self.stats.bytes_uploaded += size * stored.len() as u64;
        if let Some(round) = self.round.as_mut() {
            for vendor in sent.route.iter().filter(|v| !stored.contains(&v.id)) {
                round.ledger.refund(&vendor.id, size);
            }
            for vendor in &failed {
                round.ledger.mark_bad(vendor);
            }
        }
        self.bad.extend(failed);
    }

    /// Sends the copies a portion still lacks, or records it as placed.
    pub(super) fn top_up(&mut self, id: PortionId) -> Result<(), UploadError> {
        let replication = self.settings.replication;
        let Some(pending) = self.pending.get(&id) else {
            return Ok(());
        };
        let held = pending.receipts.len();
        if held >= replication && pending.in_flight == 0 {
            if let Some(done) = self.pending.remove(&id) {
                self.placed_blobs.push(crate::local::resume::Committed {
                    portion: *id.as_bytes(),
                    blobs: done.portion.blobs,
                });
                self.placed.push(PortionPlacement {
                    portion: id,
                    hash: done.portion.hash,
                    size: done.portion.bytes.len() as u64,
                    receipts: done.receipts,
                });
            }
            return Ok(());
        }
        let missing = replication.saturating_sub(held + pending.in_flight);
        for _ in 0..missing {
            let Some(pending) = self.pending.get(&id) else {
                return Ok(());
            };
            if pending.sends >= replication + EXTRA_SENDS {
                return Err(self.missing(id));
            }
            let size = pending.portion.bytes.len() as u64;
            let exclude = pending.tried.clone();
            let route = self
                .round
                .as_mut()
                .and_then(|round| round.ledger.route(size, 1, &exclude));
            match route {
                Some(route) => self.send(id, route),
                None if pending.in_flight == 0 => return Err(self.missing(id)),
                None => break,
            }
        }
        Ok(())
    }

    pub(super) fn missing(&self, id: PortionId) -> UploadError {
        let (held, sends, last) = self.pending.get(&id).map_or((0, 0, String::new()), |p| {
            (p.receipts.len(), p.sends, p.last_error.clone())
        });
        UploadError::CopiesMissing {
            portion: id,
            held,
            replication: self.settings.replication,
            sends,
            last: if last.is_empty() {
                "no other candidate has room".into()
            } else {
                last
            },
        }
    }
}
