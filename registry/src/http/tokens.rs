//! `/v1/acl/tokens`: create, list and revoke ACL tokens (admin only, by `acl::need`'s default).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use proto::{TokenCreateRequest, TokenCreated, TokenInfo, TokenList, WriteResult};

use super::extract::{parse_id, JsonBody, RequestIdHeader};
use crate::acl::Scope;
use crate::error::ApiError;
use crate::node::Node;

pub async fn create(
    State(node): State<Arc<Node>>,
    RequestIdHeader(rid): RequestIdHeader,
    JsonBody(req): JsonBody<TokenCreateRequest>,
) -> Result<Json<TokenCreated>, ApiError> {
    let scopes: Vec<Scope> = req.scopes.iter().map(|s| s.parse()).collect::<Result<_, String>>().map_err(ApiError::InvalidArgument)?;
    node.create_token(rid, &req.token, scopes, req.description).await.map(Json)
}

/// This node's replica of the tokens: never their secrets.
pub async fn list(State(node): State<Arc<Node>>) -> Json<TokenList> {
    Json(node.read_store(|s| {
        TokenList {
            enabled: s.acl().enabled,
            tokens: s
                .acl()
                .tokens
                .values()
                .map(|t| TokenInfo {
                    id: t.id,
                    scopes: t.scopes.iter().map(Scope::to_string).collect(),
                    description: t.description.clone(),
                    created_ms: t.created_ms,
                })
                .collect(),
        }
    }))
}

pub async fn revoke(State(node): State<Arc<Node>>, RequestIdHeader(rid): RequestIdHeader, Path(id): Path<String>) -> Result<Json<WriteResult>, ApiError> {
    node.revoke_token(rid, parse_id("token", &id)?).await.map(Json)
}
