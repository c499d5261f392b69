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
    /// The meta of the snapshot on disk. Its lock is held while the file is replaced, so a
    /// build and an install never write at once and the newer one always stays. The snapshot's
    /// bytes are not kept in memory (about 45 MiB at 100k instances): a follower that needs
    /// them is rare, and they are read from the file then.
    snapshot: Mutex<Option<SnapshotMeta>>,
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
struct SnapshotFile<D> {
    meta: SnapshotMeta,
    data: D,
}

/// The snapshot file with its store left encoded: what a follower is sent is that JSON as is.
type RawSnapshotFile<'a> = SnapshotFile<&'a serde_json::value::RawValue>;

/// Writes `file` as the payload of a staged replacement of `path`, encoding as it goes.
fn stage_snapshot(path: &Path, file: &SnapshotFile<&Applied>) -> Result<frame::Staged, frame::FileError> {
    frame::stage_atomic_with(path, |w| serde_json::to_writer(w, file).map_err(std::io::Error::other))
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
            let file: SnapshotFile<Applied> =
                serde_json::from_slice(&bytes).map_err(|e| frame::FileError::corrupt(&shared.snapshot_path, 0, format!("snapshot does not decode: {e}")))?;
            drop(bytes);
            let revision = file.data.store.revision();
            *shared.data.write().unwrap() = file.data;
            *shared.snapshot.lock().unwrap() = Some(file.meta);
            shared.hub.reset(revision);
        }
        Ok(StateMachine { shared: Arc::new(shared), faults: None })
    }

    /// Writes `applied` as the snapshot a new node under `dir` starts from (`backup::restore`).
    pub fn seed(dir: &Path, meta: &SnapshotMeta, applied: &Applied) -> Result<(), frame::FileError> {
        frame::create_dir_durable(dir)?;
        stage_snapshot(&dir.join("snapshot"), &SnapshotFile { meta: meta.clone(), data: applied })?.commit()
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
    /// current snapshot. Returns the current snapshot's meta, the newer of the two. Blocking.
    fn save_snapshot(&self, meta: &SnapshotMeta, data: &Applied) -> Result<SnapshotMeta, StorageError> {
        // The slow part (encoding, writing, fsync) outside the lock; only the compare and the
        // rename under it (and `read_snapshot`, which must read one file throughout).
        let err = |e: &dyn std::error::Error| StorageIOError::write_snapshot(Some(meta.signature()), openraft::AnyError::error(e.to_string()));
        let staged = stage_snapshot(&self.snapshot_path, &SnapshotFile { meta: meta.clone(), data }).map_err(|e| err(&e))?;
        let mut current = self.snapshot.lock().unwrap();
        if let Some(m) = current.as_ref().filter(|m| !supersedes(meta.last_log_id, m.last_log_id)) {
            tracing::info!(kept = ?m.last_log_id, dropped = ?meta.last_log_id, "a newer snapshot is already in place; keeping it");
            return Ok(m.clone());
        }
        staged.commit().map_err(|e| err(&e))?;
        *current = Some(meta.clone());
        Ok(meta.clone())
    }

    /// The current snapshot as a follower is sent it, read from its file: the meta and the
    /// store's JSON, cut out of the file's bytes in place without decoding the store.
    /// Blocking: about 0.2 s at 100k instances, once per snapshot sent.
    fn read_snapshot(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, String> {
        // Under the lock, so no replacement renames a newer file in between the read and the
        // meta it is checked against (a build waits for the read to commit its file).
        let current = self.snapshot.lock().unwrap();
        let Some(expected) = current.as_ref() else { return Ok(None) };
        let path = self.snapshot_path.display();
        let mut bytes = frame::read_framed(&self.snapshot_path).map_err(|e| e.to_string())?.ok_or_else(|| format!("{path}: the snapshot file is gone"))?;
        let (meta, data) = {
            let file: RawSnapshotFile = serde_json::from_slice(&bytes).map_err(|e| format!("{path}: snapshot does not decode: {e}"))?;
            let raw = file.data.get();
            let start = raw.as_ptr() as usize - bytes.as_ptr() as usize;
            (file.meta, start..start + raw.len())
        };
        if meta.last_log_id != expected.last_log_id {
            return Err(format!("{path}: the snapshot file is at {:?}, not {:?}", meta.last_log_id, expected.last_log_id));
        }
        bytes.truncate(data.end);
        bytes.drain(..data.start);
        Ok(Some((meta, bytes)))
    }

    /// Makes a snapshot of the store as it is now, unless a newer one is in place; returns the
    /// current snapshot's meta. Blocking.
    fn build(&self) -> Result<SnapshotMeta, StorageError> {
        // A clone of the store is O(1) (its maps are persistent), so the read lock, which
        // `apply` and every reader wait behind, is held for microseconds, not for a copy.
        let data = self.data.read().unwrap().clone();
        let seq = self.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let meta = SnapshotMeta {
            last_log_id: data.last_applied,
            last_membership: data.membership.clone(),
            snapshot_id: format!("{}-{seq}", data.last_applied.map(|l| l.index).unwrap_or(0)),
        };
        // An install may have put a newer snapshot in place meanwhile; then that one is the
        // answer.
        self.save_snapshot(&meta, &data)
    }

    /// The current snapshot, to send to a follower. openraft stops the node when this fails
    /// (its state machine worker ends), so a snapshot file that is gone or damaged (a disk
    /// error, an operator's mistake) is replaced by a new one built from the store, which
    /// holds everything the old one did and more; only if that cannot be written or read
    /// either is it an error. Blocking.
    fn current_snapshot(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
        match self.read_snapshot() {
            Ok(current) => Ok(current),
            Err(e) => {
                tracing::error!(error = %e, "the snapshot file cannot be read; building a new one from the store");
                let meta = self.build()?;
                self.read_snapshot().map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), openraft::AnyError::error(e)).into())
            }
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let shared = self.shared.clone();
        // Serializing and fsyncing a large store must not stall the async workers.
        tokio::task::spawn_blocking(move || {
            // openraft keeps only the meta of a built snapshot (it asks `get_current_snapshot`
            // when it sends one), so no bytes are returned.
            let meta = shared.build()?;
            Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(Vec::new())) })
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
            tokio::task::spawn_blocking(move || shared.save_snapshot(&meta2, &data).map(|kept| (kept, data))).await.expect("snapshot task panicked")?;
        if kept.last_log_id == meta.last_log_id {
            let revision = data.store.revision();
            *self.shared.data.write().unwrap() = data;
            self.shared.hub.reset(revision);
        }
        drop(bytes);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let shared = self.shared.clone();
        let current = tokio::task::spawn_blocking(move || shared.current_snapshot()).await.expect("snapshot task panicked")?;
        Ok(current.map(|(meta, bytes)| Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) }))
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
            let kept = if older_last {
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

    /// openraft stops a node whose `get_current_snapshot` fails, and the snapshot's bytes are
    /// now read from the file: a file that is gone or damaged is rebuilt from the store.
    #[test]
    fn a_snapshot_file_gone_or_damaged_is_rebuilt_when_a_follower_needs_it() {
        let dir = tempfile::tempdir().unwrap();
        let sm = StateMachine::open(dir.path(), 10, 1 << 20).unwrap();
        *sm.shared.data.write().unwrap() = at(100).1;
        assert_eq!(sm.shared.build().unwrap().last_log_id.map(|l| l.index), Some(100));
        let sent = |sm: &StateMachine| {
            let (meta, bytes) = sm.shared.current_snapshot().unwrap().expect("a snapshot");
            let data: Applied = serde_json::from_slice(&bytes).expect("the store's JSON alone");
            (meta.last_log_id.map(|l| l.index), data.store.revision(), data.store.lease(100).is_some())
        };
        assert_eq!(sent(&sm), (Some(100), 100, true));
        let path = dir.path().join("snapshot");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(sent(&sm), (Some(100), 100, true), "rebuilt when gone");
        assert!(path.exists());
        let mut damaged = std::fs::read(&path).unwrap();
        let mid = damaged.len() / 2;
        damaged[mid] ^= 0x55;
        std::fs::write(&path, damaged).unwrap();
        assert!(sm.shared.read_snapshot().unwrap_err().contains("checksum"), "the damage is seen");
        assert_eq!(sent(&sm), (Some(100), 100, true), "rebuilt when damaged");
        assert_eq!(reopened_revision(dir.path()), 100);
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
