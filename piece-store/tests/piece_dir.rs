//! Behaviour of a piece directory on a real filesystem: round trips,
//! refusals that leave nothing behind, corruption detection, accounting.

use std::fs;
use std::path::{Path, PathBuf};

use offsite_piece_store::{PieceDir, PieceError, PieceStat};
use offsite_proto::{Hash, PieceId};
use proptest::prelude::*;

fn id(s: &str) -> PieceId {
    PieceId::new(s).unwrap()
}

fn piece_file(root: &Path, id: &str) -> PathBuf {
    root.join("pieces").join(&id[..2]).join(id)
}

fn tmp_is_empty(root: &Path) -> bool {
    fs::read_dir(root.join("tmp")).unwrap().next().is_none()
}

#[test]
fn round_trip_stat_and_idempotent_put() {
    let root = tempfile::tempdir().unwrap();
    let dir = PieceDir::open(root.path(), None).unwrap();
    let data = vec![7u8; 100_000];
    let hash = Hash::of(&data);
    assert_eq!(dir.put(&id("ab-1"), &data, &hash).unwrap(), hash);
    assert!(piece_file(root.path(), "ab-1").is_file());
    assert_eq!(dir.get(&id("ab-1")).unwrap(), data);
    assert_eq!(
        dir.stat(&id("ab-1")).unwrap(),
        Some(PieceStat {
            size: 100_000,
            hash
        })
    );
    assert_eq!(dir.put(&id("ab-1"), &data, &hash).unwrap(), hash);
    assert_eq!(dir.capacity().unwrap().used_bytes, 100_000);
    assert!(tmp_is_empty(root.path()));
}

#[test]
fn empty_and_one_character_ids_work() {
    let root = tempfile::tempdir().unwrap();
    let dir = PieceDir::open(root.path(), None).unwrap();
    dir.put(&id("x"), b"", &Hash::of(b"")).unwrap();
    assert_eq!(dir.get(&id("x")).unwrap(), b"");
    assert!(root.path().join("pieces/x/x").is_file());
}

#[test]
fn wrong_hash_is_refused_and_nothing_lands() {
    let root = tempfile::tempdir().unwrap();
    let dir = PieceDir::open(root.path(), None).unwrap();
    let err = dir
        .put(&id("p1"), b"data", &Hash::of(b"other"))
        .unwrap_err();
    assert!(matches!(err, PieceError::HashMismatch { .. }), "{err}");
    assert!(err.to_string().contains("resend"), "{err}");
    assert!(!piece_file(root.path(), "p1").exists());
    assert!(tmp_is_empty(root.path()));
    assert_eq!(dir.capacity().unwrap().used_bytes, 0);
    assert!(dir.stat(&id("p1")).unwrap().is_none());
}

#[test]
fn other_bytes_under_a_stored_id_conflict() {
    let root = tempfile::tempdir().unwrap();
    let dir = PieceDir::open(root.path(), None).unwrap();
    dir.put(&id("p1"), b"first", &Hash::of(b"first")).unwrap();
    let err = dir
        .put(&id("p1"), b"second", &Hash::of(b"second"))
        .unwrap_err();
    assert!(matches!(err, PieceError::Conflict(_)), "{err}");
    assert_eq!(dir.get(&id("p1")).unwrap(), b"first");
    assert_eq!(dir.capacity().unwrap().used_bytes, 5);
}

#[test]
fn delete_removes_and_uncounts() {
    let root = tempfile::tempdir().unwrap();
    let dir = PieceDir::open(root.path(), None).unwrap();
    dir.put(&id("p1"), b"12345", &Hash::of(b"12345")).unwrap();
    assert!(dir.delete(&id("p1")).unwrap());
    assert!(!dir.delete(&id("p1")).unwrap());
    assert!(matches!(dir.get(&id("p1")), Err(PieceError::NotFound(_))));
    assert_eq!(dir.stat(&id("p1")).unwrap(), None);
    assert_eq!(dir.capacity().unwrap().used_bytes, 0);
}

#[test]
fn reopen_recounts_used_bytes_and_clears_tmp() {
    let root = tempfile::tempdir().unwrap();
    {
        let dir = PieceDir::open(root.path(), None).unwrap();
        dir.put(&id("aa1"), &[1; 10], &Hash::of(&[1; 10])).unwrap();
        dir.put(&id("bb2"), &[2; 20], &Hash::of(&[2; 20])).unwrap();
    }
    fs::write(root.path().join("tmp/aa3.0123"), b"half a write").unwrap();
    let dir = PieceDir::open(root.path(), None).unwrap();
    assert_eq!(dir.capacity().unwrap().used_bytes, 30);
    assert!(tmp_is_empty(root.path()));
    assert_eq!(dir.get(&id("bb2")).unwrap(), vec![2; 20]);
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let _first = PieceDir::open(root.path(), None).unwrap();
    let err = PieceDir::open(root.path(), None).err().unwrap();
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
}

#[test]
fn capacity_follows_the_cap() {
    let root = tempfile::tempdir().unwrap();
    let dir = PieceDir::open(root.path(), Some(1000)).unwrap();
    dir.put(&id("p1"), &[0; 300], &Hash::of(&[0; 300])).unwrap();
    let cap = dir.capacity().unwrap();
    assert_eq!(
        (cap.capacity_bytes, cap.used_bytes, cap.free_bytes),
        (1000, 300, 700)
    );
    let fs = dir.filesystem().unwrap();
    assert!(fs.total_bytes >= fs.available_bytes && fs.total_bytes > 0);
}

#[test]
fn full_when_the_cap_is_exceeded() {
    let root = tempfile::tempdir().unwrap();
    let dir = PieceDir::open(root.path(), Some(1000)).unwrap();
    dir.put(&id("p1"), &[0; 600], &Hash::of(&[0; 600])).unwrap();
    let err = dir
        .put(&id("p2"), &[1; 500], &Hash::of(&[1; 500]))
        .unwrap_err();
    match err {
        PieceError::Full { needed, free } => assert_eq!((needed, free), (500, 400)),
        other => panic!("expected Full, got {other}"),
    }
    assert!(!piece_file(root.path(), "p2").exists());
    assert!(tmp_is_empty(root.path()));
    dir.put(&id("p2"), &[1; 400], &Hash::of(&[1; 400])).unwrap();
}

#[test]
fn ids_that_would_leave_the_directory_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let dir = PieceDir::open(root.path(), None).unwrap();
    for bad in ["..", ".", "..x", ".hidden"] {
        let err = dir.put(&id(bad), b"d", &Hash::of(b"d")).unwrap_err();
        assert!(err.to_string().contains("starts with '.'"), "{bad}: {err}");
    }
}

#[test]
fn a_corrupt_piece_is_replaced_by_a_put_of_the_right_bytes() {
    let root = tempfile::tempdir().unwrap();
    let dir = PieceDir::open(root.path(), None).unwrap();
    dir.put(&id("p1"), b"payload", &Hash::of(b"payload"))
        .unwrap();
    let path = piece_file(root.path(), "p1");
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        dir.get(&id("p1")),
        Err(PieceError::Corrupt { .. })
    ));
    dir.put(&id("p1"), b"payload", &Hash::of(b"payload"))
        .unwrap();
    assert_eq!(dir.get(&id("p1")).unwrap(), b"payload");
    assert_eq!(dir.capacity().unwrap().used_bytes, 7);
}

#[test]
fn deleting_a_piece_grown_behind_our_back_does_not_wrap_the_used_count() {
    let root = tempfile::tempdir().unwrap();
    let dir = PieceDir::open(root.path(), Some(1000)).unwrap();
    dir.put(&id("p1"), b"12345", &Hash::of(b"12345")).unwrap();
    let path = piece_file(root.path(), "p1");
    let mut bytes = fs::read(&path).unwrap();
    bytes.extend_from_slice(&[0u8; 100]);
    fs::write(&path, &bytes).unwrap();
    assert!(dir.delete(&id("p1")).unwrap());
    let cap = dir.capacity().unwrap();
    assert_eq!((cap.used_bytes, cap.free_bytes), (0, 1000));
    dir.put(&id("p2"), &[1; 900], &Hash::of(&[1; 900])).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_flipped_byte_in_a_stored_file_is_corrupt_never_wrong_data(
        data in proptest::collection::vec(any::<u8>(), 1..2048),
        pos in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let root = tempfile::tempdir().unwrap();
        let dir = PieceDir::open(root.path(), None).unwrap();
        dir.put(&id("pp"), &data, &Hash::of(&data)).unwrap();
        let path = piece_file(root.path(), "pp");
        let mut bytes = fs::read(&path).unwrap();
        let at = pos.index(bytes.len());
        bytes[at] ^= mask;
        fs::write(&path, &bytes).unwrap();
        match dir.get(&id("pp")) {
            Err(PieceError::Corrupt { problem, .. }) => prop_assert!(!problem.is_empty()),
            other => prop_assert!(false, "byte {} flipped: got {:?}", at, other.map(|d| d.len())),
        }
    }
}

#[test]
fn the_root_is_private_to_the_device_user() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let root = parent.path().join("nas");
    PieceDir::open(&root, None).unwrap();
    let mode = fs::metadata(&root).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

#[test]
fn listing_pages_through_every_piece_in_order() {
    let root = tempfile::tempdir().unwrap();
    let dir = PieceDir::open(root.path(), None).unwrap();
    let mut ids: Vec<String> = (0..40u32)
        .map(|i| format!("{:02x}{i:04}", i * 37 % 256))
        .collect();
    ids.push("x".into());
    for name in &ids {
        dir.put(&id(name), name.as_bytes(), &Hash::of(name.as_bytes()))
            .unwrap();
    }
    // A stray file of an interrupted copy, not a piece name, is skipped.
    fs::write(root.path().join("pieces/x/.hidden"), b"junk").unwrap();
    let mut listed = Vec::new();
    let mut after: Option<PieceId> = None;
    for _ in 0..100 {
        let page = dir.list(after.as_ref(), 7).unwrap();
        assert!(page.len() <= 7);
        let Some(last) = page.last().cloned() else {
            break;
        };
        listed.extend(page.into_iter().map(|p| p.as_str().to_string()));
        after = Some(last);
    }
    ids.sort();
    assert_eq!(listed, ids);
    dir.delete(&id(&ids[0])).unwrap();
    assert_eq!(dir.list(None, 1).unwrap(), vec![id(&ids[1])]);
}
