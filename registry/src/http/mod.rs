//! The HTTP surface of a node: the `/v1` client API, health and metrics, and the `/raft` peer
//! RPC, all on one address.
//!
//! Architecture Invariant: only this module knows axum. Cross-cutting concerns (TLS, token
//! authentication) are meant to be added as tower layers in `router`, not inside handlers.

mod api;
mod body;
mod error;
mod forward;
mod raft_rpc;
mod watch;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post, put};
use axum::Router;

use crate::node::Node;

/// Largest accepted body on the client API.
pub const API_BODY_LIMIT: usize = 64 * 1024;
/// Largest accepted body on the peer RPC (log batches, snapshot chunks).
const RAFT_BODY_LIMIT: usize = 256 * 1024 * 1024;

pub fn router(node: Arc<Node>) -> Router {
    let v1 = Router::new()
        .route("/v1/leases", post(api::grant_lease))
        .route("/v1/leases/{id}/keepalive", post(api::keepalive))
        .route("/v1/leases/{id}", delete(api::revoke_lease))
        .route("/v1/services", get(api::list_services))
        .route("/v1/services/{service}", get(api::get_service))
        .route("/v1/services/{service}/instances/{instance}", put(api::put_instance).delete(api::delete_instance))
        .route("/v1/watch", get(watch::watch))
        .route("/v1/cluster", get(api::cluster))
        .route("/v1/cluster/members", post(api::add_member))
        .route("/v1/cluster/members/{id}", delete(api::remove_member))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(DefaultBodyLimit::max(API_BODY_LIMIT));
    let raft = Router::new()
        .route("/raft/append", post(raft_rpc::append))
        .route("/raft/vote", post(raft_rpc::vote))
        .route("/raft/snapshot", post(raft_rpc::snapshot))
        .layer(DefaultBodyLimit::max(RAFT_BODY_LIMIT));
    v1.merge(raft).layer(middleware::from_fn_with_state(node.clone(), leader_hint)).with_state(node)
}

/// Names the leader on every answer so clients can go straight there next time.
async fn leader_hint(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    if let Some((_, addr)) = node.leader() {
        if let Ok(v) = HeaderValue::from_str(&format!("http://{addr}")) {
            resp.headers_mut().insert(proto::LEADER_HEADER, v);
        }
    }
    resp
}
