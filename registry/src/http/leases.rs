//! `/v1/leases`: grant, keepalive, revoke; and `/v1/register`, a grant with its instances.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::{Extension, Json};
use proto::{KeepaliveResponse, LeaseGrant, LeaseGrantRequest, RegisterRequest, WriteResult};

use super::extract::{parse_id, ClientAddr, JsonBody, RequestIdHeader};
use crate::acl::Caller;
use crate::error::ApiError;
use crate::node::Node;

pub async fn grant(
    State(node): State<Arc<Node>>,
    RequestIdHeader(rid): RequestIdHeader,
    ClientAddr(owner): ClientAddr,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<LeaseGrantRequest>,
) -> Result<Json<LeaseGrant>, ApiError> {
    node.grant(rid, req.ttl_ms, owner, caller).await.map(Json)
}

pub async fn keepalive(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<KeepaliveResponse>, ApiError> {
    node.keepalive(parse_id("lease", &id)?, caller).await.map(Json)
}

pub async fn revoke(
    State(node): State<Arc<Node>>,
    RequestIdHeader(rid): RequestIdHeader,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<WriteResult>, ApiError> {
    node.revoke(rid, parse_id("lease", &id)?, caller).await.map(Json)
}

pub async fn register(
    State(node): State<Arc<Node>>,
    RequestIdHeader(rid): RequestIdHeader,
    ClientAddr(owner): ClientAddr,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<RegisterRequest>,
) -> Result<Json<LeaseGrant>, ApiError> {
    node.register(rid, req, owner, caller).await.map(Json)
}
