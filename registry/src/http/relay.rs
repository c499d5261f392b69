//! Keepalives relayed to the leader in batches.
//!
//! A follower that gets a keepalive relays it, like any write, to the leader. One relayed
//! request per keepalive cost the leader four times what a direct keepalive does (a TLS
//! request from this node, its parsing, its audit, a response), so a fleet whose announcers
//! reach followers loaded the leader most. Here a follower keeps up to `IN_FLIGHT` requests per
//! leader out, `POST /raft/keepalives`, each carrying every keepalive that arrived while the
//! others were out (up to `MAX_ITEMS`); the leader renews each lease as if the keepalive had come
//! straight to it, with the client's own token, and answers each one on its own: a lease that
//! is gone is a 404 for that keepalive alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use proto::{ErrorBody, KeepaliveResponse, LeaseId};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::forward::ForwardTo;
use crate::error::ApiError;
use crate::node::Node;

/// Keepalives per relayed request.
const MAX_ITEMS: usize = 4096;
/// Relayed requests in flight per leader: two keep the pipe full, one filling while the other
/// is out.
const IN_FLIGHT: usize = 2;

/// `POST /raft/keepalives`: keepalives a follower relays, each with its client's token.
/// No `Debug`: the items hold bearer tokens.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepaliveBatch {
    pub items: Vec<RelayedKeepalive>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayedKeepalive {
    pub lease_id: LeaseId,
    /// The client's bearer token, as the follower got it: the leader checks it itself, so a
    /// token revoked on the leader but not yet on this follower is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// The answer: one outcome per item, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeepaliveOutcomes {
    pub outcomes: Vec<Outcome>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Renewed(KeepaliveResponse),
    Failed { status: u16, error: ErrorBody },
}

impl Outcome {
    pub fn of(r: Result<KeepaliveResponse, ApiError>) -> Outcome {
        match r {
            Ok(k) => Outcome::Renewed(k),
            // The leader's "not the leader" cannot be relayed a second time: nothing ran, retry.
            Err(ApiError::NotLeader(_)) => Outcome::failed(ApiError::NoLeader),
            Err(e) => Outcome::failed(e),
        }
    }

    fn failed(e: ApiError) -> Outcome {
        Outcome::Failed { status: super::error::status_of(&e).as_u16(), error: ErrorBody { code: e.code(), message: e.to_string() } }
    }

    fn into_response(self, leader: u64) -> Response {
        let mut resp = match self {
            Outcome::Renewed(k) => Json(k).into_response(),
            Outcome::Failed { status, error } => {
                let code = error.code;
                let mut r = (StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY), Json(error)).into_response();
                r.extensions_mut().insert(super::audit::AuditCode(code));
                r
            }
        };
        resp.extensions_mut().insert(super::audit::AuditLeader(leader));
        resp
    }
}

struct Pending {
    item: RelayedKeepalive,
    to: ForwardTo,
    /// `None`: the leader has no `/raft/keepalives` (an older version, during a rolling
    /// upgrade); the keepalive is forwarded on its own instead.
    reply: oneshot::Sender<Option<Outcome>>,
}

/// The keepalives waiting for one leader, and its batches out.
#[derive(Default)]
struct Lane {
    waiting: Vec<Pending>,
    in_flight: usize,
    /// The leader's `/raft/keepalives`, parsed once per address: parsing it per batch was 2 %
    /// of a follower's CPU.
    url: Option<(String, reqwest::Url)>,
}

/// The follower's side: a lane per leader. A keepalive joins its leader's lane; if fewer than
/// `IN_FLIGHT` batches are out, it starts one, which takes everything waiting and, when
/// answered, goes on with whatever arrived meanwhile until the lane is empty. No task sits
/// between the client's request and the batch: handing each keepalive to one cost a wake-up
/// per keepalive.
#[derive(Clone, Default)]
pub struct Relay {
    lanes: Arc<Mutex<HashMap<u64, Lane>>>,
}

impl Relay {
    /// Relays one keepalive of a client holding `token` to the leader `to`, with whatever
    /// others are waiting, and answers it with its own outcome; `None` when the leader takes
    /// no batches, and the keepalive must be forwarded on its own.
    pub async fn keepalive(&self, node: &Arc<Node>, to: ForwardTo, lease_id: LeaseId, token: Option<String>) -> Option<Response> {
        let leader = to.id;
        let (reply, outcome) = oneshot::channel();
        let start = {
            let mut lanes = self.lanes.lock().unwrap();
            let lane = lanes.entry(leader).or_default();
            lane.waiting.push(Pending { item: RelayedKeepalive { lease_id, token }, to, reply });
            let start = lane.in_flight < IN_FLIGHT;
            lane.in_flight += usize::from(start);
            start
        };
        if start {
            tokio::spawn(drain(node.clone(), self.lanes.clone(), leader));
        }
        match outcome.await {
            Ok(o) => o.map(|o| o.into_response(leader)),
            // The batch's task ended without answering: the runtime is shutting down.
            Err(_) => Some(ApiError::Unavailable("this node is stopping".into()).into_response()),
        }
    }
}

/// One of a lane's `IN_FLIGHT` batch senders: sends what waits, up to `MAX_ITEMS` at a time,
/// until nothing does. A batch to a leader that no longer answers holds up only the
/// keepalives meant for it; once this node learns of the new leader, keepalives for that one
/// go in a lane of their own.
async fn drain(node: Arc<Node>, lanes: Arc<Mutex<HashMap<u64, Lane>>>, leader: u64) {
    // Gives the lane its slot back should this task end early (a panic, the runtime shutting
    // down); a normal end gives it back under the same lock that found the lane empty, so no
    // keepalive can arrive in between and find every slot taken by senders that are leaving.
    struct Slot<'a> {
        lanes: &'a Mutex<HashMap<u64, Lane>>,
        leader: u64,
        held: bool,
    }
    impl Drop for Slot<'_> {
        fn drop(&mut self) {
            if self.held {
                if let Some(lane) = self.lanes.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&self.leader) {
                    lane.in_flight -= 1;
                }
            }
        }
    }
    let mut slot = Slot { lanes: &lanes, leader, held: true };
    loop {
        let (batch, url) = {
            let mut all = lanes.lock().unwrap();
            let lane = all.entry(leader).or_default();
            // A keepalive whose client gave up is not sent: it would renew a lease nobody holds.
            lane.waiting.retain(|p| !p.reply.is_closed());
            if lane.waiting.is_empty() {
                lane.in_flight -= 1;
                slot.held = false;
                return;
            }
            let rest = lane.waiting.split_off(lane.waiting.len().min(MAX_ITEMS));
            let batch = std::mem::replace(&mut lane.waiting, rest);
            let addr = &batch[0].to.addr;
            let url = match &lane.url {
                Some((a, u)) if a == addr => Ok(u.clone()),
                _ => reqwest::Url::parse(&format!("{}/raft/keepalives", node.peers().base(addr))).map_err(|e| e.to_string()),
            };
            if let Ok(u) = &url {
                lane.url = Some((addr.clone(), u.clone()));
            }
            (batch, url)
        };
        send(&node, url, batch).await;
    }
}

async fn send(node: &Node, url: Result<reqwest::Url, String>, batch: Vec<Pending>) {
    let to = batch[0].to.clone();
    let (items, replies): (Vec<RelayedKeepalive>, Vec<oneshot::Sender<Option<Outcome>>>) = batch.into_iter().map(|p| (p.item, p.reply)).unzip();
    node.metrics().forwarded.inc_by(items.len() as u64);
    node.metrics().relayed_batches.inc();
    let started = Instant::now();
    let answer = match url {
        Ok(url) => call(node, &to, url, KeepaliveBatch { items }).await,
        Err(e) => Err(ApiError::Unavailable(format!("leader {} has an address that makes no URL ({}): {e}", to.id, to.addr))),
    };
    node.metrics().forward_seconds.observe(started.elapsed().as_secs_f64());
    match answer {
        Ok(Some(a)) if a.outcomes.len() == replies.len() => {
            for (reply, o) in replies.into_iter().zip(a.outcomes) {
                let _ = reply.send(Some(o));
            }
        }
        Ok(Some(a)) => {
            let e = ApiError::Unavailable(format!("leader {} answered {} keepalives for {}", to.id, a.outcomes.len(), replies.len()));
            replies.into_iter().for_each(|r| drop(r.send(Some(Outcome::failed(e.clone())))));
        }
        Ok(None) => replies.into_iter().for_each(|r| drop(r.send(None))),
        Err(e) => replies.into_iter().for_each(|r| drop(r.send(Some(Outcome::failed(e.clone()))))),
    }
}

/// How long a relayed batch may take: less than a client gives a keepalive (1 s), so a leader
/// that stopped answering costs the client one try, and it moves on to another node.
const BUDGET: Duration = Duration::from_millis(800);

/// The leader's outcomes, or `None` if it has no such route (an older version).
async fn call(node: &Node, to: &ForwardTo, url: reqwest::Url, batch: KeepaliveBatch) -> Result<Option<KeepaliveOutcomes>, ApiError> {
    let leader = to.id;
    node.faults().check(node.id(), leader).map_err(|e| ApiError::Unavailable(format!("leader {leader} unreachable: {e}")))?;
    let resp = node
        .http()
        .post(url)
        .timeout(BUDGET)
        .json(&batch)
        .send()
        .await
        .map_err(|e| ApiError::Unavailable(format!("relaying keepalives to leader {leader} at {} failed: {e}", to.addr)))?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        return Err(ApiError::Unavailable(format!("leader {leader} refused relayed keepalives: {status} {}", body.chars().take(200).collect::<String>())));
    }
    resp.json().await.map(Some).map_err(|e| ApiError::Unavailable(format!("reading leader {leader}'s answer to relayed keepalives: {e}")))
}
