//! `GET /v1/watch`: a stream of change events as newline-delimited JSON, served by any node
//! from its own applied log, so a watch costs the leader nothing.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use proto::WatchEvent;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

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

pub async fn watch(State(node): State<Arc<Node>>, uri: Uri) -> Response {
    let q: WatchQuery = match axum::extract::Query::try_from_uri(&uri) {
        Ok(q) => q.0,
        Err(e) => return ApiError::InvalidArgument(format!("bad query string: {e}")).into_response(),
    };
    if let Some(s) = &q.service {
        if let Err(e) = proto::validate::service_name(s) {
            return ApiError::InvalidArgument(e).into_response();
        }
    }
    let since = q.since.unwrap_or_else(|| node.shared.hub.head());
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(stream_events(node, q.service, since, tx));
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    ([(axum::http::header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

fn line(event: &WatchEvent) -> Result<Bytes, std::io::Error> {
    let mut v = serde_json::to_vec(event).expect("events serialize");
    v.push(b'\n');
    Ok(Bytes::from(v))
}

/// Feeds one watcher until it goes away. Reads history from `since` on; the hub's revision
/// channel wakes it on every applied entry.
async fn stream_events(node: Arc<Node>, service: Option<String>, mut since: u64, tx: mpsc::Sender<Result<Bytes, std::io::Error>>) {
    node.metrics.watch_clients.inc();
    let _gone = scopeguard(|| {
        node.metrics.watch_clients.dec();
    });
    let mut rx = node.shared.hub.subscribe();
    // Progress is due 2 s after the last line sent, however often the node applies entries
    // that this watcher's filter skips.
    let mut progress_due = Instant::now() + PROGRESS_EVERY;
    loop {
        rx.borrow_and_update();
        match node.shared.hub.since(since, service.as_deref(), PAGE) {
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
                if !events.is_empty() {
                    progress_due = Instant::now() + PROGRESS_EVERY;
                }
                // A node behind the client's `since` (a lagging follower) must not move the
                // resume point backwards.
                since = since.max(upto);
                if upto < node.shared.hub.head() {
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
fn scopeguard<F: FnMut()>(f: F) -> Guard<F> {
    Guard(f)
}
