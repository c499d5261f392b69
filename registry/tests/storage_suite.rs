//! openraft's conformance suite against our WAL log store and state machine.

use openraft::testing::{StoreBuilder, Suite};
use registry::state_machine::StateMachine;
use registry::storage::log_store::LogStore;
use registry::types::{StorageError, TypeConfig};

struct OnDisk;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for OnDisk {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = LogStore::open(&dir.path().join("raft")).expect("open log store");
        let sm = StateMachine::open(&dir.path().join("state"), 1000, 1 << 20).expect("open state machine");
        Ok((dir, log, sm))
    }
}

#[test]
fn log_store_and_state_machine_pass_the_openraft_suite() {
    Suite::test_all(OnDisk).unwrap();
}
