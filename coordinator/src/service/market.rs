//! The market at the edge: vendors' prices and served fetches in, ledger
//! statements out.

use offsite_proto::limits::{MAX_SERVED_GRANT_BYTES, MAX_SERVED_PER_REPORT};
use offsite_proto::pb::common as pbc;
use offsite_proto::pb::coordinator as pb;
use offsite_proto::signing::{GrantOp, GrantSubject, GrantVerifier};
use offsite_proto::VendorId;
use tonic::Status;

use super::{status_of, store_status};
use crate::fat::{
    BookEgress, Command, Fat, Line, Outcome, Prices, ServedFetch, SetVendorPrices, Statement,
};
use crate::store::FatStore;

/// A vendor's prices from the wire, checked.
pub(super) fn prices(wire: &pb::Prices) -> Result<Prices, Status> {
    let prices = Prices {
        storage_micros_per_tib_month: wire.storage_micros_per_tib_month,
        egress_micros_per_tib: wire.egress_micros_per_tib,
    };
    prices
        .check()
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(prices)
}

/// Records `vendor`'s prices when they differ from what the FAT holds.
pub(super) async fn set_prices<S: FatStore>(
    store: &S,
    vendor: &VendorId,
    prices: Prices,
    now_unix_ms: u64,
) -> Result<(), Status> {
    let lookup = vendor.clone();
    if store.read_local(move |fat| fat.vendor_prices(&lookup)) == Some(prices) {
        return Ok(());
    }
    let command = Command::SetVendorPrices(SetVendorPrices {
        vendor: vendor.clone(),
        prices,
        now_unix_ms,
    });
    store.propose(command).await.map_err(status_of)?;
    tracing::info!(%vendor, storage = prices.storage_micros_per_tib_month, egress = prices.egress_micros_per_tib, "vendor prices set for new placements");
    Ok(())
}

/// The served fetches of a report whose grants the group signed for this
/// vendor's fetches; any other entry is dropped with a warning, so one bad
/// entry cannot stop a vendor's heartbeat.
fn served_fetches(fat: &Fat, vendor: &VendorId, wire: Vec<pb::ServedFetch>) -> Vec<ServedFetch> {
    let keys: Vec<(u32, Vec<u8>)> = fat
        .grant_public_keys()
        .into_iter()
        .map(|k| (k.key_id, k.public_key.to_vec()))
        .collect();
    let Ok(verifier) = GrantVerifier::new(&keys) else {
        return Vec::new();
    };
    wire.into_iter()
        .filter_map(|s| {
            let grant = s.grant.unwrap_or_default();
            if grant.body.len() + grant.signature.len() > MAX_SERVED_GRANT_BYTES {
                tracing::warn!(%vendor, "dropping a served fetch whose grant is too large");
                return None;
            }
            let grant = offsite_proto::Grant::try_from(grant)
                .inspect_err(|err| tracing::warn!(%vendor, %err, "dropping a malformed served fetch"))
                .ok()?;
            // Expiry is the ledger's to judge (it allows a report window).
            let body = match verifier.open(&grant, 0) {
                Ok(body) => body,
                Err(err) => {
                    tracing::warn!(%vendor, %err, "dropping a served fetch whose grant does not verify");
                    return None;
                }
            };
            let portion = match (body.op, &body.subject) {
                (GrantOp::Fetch, GrantSubject::Portion(p)) if &body.vendor == vendor => *p,
                _ => {
                    tracing::warn!(%vendor, "dropping a served fetch whose grant is not a fetch of this vendor's");
                    return None;
                }
            };
            let digest = blake3::hash(&[grant.body.as_slice(), &grant.signature].concat());
            Some(ServedFetch {
                digest: *digest.as_bytes(),
                tenant: body.tenant,
                portion,
                max_bytes: body.max_bytes,
                expires_unix_ms: body.expires_unix_ms,
                bytes: s.bytes,
            })
        })
        .collect()
}

/// Books the fetches a vendor reports having served.
pub(super) async fn book_egress<S: FatStore>(
    store: &S,
    vendor: &VendorId,
    wire: Vec<pb::ServedFetch>,
    now_unix_ms: u64,
) -> Result<(), Status> {
    if wire.is_empty() {
        return Ok(());
    }
    if wire.len() > MAX_SERVED_PER_REPORT {
        return Err(Status::invalid_argument(format!(
            "served: {} served fetches, more than {MAX_SERVED_PER_REPORT}; report the rest in \
             the next report",
            wire.len()
        )));
    }
    let lookup = vendor.clone();
    let served = store.read_local(move |fat| served_fetches(fat, &lookup, wire));
    if served.is_empty() {
        return Ok(());
    }
    let command = Command::BookEgress(BookEgress {
        vendor: vendor.clone(),
        served,
        now_unix_ms,
    });
    match store.propose(command).await.map_err(status_of)? {
        Outcome::EgressBooked { grants, bytes } => {
            tracing::debug!(%vendor, grants, bytes, "egress booked");
            Ok(())
        }
        other => Err(Status::internal(format!(
            "the FAT answered an egress report with {other:?}; this is a coordinator bug, \
             please report it"
        ))),
    }
}

fn line(l: Line) -> pbc::LedgerLine {
    pbc::LedgerLine {
        tenant_id: l.tenant.into(),
        vendor_id: l.vendor.into(),
        kind: l.kind.as_str().into(),
        price_micros: l.price_micros,
        quantity: l.quantity.to_string(),
        stored_bytes: l.stored_bytes,
        charge_micros: l.charge_micros,
        fee_micros: l.fee_micros,
        payout_micros: l.payout_micros,
    }
}

pub(super) fn statement(s: Statement) -> pbc::Statement {
    pbc::Statement {
        period: s.period,
        started_unix_ms: s.started_unix_ms,
        closed_unix_ms: s.closed_unix_ms.unwrap_or(0),
        as_of_unix_ms: s.as_of_unix_ms,
        fee_ppm: s.fee_ppm,
        lines: s.lines.into_iter().map(line).collect(),
    }
}

/// A linearizable read of the FAT for a figure the caller acts on.
pub(super) async fn read<S: FatStore, T: Send + 'static>(
    store: &S,
    f: impl FnOnce(&Fat) -> T + Send + 'static,
) -> Result<T, Status> {
    store.read(f).await.map_err(store_status)
}
