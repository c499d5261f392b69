//! The Raft log storage: an embedded, crash-safe write-ahead log.
//!
//! Layout under the store's directory:
//!
//! - `vote`: one frame (see [`super::frame`]) holding the JSON `Vote`, replaced atomically and
//!   fsynced on every `save_vote`.
//! - `committed`: one frame holding the JSON `Option<LogId>`, replaced atomically but not fsynced:
//!   it is only a hint, so if it is lost or unreadable it is treated as `None`.
//! - `purged`: one frame holding the JSON of the last purged `LogId`, replaced atomically and
//!   fsynced before any segment is deleted.
//! - `log/{first_index:020}.wal`: segments, each a sequence of frames holding one JSON `Entry`
//!   with consecutive indexes starting at `first_index`. Only the last segment is ever written.
//!
//! Every non-purged entry is also kept in memory, so reads never touch the disk; snapshots keep
//! the log short. All writes go through one writer thread, in the order they were requested,
//! which is what openraft requires of vote and log IO.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{DefensiveError, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, Violation};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;

use super::frame::{
    decode_frame, encode_frame, encode_frame_into, find_valid_frame_after, open_for_write, read_framed, sync_dir, write_atomic, write_atomic_unsynced,
    FileError, FrameError, HEADER_LEN,
};
use crate::types::{Entry, LogId, LogState, StorageError, TypeConfig, Vote};

/// Size past which appends move on to a new segment.
pub const DEFAULT_SEGMENT_LIMIT: u64 = 8 * 1024 * 1024;

const VOTE_FILE: &str = "vote";
const COMMITTED_FILE: &str = "committed";
const PURGED_FILE: &str = "purged";
const LOG_DIR: &str = "log";
const SEGMENT_SUFFIX: &str = ".wal";

/// Why [`LogStore::open`] failed; the message names the file and, for damage, the byte offset.
pub type StorageOpenError = FileError;

/// Where an entry's frame starts on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pos {
    segment: u64,
    offset: u64,
}

type EntryMap = BTreeMap<u64, (Entry, Pos)>;

/// The segment appends go to, as the front end sees it once all queued writes are done.
#[derive(Debug, Clone, Copy)]
struct ActiveSegment {
    first: u64,
    len: u64,
    next_index: u64,
}

/// A cheap, cloneable reader over the in-memory copy of the log.
#[derive(Clone)]
pub struct LogReader {
    entries: Arc<RwLock<EntryMap>>,
}

/// The Raft log, vote and committed pointer of one node, stored under one directory.
pub struct LogStore {
    dir: PathBuf,
    reader: LogReader,
    vote: Option<Vote>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
    active: Option<ActiveSegment>,
    /// Size in bytes past which appends start a new segment; small values exercise rotation.
    pub segment_limit: u64,
    tx: Option<mpsc::Sender<Op>>,
    writer: Option<JoinHandle<()>>,
}

impl LogStore {
    /// Opens (creating if needed) the store under `dir` and recovers its log.
    ///
    /// This is a blocking call (it reads the whole log and may fsync), meant to run once at
    /// startup. A torn tail of the last segment, as left by a crash during an append, is cut off
    /// with a warning; any other damage fails with an error naming the file and byte offset.
    pub fn open(dir: &Path) -> Result<LogStore, StorageOpenError> {
        LogStore::open_with(dir, FlushHook::default())
    }

    /// `open`, with a hook the writer thread calls before every flush (fault injection).
    pub fn open_with(dir: &Path, hook: FlushHook) -> Result<LogStore, StorageOpenError> {
        let log_dir = dir.join(LOG_DIR);
        // Every new level is synced in its parent, or a crash could lose the new directories
        // along with a saved vote.
        super::frame::create_dir_durable(&log_dir)?;

        for file in [VOTE_FILE, PURGED_FILE, COMMITTED_FILE] {
            super::frame::remove_stale_temps(&dir.join(file));
        }
        let vote = read_json::<Vote>(&dir.join(VOTE_FILE))?;
        let last_purged = read_json::<LogId>(&dir.join(PURGED_FILE))?;
        let committed = read_committed(&dir.join(COMMITTED_FILE));
        let scans = scan_segments(&log_dir)?;
        check_sequence(&scans, last_purged.as_ref())?;

        let (tx, writer) = Writer::spawn(dir, &scans, hook)?;
        Ok(LogStore {
            dir: dir.to_path_buf(),
            reader: LogReader { entries: Arc::new(RwLock::new(entry_map(&scans, last_purged.as_ref()))) },
            vote,
            committed,
            last_purged,
            active: active_segment(&scans),
            segment_limit: DEFAULT_SEGMENT_LIMIT,
            tx: Some(tx),
            writer: Some(writer),
        })
    }

    /// The directory this store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Checks the batch continues the log, encodes it, and assigns each entry its place on disk.
    ///
    /// Entries at or below the purge point are dropped: they count as purged already, and
    /// writing them would put lower indexes after higher ones on disk.
    fn stage(&mut self, entries: impl IntoIterator<Item = Entry>) -> Result<Vec<SegmentWrite>, Box<StorageError>> {
        let shared = Arc::clone(&self.reader.entries);
        let mut map = write_lock(&shared);
        let purged_next = self.last_purged.map_or(0, |p| p.index + 1);
        let mut prev = map.last_key_value().map(|(_, (e, _))| e.log_id);
        let mut encoded = Vec::new();
        for entry in entries.into_iter().filter(|e| e.log_id.index >= purged_next) {
            check_follows(prev.as_ref(), &entry.log_id)?;
            prev = Some(entry.log_id);
            let payload = to_json(&entry, "log entry").map_err(|e| Box::new(e.into_storage_error(ErrorSubject::Logs, ErrorVerb::Write)))?;
            encoded.push((entry, payload));
        }

        let mut writes: Vec<SegmentWrite> = Vec::new();
        for (entry, payload) in encoded {
            let pos = self.place(entry.log_id.index, (HEADER_LEN + payload.len()) as u64);
            push_frame(&mut writes, pos, &payload);
            map.insert(entry.log_id.index, (entry, pos));
        }
        Ok(writes)
    }

    /// Reserves room for one frame, moving to a new segment when the active one is full or when
    /// the index does not continue it (after a purge past the end of the log). A new segment's
    /// name is then above every existing one, as every entry on disk is below `index`.
    fn place(&mut self, index: u64, frame_len: u64) -> Pos {
        let limit = self.segment_limit;
        let active = match &mut self.active {
            Some(a) if a.next_index == index && !(a.len > 0 && a.len >= limit) => a,
            slot => slot.insert(ActiveSegment { first: index, len: 0, next_index: index }),
        };
        let pos = Pos { segment: active.first, offset: active.len };
        active.len += frame_len;
        active.next_index = index + 1;
        pos
    }

    fn send(&self, op: Op) -> Result<(), FileError> {
        let tx = self.tx.as_ref().ok_or_else(writer_gone)?;
        tx.send(op).map_err(|_| writer_gone())
    }

    /// Queues `op` behind all earlier writes and waits for the writer to carry it out.
    async fn request(&self, make: impl FnOnce(Reply) -> Op) -> Result<(), FileError> {
        let (reply, done) = oneshot::channel();
        self.send(make(reply))?;
        done.await.unwrap_or_else(|_| Err(writer_gone()))
    }
}

impl Drop for LogStore {
    /// Lets the writer finish what is queued, so that a store reopened right after sees it all.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!(dir = %self.dir.display(), "raft log writer thread panicked");
            }
        }
    }
}

impl LogReader {
    /// The id of the last entry held (written or being written), if any is: what a vote
    /// compares. A log emptied by a purge holds none; the caller knows the purge point.
    pub fn last_log_id(&self) -> Option<LogId> {
        read_lock(&self.entries).last_key_value().map(|(_, (e, _))| e.log_id)
    }

    fn entries_in(&self, range: impl RangeBounds<u64>) -> Vec<Entry> {
        let Some((start, end)) = normalize(range) else {
            return Vec::new();
        };
        let map = read_lock(&self.entries);
        let selected = match end {
            Some(end) => map.range(start..end),
            None => map.range(start..),
        };
        selected.map(|(_, (entry, _))| entry.clone()).collect()
    }
}

/// Turns a range into `start..end` (`None` = unbounded), or `None` if it is empty, because
/// `BTreeMap::range` panics on inverted ranges and openraft may pass empty ones.
fn normalize(range: impl RangeBounds<u64>) -> Option<(u64, Option<u64>)> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.checked_add(1),
        Bound::Excluded(&e) => Some(e),
        Bound::Unbounded => None,
    };
    match end {
        Some(end) if end <= start => None,
        _ => Some((start, end)),
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(&mut self, range: RB) -> Result<Vec<Entry>, StorageError> {
        Ok(self.entries_in(range))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(&mut self, range: RB) -> Result<Vec<Entry>, StorageError> {
        Ok(self.reader.entries_in(range))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState, StorageError> {
        let last = read_lock(&self.reader.entries).last_key_value().map(|(_, (e, _))| e.log_id);
        Ok(LogState { last_purged_log_id: self.last_purged, last_log_id: last.or(self.last_purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote_err = |e: FileError| e.into_storage_error(ErrorSubject::Vote, ErrorVerb::Write);
        let payload = to_json(vote, "vote").map_err(vote_err)?;
        self.request(|reply| Op::SaveVote { payload, reply }).await.map_err(vote_err)?;
        self.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.vote)
    }

    /// Queued without waiting: the pointer is a hint, and the writer stores it only after the
    /// entries queued before it are durable, so it never points past the local log.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let store_err = |e: FileError| e.into_storage_error(ErrorSubject::Store, ErrorVerb::Write);
        let payload = to_json(&committed, "committed log id").map_err(store_err)?;
        self.send(Op::SaveCommitted { payload }).map_err(store_err)?;
        self.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let writes = self.stage(entries).map_err(|e| *e)?;
        // Even an empty append goes through the writer: completions must arrive in order.
        self.send(Op::Append { writes, callback }).map_err(|e| e.into_storage_error(ErrorSubject::Logs, ErrorVerb::Write))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let first_removed = {
            let mut map = write_lock(&self.reader.entries);
            let first = map.range(log_id.index..).next().map(|(i, (_, p))| (*i, *p));
            map.split_off(&log_id.index);
            first
        };
        let Some((index, pos)) = first_removed else {
            return Ok(());
        };
        // The writer deletes a segment cut back to nothing, so that no segment is ever empty.
        self.active = (pos.offset > 0).then_some(ActiveSegment { first: pos.segment, len: pos.offset, next_index: index });
        self.request(|reply| Op::Truncate { at: pos, reply }).await.map_err(|e| e.into_storage_error(ErrorSubject::Logs, ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        if self.last_purged.is_some_and(|p| p.index >= log_id.index) {
            return Ok(());
        }
        let purge_err = |e: FileError| e.into_storage_error(ErrorSubject::Logs, ErrorVerb::Delete);
        let payload = to_json(&log_id, "purged log id").map_err(purge_err)?;
        self.request(|reply| Op::Purge { payload, upto: log_id.index, reply }).await.map_err(purge_err)?;

        let mut map = write_lock(&self.reader.entries);
        *map = map.split_off(&(log_id.index + 1));
        self.last_purged = Some(log_id);
        Ok(())
    }
}

/// Openraft never leaves holes in the live log, nor overwrites without truncating first; an
/// append that would is a bug upstream, so refuse it before anything reaches memory or disk.
fn check_follows(prev: Option<&LogId>, next: &LogId) -> Result<(), Box<StorageError>> {
    match prev {
        Some(p) if p.index + 1 != next.index => {
            let violation = Violation::LogsNonConsecutive { prev: Some(*p), next: *next };
            Err(Box::new(DefensiveError::new(ErrorSubject::Logs, violation).into()))
        }
        _ => Ok(()),
    }
}

/// Adds a frame to the batch, merging it with the previous write when contiguous so the writer
/// issues one `write` per segment per batch.
fn push_frame(writes: &mut Vec<SegmentWrite>, pos: Pos, payload: &[u8]) {
    match writes.last_mut() {
        Some(w) if w.segment == pos.segment && w.offset + w.bytes.len() as u64 == pos.offset => encode_frame_into(&mut w.bytes, payload),
        _ => writes.push(SegmentWrite { segment: pos.segment, offset: pos.offset, bytes: encode_frame(payload) }),
    }
}

fn read_lock<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // Nothing panics while holding the lock, and the map is valid at every step anyway.
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write_lock<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

fn writer_gone() -> FileError {
    FileError::WriterStopped { cause: "the writer thread is gone".to_string() }
}

fn to_json<T: Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>, FileError> {
    serde_json::to_vec(value).map_err(|source| FileError::Encode { what, source })
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, FileError> {
    let Some(payload) = read_framed(path)? else {
        return Ok(None);
    };
    let value = serde_json::from_slice(&payload).map_err(|e| FileError::corrupt(path, HEADER_LEN as u64, format!("invalid JSON: {e}")))?;
    Ok(Some(value))
}

/// The committed pointer only saves re-applying entries after a restart, so damage to it is not
/// worth refusing to start over.
fn read_committed(path: &Path) -> Option<LogId> {
    read_json::<Option<LogId>>(path)
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ignoring unreadable committed log id");
            None
        })
        .flatten()
}

// ---------------------------------------------------------------------------------------------
// Recovery

/// One segment as found on disk at open.
struct SegmentScan {
    first: u64,
    path: PathBuf,
    /// Entries with the offset of their frame.
    entries: Vec<(Entry, u64)>,
    /// Length of the valid part, which is the file's length after a torn tail is cut off.
    len: u64,
}

fn segment_path(log_dir: &Path, first: u64) -> PathBuf {
    log_dir.join(format!("{first:020}{SEGMENT_SUFFIX}"))
}

fn list_segments(log_dir: &Path) -> Result<Vec<(u64, PathBuf)>, FileError> {
    let read_err = |e| FileError::io(log_dir, "list directory", e);
    let mut segments = Vec::new();
    for dirent in fs::read_dir(log_dir).map_err(read_err)? {
        let path = dirent.map_err(read_err)?.path();
        match segment_first_index(&path) {
            Some(first) => segments.push((first, path)),
            None => {
                tracing::warn!(path = %path.display(), "ignoring unexpected file in the log directory")
            }
        }
    }
    segments.sort_unstable_by_key(|(first, _)| *first);
    Ok(segments)
}

fn segment_first_index(path: &Path) -> Option<u64> {
    let stem = path.file_name()?.to_str()?.strip_suffix(SEGMENT_SUFFIX)?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

fn scan_segments(log_dir: &Path) -> Result<Vec<SegmentScan>, FileError> {
    let segments = list_segments(log_dir)?;
    let last = segments.len().saturating_sub(1);
    let mut scans = Vec::with_capacity(segments.len());
    for (i, (first, path)) in segments.into_iter().enumerate() {
        let scan = scan_segment(first, path, i == last)?;
        if scan.len == 0 {
            // Only the last segment can be empty after a crash (created, nothing written yet,
            // or a torn first frame cut off). An empty one before it lost its entries.
            if i != last {
                return Err(FileError::corrupt(&scan.path, 0, "empty segment that is not the last one: its entries are gone".to_string()));
            }
            remove_empty_segment(log_dir, &scan.path)?;
            continue;
        }
        if i == last {
            sync_last_segment(&scan.path)?;
        }
        scans.push(scan);
    }
    Ok(scans)
}

/// A previous process may have died between writing and fsyncing, leaving data we just read
/// only in the page cache. It must be durable before appends build on it, or a power loss
/// could later tear a segment that is no longer the last one.
fn sync_last_segment(path: &Path) -> Result<(), FileError> {
    let file = open_for_write(path)?;
    file.sync_data().map_err(|e| FileError::io(path, "fdatasync", e))
}

/// New segments are named after an index above everything on disk, which only holds if no
/// empty segment (a crash right after creating one, or a torn first frame) keeps a name.
fn remove_empty_segment(log_dir: &Path, path: &Path) -> Result<(), FileError> {
    tracing::info!(path = %path.display(), "removing empty log segment");
    fs::remove_file(path).map_err(|e| FileError::io(path, "delete empty segment", e))?;
    sync_dir(log_dir)
}

fn scan_segment(first: u64, path: PathBuf, is_last: bool) -> Result<SegmentScan, FileError> {
    let data = fs::read(&path).map_err(|e| FileError::io(&path, "read", e))?;
    let mut entries = Vec::new();
    let mut offset = 0;
    loop {
        match decode_frame(&data, offset) {
            Ok(None) => break,
            Ok(Some((payload, next))) => {
                let entry = serde_json::from_slice::<Entry>(payload)
                    .map_err(|e| FileError::corrupt(&path, offset as u64, format!("frame holds an invalid log entry: {e}")))?;
                entries.push((entry, offset as u64));
                offset = next;
            }
            Err(kind) => {
                check_torn_tail(&path, &data, offset, kind, is_last)?;
                cut_torn_tail(&path, offset, data.len(), kind)?;
                break;
            }
        }
    }
    Ok(SegmentScan { first, path, entries, len: offset as u64 })
}

/// Tells a write cut short by a crash, which can only be at the end of the last segment, from
/// damage to data that may already have been acknowledged.
///
/// Any valid frame after the bad one means the bad one is not the tail, even if its length field
/// says it runs past the end (that field may be the damaged part). This can also reject a tail
/// that the filesystem persisted out of order, but refusing to start is recoverable by an
/// operator, while silently dropping acknowledged entries would break Raft's guarantees.
fn check_torn_tail(path: &Path, data: &[u8], offset: usize, kind: FrameError, is_last: bool) -> Result<(), FileError> {
    if !is_last {
        return Err(FileError::corrupt(path, offset as u64, format!("{kind} in a segment that is not the last one")));
    }
    match find_valid_frame_after(data, offset) {
        Some(next) => Err(FileError::corrupt(path, offset as u64, format!("{kind}, but a valid frame follows at offset {next}: damage, not a torn write"))),
        None => Ok(()),
    }
}

fn cut_torn_tail(path: &Path, offset: usize, file_len: usize, kind: FrameError) -> Result<(), FileError> {
    tracing::warn!(
        path = %path.display(),
        offset,
        dropped_bytes = file_len - offset,
        reason = %kind,
        "torn tail in the last log segment, left by a crash during an append: truncating it"
    );
    let file = open_for_write(path)?;
    file.set_len(offset as u64).map_err(|e| FileError::io(path, "truncate torn tail", e))?;
    file.sync_all().map_err(|e| FileError::io(path, "fsync", e))
}

/// Checks each segment holds consecutive indexes from the one in its name, and that the live
/// entries (above the purge point) form one run starting right after the purge point. Purged
/// entries may be followed by a gap: a purge past the end of the log makes the next append
/// start a new segment further on, at the index after the purge point.
fn check_sequence(scans: &[SegmentScan], purged: Option<&LogId>) -> Result<(), FileError> {
    let purged_next = purged.map_or(0, |p| p.index + 1);
    // After a purge the first live entry must be the one right after it; without a purge there
    // is nothing to compare the first entry with.
    let mut prev_live: Option<u64> = purged.map(|p| p.index);
    for scan in scans {
        let mut next_in_segment = scan.first;
        for (entry, offset) in &scan.entries {
            let index = entry.log_id.index;
            let corrupt = |reason: String| FileError::corrupt(&scan.path, *offset, reason);
            if index != next_in_segment {
                return Err(corrupt(format!("expected log index {next_in_segment}, found {index}")));
            }
            if index >= purged_next {
                if let Some(prev) = prev_live.filter(|p| p + 1 != index) {
                    return Err(corrupt(format!("log index {index} follows {prev}: the entries between are missing (a deleted or lost segment)")));
                }
                prev_live = Some(index);
            }
            next_in_segment = index + 1;
        }
    }
    Ok(())
}

fn entry_map(scans: &[SegmentScan], purged: Option<&LogId>) -> EntryMap {
    let purged_next = purged.map_or(0, |p| p.index + 1);
    scans
        .iter()
        .flat_map(|s| s.entries.iter().map(move |(e, offset)| (e, Pos { segment: s.first, offset: *offset })))
        .filter(|(e, _)| e.log_id.index >= purged_next)
        .map(|(e, pos)| (e.log_id.index, (e.clone(), pos)))
        .collect()
}

fn active_segment(scans: &[SegmentScan]) -> Option<ActiveSegment> {
    let last = scans.last()?;
    let next_index = last.entries.last().map_or(last.first, |(e, _)| e.log_id.index + 1);
    Some(ActiveSegment { first: last.first, len: last.len, next_index })
}

// ---------------------------------------------------------------------------------------------
// Writer thread

/// Called by the writer thread before anything that reaches the disk (fsync, vote, truncate,
/// purge). Empty in production; tests use it to make a flush hang as on a stalled volume.
#[derive(Clone, Default)]
pub struct FlushHook(Option<Arc<dyn Fn() + Send + Sync>>);

impl FlushHook {
    pub fn new(f: impl Fn() + Send + Sync + 'static) -> FlushHook {
        FlushHook(Some(Arc::new(f)))
    }

    fn call(&self) {
        if let Some(f) = &self.0 {
            f()
        }
    }
}

type Reply = oneshot::Sender<Result<(), FileError>>;

/// Bytes to put at `offset` of segment `segment`.
struct SegmentWrite {
    segment: u64,
    offset: u64,
    bytes: Vec<u8>,
}

enum Op {
    Append { writes: Vec<SegmentWrite>, callback: LogFlushed<TypeConfig> },
    Truncate { at: Pos, reply: Reply },
    Purge { payload: Vec<u8>, upto: u64, reply: Reply },
    SaveVote { payload: Vec<u8>, reply: Reply },
    SaveCommitted { payload: Vec<u8> },
}

struct OpenSegment {
    first: u64,
    path: PathBuf,
    file: File,
    dirty: bool,
}

/// Owns every file handle of the store and performs writes strictly in request order.
struct Writer {
    dir: PathBuf,
    log_dir: PathBuf,
    segments: BTreeSet<u64>,
    open: Option<OpenSegment>,
    /// Appends written but not yet fsynced, acknowledged together by the next flush.
    pending: Vec<LogFlushed<TypeConfig>>,
    pending_committed: Option<Vec<u8>>,
    failed: Option<String>,
    hook: FlushHook,
}

impl Writer {
    fn spawn(dir: &Path, scans: &[SegmentScan], hook: FlushHook) -> Result<(mpsc::Sender<Op>, JoinHandle<()>), FileError> {
        let writer = Writer {
            dir: dir.to_path_buf(),
            log_dir: dir.join(LOG_DIR),
            segments: scans.iter().map(|s| s.first).collect(),
            open: None,
            pending: Vec::new(),
            pending_committed: None,
            failed: None,
            hook,
        };
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("raft-log-writer".to_string())
            .spawn(move || writer.run(rx))
            .map_err(|e| FileError::io(dir, "spawn log writer thread", e))?;
        Ok((tx, handle))
    }

    fn run(mut self, rx: mpsc::Receiver<Op>) {
        while let Ok(op) = rx.recv() {
            self.handle(op);
            // Group commit: whatever queued up meanwhile shares the fsync in `flush`.
            while let Ok(op) = rx.try_recv() {
                self.handle(op);
            }
            self.flush();
        }
    }

    fn handle(&mut self, op: Op) {
        match op {
            Op::Append { writes, callback } => self.append(writes, callback),
            Op::SaveCommitted { payload } => self.pending_committed = Some(payload),
            Op::Truncate { at, reply } => {
                let _ = reply.send(self.barrier(|w| w.truncate(at)));
            }
            Op::Purge { payload, upto, reply } => {
                let _ = reply.send(self.barrier(|w| w.purge(&payload, upto)));
            }
            Op::SaveVote { payload, reply } => {
                let _ = reply.send(self.barrier(|w| write_atomic(&w.dir.join(VOTE_FILE), &payload)));
            }
        }
    }

    fn append(&mut self, writes: Vec<SegmentWrite>, callback: LogFlushed<TypeConfig>) {
        if let Err(e) = self.check_healthy() {
            return callback.log_io_completed(Err(e.into_io_error()));
        }
        match writes.into_iter().try_for_each(|w| self.write(w)) {
            Ok(()) => self.pending.push(callback),
            Err(e) => callback.log_io_completed(Err(self.fail(e).into_io_error())),
        }
    }

    /// Runs an operation that must not overtake earlier appends, so it makes them durable first.
    fn barrier(&mut self, op: impl FnOnce(&mut Self) -> Result<(), FileError>) -> Result<(), FileError> {
        self.flush();
        self.check_healthy()?;
        self.hook.call();
        op(self).map_err(|e| self.fail(e))
    }

    fn check_healthy(&self) -> Result<(), FileError> {
        match &self.failed {
            Some(cause) => Err(FileError::WriterStopped { cause: cause.clone() }),
            None => Ok(()),
        }
    }

    /// Stops all further writes and fails the appends still waiting for their fsync.
    fn fail(&mut self, e: FileError) -> FileError {
        tracing::error!(
            error = %e,
            dir = %self.dir.display(),
            "raft log write failed; the log refuses further writes"
        );
        self.failed = Some(e.to_string());
        for callback in self.pending.drain(..) {
            let stopped = FileError::WriterStopped { cause: e.to_string() };
            callback.log_io_completed(Err(stopped.into_io_error()));
        }
        e
    }

    fn write(&mut self, w: SegmentWrite) -> Result<(), FileError> {
        let seg = self.open_segment(w.segment)?;
        let written = seg.file.seek(SeekFrom::Start(w.offset)).and_then(|_| seg.file.write_all(&w.bytes));
        seg.dirty = true;
        written.map_err(|e| FileError::io(&seg.path, "write", e))
    }

    fn open_segment(&mut self, first: u64) -> Result<&mut OpenSegment, FileError> {
        if self.open.as_ref().is_some_and(|s| s.first == first) {
            return Ok(self.open.as_mut().expect("checked above"));
        }
        // Only the last segment may be torn after a crash, so the previous one is made durable
        // before anything is written to a later one.
        self.sync_open()?;
        let path = segment_path(&self.log_dir, first);
        let file = open_for_write(&path)?;
        if self.segments.insert(first) {
            sync_dir(&self.log_dir)?;
        }
        Ok(self.open.insert(OpenSegment { first, path, file, dirty: false }))
    }

    fn sync_open(&mut self) -> Result<(), FileError> {
        if let Some(seg) = self.open.as_mut().filter(|s| s.dirty) {
            self.hook.call();
            seg.file.sync_data().map_err(|e| FileError::io(&seg.path, "fdatasync", e))?;
            seg.dirty = false;
        }
        Ok(())
    }

    /// Makes every written append durable, then acknowledges them all.
    fn flush(&mut self) {
        if self.failed.is_some() {
            return;
        }
        match self.sync_open() {
            Ok(()) => self.pending.drain(..).for_each(|callback| callback.log_io_completed(Ok(()))),
            Err(e) => {
                self.fail(e);
                return;
            }
        }
        if let Some(payload) = self.pending_committed.take() {
            let path = self.dir.join(COMMITTED_FILE);
            if let Err(e) = write_atomic_unsynced(&path, &payload) {
                tracing::warn!(error = %e, "could not save the committed log id");
            }
        }
    }

    /// Deletes later segments newest first, so that a crash part way leaves a prefix of the log
    /// rather than a hole, then cuts the segment holding the first removed entry (or deletes it
    /// too if nothing is left of it).
    fn truncate(&mut self, at: Pos) -> Result<(), FileError> {
        self.open = None;
        let keep_cut_segment = at.offset > 0;
        let from = if keep_cut_segment { at.segment + 1 } else { at.segment };
        let doomed: Vec<u64> = self.segments.range(from..).rev().copied().collect();
        for first in doomed {
            let path = segment_path(&self.log_dir, first);
            fs::remove_file(&path).map_err(|e| FileError::io(&path, "delete segment", e))?;
            self.segments.remove(&first);
            sync_dir(&self.log_dir)?;
        }
        if !keep_cut_segment {
            return Ok(());
        }
        let seg = self.open_segment(at.segment)?;
        seg.file.set_len(at.offset).map_err(|e| FileError::io(&seg.path, "truncate", e))?;
        seg.file.sync_all().map_err(|e| FileError::io(&seg.path, "fsync", e))
    }

    /// Records the purge durably first: a segment deleted without it would look like a hole.
    fn purge(&mut self, payload: &[u8], upto: u64) -> Result<(), FileError> {
        write_atomic(&self.dir.join(PURGED_FILE), payload)?;
        let firsts: Vec<u64> = self.segments.iter().copied().collect();
        // A segment holds indexes below the next one's first index, and the last is never
        // deleted because appends continue there.
        for pair in firsts.windows(2) {
            if pair[1] > upto.saturating_add(1) {
                break;
            }
            self.delete_purged_segment(pair[0]);
        }
        Ok(())
    }

    /// A failed delete only wastes space (recovery drops purged entries), so it is retried at the
    /// next purge rather than stopping the log.
    fn delete_purged_segment(&mut self, first: u64) {
        let path = segment_path(&self.log_dir, first);
        match fs::remove_file(&path) {
            Ok(()) => {
                self.segments.remove(&first);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "could not delete purged log segment")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::command::Cmd;

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 0), index)
    }

    fn ent(term: u64, index: u64) -> Entry {
        Entry { log_id: log_id(term, index), payload: EntryPayload::Normal(Cmd::GrantLease { ttl_ms: index, owner: None, token: None }.into()) }
    }

    fn ents(term: u64, indexes: std::ops::Range<u64>) -> Vec<Entry> {
        indexes.map(|i| ent(term, i)).collect()
    }

    /// (term, index) of each entry, the shape the assertions compare.
    fn ids(term: u64, indexes: std::ops::Range<u64>) -> Vec<(u64, u64)> {
        indexes.map(|i| (term, i)).collect()
    }

    async fn read_all(store: &mut LogStore) -> Vec<(u64, u64)> {
        let entries = store.try_get_log_entries(..).await.unwrap();
        entries.iter().map(|e| (e.log_id.leader_id.term, e.log_id.index)).collect()
    }

    fn segments(dir: &Path) -> Vec<u64> {
        list_segments(&dir.join(LOG_DIR)).unwrap().into_iter().map(|(first, _)| first).collect()
    }

    fn only_segment(dir: &Path) -> PathBuf {
        let segs = list_segments(&dir.join(LOG_DIR)).unwrap();
        assert_eq!(segs.len(), 1, "expected one segment: {segs:?}");
        segs[0].1.clone()
    }

    /// Offset of the `n`th frame of a segment file.
    fn frame_offset(path: &Path, n: usize) -> usize {
        let data = fs::read(path).unwrap();
        let mut offset = 0;
        for _ in 0..n {
            offset = decode_frame(&data, offset).unwrap().unwrap().1;
        }
        offset
    }

    fn append_bytes(path: &Path, bytes: &[u8]) {
        let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(bytes).unwrap();
    }

    fn open_err(dir: &Path) -> String {
        match LogStore::open(dir) {
            Ok(_) => panic!("open of {} should fail", dir.display()),
            Err(e) => e.to_string(),
        }
    }

    #[tokio::test]
    async fn append_truncate_purge_round_trip_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = LogStore::open(dir.path()).unwrap();
            assert_eq!(store.read_vote().await.unwrap(), None);
            store.save_vote(&Vote::new(2, 1)).await.unwrap();
            store.blocking_append(ents(1, 0..10)).await.unwrap();
            assert_eq!(read_all(&mut store).await, ids(1, 0..10));

            store.truncate(log_id(1, 7)).await.unwrap();
            assert_eq!(read_all(&mut store).await, ids(1, 0..7));
            store.blocking_append(ents(2, 7..12)).await.unwrap();
            store.purge(log_id(1, 3)).await.unwrap();
            store.save_committed(Some(log_id(2, 8))).await.unwrap();

            let mut reader = store.get_log_reader().await;
            let seen = reader.try_get_log_entries(4..8).await.unwrap();
            assert_eq!(seen.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), vec![4, 5, 6, 7]);
        }

        let mut store = LogStore::open(dir.path()).unwrap();
        let want: Vec<_> = ids(1, 4..7).into_iter().chain(ids(2, 7..12)).collect();
        assert_eq!(read_all(&mut store).await, want);
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 3)));
        assert_eq!(state.last_log_id, Some(log_id(2, 11)));
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
        assert_eq!(store.read_committed().await.unwrap(), Some(log_id(2, 8)));
        assert!(store.try_get_log_entries(9..9).await.unwrap().is_empty());
        assert!(store.try_get_log_entries(20..).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn segments_rotate_and_purge_deletes_whole_old_segments() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = LogStore::open(dir.path()).unwrap();
            store.segment_limit = 1; // one entry per segment
            store.blocking_append(ents(1, 0..20)).await.unwrap();
            assert_eq!(segments(dir.path()), (0..20).collect::<Vec<_>>());

            store.purge(log_id(1, 9)).await.unwrap();
            assert_eq!(segments(dir.path()), (10..20).collect::<Vec<_>>());

            // Entry 15 starts its segment, so the cut leaves nothing of it.
            store.truncate(log_id(1, 15)).await.unwrap();
            assert_eq!(segments(dir.path()), (10..15).collect::<Vec<_>>());
            store.blocking_append(ents(2, 15..18)).await.unwrap();
        }

        let mut store = LogStore::open(dir.path()).unwrap();
        let want: Vec<_> = ids(1, 10..15).into_iter().chain(ids(2, 15..18)).collect();
        assert_eq!(read_all(&mut store).await, want);
        assert_eq!(segments(dir.path()), (10..18).collect::<Vec<_>>());

        // The default limit keeps appending to the last segment after reopen.
        store.blocking_append(ents(2, 18..20)).await.unwrap();
        assert_eq!(segments(dir.path()), (10..18).collect::<Vec<_>>());
        drop(store);
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(read_all(&mut store).await.last(), Some(&(2, 19)));
    }

    #[tokio::test]
    async fn purge_past_the_end_then_append_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = LogStore::open(dir.path()).unwrap();
            store.blocking_append(ents(1, 0..5)).await.unwrap();
            store.purge(log_id(1, 20)).await.unwrap();
            let state = store.get_log_state().await.unwrap();
            assert_eq!(state.last_log_id, Some(log_id(1, 20)));
            assert!(read_all(&mut store).await.is_empty());
            // An entry the purge already covers is acknowledged but not kept.
            store.blocking_append(ents(1, 3..4)).await.unwrap();
            assert!(read_all(&mut store).await.is_empty());
        }
        {
            let mut store = LogStore::open(dir.path()).unwrap();
            assert!(read_all(&mut store).await.is_empty());
            assert_eq!(store.get_log_state().await.unwrap().last_log_id, Some(log_id(1, 20)));
            store.blocking_append(ents(2, 21..23)).await.unwrap();
            // A hole is refused before it reaches memory or disk.
            assert!(store.blocking_append(ents(2, 30..31)).await.is_err());
            store.purge(log_id(2, 21)).await.unwrap();
            assert_eq!(segments(dir.path()), vec![21], "the segment of purged entries 0..5 is deleted");
        }
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(read_all(&mut store).await, ids(2, 22..23));
    }

    #[tokio::test]
    async fn torn_tail_cut_short_is_dropped_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = LogStore::open(dir.path()).unwrap();
            store.blocking_append(ents(1, 0..5)).await.unwrap();
        }
        let seg = only_segment(dir.path());
        let last_frame = frame_offset(&seg, 4) as u64;
        let file = fs::OpenOptions::new().write(true).open(&seg).unwrap();
        file.set_len(file.metadata().unwrap().len() - 3).unwrap();
        drop(file);

        {
            let mut store = LogStore::open(dir.path()).unwrap();
            assert_eq!(read_all(&mut store).await, ids(1, 0..4));
            assert_eq!(fs::metadata(&seg).unwrap().len(), last_frame, "torn frame cut off on disk");
            store.blocking_append(ents(2, 4..6)).await.unwrap();
        }
        let mut store = LogStore::open(dir.path()).unwrap();
        let want: Vec<_> = ids(1, 0..4).into_iter().chain(ids(2, 4..6)).collect();
        assert_eq!(read_all(&mut store).await, want);
    }

    #[tokio::test]
    async fn torn_tail_of_garbage_is_dropped_and_appends_continue() {
        let half_frame = {
            let mut f = encode_frame(br#"{"log_id":"this frame was never finished"}"#);
            f.truncate(HEADER_LEN + 10);
            f
        };
        let tails: [&[u8]; 3] = [&half_frame, &[0u8; 7], b"\x01\x02 garbage without a frame header"];
        for tail in tails {
            let dir = tempfile::tempdir().unwrap();
            {
                let mut store = LogStore::open(dir.path()).unwrap();
                store.blocking_append(ents(1, 0..5)).await.unwrap();
            }
            append_bytes(&only_segment(dir.path()), tail);
            {
                let mut store = LogStore::open(dir.path()).unwrap();
                assert_eq!(read_all(&mut store).await, ids(1, 0..5), "tail {tail:?}");
                store.blocking_append(ents(1, 5..6)).await.unwrap();
            }
            let mut store = LogStore::open(dir.path()).unwrap();
            assert_eq!(read_all(&mut store).await, ids(1, 0..6), "tail {tail:?}");
        }
    }

    #[tokio::test]
    async fn bit_flip_before_a_valid_frame_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = LogStore::open(dir.path()).unwrap();
            store.blocking_append(ents(1, 0..5)).await.unwrap();
        }
        let seg = only_segment(dir.path());
        let original = fs::read(&seg).unwrap();
        let at = frame_offset(&seg, 1);

        let mut flipped = original.clone();
        flipped[at + HEADER_LEN + 5] ^= 0x08;
        fs::write(&seg, &flipped).unwrap();
        let err = open_err(dir.path());
        assert!(err.contains(&seg.display().to_string()), "{err}");
        assert!(err.contains(&format!("offset {at}")), "{err}");
        assert!(err.contains("checksum mismatch"), "{err}");

        // A damaged length field makes the frame look cut short, yet valid frames follow.
        let mut long = original.clone();
        long[at + 4..at + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        fs::write(&seg, &long).unwrap();
        let err = open_err(dir.path());
        assert!(err.contains(&format!("offset {at}")) && err.contains("truncated"), "{err}");

        // The file is left alone for an operator to inspect.
        assert_eq!(fs::read(&seg).unwrap(), long);
    }

    #[tokio::test]
    async fn damage_outside_the_tail_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = LogStore::open(dir.path()).unwrap();
            store.segment_limit = 1;
            store.blocking_append(ents(1, 0..4)).await.unwrap();
        }
        let log_dir = dir.path().join(LOG_DIR);

        // A frame cut short in a segment that is not the last.
        let first = segment_path(&log_dir, 0);
        let saved = fs::read(&first).unwrap();
        fs::write(&first, &saved[..saved.len() - 2]).unwrap();
        let err = open_err(dir.path());
        assert!(err.contains(&first.display().to_string()) && err.contains("offset 0"), "{err}");
        assert!(err.contains("not the last"), "{err}");
        fs::write(&first, &saved).unwrap();

        // A frame with a valid checksum but no log entry inside.
        let last = segment_path(&log_dir, 3);
        let end = fs::metadata(&last).unwrap().len();
        append_bytes(&last, &encode_frame(b"{not json"));
        let err = open_err(dir.path());
        assert!(err.contains(&last.display().to_string()) && err.contains(&format!("offset {end}")), "{err}");
        assert!(err.contains("invalid log entry"), "{err}");
        fs::OpenOptions::new().write(true).open(&last).unwrap().set_len(end).unwrap();

        // A missing segment leaves a hole that no purge explains.
        fs::remove_file(segment_path(&log_dir, 1)).unwrap();
        let err = open_err(dir.path());
        let third = segment_path(&log_dir, 2);
        assert!(err.contains(&third.display().to_string()) && err.contains("offset 0"), "{err}");
        assert!(err.contains("log index 2 follows 0"), "{err}");
    }

    #[tokio::test]
    async fn a_missing_segment_after_the_purge_point_is_corruption_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = LogStore::open(dir.path()).unwrap();
            store.segment_limit = 1;
            store.blocking_append(ents(1, 0..6)).await.unwrap();
            store.purge(log_id(1, 1)).await.unwrap();
        }
        let log_dir = dir.path().join(LOG_DIR);
        assert_eq!(segments(dir.path()), vec![2, 3, 4, 5]);
        // The first segment after the purge point goes missing: nothing precedes the gap.
        fs::remove_file(segment_path(&log_dir, 2)).unwrap();
        let err = open_err(dir.path());
        assert!(err.contains(&segment_path(&log_dir, 3).display().to_string()), "{err}");
        assert!(err.contains("log index 3 follows 1") && err.contains("missing"), "{err}");
    }

    #[tokio::test]
    async fn an_empty_segment_that_is_not_the_last_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = LogStore::open(dir.path()).unwrap();
            store.segment_limit = 1;
            store.blocking_append(ents(1, 0..3)).await.unwrap();
        }
        let log_dir = dir.path().join(LOG_DIR);
        let middle = segment_path(&log_dir, 1);
        fs::write(&middle, b"").unwrap();
        let err = open_err(dir.path());
        assert!(err.contains(&middle.display().to_string()) && err.contains("empty segment"), "{err}");
        assert!(middle.exists(), "the file is left for an operator");
        // An empty *last* segment is a crash right after creating it: removed, and the log opens.
        fs::write(&middle, b"").unwrap();
        fs::remove_file(segment_path(&log_dir, 2)).unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(read_all(&mut store).await, ids(1, 0..1));
    }

    #[tokio::test]
    async fn corrupt_vote_fails_open_but_corrupt_committed_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = LogStore::open(dir.path()).unwrap();
            store.save_vote(&Vote::new(1, 1)).await.unwrap();
            store.blocking_append(ents(1, 0..1)).await.unwrap();
            store.save_committed(Some(log_id(1, 0))).await.unwrap();
        }
        let committed = dir.path().join(COMMITTED_FILE);
        fs::write(&committed, b"junk").unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(store.read_committed().await.unwrap(), None);
        drop(store);

        let vote = dir.path().join(VOTE_FILE);
        let mut data = fs::read(&vote).unwrap();
        let last = data.len() - 1;
        data[last] ^= 0x01;
        fs::write(&vote, &data).unwrap();
        let err = open_err(dir.path());
        assert!(err.contains(&vote.display().to_string()), "{err}");
    }
    // openraft's conformance suite runs against this store and the real state machine in
    // registry/tests/storage_suite.rs.
}
