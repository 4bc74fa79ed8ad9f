//! Hostile input to the client's decoders: arbitrary and mutated bytes for
//! the tree, manifest, blob and portion envelopes, as a vendor (or a disk)
//! could hand them back. Nothing may panic; a decoded tree must still be safe
//! to restore; and a flipped byte anywhere in a portion is detected and never
//! turns into wrong file data. Proptest bounds the cases, so CI runs this as a
//! fixed-budget fuzz run.

use offsite_proto::{Hash, PortionId, PortionLocation, SnapshotId};
use proptest::prelude::*;

use crate::format::blob::{open, seal, BlobId, BlobKind};
use crate::format::keys::Keys;
use crate::format::manifest::Manifest;
use crate::format::portion::{blob_at, check_header, PortionBuilder};
use crate::format::tree::{sample_tree, Tree};
use crate::market::fetch::verify_portion;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 1_000,
        ..ProptestConfig::default()
    }
}

fn keys() -> Keys {
    Keys::from_data_key(&[9u8; 32])
}

/// A decoded tree can be restored without leaving the target.
fn assert_safe(tree: &Tree) -> Result<(), TestCaseError> {
    for entry in tree.entries() {
        let name = &entry.name;
        prop_assert!(!name.is_empty());
        prop_assert!(name != b"." && name != b"..");
        prop_assert!(!name.contains(&b'/') && !name.contains(&0));
    }
    Ok(())
}

fn mutate(mut bytes: Vec<u8>, flips: &[(prop::sample::Index, u8)]) -> Vec<u8> {
    if bytes.is_empty() {
        return bytes;
    }
    for (at, mask) in flips {
        let i = at.index(bytes.len());
        bytes[i] ^= mask;
    }
    bytes
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        offset in any::<u64>(),
        length in any::<u64>(),
    ) {
        if let Ok(tree) = Tree::decode(&bytes) {
            assert_safe(&tree)?;
        }
        let _ = Manifest::decode(&bytes, SnapshotId::random());
        let keys = keys();
        let id = BlobId([3; 32]);
        for kind in [BlobKind::Data, BlobKind::Tree, BlobKind::Manifest] {
            prop_assert!(open(&keys, kind, &id, &bytes).is_err(), "forged blob opened");
        }
        let portion = PortionId::random();
        let _ = check_header(portion, &bytes);
        if let Ok(slice) = blob_at(portion, &bytes, offset, length) {
            prop_assert_eq!(slice.len() as u64, length);
        }
    }

    #[test]
    fn mutated_trees_are_refused_or_safe(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..6),
    ) {
        let bytes = mutate(sample_tree().encode(), &flips);
        if let Ok(tree) = Tree::decode(&bytes) {
            assert_safe(&tree)?;
        }
    }

    #[test]
    fn mutated_manifests_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..6),
    ) {
        let snapshot = SnapshotId::random();
        let manifest = Manifest {
            snapshot,
            root: BlobId([4; 32]),
            time_unix_ms: 1,
            index: [(
                BlobId([5; 32]),
                offsite_proto::BlobLocation {
                    portion: PortionId::random(),
                    offset: 8,
                    length: 100,
                },
            )]
            .into_iter()
            .collect(),
        };
        let bytes = mutate(manifest.encode(), &flips);
        if let Ok(decoded) = Manifest::decode(&bytes, snapshot) {
            for location in decoded.index.values() {
                prop_assert!(location.length > 0);
                prop_assert!(location.offset.checked_add(location.length).is_some());
            }
        }
    }

    /// A portion of three blobs with one byte flipped: the hash check of the
    /// fetch refuses it, and even read past that check every blob either opens
    /// to exactly its plaintext or is refused.
    #[test]
    fn a_flipped_portion_byte_is_detected_and_never_yields_wrong_data(
        sizes in proptest::collection::vec(1usize..3000, 1..4),
        at in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let keys = keys();
        let mut builder = PortionBuilder::new(16 * 1024 * 1024);
        let mut blobs = Vec::new();
        for (i, size) in sizes.iter().enumerate() {
            let plain: Vec<u8> = (0..*size).map(|j| (i * 31 + j * 7) as u8).collect();
            let id = BlobId::of(&keys, &plain);
            let sealed = seal(&keys, BlobKind::Data, &id, &plain).expect("seal");
            let (offset, length) = builder.add(id, &sealed);
            blobs.push((id, plain, offset, length));
        }
        let portion = builder.finish();
        let location = PortionLocation {
            portion: portion.id,
            hash: portion.hash,
            size: portion.bytes.len() as u64,
            vendors: vec![],
            fetch_grants: vec![],
        };
        prop_assert!(verify_portion(&location, &portion.bytes).is_ok());

        let mut bytes = portion.bytes.to_vec();
        let i = at.index(bytes.len());
        bytes[i] ^= mask;
        prop_assert!(verify_portion(&location, &bytes).is_err());
        prop_assert_ne!(Hash::of(&bytes), portion.hash);
        if check_header(portion.id, &bytes).is_err() {
            return Ok(());
        }
        for (id, plain, offset, length) in &blobs {
            if let Ok(sealed) = blob_at(portion.id, &bytes, *offset, *length) {
                if let Ok(opened) = open(&keys, BlobKind::Data, id, sealed) {
                    prop_assert_eq!(&opened, plain, "a flipped byte produced wrong data");
                    let inside = (*offset as usize..(*offset + *length) as usize).contains(&i);
                    prop_assert!(!inside, "a flip inside a blob went unnoticed");
                }
            }
        }
    }
}
