//! Signing grants: the services read the group's signing key from the FAT
//! and sign, outside `apply`, the store grants of a reservation's candidates
//! and the fetch and delete grants of the portions a tenant locates. The
//! first grant key is installed on demand (by the leader's sweep, or by the
//! first call that needs it); every grant key answer travels to vendors in
//! the registration and capacity report answers.

use offsite_proto::pb::common as pbc;
use offsite_proto::signing::{GrantBody, GrantOp, GrantSubject, GroupKey};
use offsite_proto::{CopyTask, Grant, PortionLocation, TenantId};
use tonic::Status;

use offsite_proto::clock::now_unix_ms;

use super::status_of;
use crate::fat::{
    Command, CopyOrder, Fat, FatError, GrantSecret, InstallGrantKey, Outcome, ReservationView,
};
use crate::store::{FatStore, ProposeError};

/// How long a fetch or delete grant is valid. Long enough for a large
/// restore that fetched its locations at the start; a client that runs out
/// asks for the locations again.
pub(crate) const FETCH_GRANT_MS: u64 = 12 * 60 * 60 * 1000;

/// Proposes the group's next grant key, with a fresh random secret.
pub(crate) async fn rotate<S: FatStore>(store: &S) -> Result<Outcome, ProposeError> {
    let key_id = store.read(|fat| fat.next_grant_key_id()).await?;
    let command = Command::InstallGrantKey(InstallGrantKey {
        key_id,
        secret: GrantSecret::random(),
        now_unix_ms: now_unix_ms(),
    });
    let outcome = store.propose(command).await?;
    if let Outcome::GrantKeyInstalled { key_id, retired } = &outcome {
        tracing::info!(
            key_id,
            ?retired,
            "new grant key installed; it signs from now on"
        );
    }
    Ok(outcome)
}

/// Installs the first grant key if the group has none yet. Two coordinators
/// doing it at once install it once (the second gets a conflict).
pub(crate) async fn ensure_key<S: FatStore>(store: &S) -> Result<(), ProposeError> {
    if store.read_local(|fat| fat.signing_grant_key().is_some()) {
        return Ok(());
    }
    // Always key 1: a replica whose view is stale must not rotate past a
    // first key another one already installed.
    let first = Command::InstallGrantKey(InstallGrantKey {
        key_id: 1,
        secret: GrantSecret::random(),
        now_unix_ms: now_unix_ms(),
    });
    match store.propose(first).await {
        Ok(_) | Err(ProposeError::Refused(FatError::Conflict(_))) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The key that signs grants now, installing the first one if need be.
pub(crate) async fn signing_key<S: FatStore>(store: &S) -> Result<GroupKey, Status> {
    if let Some(key) = store.read_local(|fat| fat.signing_grant_key()) {
        return Ok(key);
    }
    ensure_key(store).await.map_err(status_of)?;
    store
        .read(|fat| fat.signing_grant_key())
        .await
        .map_err(super::store_status)?
        .ok_or_else(|| {
            Status::unavailable("the coordinator group has no grant key yet; retry in a moment")
        })
}

/// The group's grant keys, public side, for vendors.
pub(crate) fn public_keys<S: FatStore>(store: &S) -> Vec<pbc::GroupKey> {
    store.read_local(public_keys_of)
}

/// The group's public grant keys in `fat`, for the wire.
pub(crate) fn public_keys_of(fat: &Fat) -> Vec<pbc::GroupKey> {
    fat.grant_public_keys()
        .into_iter()
        .map(|k| pbc::GroupKey {
            key_id: k.key_id,
            public_key: k.public_key.to_vec(),
        })
        .collect()
}

/// Signs a store grant for every candidate of the reservation: its tenant,
/// the candidate at its registered address, the bytes held there, until the
/// lease runs out.
pub(crate) fn sign_store_grants(key: &GroupKey, tenant: &TenantId, view: &mut ReservationView) {
    for c in &mut view.candidates {
        c.store_grant = key.grant(&GrantBody {
            op: GrantOp::Store,
            tenant: tenant.clone(),
            vendor: c.vendor.id.clone(),
            subject: GrantSubject::Reservation(view.id),
            max_bytes: c.reserved_bytes,
            expires_unix_ms: view.lease_expires_unix_ms,
            address: c.vendor.address.clone(),
        });
    }
}

/// The copy task of a repair, with the target's store grant: the repair's
/// tenant, the target, the repair id as reservation, the portion's size,
/// until the repair's lease runs out.
pub(crate) fn copy_task(key: &GroupKey, order: CopyOrder) -> CopyTask {
    let repair = order.repair;
    let grant = key.grant(&GrantBody {
        op: GrantOp::Store,
        tenant: repair.tenant.clone(),
        vendor: repair.target.clone(),
        subject: GrantSubject::Reservation(order.id),
        max_bytes: repair.size,
        expires_unix_ms: repair.expires_unix_ms,
        address: order.target.address.clone(),
    });
    CopyTask {
        repair: order.id,
        tenant: repair.tenant,
        portion: repair.portion,
        hash: repair.hash,
        size: repair.size,
        target: order.target,
        grant,
    }
}

/// Signs `op` grants (fetch or delete) for every vendor of every location,
/// each for the portion's size.
pub(crate) fn sign_portion_grants(
    key: &GroupKey,
    op: GrantOp,
    tenant: &TenantId,
    locations: &mut [PortionLocation],
    now_unix_ms: u64,
) -> Vec<Vec<Grant>> {
    let expires_unix_ms = now_unix_ms.saturating_add(FETCH_GRANT_MS);
    locations
        .iter()
        .map(|l| {
            l.vendors
                .iter()
                .map(|v| {
                    key.grant(&GrantBody {
                        op,
                        tenant: tenant.clone(),
                        vendor: v.id.clone(),
                        subject: GrantSubject::Portion(l.portion),
                        max_bytes: l.size,
                        expires_unix_ms,
                        address: String::new(),
                    })
                })
                .collect()
        })
        .collect()
}
