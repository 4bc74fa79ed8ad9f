//! The vendor crate's shared piece-store suite, run against its `NasStore`
//! talking to a real `offsite-nas` process.

use offsite_identity::Role;
use offsite_tests::tree::files_under;
use offsite_tests::{rpc, NasDevice};
use offsite_vendor::testing::piece_store_suite;
use offsite_vendor::{NasStore, NasTimeouts};

#[test]
fn nas_store_passes_the_piece_store_suite_against_a_real_device() {
    let tmp = tempfile::tempdir().unwrap();
    let device = NasDevice::start(tmp.path(), Some(1024 * 1024 * 1024)).unwrap();
    let address = device.address().to_string();
    let vendor = device
        .rpc()
        .credentials(Role::Vendor, offsite_tests::NAS_VENDOR)
        .unwrap();
    rpc::block_on(async move {
        let store = NasStore::connect_lazy(
            &address,
            offsite_tests::NAS_NAME,
            &vendor,
            NasTimeouts::default(),
            0.0,
        )
        .unwrap();
        piece_store_suite(&store).await;
    })
    .unwrap();
    let left = files_under(&device.data_dir().join("pieces"));
    assert!(
        left.is_empty(),
        "the suite deletes what it puts, yet {left:?} remain"
    );
}
