//! `Vendor.Fetch` and `Vendor.Delete`: reads reassemble a portion (or a byte
//! range of it) from its pieces, each checked against the hash the local FAT
//! recorded; a damaged or missing piece ends the stream with DataLoss so the
//! client falls back to another replica. Only the tenant that stored a portion
//! can read or delete it; to anyone else it does not exist.

use std::sync::Arc;

use bytes::Bytes;

use offsite_proto::limits::FRAME_BYTES;
use offsite_proto::pb::common::DataFrame;
use offsite_proto::pb::vendor::{DeleteRequest, FetchRequest};
use offsite_proto::signing::{Expected, GrantOp, GrantSubject, SignatureError};
use offsite_proto::{Grant, PortionId, TenantId, VendorId};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::error::VendorError;
use super::Shared;
use crate::local_fat::{PieceRecord, PortionRecord};
use crate::store::StoreError;

/// Frames read ahead of the caller.
const FETCH_WINDOW: usize = 4;

type FrameSender = mpsc::Sender<Result<DataFrame, Status>>;

/// Starts streaming the requested range of a portion.
pub(crate) fn fetch(
    shared: Arc<Shared>,
    request: FetchRequest,
) -> Result<ReceiverStream<Result<DataFrame, Status>>, VendorError> {
    let tenant = TenantId::new(request.tenant_id)?;
    let portion = PortionId::parse(&request.portion_id)?;
    let grant = request.grant.map(Grant::try_from).transpose()?;
    let body = shared.grants.check(
        grant.as_ref(),
        &portion_grant(GrantOp::Fetch, &tenant, &shared.vendor, portion),
    )?;
    let record = shared
        .fat
        .get(&tenant, &portion)?
        .ok_or(VendorError::NotHeld { tenant, portion })?;
    let (start, end) = range(&record, request.offset, request.length)?;
    if end - start > body.max_bytes {
        return Err(VendorError::Grant {
            vendor: shared.vendor.clone(),
            source: SignatureError::Mismatch(format!(
                "{} bytes asked, the grant allows {}",
                end - start,
                body.max_bytes
            )),
        });
    }
    let (sender, receiver) = mpsc::channel(FETCH_WINDOW);
    tokio::spawn(async move {
        if let Err(err) = stream_range(&shared, &record, start, end, &sender).await {
            tracing::warn!(portion = %record.portion, %err, "fetch failed");
            // The caller may have gone; nothing more to do then.
            let _ = sender.send(Err(err.into())).await;
        }
    });
    Ok(ReceiverStream::new(receiver))
}

/// What a fetch or delete grant must name: this tenant, this vendor, this
/// portion (its byte limit is checked against the range asked).
fn portion_grant<'a>(
    op: GrantOp,
    tenant: &'a TenantId,
    vendor: &'a VendorId,
    portion: PortionId,
) -> Expected<'a> {
    Expected {
        op,
        tenant,
        vendor,
        subject: GrantSubject::Portion(portion),
        bytes: 0,
    }
}

/// `[start, end)` of the portion; a length of 0 means to the end.
fn range(record: &PortionRecord, offset: u64, length: u64) -> Result<(u64, u64), VendorError> {
    let end = match length {
        0 => Some(record.size),
        n => offset.checked_add(n),
    };
    match end {
        Some(end) if offset <= record.size && end <= record.size => Ok((offset, end)),
        _ => Err(VendorError::OutOfRange {
            portion: record.portion,
            offset,
            length,
            size: record.size,
        }),
    }
}

pub(super) async fn stream_range(
    shared: &Shared,
    record: &PortionRecord,
    start: u64,
    end: u64,
    sender: &FrameSender,
) -> Result<(), VendorError> {
    let lost = |detail: String| VendorError::PieceLost {
        portion: record.portion,
        source: StoreError::Failed {
            store: "local FAT".into(),
            detail,
        },
    };
    let mut piece_start = 0u64;
    let mut sent = 0u64;
    for piece in &record.pieces {
        let piece_end = piece_start.saturating_add(piece.size);
        if piece_end > start && piece_start < end {
            let data = read_piece(shared, record, piece).await?;
            let from = start.saturating_sub(piece_start) as usize;
            let to = (end.min(piece_end) - piece_start) as usize;
            for at in (from..to).step_by(FRAME_BYTES) {
                let frame = DataFrame {
                    data: data.slice(at..(at + FRAME_BYTES).min(to)),
                };
                if sender.send(Ok(frame)).await.is_err() {
                    return Ok(()); // the caller hung up
                }
            }
            sent += (to - from) as u64;
        }
        piece_start = piece_end;
        if piece_start >= end {
            break;
        }
    }
    // A stream that ends without an error must have carried the whole range.
    if sent != end - start {
        return Err(lost(format!(
            "its pieces hold {sent} of the {} bytes asked for",
            end - start
        )));
    }
    Ok(())
}

/// One piece from its store, checked against the local FAT's hash and size.
async fn read_piece(
    shared: &Shared,
    record: &PortionRecord,
    piece: &PieceRecord,
) -> Result<Bytes, VendorError> {
    let lost = |source| VendorError::PieceLost {
        portion: record.portion,
        source,
    };
    let store = shared.stores.get(piece.store as usize).ok_or_else(|| {
        lost(StoreError::Failed {
            store: format!("#{}", piece.store),
            detail: "the local FAT names a store no longer configured".into(),
        })
    })?;
    let data = store.get(&piece.id, &piece.hash).await.map_err(lost)?;
    if data.len() as u64 != piece.size {
        return Err(lost(StoreError::Corrupt {
            store: store.name().to_owned(),
            piece: piece.id.clone(),
            detail: format!(
                "it holds {} bytes, the local FAT says {}",
                data.len(),
                piece.size
            ),
        }));
    }
    Ok(data)
}

/// Removes a portion's pieces and then its local FAT entry, under a delete
/// grant; `false` when this vendor does not hold the portion for this tenant.
pub(crate) async fn delete(
    shared: Arc<Shared>,
    request: DeleteRequest,
) -> Result<bool, VendorError> {
    let tenant = TenantId::new(request.tenant_id)?;
    let portion = PortionId::parse(&request.portion_id)?;
    let grant = request.grant.map(Grant::try_from).transpose()?;
    shared.grants.check(
        grant.as_ref(),
        &portion_grant(GrantOp::Delete, &tenant, &shared.vendor, portion),
    )?;
    delete_portion(&shared, &tenant, &portion).await
}

/// Removes a portion's pieces and then its local FAT entry (the deletion
/// path shared by `Vendor.Delete` and the coordinator's deletion queue);
/// `false` when this vendor does not hold the portion for this tenant, so a
/// repeated deletion is a success. A piece already gone counts as deleted.
pub(crate) async fn delete_portion(
    shared: &Arc<Shared>,
    tenant: &TenantId,
    portion: &PortionId,
) -> Result<bool, VendorError> {
    let (tenant, portion) = (tenant.clone(), *portion);
    let _claim = shared.claim(&tenant, &portion)?;
    let Some(record) = shared.fat.get(&tenant, &portion)? else {
        return Ok(false);
    };
    let mut problems = Vec::new();
    for piece in &record.pieces {
        let Some(store) = shared.stores.get(piece.store as usize) else {
            problems.push(format!("store #{} is no longer configured", piece.store));
            continue;
        };
        match store.delete(&piece.id).await {
            Ok(_) | Err(StoreError::NotFound { .. }) => {}
            Err(err) => problems.push(err.to_string()),
        }
    }
    if !problems.is_empty() {
        return Err(VendorError::DeleteIncomplete {
            portion,
            detail: problems.join("; "),
        });
    }
    shared.fat.remove(&tenant, &portion).await?;
    tracing::info!(%tenant, %portion, "portion deleted");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use offsite_proto::Hash;

    fn record(size: u64) -> PortionRecord {
        PortionRecord {
            tenant: TenantId::new("t").unwrap(),
            portion: PortionId::random(),
            hash: Hash::of(b""),
            size,
            piece_size: 10,
            pieces: vec![],
        }
    }

    #[test]
    fn ranges_stay_inside_the_portion() {
        let r = record(100);
        assert_eq!(range(&r, 0, 0).unwrap(), (0, 100));
        assert_eq!(range(&r, 10, 0).unwrap(), (10, 100));
        assert_eq!(range(&r, 10, 20).unwrap(), (10, 30));
        assert_eq!(range(&r, 100, 0).unwrap(), (100, 100));
        assert!(range(&r, 101, 0).is_err());
        assert!(range(&r, 90, 11).is_err());
        assert!(range(&r, u64::MAX, 2).is_err());
    }

    /// A local FAT entry whose pieces hold less than the portion (a damaged
    /// record) must end the fetch with DataLoss, never a short OK stream.
    #[tokio::test]
    async fn pieces_shorter_than_the_portion_are_data_loss_not_a_short_read() {
        use crate::store::{random_piece_id, LocalStore, PieceStore};
        use futures::StreamExt;
        let (store_dir, fat_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store = LocalStore::open(store_dir.path(), None, 0.0).unwrap();
        let data = crate::testing::test_bytes(100_000, 5);
        let piece = PieceRecord {
            id: random_piece_id(),
            store: 0,
            size: data.len() as u64,
            hash: Hash::of(&data),
        };
        store.put(&piece.id, data, &piece.hash).await.unwrap();
        let mut damaged = record(200_000);
        damaged.pieces = vec![piece];
        let fat = crate::local_fat::LocalFat::open(fat_dir.path()).unwrap();
        fat.insert(&damaged).await.unwrap();
        let vendor = offsite_proto::VendorId::new("v1").unwrap();
        let credentials = crate::testing::throwaway_credentials("v1");
        let identity = offsite_proto::signing::VendorKey::from_secret(&[1; 32]);
        let shared = Arc::new(Shared::new(
            vendor,
            vec![Arc::new(store)],
            fat,
            credentials,
            identity,
        ));
        let group = offsite_proto::signing::GroupKey::from_secret(1, &[2; 32]);
        shared
            .grants
            .set_keys(&[(1, group.public_key().to_vec())])
            .unwrap();
        let grant = group.grant(&offsite_proto::signing::GrantBody {
            op: GrantOp::Fetch,
            tenant: damaged.tenant.clone(),
            vendor: shared.vendor.clone(),
            subject: GrantSubject::Portion(damaged.portion),
            max_bytes: damaged.size,
            expires_unix_ms: u64::MAX,
        });
        let request = FetchRequest {
            tenant_id: damaged.tenant.to_string(),
            portion_id: damaged.portion.to_string(),
            offset: 0,
            length: 0,
            grant: Some(grant.into()),
        };
        let frames: Vec<_> = fetch(shared, request).unwrap().collect().await;
        let status = frames.last().unwrap().as_ref().unwrap_err();
        assert_eq!(status.code(), tonic::Code::DataLoss);
        assert!(
            status.message().contains("hold 100000 of the 200000 bytes"),
            "{}",
            status.message()
        );
    }

    /// The deletion the coordinator asks for after a prune: pieces and local
    /// FAT entry go, stored bytes shrink, and deleting again (or deleting a
    /// portion never held) is a success that reports `false`.
    #[tokio::test]
    async fn deleting_a_released_portion_is_idempotent() {
        let (shared, held, _dirs) =
            crate::service::vendor_holding(crate::testing::test_bytes(70_000, 9)).await;
        let (store, piece) = (Arc::clone(&shared.stores[0]), held.pieces[0].clone());
        assert_eq!(shared.fat.stored_bytes(), 70_000);

        assert!(delete_portion(&shared, &held.tenant, &held.portion)
            .await
            .unwrap());
        assert!(shared
            .fat
            .get(&held.tenant, &held.portion)
            .unwrap()
            .is_none());
        assert_eq!(shared.fat.stored_bytes(), 0);
        assert!(
            store.get(&piece.id, &piece.hash).await.is_err(),
            "the piece is gone"
        );
        assert!(!delete_portion(&shared, &held.tenant, &held.portion)
            .await
            .unwrap());
        let other = TenantId::new("someone-else").unwrap();
        assert!(!delete_portion(&shared, &other, &PortionId::random())
            .await
            .unwrap());
    }
}
