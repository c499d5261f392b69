//! Keepalives relayed to the leader in batches.
//!
//! A follower that gets a keepalive relays it, like any write, to the leader. One relayed
//! request per keepalive cost the leader four times what a direct keepalive does (a TLS
//! request from this node, its parsing, its audit, a response), so a fleet whose announcers
//! reach followers loaded the leader most. Here a follower keeps one request to the leader in
//! flight, `POST /raft/keepalives`, carrying every keepalive that arrived while the previous one
//! was out (up to `MAX_ITEMS`); the leader renews each lease as if the keepalive had come
//! straight to it, with the client's own token, and answers each one on its own: a lease that
//! is gone is a 404 for that keepalive alone.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use proto::{ErrorBody, KeepaliveResponse, LeaseId};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::forward::ForwardTo;
use crate::error::ApiError;
use crate::node::Node;

/// Keepalives per relayed request.
const MAX_ITEMS: usize = 4096;

/// `POST /raft/keepalives`: keepalives a follower relays, each with its client's token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepaliveBatch {
    pub items: Vec<RelayedKeepalive>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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
    reply: oneshot::Sender<Outcome>,
}

/// The follower's side: a queue and the task that drains it, started on first use.
#[derive(Clone, Default)]
pub struct Relay {
    queue: Arc<OnceLock<mpsc::UnboundedSender<Pending>>>,
}

impl Relay {
    /// Relays one keepalive of a client holding `token` to the leader `to`, with whatever
    /// others are waiting, and answers it with its own outcome.
    pub async fn keepalive(&self, node: &Arc<Node>, to: ForwardTo, lease_id: LeaseId, token: Option<String>) -> Response {
        let leader = to.id;
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run(Arc::downgrade(node), rx));
            tx
        });
        let (reply, outcome) = oneshot::channel();
        let unavailable = || ApiError::Unavailable("this node is stopping".into()).into_response();
        if queue.send(Pending { item: RelayedKeepalive { lease_id, token }, to, reply }).is_err() {
            return unavailable();
        }
        match outcome.await {
            Ok(o) => o.into_response(leader),
            Err(_) => unavailable(),
        }
    }
}

/// One batch at a time: while it is out, the next fills up.
async fn run(node: std::sync::Weak<Node>, mut queue: mpsc::UnboundedReceiver<Pending>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_ITEMS {
            match queue.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let Some(node) = node.upgrade() else { return };
        // Leadership may have moved while they waited: each goes to the leader it was meant for.
        while !batch.is_empty() {
            let leader = batch[0].to.id;
            let (this, rest): (Vec<Pending>, Vec<Pending>) = batch.into_iter().partition(|p| p.to.id == leader);
            batch = rest;
            send(&node, this).await;
        }
    }
}

async fn send(node: &Node, batch: Vec<Pending>) {
    let to = batch[0].to.clone();
    let (items, replies): (Vec<RelayedKeepalive>, Vec<oneshot::Sender<Outcome>>) = batch.into_iter().map(|p| (p.item, p.reply)).unzip();
    node.metrics().forwarded.inc_by(items.len() as u64);
    node.metrics().relayed_batches.inc();
    let started = Instant::now();
    let answer = call(node, &to, KeepaliveBatch { items }).await;
    node.metrics().forward_seconds.observe(started.elapsed().as_secs_f64());
    match answer {
        Ok(a) if a.outcomes.len() == replies.len() => {
            for (reply, o) in replies.into_iter().zip(a.outcomes) {
                let _ = reply.send(o);
            }
        }
        Ok(a) => {
            let e = ApiError::Unavailable(format!("leader {} answered {} keepalives for {}", to.id, a.outcomes.len(), replies.len()));
            replies.into_iter().for_each(|r| drop(r.send(Outcome::failed(e.clone()))));
        }
        Err(e) => replies.into_iter().for_each(|r| drop(r.send(Outcome::failed(e.clone())))),
    }
}

/// How long the leader may take: it waits up to `READY_WAIT` to be a ready leader, then renews
/// in memory.
const BUDGET: Duration = Duration::from_secs(2);

async fn call(node: &Node, to: &ForwardTo, batch: KeepaliveBatch) -> Result<KeepaliveOutcomes, ApiError> {
    let leader = to.id;
    node.faults().check(node.id(), leader).map_err(|e| ApiError::Unavailable(format!("leader {leader} unreachable: {e}")))?;
    let url = format!("{}/raft/keepalives", node.peers().base(&to.addr));
    let resp = node
        .http()
        .post(url)
        .timeout(crate::node::READY_WAIT + BUDGET)
        .json(&batch)
        .send()
        .await
        .map_err(|e| ApiError::Unavailable(format!("relaying keepalives to leader {leader} at {} failed: {e}", to.addr)))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        return Err(ApiError::Unavailable(format!("leader {leader} refused relayed keepalives: {status} {}", body.chars().take(200).collect::<String>())));
    }
    resp.json().await.map_err(|e| ApiError::Unavailable(format!("reading leader {leader}'s answer to relayed keepalives: {e}")))
}
