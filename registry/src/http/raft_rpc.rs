//! Peer RPC, server side: hands openraft's messages to the local Raft and returns its answer
//! (including its error) as JSON.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest};

use crate::error::ApiError;
use crate::network::SnapshotChunk;
use crate::node::{Node, PreVoteRequest, PreVoteResponse, RenewalAck, RenewalShare, TimeoutNow, TimeoutNowAck};
use crate::types::{NodeId, TypeConfig};

pub async fn append(State(node): State<Arc<Node>>, Json(req): Json<AppendEntriesRequest<TypeConfig>>) -> Result<Json<serde_json::Value>, ApiError> {
    if !node.may_append() {
        return Err(ApiError::Unavailable("rejoining: not taking appends until the old membership entry is gone".into()));
    }
    let resp = node.raft().append_entries(req).await;
    // Anything but "your vote is stale" means the sender leads the current term.
    if matches!(&resp, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
        node.note_leader_contact();
    }
    Ok(Json(serde_json::to_value(resp).expect("serializable")))
}

pub async fn vote(State(node): State<Arc<Node>>, Json(req): Json<VoteRequest<NodeId>>) -> Result<Json<serde_json::Value>, ApiError> {
    if !node.may_vote() {
        // Rejoining with an empty log: a vote from it could elect a leader without the entries
        // it had before its disk was lost. The candidate sees an unreachable peer.
        return Err(ApiError::Unavailable("rejoining with an empty log; not voting".into()));
    }
    Ok(Json(serde_json::to_value(node.raft().vote(req).await).expect("serializable")))
}

/// Lease renewals shared by the leader (`node/handover.rs`).
pub async fn renewals(State(node): State<Arc<Node>>, Json(share): Json<RenewalShare>) -> Json<RenewalAck> {
    Json(node.receive_renewals(share))
}

/// A pre-vote (`node/election.rs`): answered from this node's own view, changes nothing in Raft.
pub async fn prevote(State(node): State<Arc<Node>>, Json(req): Json<PreVoteRequest>) -> Json<PreVoteResponse> {
    Json(node.prevote(req).await)
}

/// A leader handing off on its way out asks this node to campaign now (`node/transfer.rs`).
pub async fn timeout_now(State(node): State<Arc<Node>>, Json(req): Json<TimeoutNow>) -> Json<TimeoutNowAck> {
    Json(node.timeout_now(req).await)
}

pub async fn snapshot(State(node): State<Arc<Node>>, body: Bytes) -> Result<Json<serde_json::Value>, ApiError> {
    // A chunk is megabytes: parse it off the async threads, so heartbeats keep going.
    let parsed = tokio::task::spawn_blocking(move || serde_json::from_slice::<SnapshotChunk>(&body)).await;
    let req: InstallSnapshotRequest<TypeConfig> = match parsed {
        Ok(Ok(chunk)) => chunk.into(),
        Ok(Err(e)) => return Err(ApiError::InvalidArgument(format!("snapshot chunk: {e}"))),
        Err(e) => return Err(ApiError::Unavailable(format!("snapshot chunk: {e}"))),
    };
    // openraft seeks to whatever offset a chunk names and writes there, into memory: a bogus
    // offset would allocate up to it, or leave a hole in the snapshot.
    if !node.may_append() {
        return Err(ApiError::Unavailable("rejoining: not taking snapshots until the old membership entry is gone".into()));
    }
    let (id, offset, len) = (req.meta.snapshot_id.clone(), req.offset, req.data.len() as u64);
    node.check_snapshot_chunk(&id, offset, len)?;
    let vote = req.vote;
    let resp = node.raft().install_snapshot(req).await;
    if matches!(&resp, Ok(r) if r.vote <= vote) {
        node.note_leader_contact();
        node.note_snapshot_chunk(&id, offset, len);
    }
    Ok(Json(serde_json::to_value(resp).expect("serializable")))
}

/// Keepalives a follower relays in one request (`relay`): each is renewed as if its client had
/// sent it here, and answered on its own.
pub async fn keepalives(State(node): State<Arc<Node>>, Json(batch): Json<super::relay::KeepaliveBatch>) -> Json<super::relay::KeepaliveOutcomes> {
    let renew = batch.items.into_iter().map(|item| {
        let node = node.clone();
        async move {
            let caller = super::acl::relayed_caller(&node, item.token.as_deref());
            let r = match caller {
                Ok(caller) => node.keepalive(item.lease_id, caller).await,
                Err(e) => Err(e),
            };
            super::relay::Outcome::of(r)
        }
    });
    Json(super::relay::KeepaliveOutcomes { outcomes: futures::future::join_all(renew).await })
}
