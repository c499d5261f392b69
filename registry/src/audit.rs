//! The audit log (`--audit-log FILE`, off by default): one JSON line per write a client sent to
//! this node, accepted or refused: when, from where, which token, what, and the answer.
//!
//! A line is written by the node the client sent the request to, with the answer the client
//! got (a relayed request's line names the leader that ran it), so each request is logged
//! once across the cluster. Keepalives are logged only when refused (4xx): accepted ones are
//! the hot path, tens of thousands a second, and change nothing in the log.
//!
//! Lines go through a bounded queue to a thread of their own, so a slow disk never holds up a
//! request; when the queue is full a line is dropped and counted
//! (`registry_audit_dropped_total`). SIGHUP reopens the file, for logrotate.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

use crate::acl::TokenId;

/// Lines waiting for the writer thread at most.
const QUEUE: usize = 65_536;

/// One audited request.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    /// The node that took the request from the client.
    pub node: u64,
    /// The client's address, as this node saw it.
    pub client: Option<&'a str>,
    /// The token's id; none with ACLs off, or when the token was missing or unknown.
    pub token: Option<TokenId>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    /// `ok`, `denied` (401, 403), `refused` (another 4xx), `failed` (5xx), or `cancelled`
    /// (status 0: the request was dropped before its answer; the write may have applied).
    pub result: &'static str,
    /// The error code of a refusal or failure, when the answer carried one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<proto::ErrorCode>,
    /// The leader the request was relayed to, if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<u64>,
    pub duration_ms: f64,
}

/// The result column for an HTTP status.
pub fn result_of(status: u16) -> &'static str {
    match status {
        200..=399 => "ok",
        401 | 403 => "denied",
        400..=499 => "refused",
        _ => "failed",
    }
}

enum Msg {
    Line(Vec<u8>),
    Reopen,
    /// Write out what is queued, then say so.
    Flush(std::sync::mpsc::Sender<()>),
}

pub struct AuditLog {
    path: PathBuf,
    tx: SyncSender<Msg>,
    dropped: Counter,
}

impl AuditLog {
    /// Opens (creates, appends to) `path` and starts the writer thread; lines dropped because
    /// it fell behind are counted in `dropped`.
    pub fn open(path: &Path, dropped: Counter) -> std::io::Result<AuditLog> {
        let file = open_append(path)?;
        let (tx, rx) = sync_channel(QUEUE);
        let at = path.to_path_buf();
        std::thread::Builder::new().name("audit-log".into()).spawn(move || write_lines(at, file, rx))?;
        Ok(AuditLog { path: path.to_path_buf(), tx, dropped })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues one line; never blocks.
    pub fn record(&self, r: &Record<'_>) {
        let mut line = serde_json::to_vec(r).expect("an audit record serializes");
        line.push(b'\n');
        if let Err(TrySendError::Full(_)) = self.tx.try_send(Msg::Line(line)) {
            self.dropped.inc();
        }
    }

    /// Closes and reopens the file (after logrotate moved it away).
    pub fn reopen(&self) {
        if self.tx.try_send(Msg::Reopen).is_err() {
            tracing::warn!(path = %self.path.display(), "audit log: the queue is full; not reopened, send SIGHUP again");
        }
    }

    /// Waits (blocking, up to `limit`) until every line queued so far is written: before the
    /// process exits.
    pub fn flush(&self, limit: std::time::Duration) -> bool {
        let (tx, rx) = std::sync::mpsc::channel();
        self.tx.send_timeout_compat(Msg::Flush(tx), limit) && rx.recv_timeout(limit).is_ok()
    }
}

/// `SyncSender` has no send with a deadline: try until it fits or `limit` passes.
trait SendTimeout {
    fn send_timeout_compat(&self, msg: Msg, limit: std::time::Duration) -> bool;
}

impl SendTimeout for SyncSender<Msg> {
    fn send_timeout_compat(&self, mut msg: Msg, limit: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        loop {
            match self.try_send(msg) {
                Ok(()) => return true,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(m)) if std::time::Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(TrySendError::Full(_)) => return false,
            }
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    // 0600: the log names clients and token ids.
    OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

/// The writer thread: writes what is queued, flushing whenever the queue runs empty. Ends when
/// the node (the sender) is gone.
fn write_lines(path: PathBuf, file: File, rx: Receiver<Msg>) {
    let mut out = BufWriter::new(file);
    let mut failing = false;
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Line(line) => {
                    if let Err(e) = out.write_all(&line) {
                        if !failing {
                            tracing::error!(path = %path.display(), error = %e, "audit log: write failed; lines are lost until it works again");
                        }
                        failing = true;
                    }
                }
                Msg::Flush(done) => {
                    let _ = out.flush();
                    let _ = done.send(());
                }
                Msg::Reopen => {
                    let _ = out.flush();
                    match open_append(&path) {
                        Ok(f) => {
                            out = BufWriter::new(f);
                            tracing::info!(path = %path.display(), "audit log reopened");
                        }
                        Err(e) => tracing::error!(path = %path.display(), error = %e, "audit log: reopening failed; still writing the old file"),
                    }
                }
            }
            next = rx.try_recv().ok();
        }
        match out.flush() {
            Ok(()) if failing => {
                tracing::info!(path = %path.display(), "audit log: writing again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) => {
                if !failing {
                    tracing::error!(path = %path.display(), error = %e, "audit log: write failed; lines are lost until it works again");
                }
                failing = true;
            }
        }
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_results() {
        assert_eq!(result_of(200), "ok");
        assert_eq!(result_of(401), "denied");
        assert_eq!(result_of(403), "denied");
        assert_eq!(result_of(404), "refused");
        assert_eq!(result_of(503), "failed");
    }
}
