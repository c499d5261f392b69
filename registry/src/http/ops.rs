//! For operators and their tools: `/healthz`, `/readyz`, `/metrics`, and the answers to
//! unknown routes and methods.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use openraft::ServerState;

use crate::error::ApiError;
use crate::node::Node;

pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when this node is part of a cluster with a known leader.
pub async fn readyz(State(node): State<Arc<Node>>) -> Response {
    // Told to turn ACLs on, but they are not on yet: the leader lacks the flag (every initial
    // member needs it) or has not written the entry. Not ready, so it shows.
    if matches!(node.acl_view(), crate::node::AclView::Bootstrapping(_)) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: ACLs not on yet (does the leader have --acl-bootstrap-token-file?)\n").into_response();
    }
    match node.readiness() {
        Ok(leader) => format!("ready: leader is {leader}\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response(),
    }
}

pub async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let m = node.raft_metrics();
    let ix = node.indexes();
    let x = node.metrics();
    x.applied_index.set(ix.applied as i64);
    x.commit_index.set(ix.commit as i64);
    x.last_log_index.set(ix.last_log as i64);
    x.term.set(m.current_term as i64);
    x.is_leader.set((m.state == ServerState::Leader) as i64);
    x.applied_entries.inner().store(node.shared().applied_entries(), Ordering::Relaxed);
    node.read_store(|s| {
        x.leases_live.set(s.leases().len() as i64);
        x.instances.set(s.instance_count() as i64);
    });
    ([(axum::http::header::CONTENT_TYPE, runtime::metrics::CONTENT_TYPE)], x.render()).into_response()
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let body = proto::ErrorBody { code: proto::ErrorCode::MethodNotAllowed, message: format!("{method} is not allowed on {}", uri.path()) };
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("route {}", uri.path()))
}
