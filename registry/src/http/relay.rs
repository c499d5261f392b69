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
    /// When it joined the lane: it is answered within `BUDGET` of this, however long the
    /// batches before it take.
    since: Instant,
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
            let mut lanes = lock(&self.lanes);
            let lane = lanes.entry(leader).or_default();
            lane.waiting.push(Pending { item: RelayedKeepalive { lease_id, token }, to, reply, since: Instant::now() });
            let start = lane.in_flight < IN_FLIGHT;
            lane.in_flight += usize::from(start);
            start
        };
        if start {
            tokio::spawn(drain(node.clone(), self.lanes.clone(), leader));
        }
        match outcome.await {
            Ok(o) => o.map(|o| o.into_response(leader)),
            // The batch's task ended without answering: the runtime is shutting down, or the
            // last sender of the lane panicked (`Slot`).
            Err(_) => Some(ApiError::Unavailable("the relay to the leader ended without an answer; retry".into()).into_response()),
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
                if let Some(lane) = lock(self.lanes).get_mut(&self.leader) {
                    lane.in_flight -= 1;
                    // No sender left to take them: their clients get a retriable answer now,
                    // not when the next keepalive for this leader comes, if one ever does.
                    if lane.in_flight == 0 {
                        lane.waiting.clear();
                    }
                }
            }
        }
    }
    let mut slot = Slot { lanes: &lanes, leader, held: true };
    loop {
        let (batch, url, timeout) = {
            let mut all = lock(&lanes);
            let lane = all.entry(leader).or_default();
            let Some((batch, timeout)) = take_batch(&mut lane.waiting, Instant::now()) else {
                lane.in_flight -= 1;
                slot.held = false;
                return;
            };
            let addr = &batch[0].to.addr;
            let url = match &lane.url {
                Some((a, u)) if a == addr => Ok(u.clone()),
                _ => reqwest::Url::parse(&format!("{}/raft/keepalives", node.peers().base(addr))).map_err(|e| e.to_string()),
            };
            if let Ok(u) = &url {
                lane.url = Some((addr.clone(), u.clone()));
            }
            (batch, url, timeout)
        };
        send(&node, url, batch, timeout).await;
    }
}

/// The relay's locks guard no invariant a panic elsewhere could leave half-made: a poisoned
/// lock is used as it is, so one panic does not fail every later keepalive of this node.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The next batch to send from `waiting` at `now`, and how long it may take; `None` when
/// nothing is left to send. A keepalive whose client gave up is dropped: it would renew a
/// lease nobody holds. One that waited so long for the batches before it (a slow leader) that
/// its own could not be sent in what is left of its `BUDGET` is answered 503 unsent: the client
/// would have given up, and tries another node sooner.
fn take_batch(waiting: &mut Vec<Pending>, now: Instant) -> Option<(Vec<Pending>, Duration)> {
    let late = |p: &Pending| now.saturating_duration_since(p.since) + MIN_SEND > BUDGET;
    for p in waiting.extract_if(.., |p| p.reply.is_closed() || late(p)) {
        if !p.reply.is_closed() {
            let e = ApiError::Unavailable(format!("the leader's answers to relayed keepalives came too slowly: none could be sent within {BUDGET:?}; retry"));
            let _ = p.reply.send(Some(Outcome::failed(e)));
        }
    }
    if waiting.is_empty() {
        return None;
    }
    let rest = waiting.split_off(waiting.len().min(MAX_ITEMS));
    let batch = std::mem::replace(waiting, rest);
    // Items join under the lane's lock, stamped there, so the first is the oldest: its
    // deadline bounds the batch.
    let timeout = BUDGET.saturating_sub(now.saturating_duration_since(batch[0].since));
    Some((batch, timeout))
}

async fn send(node: &Node, url: Result<reqwest::Url, String>, batch: Vec<Pending>, timeout: Duration) {
    let to = batch[0].to.clone();
    let (items, replies): (Vec<RelayedKeepalive>, Vec<oneshot::Sender<Option<Outcome>>>) = batch.into_iter().map(|p| (p.item, p.reply)).unzip();
    let batch = KeepaliveBatch { items };
    node.metrics().forwarded.inc_by(batch.items.len() as u64);
    node.metrics().relayed_batches.inc();
    let started = Instant::now();
    let answer = match url {
        Ok(url) => call(node, &to, url, &batch, timeout).await,
        Err(e) => Err(ApiError::Unavailable(format!("leader {} has an address that makes no URL ({}): {e}", to.id, to.addr))),
    };
    node.metrics().forward_seconds.observe(started.elapsed().as_secs_f64());
    match answer {
        // Outcomes come in the items' order; a renewal of another lease than its item's would
        // be a leader that broke it, and answers no one.
        Ok(Some(a))
            if a.outcomes.len() == replies.len()
                && a.outcomes.iter().zip(&batch.items).all(|(o, i)| !matches!(o, Outcome::Renewed(k) if k.lease_id != i.lease_id)) =>
        {
            for (reply, o) in replies.into_iter().zip(a.outcomes) {
                let _ = reply.send(Some(o));
            }
        }
        Ok(Some(a)) => {
            let e = ApiError::Unavailable(format!("leader {} answered {} keepalives for {}, or not in their order", to.id, a.outcomes.len(), replies.len()));
            replies.into_iter().for_each(|r| drop(r.send(Some(Outcome::failed(e.clone())))));
        }
        Ok(None) => replies.into_iter().for_each(|r| drop(r.send(None))),
        Err(e) => replies.into_iter().for_each(|r| drop(r.send(Some(Outcome::failed(e.clone()))))),
    }
}

/// How long a relayed keepalive may wait for its answer, from when it joined its lane: less
/// than a client gives a keepalive (1 s), so a leader that stopped answering costs the client
/// one try, and it moves on to another node.
const BUDGET: Duration = Duration::from_millis(800);
/// Least time a batch is sent with: less would time out before a loaded leader answers.
const MIN_SEND: Duration = Duration::from_millis(100);

/// The leader's outcomes, or `None` if it has no such route (an older version).
async fn call(node: &Node, to: &ForwardTo, url: reqwest::Url, batch: &KeepaliveBatch, timeout: Duration) -> Result<Option<KeepaliveOutcomes>, ApiError> {
    let leader = to.id;
    let delay = node.faults().check(node.id(), leader).map_err(|e| ApiError::Unavailable(format!("leader {leader} unreachable: {e}")))?;
    if !delay.is_zero() {
        // An injected slow link (tests): it spends the batch's time as a slow leader would.
        tokio::time::sleep(delay.min(timeout)).await;
        if delay >= timeout {
            return Err(ApiError::Unavailable(format!("relaying keepalives to leader {leader} at {} timed out", to.addr)));
        }
    }
    let resp = node
        .http()
        .post(url)
        .timeout(timeout - delay)
        .json(batch)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(lease_id: LeaseId, since: Instant) -> (Pending, oneshot::Receiver<Option<Outcome>>) {
        let (reply, rx) = oneshot::channel();
        (Pending { item: RelayedKeepalive { lease_id, token: None }, to: ForwardTo { id: 1, addr: "127.0.0.1:1".into() }, since, reply }, rx)
    }

    #[test]
    fn a_batch_takes_what_can_still_be_answered_in_time() {
        let now = Instant::now() + Duration::from_secs(10);
        let (old, mut old_rx) = pending(1, now - BUDGET);
        let (edge, mut edge_rx) = pending(2, now - (BUDGET - MIN_SEND) - Duration::from_millis(1));
        let (gone, gone_rx) = pending(3, now - Duration::from_millis(300));
        drop(gone_rx);
        let (young, _young_rx) = pending(4, now - Duration::from_millis(300));
        let (new, _new_rx) = pending(5, now);
        let mut waiting = vec![old, edge, gone, young, new];

        let (batch, timeout) = take_batch(&mut waiting, now).expect("two keepalives can still be sent");
        assert_eq!(batch.iter().map(|p| p.item.lease_id).collect::<Vec<_>>(), vec![4, 5], "in their order; the late and the abandoned are not sent");
        assert!(waiting.is_empty());
        assert_eq!(timeout, BUDGET - Duration::from_millis(300), "the oldest one sent bounds the batch");
        for rx in [&mut old_rx, &mut edge_rx] {
            match rx.try_recv() {
                Ok(Some(Outcome::Failed { status: 503, error })) => assert_eq!(error.code, proto::ErrorCode::Unavailable),
                other => panic!("a late keepalive is answered 503 at once, got {other:?}"),
            }
        }
        assert!(take_batch(&mut waiting, now).is_none(), "nothing left");
    }

    #[test]
    fn a_batch_holds_at_most_max_items_and_never_less_than_min_send() {
        let now = Instant::now() + Duration::from_secs(10);
        let oldest = now - (BUDGET - MIN_SEND);
        let (mut waiting, _rxs): (Vec<_>, Vec<_>) = (0..MAX_ITEMS as u64 + 3).map(|i| pending(i, oldest)).unzip();
        let (batch, timeout) = take_batch(&mut waiting, now).unwrap();
        assert_eq!((batch.len(), waiting.len(), timeout), (MAX_ITEMS, 3, MIN_SEND));
        assert_eq!(waiting[0].item.lease_id, MAX_ITEMS as u64, "the rest wait in order");
    }
}
