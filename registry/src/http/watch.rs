//! `GET /v1/watch`: a stream of change events as newline-delimited JSON, served by any node
//! from its own applied log, so a watch costs the leader nothing.
//!
//! Two rules make resuming safe (docs/api.md, "Watch"):
//! - after the events of each batch the stream sends `progress` at the revision it is complete
//!   up to, so a client knows a revision arrived whole without waiting for the next one;
//! - a node that is not current (no leader, no contact within an election timeout, not a
//!   member) refuses new watches with 503 and ends open ones with an error, so clients move to
//!   a node that is current instead of waiting on a frozen history.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use proto::WatchEvent;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::extract::QueryOf;
use crate::acl::Caller;
use crate::error::ApiError;
use crate::node::Node;

/// A quiet stream still gets a `progress` line this often, so a client can tell a stalled
/// node (paused, cut off) from a quiet one within a few seconds.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Events per read of the history, to keep lock hold times short.
const PAGE: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchQuery {
    service: Option<String>,
    /// Send every change after this revision; without it, changes from now on.
    since: Option<u64>,
}

type Line = Result<Bytes, std::io::Error>;

pub async fn watch(State(node): State<Arc<Node>>, Extension(caller): Extension<Caller>, QueryOf(q): QueryOf<WatchQuery>) -> Result<Response, ApiError> {
    if let Some(s) = &q.service {
        proto::validate::service_name(s).map_err(ApiError::InvalidArgument)?;
    }
    node.serving_current()?;
    // Taken here so a refusal is a 429 answer; the stream task holds it until it ends.
    let permit = node.watch_permit()?;
    let since = q.since.unwrap_or_else(|| node.shared().hub().head());
    let (tx, rx) = mpsc::channel::<Line>(16);
    // The task ends when the client goes away (`tx` closes) or the node stops being current.
    tokio::spawn(stream_events(node, caller, q.service, since, tx, permit));
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(([(axum::http::header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

fn line(event: &WatchEvent) -> Line {
    let mut v = serde_json::to_vec(event).expect("events serialize");
    v.push(b'\n');
    Ok(Bytes::from(v))
}

/// Feeds one watcher until it goes away. Reads history from `since` on; the hub's revision
/// channel wakes it on every applied entry.
async fn stream_events(node: Arc<Node>, caller: Caller, service: Option<String>, mut since: u64, tx: mpsc::Sender<Line>, _permit: crate::node::Permit) {
    node.metrics().watch_clients.inc();
    let _gone = Guard(|| {
        node.metrics().watch_clients.dec();
    });
    let hub = &node.shared().hub();
    let mut rx = hub.subscribe();
    // Progress is due a second after the last line sent, however often the node applies
    // entries that this watcher's filter skips.
    let mut progress_due = Instant::now() + PROGRESS_EVERY;
    loop {
        if let Err(e) = node.serving_current() {
            // Ends the body with an error: the client sees a broken stream, not a clean end,
            // and resumes elsewhere from its last complete revision.
            let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
            return;
        }
        // Checked on every wake (each applied entry, each progress tick): a revoked token's
        // stream ends within a second of this node applying the revocation.
        if !node.still_allowed(&caller) {
            let _ = tx.send(Err(std::io::Error::other("the token was revoked"))).await;
            return;
        }
        rx.borrow_and_update();
        match hub.since(since, service.as_deref(), PAGE) {
            Err(c) => {
                let _ = tx.send(line(&WatchEvent::Compacted { revision: c.head, compact_revision: c.compact_revision })).await;
                return;
            }
            Ok((events, upto)) => {
                for e in &events {
                    if tx.send(line(e)).await.is_err() {
                        return;
                    }
                }
                // A node behind the client's `since` (a lagging follower) must not move the
                // resume point backwards.
                let complete = since.max(upto);
                if !events.is_empty() {
                    // Every event up to `complete` has been sent: say so now, so the client can
                    // hand the batch on without waiting for the next revision.
                    if tx.send(line(&WatchEvent::Progress { revision: complete })).await.is_err() {
                        return;
                    }
                    progress_due = Instant::now() + PROGRESS_EVERY;
                }
                since = complete;
                if upto < hub.head() {
                    continue;
                }
            }
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep_until(progress_due) => {
                if tx.send(line(&WatchEvent::Progress { revision: since })).await.is_err() {
                    return;
                }
                progress_due = Instant::now() + PROGRESS_EVERY;
            }
            _ = tx.closed() => return,
        }
    }
}

struct Guard<F: FnMut()>(F);
impl<F: FnMut()> Drop for Guard<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}
