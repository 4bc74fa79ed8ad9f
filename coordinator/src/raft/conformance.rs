//! openraft's own storage conformance suite (`openraft::testing::Suite`)
//! run against our Raft log store and FAT state machine on sled, beside the
//! suite every FAT store passes (`store::suite`).

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use tempfile::TempDir;

use super::log_store::LogStore;
use super::state_machine::StateMachine;
use super::{NodeId, TypeConfig};

/// A fresh log store and state machine sharing one sled database in a
/// temporary directory, which is the guard the suite drops after each test.
struct SledStores;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for SledStores {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let db = sled::Config::new()
            .path(dir.path())
            .open()
            .expect("a sled database in a fresh directory");
        let log = LogStore::open(&db).expect("the log trees");
        let machine = StateMachine::open(&db).expect("the snapshot tree");
        Ok((dir, log, machine))
    }
}

#[test]
fn the_sled_log_store_and_fat_state_machine_pass_openraft_storage_suite() {
    Suite::test_all(SledStores).unwrap();
}
