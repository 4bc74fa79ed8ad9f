//! `VendorRegistry`: vendors register and report their capacity (the report
//! doubles as their heartbeat), and reconcile what they hold with the FAT
//! (garbage collection, see `fat::gc`).

use std::sync::Arc;

use offsite_proto::limits::MAX_COPIES_PER_REPORT;
use offsite_proto::pb::coordinator as pb;
use offsite_proto::pb::coordinator::vendor_registry_server::VendorRegistry;
use offsite_proto::{parse_bad_copies, BadCopy, CopyResult, VendorId};
use tonic::{Request, Response, Status};

use super::{check_same_vendor, convert, departures, grants, market, status_of};
use crate::fat::{
    BadCopyMark, Command, Departure, FinishRepairs, MarkBadCopies, Outcome, Reconciled,
};
use crate::store::FatStore;
use offsite_identity::require_vendor;
use offsite_proto::clock::now_unix_ms;
use offsite_proto::reconcile::{Digests, Holdings};

/// The vendor-facing service.
pub(crate) struct RegistryService<S> {
    store: Arc<S>,
    /// When each vendor last called each round (one, two) of a
    /// reconciliation here: a round reads the whole FAT, so a vendor gets
    /// each at most every [`RECONCILE_EVERY`].
    reconciled: std::sync::Mutex<std::collections::HashMap<(VendorId, bool), std::time::Instant>>,
}

/// The least time between two reconciliation calls of one vendor.
const RECONCILE_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

impl<S> RegistryService<S> {
    pub fn new(store: Arc<S>) -> Self {
        Self {
            store,
            reconciled: Default::default(),
        }
    }

    /// Refuses a vendor that reconciles more often than [`RECONCILE_EVERY`].
    fn pace_reconcile(&self, vendor: &VendorId, round_one: bool) -> Result<(), Status> {
        let mut last = self
            .reconciled
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = std::time::Instant::now();
        let key = (vendor.clone(), round_one);
        if let Some(at) = last.get(&key) {
            if now.duration_since(*at) < RECONCILE_EVERY {
                return Err(Status::resource_exhausted(format!(
                    "vendor {vendor} reconciles more often than every {} ms; reconcile less \
                     often (reconcile_interval_secs)",
                    RECONCILE_EVERY.as_millis()
                )));
            }
        }
        last.insert(key, now);
        Ok(())
    }
}

/// The copy results of a report: too many refuse the report; a malformed
/// one is dropped (its repair runs out and is planned again), so one bad
/// entry cannot stop a vendor's heartbeat.
fn copy_results(wire: Vec<pb::CopyResult>) -> Result<Vec<CopyResult>, Status> {
    if wire.len() > MAX_COPIES_PER_REPORT {
        return Err(Status::invalid_argument(format!(
            "copied: {} copy results, more than {MAX_COPIES_PER_REPORT}; report at most that many",
            wire.len()
        )));
    }
    Ok(wire
        .into_iter()
        .filter_map(|r| {
            CopyResult::try_from(r)
                .inspect_err(|err| tracing::warn!(%err, "dropping a malformed copy result"))
                .ok()
        })
        .collect())
}

impl<S: FatStore> RegistryService<S> {
    /// Records how the copies `source` was asked for ended.
    async fn finish_repairs(
        &self,
        source: &VendorId,
        results: Vec<CopyResult>,
    ) -> Result<(), Status> {
        // Linearizable: a replica behind the leader may not know the
        // repair yet, and would let a receipt that does not name it through.
        let results =
            market::read(&*self.store, move |fat| fat.fresh_copy_results(results)).await?;
        let command = Command::FinishRepairs(FinishRepairs {
            source: source.clone(),
            results,
        });
        match self.store.propose(command).await.map_err(status_of)? {
            Outcome::RepairsFinished { placed, failed } => {
                if placed > 0 {
                    tracing::info!(vendor = %source, placed, "copies placed; they replace copies on leaving vendors");
                }
                for (repair, why) in failed {
                    tracing::warn!(vendor = %source, %repair, %why, "a copy failed; the repair is planned again");
                }
                Ok(())
            }
            other => Err(Status::internal(format!(
                "the FAT answered a copy report with {other:?}; this is a coordinator bug, \
                 please report it"
            ))),
        }
    }

    /// Marks the copies `vendor`'s scrub found bad; each is made again
    /// from a healthy holder by the leader's next sweep.
    async fn mark_bad_copies(&self, vendor: &VendorId, bad: Vec<BadCopy>) -> Result<(), Status> {
        let marks = bad
            .into_iter()
            .map(|b| BadCopyMark::SelfReported {
                vendor: vendor.clone(),
                tenant: b.tenant,
                portion: b.portion,
                reason: b.reason,
            })
            .collect();
        let command = Command::MarkBadCopies(MarkBadCopies {
            marks,
            now_unix_ms: now_unix_ms(),
        });
        match self.store.propose(command).await.map_err(status_of)? {
            Outcome::BadCopiesMarked { marked } => {
                if marked > 0 {
                    tracing::warn!(%vendor, marked, "vendor reported bad copies; they will be made again from healthy holders");
                }
                Ok(())
            }
            other => Err(Status::internal(format!(
                "the FAT answered a bad-copy report with {other:?}; this is a coordinator \
                 bug, please report it"
            ))),
        }
    }

    /// The copies `source` should send now, each with its target's store
    /// grant (none while the group has no grant key).
    async fn copy_tasks(&self, source: &VendorId) -> Vec<pb::CopyTask> {
        let orders = self
            .store
            .read_local(|fat| fat.copies_for(source, MAX_COPIES_PER_REPORT));
        if orders.is_empty() {
            return Vec::new();
        }
        match grants::signing_key(&*self.store).await {
            Ok(key) => orders
                .into_iter()
                .map(|order| grants::copy_task(&key, order).into())
                .collect(),
            Err(status) => {
                tracing::warn!(message = status.message(), "cannot sign copy grants yet");
                Vec::new()
            }
        }
    }
}

#[tonic::async_trait]
impl<S: FatStore> VendorRegistry for RegistryService<S> {
    async fn register(
        &self,
        request: Request<pb::RegisterVendorRequest>,
    ) -> Result<Response<pb::RegisterVendorResponse>, Status> {
        let caller = require_vendor(&request)?;
        let mut wire = request.into_inner();
        let prices = wire
            .prices
            .take()
            .as_ref()
            .map(market::prices)
            .transpose()?;
        let command = convert::register_command(wire, now_unix_ms())?;
        check_same_vendor(&caller, &command.vendor.id)?;
        let (vendor, address) = (command.vendor.id.clone(), command.vendor.address.clone());
        let key = command.identity_key.clone();
        let lookup = vendor.clone();
        let previous = self
            .store
            .read_local(move |fat| fat.vendor_identity_key(&lookup));
        self.store
            .propose(Command::RegisterVendor(command))
            .await
            .map_err(status_of)?;
        match previous {
            // Only the certificate-authenticated vendor itself gets here.
            Some(old) if old != key => tracing::warn!(
                %vendor, old_key = %hex::encode(&old), new_key = %hex::encode(&key),
                "vendor registered a new identity key; its receipts are checked against the new key from now on"
            ),
            _ => {}
        }
        tracing::info!(%vendor, %address, "vendor registered");
        if let Some(prices) = prices {
            market::set_prices(&*self.store, &vendor, prices, now_unix_ms()).await?;
        }
        // Without a key yet the vendor learns it from a later report answer.
        if let Err(e) = grants::ensure_key(&*self.store).await {
            tracing::warn!(error = %e, "could not install the first grant key yet");
        }
        Ok(Response::new(pb::RegisterVendorResponse {
            grant_keys: grants::public_keys(&*self.store),
        }))
    }

    async fn report_capacity(
        &self,
        request: Request<pb::CapacityReport>,
    ) -> Result<Response<pb::CapacityReportResponse>, Status> {
        let caller = require_vendor(&request)?;
        let mut report = request.into_inner();
        let copied = copy_results(std::mem::take(&mut report.copied))?;
        let (bad, dropped) = parse_bad_copies(std::mem::take(&mut report.bad_copies))?;
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "dropping malformed bad copies of a capacity report"
            );
        }
        let served = std::mem::take(&mut report.served);
        let prices = report
            .prices
            .take()
            .as_ref()
            .map(market::prices)
            .transpose()?;
        let command = convert::report_command(report, now_unix_ms())?;
        check_same_vendor(&caller, &command.vendor)?;
        let (vendor, deleted) = (command.vendor.clone(), command.deleted.len());
        let delete = match self
            .store
            .propose(Command::ReportCapacity(command))
            .await
            .map_err(status_of)?
        {
            Outcome::CapacityReported { delete } => delete,
            other => {
                return Err(Status::internal(format!(
                    "the FAT answered a capacity report with {other:?}; this is a coordinator \
                     bug, please report it"
                )))
            }
        };
        if deleted > 0 {
            tracing::info!(%vendor, deleted, queued = delete.len(), "vendor deleted released portions");
        } else if !delete.is_empty() {
            tracing::debug!(%vendor, queued = delete.len(), "vendor asked to delete released portions");
        }
        if !copied.is_empty() {
            self.finish_repairs(&vendor, copied).await?;
        }
        if !bad.is_empty() {
            self.mark_bad_copies(&vendor, bad).await?;
        }
        if let Some(prices) = prices {
            market::set_prices(&*self.store, &vendor, prices, now_unix_ms()).await?;
        }
        market::book_egress(&*self.store, &vendor, served, now_unix_ms()).await?;
        Ok(Response::new(pb::CapacityReportResponse {
            delete: delete.into_iter().map(Into::into).collect(),
            copy: self.copy_tasks(&vendor).await,
            grant_keys: grants::public_keys(&*self.store),
        }))
    }

    async fn reconcile(
        &self,
        request: Request<pb::ReconcileRequest>,
    ) -> Result<Response<pb::ReconcileResponse>, Status> {
        let caller = require_vendor(&request)?;
        let request = request.into_inner();
        let claimed = VendorId::new(request.vendor_id)?;
        check_same_vendor(&caller, &claimed)?;
        let digests = match request.digests.is_empty() {
            true => None,
            false => Some(Digests::from_wire("digests", &request.digests)?),
        };
        let holdings = Holdings::from_wire(request.buckets, request.partial_buckets, request.held)?;
        self.pace_reconcile(&caller, digests.is_some())?;
        // Linearizable: an answer that a copy is unneeded must not come
        // from a replica that has not seen the commit that needs it.
        let vendor = caller.clone();
        let (differing, reconciled) = market::read(&*self.store, move |fat| {
            let differing = digests
                .map(|theirs| fat.reconcile_digests(&vendor).differing(&theirs))
                .unwrap_or_default();
            let reconciled = match holdings.held.is_empty() && holdings.buckets.is_empty() {
                true => Reconciled::default(),
                false => fat.reconcile(&vendor, &holdings),
            };
            (differing, reconciled)
        })
        .await?;
        if !reconciled.unneeded.is_empty() || !reconciled.missing.is_empty() {
            tracing::info!(
                vendor = %caller, unneeded = reconciled.unneeded.len(),
                missing = reconciled.missing.len(), "reconciled a vendor's holdings"
            );
        }
        Ok(Response::new(pb::ReconcileResponse {
            differing,
            unneeded: reconciled.unneeded.into_iter().map(Into::into).collect(),
            missing: reconciled.missing.into_iter().map(Into::into).collect(),
            missing_cut: reconciled.missing_cut,
        }))
    }

    async fn earnings(
        &self,
        request: Request<pb::EarningsRequest>,
    ) -> Result<Response<pb::EarningsResponse>, Status> {
        let vendor = require_vendor(&request)?;
        let now = now_unix_ms();
        let statements = market::read(&*self.store, move |fat| fat.statements(now)).await?;
        Ok(Response::new(pb::EarningsResponse {
            statements: statements
                .into_iter()
                .map(|s| market::statement(s.only(|l| l.vendor == vendor)))
                .collect(),
        }))
    }

    async fn exit(
        &self,
        request: Request<pb::ExitRequest>,
    ) -> Result<Response<pb::DepartureStatusResponse>, Status> {
        let vendor = require_vendor(&request)?;
        let now_unix_ms = now_unix_ms();
        let departure = match request.into_inner().cancel {
            false => Departure::StartExit {
                vendor: vendor.clone(),
                now_unix_ms,
            },
            true => Departure::CancelExit {
                vendor: vendor.clone(),
                now_unix_ms,
            },
        };
        departures::propose(&*self.store, &vendor, departure)
            .await
            .map(Response::new)
    }

    async fn relieve(
        &self,
        request: Request<pb::RelieveRequest>,
    ) -> Result<Response<pb::DepartureStatusResponse>, Status> {
        let vendor = require_vendor(&request)?;
        let departure = Departure::Relieve {
            vendor: vendor.clone(),
            bytes: request.into_inner().bytes,
            now_unix_ms: now_unix_ms(),
        };
        departures::propose(&*self.store, &vendor, departure)
            .await
            .map(Response::new)
    }

    async fn departure_status(
        &self,
        request: Request<pb::DepartureStatusRequest>,
    ) -> Result<Response<pb::DepartureStatusResponse>, Status> {
        let vendor = require_vendor(&request)?;
        departures::answer(&*self.store, &vendor)
            .await
            .map(Response::new)
    }
}
