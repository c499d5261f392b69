//! Checksummed record framing and atomic small-file replacement, shared by the Raft log and the
//! snapshot store.
//!
//! A frame is `[u32 LE magic][u32 LE payload len][u32 LE crc32 of payload][payload]`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};

/// Frame marker. Its high byte, 0xFE, never occurs in UTF-8, so it can not appear inside a JSON
/// payload, which keeps the "is there a valid frame further on?" scan of recovery honest.
pub const MAGIC: u32 = 0xFE57_A75F;

/// Bytes of header before the payload.
pub const HEADER_LEN: usize = 12;

/// Why the bytes at an offset are not a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame is truncated: it runs past the end of the data")]
    Truncated,
    #[error("bad frame magic")]
    BadMagic,
    #[error("frame checksum mismatch")]
    ChecksumMismatch,
}

/// Errors of file-backed storage. Every variant about a file names it, and corruption also names
/// the byte offset, so an operator can find and inspect the damage.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {action} failed: {source}", path = path.display())]
    Io { path: PathBuf, action: &'static str, source: io::Error },

    #[error("{path}: corrupt at byte offset {offset}: {reason}", path = path.display())]
    Corrupt { path: PathBuf, offset: u64, reason: String },

    #[error("encoding {what} failed: {source}")]
    Encode { what: &'static str, source: serde_json::Error },

    /// After an fsync failure the kernel may have dropped dirty pages, so retrying could report
    /// success for data that is gone: the writer refuses all further work instead.
    #[error("log writer stopped after an earlier error: {cause}")]
    WriterStopped { cause: String },
}

impl FileError {
    pub fn io(path: impl Into<PathBuf>, action: &'static str, source: io::Error) -> Self {
        FileError::Io { path: path.into(), action, source }
    }

    pub fn corrupt(path: impl Into<PathBuf>, offset: u64, reason: impl Into<String>) -> Self {
        FileError::Corrupt { path: path.into(), offset, reason: reason.into() }
    }

    /// Wraps this error for openraft, which stops the node on any storage error.
    pub fn into_storage_error(self, subject: ErrorSubject<u64>, verb: ErrorVerb) -> openraft::StorageError<u64> {
        StorageIOError::new(subject, verb, AnyError::new(&self)).into()
    }

    /// For [`openraft::storage::LogFlushed`], which only carries an `io::Error`.
    pub fn into_io_error(self) -> io::Error {
        match self {
            FileError::Io { ref source, .. } => io::Error::new(source.kind(), self.to_string()),
            other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
        }
    }
}

impl From<FileError> for openraft::StorageError<u64> {
    fn from(e: FileError) -> Self {
        let verb = match e {
            FileError::Corrupt { .. } => ErrorVerb::Read,
            _ => ErrorVerb::Write,
        };
        e.into_storage_error(ErrorSubject::Store, verb)
    }
}

/// Appends one frame holding `payload` to `buf`.
pub fn encode_frame_into(buf: &mut Vec<u8>, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("frame payload exceeds 4 GiB");
    buf.reserve(HEADER_LEN + payload.len());
    buf.extend_from_slice(&MAGIC.to_le_bytes());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Returns one frame holding `payload`.
pub fn encode_frame(payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER_LEN + payload.len());
    encode_frame_into(&mut buf, payload);
    buf
}

/// Decodes the frame starting at `offset`: `Ok(Some((payload, next_offset)))`, or `Ok(None)` when
/// `offset` is exactly the end of `buf`.
pub fn decode_frame(buf: &[u8], offset: usize) -> Result<Option<(&[u8], usize)>, FrameError> {
    let rest = buf.get(offset..).ok_or(FrameError::Truncated)?;
    if rest.is_empty() {
        return Ok(None);
    }
    if rest.len() < HEADER_LEN {
        // A short header is still checked for magic so that trailing garbage is not mistaken
        // for a write that was merely cut short.
        let magic = MAGIC.to_le_bytes();
        let n = rest.len().min(4);
        return Err(if rest[..n] == magic[..n] { FrameError::Truncated } else { FrameError::BadMagic });
    }
    if read_u32(rest, 0) != MAGIC {
        return Err(FrameError::BadMagic);
    }
    let len = read_u32(rest, 4) as usize;
    let payload = rest.get(HEADER_LEN..HEADER_LEN + len).ok_or(FrameError::Truncated)?;
    if crc32fast::hash(payload) != read_u32(rest, 8) {
        return Err(FrameError::ChecksumMismatch);
    }
    Ok(Some((payload, offset + HEADER_LEN + len)))
}

/// The first offset after `from` at which a complete, valid frame starts, if any.
pub fn find_valid_frame_after(buf: &[u8], from: usize) -> Option<usize> {
    let magic = MAGIC.to_le_bytes();
    (from + 1..buf.len().saturating_sub(HEADER_LEN - 1)).filter(|&o| buf[o..o + 4] == magic).find(|&o| matches!(decode_frame(buf, o), Ok(Some(_))))
}

fn read_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("slice of 4 bytes"))
}

/// Replaces `path` with a single frame holding `payload`, durably: after a crash the file holds
/// either the old or the new content, and once this returns the new content survives power loss.
pub fn write_atomic(path: &Path, payload: &[u8]) -> Result<(), FileError> {
    replace_file(path, payload, true)
}

/// Like [`write_atomic`] but without fsync: for hints that may be lost or come back corrupt after
/// a crash, where readers fall back to a safe default.
pub fn write_atomic_unsynced(path: &Path, payload: &[u8]) -> Result<(), FileError> {
    replace_file(path, payload, false)
}

fn replace_file(path: &Path, payload: &[u8], durable: bool) -> Result<(), FileError> {
    stage(path, payload, durable)?.commit()
}

/// A replacement of `path` written to a temp file (and fsynced) but not yet renamed into
/// place; dropped without `commit`, the temp file is removed.
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    durable: bool,
    done: bool,
}

/// The slow half of `write_atomic`: writes and fsyncs the temp file. The caller can then
/// decide, under a lock, whether to `commit` it.
pub fn stage_atomic(path: &Path, payload: &[u8]) -> Result<Staged, FileError> {
    stage(path, payload, true)
}

fn stage(path: &Path, payload: &[u8], durable: bool) -> Result<Staged, FileError> {
    let tmp = tmp_path(path);
    let staged = Staged { tmp: tmp.clone(), path: path.to_path_buf(), durable, done: false };
    let mut file = File::create(&tmp).map_err(|e| FileError::io(&tmp, "create", e))?;
    file.write_all(&encode_frame(payload)).map_err(|e| FileError::io(&tmp, "write", e))?;
    if durable {
        // Without this the rename could reach the disk before the data, leaving an empty file.
        file.sync_all().map_err(|e| FileError::io(&tmp, "fsync", e))?;
    }
    Ok(staged)
}

/// Like [`stage_atomic`], but the payload is written by `write` as it is produced, so a large
/// one (a snapshot of 100k instances) is never held in memory whole. The header is written
/// last, once the payload's length and checksum are known.
pub fn stage_atomic_with(path: &Path, write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<Staged, FileError> {
    use std::io::{Seek, SeekFrom};
    let tmp = tmp_path(path);
    let staged = Staged { tmp: tmp.clone(), path: path.to_path_buf(), durable: true, done: false };
    let file = File::create(&tmp).map_err(|e| FileError::io(&tmp, "create", e))?;
    let mut out = io::BufWriter::with_capacity(1 << 16, file);
    out.write_all(&[0; HEADER_LEN]).map_err(|e| FileError::io(&tmp, "write", e))?;
    let mut payload = Checksummed { out, crc: crc32fast::Hasher::new(), len: 0 };
    write(&mut payload).map_err(|e| FileError::io(&tmp, "write", e))?;
    let Checksummed { out, crc, len } = payload;
    let len = u32::try_from(len).map_err(|_| FileError::io(&tmp, "write", io::Error::other("frame payload exceeds 4 GiB")))?;
    let mut file = out.into_inner().map_err(|e| FileError::io(&tmp, "write", e.into_error()))?;
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(&MAGIC.to_le_bytes());
    header[4..8].copy_from_slice(&len.to_le_bytes());
    header[8..].copy_from_slice(&crc.finalize().to_le_bytes());
    file.seek(SeekFrom::Start(0)).and_then(|_| file.write_all(&header)).map_err(|e| FileError::io(&tmp, "write", e))?;
    // Without this the rename could reach the disk before the data, leaving an empty file.
    file.sync_all().map_err(|e| FileError::io(&tmp, "fsync", e))?;
    Ok(staged)
}

/// A writer that counts and checksums what passes through it.
struct Checksummed<W> {
    out: W,
    crc: crc32fast::Hasher,
    len: u64,
}

impl<W: Write> Write for Checksummed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl Staged {
    /// Renames the temp file into place (and makes the rename durable).
    pub fn commit(mut self) -> Result<(), FileError> {
        self.done = true;
        fs::rename(&self.tmp, &self.path).map_err(|e| FileError::io(&self.path, "rename into place", e))?;
        if self.durable {
            sync_parent_dir(&self.path)?;
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// A temp name no other writer uses at the same time, so two concurrent replacements of one
/// file (a snapshot being built while another is installed) never write into each other.
fn tmp_path(path: &Path) -> PathBuf {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".tmp.{}.{seq}", std::process::id()));
    PathBuf::from(name)
}

/// Removes temp files a crashed `write_atomic` of `path` may have left behind.
pub fn remove_stale_temps(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else { return };
    let prefix = format!("{name}.tmp");
    let Ok(entries) = fs::read_dir(if dir.as_os_str().is_empty() { Path::new(".") } else { dir }) else { return };
    for e in entries.flatten() {
        if e.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)) {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Makes a rename, creation or deletion of `path` durable.
pub fn sync_parent_dir(path: &Path) -> Result<(), FileError> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => sync_dir(Path::new(".")),
    }
}

/// Creates `dir` and any missing parents, and makes each creation durable by fsyncing the
/// parent it was created in: after a crash, a directory whose files were synced must not
/// vanish because its own entry was not. Returns the directories it fsynced, outermost first.
pub fn create_dir_durable(dir: &Path) -> Result<Vec<PathBuf>, FileError> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(d.to_path_buf());
        at = d.parent();
    }
    let mut synced = Vec::new();
    for d in missing.iter().rev() {
        fs::create_dir(d)
            .or_else(|e| if e.kind() == io::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) })
            .map_err(|e| FileError::io(d, "create directory", e))?;
        let parent = match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        sync_dir(&parent)?;
        synced.push(parent);
    }
    Ok(synced)
}

/// fsyncs a directory, which persists the entries created, renamed or removed in it.
pub fn sync_dir(dir: &Path) -> Result<(), FileError> {
    let d = File::open(dir).map_err(|e| FileError::io(dir, "open directory", e))?;
    d.sync_all().map_err(|e| FileError::io(dir, "fsync directory", e))
}

/// Reads a file written by [`write_atomic`]. A missing file is `Ok(None)`; anything but exactly
/// one valid frame is an error naming the file.
pub fn read_framed(path: &Path) -> Result<Option<Vec<u8>>, FileError> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(FileError::io(path, "read", e)),
    };
    match decode_frame(&data, 0).map(|f| f.map(|(payload, end)| (payload.len(), end))) {
        Ok(Some((len, end))) if end == data.len() => {
            // In place: a snapshot file is tens of MiB, and a copy would double it.
            let mut data = data;
            data.truncate(HEADER_LEN + len);
            data.drain(..HEADER_LEN);
            Ok(Some(data))
        }
        Ok(Some((_, end))) => Err(FileError::corrupt(path, end as u64, "unexpected bytes after the frame")),
        Ok(None) => Err(FileError::corrupt(path, 0, "file is empty")),
        Err(kind) => Err(FileError::corrupt(path, 0, kind.to_string())),
    }
}

/// Opens a file for writing without truncating it, creating it if needed.
pub fn open_for_write(path: &Path) -> Result<File, FileError> {
    OpenOptions::new().write(true).create(true).truncate(false).open(path).map_err(|e| FileError::io(path, "open for write", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streamed_frame_reads_back_like_a_whole_one() {
        let dir = tempfile::tempdir().unwrap();
        let (whole, streamed) = (dir.path().join("whole"), dir.path().join("streamed"));
        let payload: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        write_atomic(&whole, &payload).unwrap();
        stage_atomic_with(&streamed, |w| payload.chunks(7919).try_for_each(|c| w.write_all(c))).unwrap().commit().unwrap();
        assert_eq!(fs::read(&streamed).unwrap(), fs::read(&whole).unwrap());
        assert_eq!(read_framed(&streamed).unwrap(), Some(payload));
        let failed = stage_atomic_with(&dir.path().join("failed"), |w| w.write_all(b"half").and(Err(io::Error::other("encoder failed"))));
        assert!(failed.is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2, "a failed stage leaves no temp file");
    }

    #[test]
    fn frame_round_trip() {
        let mut buf = encode_frame(b"hello");
        encode_frame_into(&mut buf, b"");
        let (p, next) = decode_frame(&buf, 0).unwrap().unwrap();
        assert_eq!(p, b"hello");
        let (p, end) = decode_frame(&buf, next).unwrap().unwrap();
        assert_eq!(p, b"");
        assert_eq!(end, buf.len());
        assert_eq!(decode_frame(&buf, end), Ok(None));
    }

    #[test]
    fn decode_errors_are_distinguished() {
        let buf = encode_frame(b"payload");
        assert_eq!(decode_frame(&buf[..buf.len() - 1], 0), Err(FrameError::Truncated));
        assert_eq!(decode_frame(&buf[..6], 0), Err(FrameError::Truncated));
        assert_eq!(decode_frame(&buf[..2], 0), Err(FrameError::Truncated));
        assert_eq!(decode_frame(b"xy", 0), Err(FrameError::BadMagic));

        let mut flipped = buf.clone();
        flipped[HEADER_LEN + 2] ^= 1;
        assert_eq!(decode_frame(&flipped, 0), Err(FrameError::ChecksumMismatch));

        let mut bad_magic = buf.clone();
        bad_magic[0] ^= 1;
        assert_eq!(decode_frame(&bad_magic, 0), Err(FrameError::BadMagic));
    }

    #[test]
    fn find_valid_frame_skips_garbage() {
        let mut buf = b"garbage".to_vec();
        let at = buf.len();
        encode_frame_into(&mut buf, b"x");
        assert_eq!(find_valid_frame_after(&buf, 0), Some(at));
        assert_eq!(find_valid_frame_after(&buf, at), None);
    }

    #[test]
    fn new_directories_are_made_durable_in_their_parents() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data/raft/log");
        let synced = create_dir_durable(&dir).unwrap();
        assert!(dir.is_dir());
        assert_eq!(synced, vec![root.path().to_path_buf(), root.path().join("data"), root.path().join("data/raft")]);
        assert!(create_dir_durable(&dir).unwrap().is_empty(), "nothing new, nothing to sync");
    }

    #[test]
    fn atomic_file_round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vote");
        assert!(read_framed(&path).unwrap().is_none());

        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(read_framed(&path).unwrap().unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("vote")], "no temp file is left behind");
        fs::write(tmp_path(&path), b"left by a crash").unwrap();
        remove_stale_temps(&path);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

        write_atomic_unsynced(&path, b"three").unwrap();
        assert_eq!(read_framed(&path).unwrap().unwrap(), b"three");

        let mut data = fs::read(&path).unwrap();
        let last = data.len() - 1;
        data[last] ^= 0x40;
        fs::write(&path, &data).unwrap();
        let err = read_framed(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("checksum"), "{err}");
    }
}
