//! The HTTP surface of a node: the `/v1` client API, health and metrics, and the `/raft` peer
//! RPC, all on one address. Handlers are thin: they extract, call one `Node` method, and return
//! its `Result`; `error` turns domain errors into answers and `forward` relays to the leader.
//!
//! Architecture Invariant: only this module knows axum. Cross-cutting concerns (peer
//! authentication, and later TLS and tokens) are tower layers in `router`, not inside handlers.

mod acl;
mod audit;
mod cluster;
mod error;
mod extract;
mod forward;
mod inflight;
mod leases;
mod ops;
mod peer;
mod raft_rpc;
mod relay;
mod services;
mod tokens;
mod ui;
mod watch;

use std::sync::Arc;

use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, RawPathParams, Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post, put};
use axum::Router;

pub use forward::FORWARDED_HEADER;

use crate::node::Node;

/// Largest accepted body on the client API.
pub const API_BODY_LIMIT: usize = 64 * 1024;
/// Largest accepted body on the peer RPC (log batches, snapshot chunks).
const RAFT_BODY_LIMIT: usize = 256 * 1024 * 1024;

pub fn router(node: Arc<Node>) -> Router {
    let leases = Router::new()
        .route("/v1/leases", post(leases::grant))
        .route("/v1/leases/{id}/keepalive", post(leases::keepalive))
        .route("/v1/leases/{id}", delete(leases::revoke))
        .route("/v1/register", post(leases::register));
    let services = Router::new()
        .route("/v1/services", get(services::list))
        .route("/v1/removals", get(services::removals))
        .route("/v1/services/{service}", get(services::get))
        .route("/v1/services/{service}/instances/{instance}", put(services::put_instance).delete(services::delete_instance));
    let cluster = Router::new()
        .route("/v1/cluster", get(cluster::info))
        .route("/v1/cluster/members", post(cluster::add_member))
        .route("/v1/snapshot", get(cluster::snapshot))
        .route("/v1/cluster/members/{id}", delete(cluster::remove_member))
        .route("/v1/acl/tokens", get(tokens::list).post(tokens::create))
        .route("/v1/acl/tokens/{id}", delete(tokens::revoke));
    // Everything a client may send to any node: the leader-only parts are relayed.
    let forwarded = leases.merge(services).merge(cluster).route_layer(middleware::from_fn_with_state((node.clone(), relay::Relay::default()), client_layers));
    let local = Router::new()
        // Served by every node from its own applied log; never forwarded.
        .route("/v1/watch", get(watch::watch))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/ui", get(ui::index))
        .route("/ui/app.js", get(ui::app))
        .route("/ui/style.css", get(ui::style))
        // Tokens are checked on every client route before anything else runs there;
        // `route_layer` so the route's template is known (`acl::need`).
        .route_layer(middleware::from_fn_with_state(node.clone(), acl::layer));
    let api = forwarded.merge(local).fallback(ops::not_found).method_not_allowed_fallback(ops::method_not_allowed).layer(DefaultBodyLimit::max(API_BODY_LIMIT));
    let raft = Router::new()
        .route("/raft/append", post(raft_rpc::append))
        .route("/raft/vote", post(raft_rpc::vote))
        .route("/raft/prevote", post(raft_rpc::prevote))
        .route("/raft/renewals", post(raft_rpc::renewals))
        .route("/raft/timeout_now", post(raft_rpc::timeout_now))
        .route("/raft/snapshot", post(raft_rpc::snapshot))
        .route("/raft/keepalives", post(raft_rpc::keepalives))
        .layer(DefaultBodyLimit::max(RAFT_BODY_LIMIT));
    api.merge(raft).layer(middleware::from_fn_with_state((node.clone(), LastHint::default()), outermost)).with_state(node)
}

/// The layers of every route a client may send to any node, outermost first: counted while a
/// write is answered (`inflight`), audited (`audit`: outside the token check, so refusals are
/// logged too), the token checked (`acl`: before anything else runs, forwarding included),
/// relayed to the leader when the handler names one (`forward`), then the handler. One
/// middleware calling each in turn, not one layer each: a layer costs its allocations and a
/// boxed future on every request, and this runs on every keepalive.
async fn client_layers(
    State((node, relay)): State<(Arc<Node>, relay::Relay)>,
    matched: MatchedPath,
    // Not extracted here: refused, if unreadable, by `acl`, inside `inflight` and `audit`.
    params: Result<RawPathParams, RawPathParamsRejection>,
    req: Request,
    next: Next,
) -> Response {
    inflight::around(&node, req, |req| {
        audit::around(&node, req, |req| acl::around(&node, &matched, params, req, |req| forward::around(&node, &relay, req, next)))
    })
    .await
}

/// Around every request: who is a peer is settled before anything else looks at it (`peer`),
/// and the answer to an admitted request names the leader (`leader_hint`).
async fn outermost(State((node, last)): State<(Arc<Node>, LastHint)>, req: Request, next: Next) -> Response {
    peer::admit(&node, req, async |req| leader_hint(&node, &last, next.run(req).await)).await
}

/// Names the leader on an answer so clients can go straight there next time, but only while
/// this node's view of leadership is current (`Node::leader_hint`).
fn leader_hint(node: &Node, last: &LastHint, mut resp: Response) -> Response {
    let hint = node.leader_hint(|addr| {
        // The leader rarely changes: its header is built once per leader, not per answer.
        let mut last = last.lock().unwrap();
        match last.as_ref() {
            Some((a, v)) if a == addr => Some(v.clone()),
            _ => {
                let v = HeaderValue::from_str(&node.peers().base(addr)).ok()?;
                *last = Some((addr.to_string(), v.clone()));
                Some(v)
            }
        }
    });
    if let Some(v) = hint.flatten() {
        resp.headers_mut().insert(proto::LEADER_HEADER, v);
    }
    resp
}

/// The last leader named, and its header value.
type LastHint = Arc<std::sync::Mutex<Option<(String, HeaderValue)>>>;
