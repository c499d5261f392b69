//! Forwarding to the leader, so a client can send any request to any node.
//!
//! One step does it for every forwarded `/v1` route: it keeps the request's bytes, runs the
//! handler, and when the handler's answer is "not the leader, and the leader is X"
//! (`ApiError::NotLeader` puts a `ForwardTo` on the response) it relays the request to X and
//! returns X's answer. A follower's keepalive is relayed before its handler runs, where
//! `Node::keepalive_elsewhere` says the handler would only name the leader. Handlers never
//! forward themselves.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::API_BODY_LIMIT;
use crate::error::ApiError;
use crate::node::Node;

/// Set on forwarded requests; a node never forwards a request that carries it, so a request
/// makes at most one hop even while leadership moves.
pub const FORWARDED_HEADER: &str = "x-registry-forwarded";

/// Set by a forwarding node when the request it relays was itself made by a member (a joining
/// node's membership change, say): the leader then counts it as a peer's. Without it a relayed
/// request is the client's, and the leader checks the client's token itself, so a token revoked
/// on the leader but not yet on a lagging follower is refused there. Only a peer may set it
/// (`peer::admit` drops it from anyone else).
pub const PEER_ORIGIN_HEADER: &str = "x-registry-peer-origin";

/// Put on a response by `ApiError::NotLeader(Some(..))`: the leader to relay the request to.
#[derive(Debug, Clone)]
pub struct ForwardTo {
    pub id: u64,
    pub addr: String,
}

/// Headers relayed to the leader besides the body.
const RELAYED: [&str; 5] = ["content-type", "authorization", proto::IDEMPOTENCY_KEY_HEADER, super::extract::CLIENT_ADDR_HEADER, PEER_ORIGIN_HEADER];

/// Runs the handler (`next`), and relays the request to the leader if it answers with one.
pub async fn around(node: &Arc<Node>, relay: &super::relay::Relay, req: Request, next: Next) -> Response {
    // A follower's keepalive goes straight to the relay: the handler would only say where to.
    // If that leader takes no batches (an older version), it is sent on its own below. Only
    // without a body: one is read, and refused past the limit, below, as on every route.
    let mut batches_refused = false;
    let keepalive = keepalive_of(req.method(), req.uri());
    let bodiless = axum::body::HttpBody::size_hint(req.body()).exact() == Some(0);
    if let Some(lease_id) = keepalive.filter(|_| bodiless && !req.headers().contains_key(FORWARDED_HEADER)) {
        if let Some((id, addr)) = node.keepalive_elsewhere() {
            let token = super::acl::bearer(req.headers()).map(str::to_string);
            match relay.keepalive(node, ForwardTo { id, addr }, lease_id, token).await {
                Some(resp) => return resp,
                None => batches_refused = true,
            }
        }
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, API_BODY_LIMIT).await {
        Ok(b) => b,
        Err(_) => return ApiError::PayloadTooLarge { limit: API_BODY_LIMIT }.into_response(),
    };
    // Only what a relay would need is kept, and only cheap copies of it (a header value is
    // reference-counted): most requests are answered here, so the relay's headers are built
    // only once the handler has said where to.
    let (method, uri) = (parts.method.clone(), parts.uri.clone());
    let kept = RELAYED.map(|name| parts.headers.get(name).cloned());
    let forwarded = parts.headers.contains_key(FORWARDED_HEADER);
    let peer_origin = parts.extensions.get::<super::peer::PeerProven>().is_some();
    let client = super::extract::connection_addr(&parts);
    let mut resp = next.run(Request::from_parts(parts, Body::from(bytes.clone()))).await;
    let Some(to) = resp.extensions_mut().remove::<ForwardTo>() else { return resp };
    if forwarded {
        // Nothing ran here: `no_leader` tells the client it may safely send it again.
        return ApiError::NoLeader.into_response();
    }
    let mut headers = HeaderMap::with_capacity(RELAYED.len());
    for (name, value) in RELAYED.iter().zip(kept) {
        if let Some(v) = value {
            headers.insert(*name, v);
        }
    }
    if peer_origin {
        headers.insert(PEER_ORIGIN_HEADER, axum::http::HeaderValue::from_static("1"));
    }
    if let Some(ip) = client.and_then(|a| a.ip().to_string().parse().ok()) {
        headers.insert(super::extract::CLIENT_ADDR_HEADER, ip);
    }
    if let Some(lease_id) = keepalive.filter(|_| !batches_refused) {
        let token = super::acl::bearer(&headers).map(str::to_string);
        if let Some(resp) = relay.keepalive(node, to.clone(), lease_id, token).await {
            return resp;
        }
    }
    send(node, &to, method, &uri, &headers, bytes).await.unwrap_or_else(IntoResponse::into_response)
}

/// The lease of a keepalive (`POST /v1/leases/{id}/keepalive`): those are relayed in batches.
fn keepalive_of(method: &Method, uri: &Uri) -> Option<u64> {
    let id = uri.path().strip_prefix("/v1/leases/")?.strip_suffix("/keepalive")?;
    (*method == Method::POST).then(|| id.parse().ok()).flatten()
}

/// How long the leader may take. It must cover the leader's own budget, or the client is told
/// "unavailable" for a write the leader then applies, and retries it (a second lease).
fn budget(node: &Node, method: &Method, uri: &Uri) -> Duration {
    let path = uri.path();
    let query = uri.query().unwrap_or("");
    if path.starts_with("/v1/cluster/members") {
        // Adding a member waits for it to catch up.
        MEMBERSHIP_BUDGET
    } else if *method == Method::GET && query.split('&').any(|kv| kv.starts_with("index=")) {
        crate::node::MAX_WAIT + Duration::from_secs(10)
    } else {
        // The leader may wait for readiness, then for the commit, then answer.
        crate::node::READY_WAIT + node.config().write_timeout + Duration::from_secs(1)
    }
}

/// Longest a forwarded membership change may take.
const MEMBERSHIP_BUDGET: Duration = Duration::from_secs(120);

async fn send(node: &Node, to: &ForwardTo, method: Method, uri: &Uri, headers: &HeaderMap, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let leader = to.id;
    node.faults().check(node.id(), leader).map_err(|e| ApiError::Unavailable(format!("leader {leader} unreachable: {e}")))?;
    node.metrics().forwarded.inc();
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let timeout = budget(node, &method, uri);
    let url = reqwest::Url::parse(&format!("{}{path}", node.peers().base(&to.addr))).map_err(|e| ApiError::InvalidArgument(format!("path: {e}")))?;
    // The URL parser resolves `..`, `%2e%2e` and `\`: the leader would then see another route
    // than the one checked here, sent with this node's credentials. Only the path as received
    // is forwarded.
    if url.path() != uri.path() {
        return Err(ApiError::InvalidArgument(format!("path {:?} is not in normal form", uri.path())));
    }
    let mut req = node.http().request(method, url).timeout(timeout).header(FORWARDED_HEADER, node.id().to_string());
    for name in RELAYED {
        if let Some(v) = headers.get(name) {
            req = req.header(name, v.as_bytes());
        }
    }
    let started = std::time::Instant::now();
    let resp = req.body(body).send().await;
    node.metrics().forward_seconds.observe(started.elapsed().as_secs_f64());
    let resp = resp.map_err(|e| ApiError::Unavailable(format!("forwarding to leader {leader} at {} failed: {e}", to.addr)))?;
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let relayed: Vec<(String, Vec<u8>)> = resp
        .headers()
        .iter()
        .filter(|(k, _)| *k == reqwest::header::CONTENT_TYPE || (k.as_str().starts_with("x-registry-") && k.as_str() != crate::peer_auth::SECRET_HEADER))
        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
        .collect();
    let bytes = resp.bytes().await.map_err(|e| ApiError::Unavailable(format!("reading the leader's answer failed: {e}")))?;
    let code = (!status.is_success()).then(|| serde_json::from_slice::<proto::ErrorBody>(&bytes).ok()).flatten().map(|b| b.code);
    let mut out = Response::builder().status(status).extension(super::audit::AuditLeader(leader));
    if let Some(code) = code {
        out = out.extension(super::audit::AuditCode(code));
    }
    for (k, v) in relayed {
        out = out.header(k, v);
    }
    Ok(out.body(Body::from(bytes)).expect("valid response"))
}
