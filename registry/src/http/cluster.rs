//! `/v1/cluster`: what this node sees of the cluster, and membership changes.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use proto::{ClusterInfo, MemberChange, WriteResult};

use super::extract::{parse_id, JsonBody};
use crate::error::ApiError;
use crate::node::Node;

pub async fn info(State(node): State<Arc<Node>>) -> Json<ClusterInfo> {
    Json(node.cluster_info())
}

/// `GET /v1/snapshot` (admin): a backup, taken on the leader (a follower relays it there).
pub async fn snapshot(State(node): State<Arc<Node>>) -> Result<Json<proto::SnapshotDocument>, ApiError> {
    node.snapshot().await.map(Json)
}

pub async fn add_member(State(node): State<Arc<Node>>, JsonBody(req): JsonBody<MemberChange>) -> Result<Json<WriteResult>, ApiError> {
    let addr = req.addr.ok_or_else(|| ApiError::InvalidArgument("adding a member needs its addr (HOST:PORT)".into()))?;
    node.add_member(req.id, addr).await.map(Json)
}

pub async fn remove_member(State(node): State<Arc<Node>>, Path(id): Path<String>) -> Result<Json<WriteResult>, ApiError> {
    node.remove_member(parse_id("node", &id)?).await.map(Json)
}
