//! The openraft state machine: applies committed entries to the `Store`, publishes their
//! changes to the watch hub, and makes and installs snapshots.
//!
//! The store lives in memory; on restart it comes back from the last snapshot plus the log
//! entries after it, which openraft re-applies. Snapshots are one framed file (see
//! `storage::frame`), replaced atomically.

// openraft's traits fix the error type (`StorageError`, large); boxing it here would only move
// the allocation.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};

use crate::command::{Cmd, Proposal, Resp};
use crate::faults::Faults;
use crate::storage::frame;
use crate::store::Store;
use crate::types::{Entry, LogId, NodeId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::watch::WatchHub;

/// What the state machine shares with readers (HTTP handlers, the lease loop, metrics).
///
/// Its fields are private: only the state machine in this module writes `data` (through
/// `Store::apply`), everyone else gets a read guard.
pub struct Shared {
    data: RwLock<Applied>,
    hub: WatchHub,
    /// Entries applied since this process started.
    applied_entries: AtomicU64,
    /// Client writes applied since this process started: an entry of a batch counts each.
    applied_writes: AtomicU64,
    /// The snapshot on disk, as (meta, bytes). Its lock is held while the file is replaced, so
    /// a build and an install never write at once and the newer one always stays.
    snapshot: Mutex<Option<(SnapshotMeta, Vec<u8>)>>,
    snapshot_path: PathBuf,
    snapshot_seq: AtomicU64,
}

/// The store together with the log position it reflects.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Applied {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub store: Store,
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta,
    data: Applied,
}

#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<Shared>,
    /// Test seam: a delay before each applied batch.
    faults: Option<(NodeId, Faults)>,
}

impl StateMachine {
    /// Opens the state machine under `dir`, loading the last snapshot if there is one.
    pub fn open(dir: &Path, history: usize, history_bytes: usize) -> Result<StateMachine, frame::FileError> {
        frame::create_dir_durable(dir)?;
        let snapshot_path = dir.join("snapshot");
        let shared = Shared {
            data: RwLock::new(Applied::default()),
            hub: WatchHub::with_limits(history, history_bytes),
            applied_entries: AtomicU64::new(0),
            applied_writes: AtomicU64::new(0),
            snapshot: Mutex::new(None),
            snapshot_path,
            snapshot_seq: AtomicU64::new(0),
        };
        frame::remove_stale_temps(&shared.snapshot_path);
        if let Some(bytes) = frame::read_framed(&shared.snapshot_path)? {
            let file: SnapshotFile =
                serde_json::from_slice(&bytes).map_err(|e| frame::FileError::corrupt(&shared.snapshot_path, 0, format!("snapshot does not decode: {e}")))?;
            let revision = file.data.store.revision();
            let data = serde_json::to_vec(&file.data).expect("store serializes");
            *shared.data.write().unwrap() = file.data;
            *shared.snapshot.lock().unwrap() = Some((file.meta, data));
            shared.hub.reset(revision);
        }
        Ok(StateMachine { shared: Arc::new(shared), faults: None })
    }

    /// Writes `applied` as the snapshot a new node under `dir` starts from (`backup::restore`).
    pub fn seed(dir: &Path, meta: &SnapshotMeta, applied: &Applied) -> Result<(), frame::FileError> {
        frame::create_dir_durable(dir)?;
        let file = SnapshotFile { meta: meta.clone(), data: applied.clone() };
        frame::write_atomic(&dir.join("snapshot"), &serde_json::to_vec(&file).expect("store serializes"))
    }

    /// Lets `faults` delay this node's apply.
    pub fn with_faults(mut self, id: NodeId, faults: Faults) -> StateMachine {
        self.faults = Some((id, faults));
        self
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }
}

/// Whether a snapshot up to `new` may replace one up to `old`: never an older by a newer one's
/// place, because the log before the newer one may already be purged.
fn supersedes(new: Option<LogId>, old: Option<LogId>) -> bool {
    new >= old
}

impl Shared {
    /// The applied state, read-only. Hold the guard briefly: the apply path waits for it.
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Applied> {
        self.data.read().unwrap()
    }

    pub fn hub(&self) -> &WatchHub {
        &self.hub
    }

    /// Entries applied since this process started.
    pub fn applied_writes(&self) -> u64 {
        self.applied_writes.load(Ordering::Relaxed)
    }

    pub fn applied_entries(&self) -> u64 {
        self.applied_entries.load(Ordering::Relaxed)
    }

    /// Writes `data` as the snapshot file unless the one there is newer, and makes it the
    /// current snapshot. Returns the current snapshot, which is the newer of the two. Blocking.
    fn save_snapshot(&self, meta: &SnapshotMeta, data: &Applied) -> Result<(SnapshotMeta, Vec<u8>), StorageError> {
        // The slow part (encoding, writing, fsync) outside the lock; only the compare and the
        // rename under it, so readers of the current snapshot wait for a rename at most.
        let err = |e: &dyn std::error::Error| StorageIOError::write_snapshot(Some(meta.signature()), openraft::AnyError::error(e.to_string()));
        let file = SnapshotFile { meta: meta.clone(), data: data.clone() };
        let bytes = serde_json::to_vec(&file).map_err(|e| err(&e))?;
        let data_bytes = serde_json::to_vec(data).expect("store serializes");
        let staged = frame::stage_atomic(&self.snapshot_path, &bytes).map_err(|e| err(&e))?;
        let mut current = self.snapshot.lock().unwrap();
        if let Some((m, bytes)) = current.as_ref().filter(|(m, _)| !supersedes(meta.last_log_id, m.last_log_id)) {
            tracing::info!(kept = ?m.last_log_id, dropped = ?meta.last_log_id, "a newer snapshot is already in place; keeping it");
            return Ok((m.clone(), bytes.clone()));
        }
        staged.commit().map_err(|e| err(&e))?;
        *current = Some((meta.clone(), data_bytes.clone()));
        Ok((meta.clone(), data_bytes))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let shared = self.shared.clone();
        // Serializing and fsyncing a large store must not stall the async workers.
        tokio::task::spawn_blocking(move || {
            let data = shared.data.read().unwrap().clone();
            let seq = shared.snapshot_seq.fetch_add(1, Ordering::Relaxed);
            let meta = SnapshotMeta {
                last_log_id: data.last_applied,
                last_membership: data.membership.clone(),
                snapshot_id: format!("{}-{seq}", data.last_applied.map(|l| l.index).unwrap_or(0)),
            };
            // An install may have put a newer snapshot in place meanwhile; then that one is
            // the answer.
            let (meta, bytes) = shared.save_snapshot(&meta, &data)?;
            Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
        })
        .await
        .expect("snapshot task panicked")
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let d = self.shared.data.read().unwrap();
        Ok((d.last_applied, d.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Resp>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        if let Some((id, faults)) = &self.faults {
            let delay = faults.apply_delay(*id);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
        let mut out = Vec::new();
        for entry in entries {
            let (index, term) = (entry.log_id.index, entry.log_id.leader_id.term);
            let (resp, events) = {
                let mut d = self.shared.data.write().unwrap();
                d.last_applied = Some(entry.log_id);
                match &entry.payload {
                    EntryPayload::Normal(cmd) => d.store.apply(index, term, cmd),
                    EntryPayload::Membership(m) => {
                        d.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                        d.store.advance(index, term);
                        (Resp::Ok { revision: index }, vec![])
                    }
                    EntryPayload::Blank => {
                        d.store.advance(index, term);
                        (Resp::Ok { revision: index }, vec![])
                    }
                }
            };
            self.shared.hub.publish(index, events);
            self.shared.applied_entries.fetch_add(1, Ordering::Relaxed);
            let writes = match &entry.payload {
                EntryPayload::Normal(Proposal { cmd: Cmd::Batch { proposals }, .. }) => proposals.len() as u64,
                _ => 1,
            };
            self.shared.applied_writes.fetch_add(writes, Ordering::Relaxed);
            out.push(resp);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Box<Cursor<Vec<u8>>>) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let mut data: Applied = serde_json::from_slice(&bytes).map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        // The meta is authoritative for the log position and membership.
        data.last_applied = meta.last_log_id;
        data.membership = meta.last_membership.clone();
        let shared = self.shared.clone();
        let meta2 = meta.clone();
        // The file first, then memory: a crash in between restarts from the new snapshot.
        let (kept, data) =
            tokio::task::spawn_blocking(move || shared.save_snapshot(&meta2, &data).map(|(kept, _)| (kept, data))).await.expect("snapshot task panicked")?;
        if kept.last_log_id == meta.last_log_id {
            let revision = data.store.revision();
            *self.shared.data.write().unwrap() = data;
            self.shared.hub.reset(revision);
        }
        drop(bytes);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        Ok(self.shared.snapshot.lock().unwrap().as_ref().map(|(meta, bytes)| Snapshot { meta: meta.clone(), snapshot: Box::new(Cursor::new(bytes.clone())) }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId};

    use super::*;
    use crate::command::Cmd;

    fn at(index: u64) -> (SnapshotMeta, Applied) {
        let log_id = LogId::new(CommittedLeaderId::new(1, 1), index);
        let mut data = Applied { last_applied: Some(log_id), ..Applied::default() };
        data.store.apply(index, 1, &Cmd::GrantLease { ttl_ms: 1000, owner: None, token: None }.into());
        let meta = SnapshotMeta { last_log_id: Some(log_id), last_membership: StoredMembership::default(), snapshot_id: format!("{index}") };
        (meta, data)
    }

    fn reopened_revision(dir: &Path) -> u64 {
        let sm = StateMachine::open(dir, 10, 1 << 20).unwrap();
        let r = sm.shared.data.read().unwrap().store.revision();
        r
    }

    /// openraft builds snapshots in their own task, beside installs from the leader. A build
    /// that read the store before an install and wrote after it used to put the older snapshot
    /// in place, while the log before the newer one was already purged: the node could not
    /// restart.
    #[test]
    fn an_older_snapshot_never_replaces_a_newer_one_in_either_order() {
        for older_last in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let sm = StateMachine::open(dir.path(), 10, 1 << 20).unwrap();
            let (old_meta, old_data) = at(100);
            let (new_meta, new_data) = at(500);
            let (kept, _) = if older_last {
                sm.shared.save_snapshot(&new_meta, &new_data).unwrap();
                sm.shared.save_snapshot(&old_meta, &old_data).unwrap()
            } else {
                sm.shared.save_snapshot(&old_meta, &old_data).unwrap();
                sm.shared.save_snapshot(&new_meta, &new_data).unwrap()
            };
            assert_eq!(kept.last_log_id.map(|l| l.index), Some(500), "older_last={older_last}");
            drop(sm);
            assert_eq!(reopened_revision(dir.path()), 500, "older_last={older_last}: the newer snapshot loads");
            let names: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
            assert_eq!(names, vec!["snapshot".to_string()], "no temp file is left");
        }
    }

    #[test]
    fn concurrent_saves_leave_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let sm = StateMachine::open(dir.path(), 10, 1 << 20).unwrap();
        std::thread::scope(|s| {
            for i in 1..=16u64 {
                let shared = sm.shared.clone();
                s.spawn(move || {
                    let (meta, data) = at(i * 10);
                    shared.save_snapshot(&meta, &data).unwrap();
                });
            }
        });
        drop(sm);
        assert_eq!(reopened_revision(dir.path()), 160);
    }
}
