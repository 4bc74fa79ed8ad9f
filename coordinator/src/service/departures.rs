//! `VendorRegistry.Exit`, `Relieve` and `DepartureStatus`: a vendor starts
//! or cancels its graceful exit, asks for burst relief, and follows both.
//! The vendor is the caller's certificate, never a field of the request.
//! Once the exit completed, the answer carries the group's signed statement
//! that the vendor holds nothing the FAT still needs.

use offsite_proto::clock::now_unix_ms;
use offsite_proto::exit_statement::ExitStatementBody;
use offsite_proto::pb::common as pbc;
use offsite_proto::pb::coordinator as pb;
use offsite_proto::VendorId;
use tonic::Status;

use super::{grants, status_of, store_status};
use crate::fat::{Command, Departure, DepartureStatus, ExitProgress, ReliefProgress, VendorStatus};
use crate::store::FatStore;

/// Proposes `departure` for the calling vendor and answers with where it
/// stands after.
pub(super) async fn propose<S: FatStore>(
    store: &S,
    vendor: &VendorId,
    departure: Departure,
) -> Result<pb::DepartureStatusResponse, Status> {
    let kind = match &departure {
        Departure::StartExit { .. } => "exit started",
        Departure::CancelExit { .. } => "exit cancelled",
        Departure::Relieve { .. } => "burst relief asked",
        Departure::Settle { .. } => "settled",
    };
    store
        .propose(Command::Departure(departure))
        .await
        .map_err(status_of)?;
    tracing::info!(%vendor, "{kind}");
    answer(store, vendor).await
}

/// The calling vendor's figures, exit and relief (read linearizably), with
/// the signed statement once its exit completed.
pub(super) async fn answer<S: FatStore>(
    store: &S,
    vendor: &VendorId,
) -> Result<pb::DepartureStatusResponse, Status> {
    let id = vendor.clone();
    let (status, portions) = store
        .read(move |fat| (fat.vendor_status(&id), fat.portions_on(&id)))
        .await
        .map_err(store_status)?;
    let status = status.ok_or_else(|| {
        Status::not_found(format!(
            "vendor {vendor} is not registered; start its agent (`offsite-vendor run`) first"
        ))
    })?;
    let statement = match status.departure.exit.as_ref() {
        Some(ExitProgress {
            completed_unix_ms: Some(completed),
            started_unix_ms,
            ..
        }) => {
            let key = grants::signing_key(store).await?;
            Some(
                key.sign_exit(&ExitStatementBody {
                    vendor: vendor.clone(),
                    exit_started_unix_ms: *started_unix_ms,
                    completed_unix_ms: *completed,
                    as_of_unix_ms: now_unix_ms(),
                })
                .into(),
            )
        }
        _ => None,
    };
    Ok(response(
        status,
        portions,
        statement,
        grants::public_keys(store),
    ))
}

fn response(
    v: VendorStatus,
    portions: u64,
    statement: Option<pbc::ExitStatement>,
    grant_keys: Vec<pbc::GroupKey>,
) -> pb::DepartureStatusResponse {
    let DepartureStatus { exit, relief } = v.departure;
    pb::DepartureStatusResponse {
        vendor_id: v.vendor.id.into(),
        liveness: v.liveness.as_str().into(),
        offered_bytes: v.offered_bytes,
        used_bytes: v.used_bytes,
        reserved_bytes: v.reserved_bytes,
        portions,
        exit: exit.map(exit_progress),
        relief: relief.map(relief_progress),
        statement,
        grant_keys,
    }
}

pub(super) fn exit_progress(e: ExitProgress) -> pbc::ExitProgress {
    pbc::ExitProgress {
        started_unix_ms: e.started_unix_ms,
        completed_unix_ms: e.completed_unix_ms.unwrap_or(0),
        portions_at_start: e.portions_at_start,
        bytes_at_start: e.bytes_at_start,
        portions_left: e.portions_left,
        bytes_left: e.bytes_left,
        deletions_left: e.deletions_left,
    }
}

pub(super) fn relief_progress(r: ReliefProgress) -> pbc::ReliefProgress {
    pbc::ReliefProgress {
        asked_bytes: r.asked_bytes,
        goal_bytes: r.goal_bytes,
        started_unix_ms: r.started_unix_ms,
        done_unix_ms: r.done_unix_ms.unwrap_or(0),
        bytes_left: r.bytes_left,
    }
}
