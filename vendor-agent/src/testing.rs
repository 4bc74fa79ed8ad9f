//! The shared test suite every [`PieceStore`] implementation must pass: round
//! trip, wrong hash refused, missing piece, delete, capacity accounting. This
//! crate runs it against a [`crate::LocalStore`]; the end-to-end tests run it
//! against a real `offsite-nas` through [`crate::NasStore`].

use bytes::Bytes;
use offsite_proto::{Hash, PieceId};

use crate::store::{random_piece_id, PieceStore, StoreError};

/// Deterministic, non-repeating test bytes.
pub fn test_bytes(len: usize, seed: u8) -> Bytes {
    let mut out = Vec::with_capacity(len);
    let mut state = u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// Exercises `store` end to end; panics naming the store and the failed check.
/// The store should be empty or at least not shared with concurrent writers, so
/// the capacity checks hold.
pub async fn piece_store_suite(store: &dyn PieceStore) {
    round_trip(store).await;
    wrong_hash_is_refused(store).await;
    missing_piece(store).await;
    delete_frees_room(store).await;
    lists_what_it_holds(store).await;
}

/// Paging through the store with the last id of each page lists every
/// piece put, in order, once.
async fn lists_what_it_holds(store: &dyn PieceStore) {
    let name = store.name().to_owned();
    let mut put: Vec<PieceId> = Vec::new();
    for seed in 0..5u8 {
        let (id, data) = (random_piece_id(), test_bytes(1000, seed));
        store
            .put(&id, data.clone(), &Hash::of(&data))
            .await
            .unwrap();
        put.push(id);
    }
    let (mut listed, mut after) = (Vec::new(), None::<PieceId>);
    for _ in 0..10 {
        let page = store.list(after.as_ref(), 2).await.unwrap();
        assert!(page.len() <= 2, "{name}: a page longer than asked");
        let Some(last) = page.last().cloned() else {
            break;
        };
        listed.extend(page);
        after = Some(last);
    }
    let mut want = put.clone();
    want.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    let ours: Vec<PieceId> = listed.into_iter().filter(|id| put.contains(id)).collect();
    assert_eq!(
        ours, want,
        "{name}: list must page through every piece in order"
    );
    for id in &put {
        store.delete(id).await.unwrap();
    }
    let left = store.list(None, 10_000).await.unwrap();
    assert!(
        put.iter().all(|id| !left.contains(id)),
        "{name}: deleted pieces are listed"
    );
}

async fn round_trip(store: &dyn PieceStore) {
    let name = store.name().to_owned();
    // Larger than one wire frame, so multi-frame streams are covered.
    let data = test_bytes(2 * 1024 * 1024 + 12_345, 1);
    let hash = Hash::of(&data);
    let id = random_piece_id();
    let validated = store.put(&id, data.clone(), &hash).await;
    assert_eq!(
        validated.unwrap(),
        hash,
        "{name}: put must return the piece's hash"
    );
    let back = store.get(&id, &hash).await.unwrap();
    assert_eq!(back, data, "{name}: get must return the bytes put");
    // A get checked against another hash is refused as corrupt.
    let other = Hash::of(b"not this piece");
    let err = store.get(&id, &other).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { .. }),
        "{name}: got {err}"
    );
    assert!(store.delete(&id).await.unwrap());
}

async fn wrong_hash_is_refused(store: &dyn PieceStore) {
    let name = store.name().to_owned();
    let id = random_piece_id();
    let data = test_bytes(100_000, 2);
    let wrong = Hash::of(b"something else");
    let err = store.put(&id, data, &wrong).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::HashMismatch { .. } | StoreError::Refused { .. }
        ),
        "{name}: a put with the wrong hash must be refused, got {err}"
    );
    let err = store.get(&id, &wrong).await.unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound { .. }),
        "{name}: a refused piece must not be stored, got {err}"
    );
}

async fn missing_piece(store: &dyn PieceStore) {
    let name = store.name().to_owned();
    let id = random_piece_id();
    let err = store.get(&id, &Hash::of(b"x")).await.unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound { .. }),
        "{name}: got {err}"
    );
    assert!(
        !store.delete(&id).await.unwrap(),
        "{name}: delete of a missing piece"
    );
}

async fn delete_frees_room(store: &dyn PieceStore) {
    let name = store.name().to_owned();
    let before = store.capacity().await.unwrap();
    assert!(
        before.used_bytes <= before.offered_bytes,
        "{name}: {before:?}"
    );
    assert_eq!(
        before.free_bytes,
        before.offered_bytes - before.used_bytes,
        "{name}"
    );
    let data = test_bytes(300_000, 3);
    let hash = Hash::of(&data);
    let id = random_piece_id();
    store.put(&id, data.clone(), &hash).await.unwrap();
    let during = store.capacity().await.unwrap();
    assert!(
        during.used_bytes >= before.used_bytes + data.len() as u64,
        "{name}: used must grow by the piece: {before:?} -> {during:?}"
    );
    assert!(
        store.delete(&id).await.unwrap(),
        "{name}: delete of a held piece"
    );
    let err = store.get(&id, &hash).await.unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound { .. }),
        "{name}: got {err}"
    );
    let after = store.capacity().await.unwrap();
    assert_eq!(
        after.used_bytes, before.used_bytes,
        "{name}: delete must free the piece"
    );
}

/// Vendor credentials from a throwaway CA, for tests that make no TLS call.
pub fn throwaway_credentials(vendor: &str) -> offsite_identity::Credentials {
    let ca = offsite_identity::pki::CertificateAuthority::generate().expect("a test CA");
    let who = offsite_identity::PeerIdentity::new(offsite_identity::Role::Vendor, vendor)
        .expect("a valid vendor name");
    ca.credentials(&who).expect("test credentials")
}
