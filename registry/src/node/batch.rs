//! Group commit of client writes: concurrent writes share one log entry (`Cmd::Batch`).
//!
//! openraft 0.9 appends each client write as its own entry and waits for that append's fsync
//! before it takes the next (`RaftCore::append_to_log`), so one entry per write caps a leader at
//! one write per fsync, however many clients wait. Here the writes that arrive while earlier
//! batches are being committed wait in a queue and go together as one entry: one fsync on the
//! leader, one on each follower, one round trip. A write that finds nothing in flight goes at
//! once, alone, so batching adds no latency to a quiet cluster.
//!
//! Every write of a batch is applied by `Store::apply` as it would be alone, in queue order, with
//! its own idempotency key and its own answer; they share the entry's index as their revision.
//! Only writes that take no id from the entry's index may share one (`Cmd::batchable`): a
//! token's id is its entry's index.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use super::{Node, NodeRef};
use crate::command::{Cmd, Proposal, Resp};
use crate::error::ApiError;

/// Batches being committed at once. Two keep the pipeline full: while one is in the leader's
/// fsync or on its way to the followers, the next fills up.
const IN_FLIGHT: usize = 2;
/// Most writes per entry.
const MAX_WRITES: usize = 256;
/// Most encoded bytes per entry: an entry must fit an append RPC (`network::APPEND_BYTES`).
const MAX_BYTES: usize = crate::network::APPEND_BYTES / 2;

pub(super) struct Queued {
    proposal: Proposal,
    /// The term this node led in when it checked the write: a write that waited across a
    /// change of leadership was checked against a state that may have moved on.
    term: u64,
    bytes: usize,
    reply: oneshot::Sender<Result<Resp, ApiError>>,
}

pub(super) type Queue = mpsc::UnboundedSender<Queued>;

pub(super) fn queue() -> (Queue, mpsc::UnboundedReceiver<Queued>) {
    mpsc::unbounded_channel()
}

impl Node {
    /// Proposes a batchable write through the queue; the answer is its own.
    pub(super) async fn propose_batched(&self, mut proposal: Proposal, term: u64) -> Result<Resp, ApiError> {
        debug_assert!(proposal.cmd.batchable());
        proposal.at_ms = super::now_ms();
        // The size decides how many share an entry; an encoding failure is caught when the
        // entry is encoded.
        let bytes = serde_json::to_vec(&proposal).map(|b| b.len()).unwrap_or(MAX_BYTES);
        let (reply, answer) = oneshot::channel();
        self.batches.send(Queued { proposal, term, bytes, reply }).map_err(|_| ApiError::Unavailable("this node is stopping".into()))?;
        // The same budget as a write alone: a forwarding node waits no longer than that.
        match tokio::time::timeout(self.config.write_timeout, answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ApiError::Unavailable("this node is stopping".into())),
            Err(_) => Err(ApiError::Unavailable("timed out waiting for the write to commit; it may still apply".into())),
        }
    }

    async fn commit_batch(&self, batch: Vec<Queued>) {
        let now = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.current_leader == Some(self.id)).then_some(m.current_term)
        };
        let (mut batch, moved): (Vec<Queued>, Vec<Queued>) = batch.into_iter().partition(|q| Some(q.term) == now);
        for q in moved {
            let _ = q.reply.send(Err(ApiError::Unavailable("leadership changed while the write waited; retry".into())));
        }
        if batch.is_empty() {
            return;
        }
        if batch.len() == 1 {
            let q = batch.pop().expect("one");
            let _ = q.reply.send(self.propose(q.proposal).await);
            return;
        }
        let (proposals, replies): (Vec<Proposal>, Vec<_>) = batch.into_iter().map(|q| (q.proposal, q.reply)).unzip();
        self.metrics.batched_writes.inc_by(proposals.len() as u64);
        match self.propose(Proposal::from(Cmd::Batch { proposals })).await {
            Ok(Resp::Batch { resps }) if resps.len() == replies.len() => {
                for (reply, resp) in replies.into_iter().zip(resps) {
                    let _ = reply.send(Ok(resp));
                }
            }
            Ok(other) => {
                for reply in replies {
                    let _ = reply.send(Err(ApiError::Internal(format!("a batch was answered with {other:?}"))));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Takes what is queued, up to the limits, whenever fewer than `IN_FLIGHT` batches are being
/// committed, and commits it as one entry.
pub(super) async fn run(node: NodeRef, mut queue: mpsc::UnboundedReceiver<Queued>, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut held: Option<Queued> = None;
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s.expect("never closed"),
            _ = stop.changed() => return,
        };
        let first = match held.take() {
            Some(q) => q,
            None => tokio::select! {
                q = queue.recv() => match q { Some(q) => q, None => return },
                _ = stop.changed() => return,
            },
        };
        if first.reply.is_closed() {
            continue;
        }
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while batch.len() < MAX_WRITES {
            match queue.try_recv() {
                // Its caller gave up (timed out, or the client went away): a retry of it may
                // be on its way, and nobody waits for this one. Never proposed, so dropping it
                // is safe.
                Ok(q) if q.reply.is_closed() => {}
                Ok(q) if bytes + q.bytes > MAX_BYTES => {
                    held = Some(q);
                    break;
                }
                Ok(q) => {
                    bytes += q.bytes;
                    batch.push(q);
                }
                Err(_) => break,
            }
        }
        let Some(n) = node.upgrade() else { return };
        tokio::spawn(async move {
            n.commit_batch(batch).await;
            drop(slot);
        });
    }
}

/// openraft snapshots after `--snapshot-every` entries; an entry of a batch holds up to
/// `MAX_WRITES` writes, so the log behind a snapshot could hold that many times more than the
/// setting says (in memory, and replayed on a restart). This also snapshots after
/// `--snapshot-every` writes, counted as applied on this node.
pub(super) async fn snapshot_by_writes(node: NodeRef, mut stop: watch::Receiver<bool>) {
    let mut last = 0u64;
    // A count checked once a second: the threshold is thousands of writes, so a second late
    // is nothing, and apply stays free of the check.
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let Some(n) = node.upgrade() else { return };
        let writes = n.shared.applied_writes();
        if writes.saturating_sub(last) >= n.config.snapshot_every {
            last = writes;
            let _ = n.raft.trigger().snapshot().await;
        }
    }
}
