//! Peer RPC, server side: hands openraft's messages to the local Raft and returns its answer
//! (including its error) as JSON.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};

use crate::node::Node;
use crate::types::{NodeId, TypeConfig};

pub async fn append(State(node): State<Arc<Node>>, Json(req): Json<AppendEntriesRequest<TypeConfig>>) -> Json<serde_json::Value> {
    Json(serde_json::to_value(node.raft.append_entries(req).await).expect("serializable"))
}

pub async fn vote(State(node): State<Arc<Node>>, Json(req): Json<VoteRequest<NodeId>>) -> Json<serde_json::Value> {
    Json(serde_json::to_value(node.raft.vote(req).await).expect("serializable"))
}

pub async fn snapshot(State(node): State<Arc<Node>>, Json(req): Json<InstallSnapshotRequest<TypeConfig>>) -> Json<serde_json::Value> {
    Json(serde_json::to_value(node.raft.install_snapshot(req).await).expect("serializable"))
}
