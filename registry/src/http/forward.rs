//! Forwarding to the leader, so a client can send any request to any node.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::node::Node;

/// Set on forwarded requests; a node never forwards a request that carries it, so a request
/// makes at most one hop even while leadership moves.
pub const FORWARDED_HEADER: &str = "x-registry-forwarded";

pub struct Forward {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Forward {
    pub fn new(method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Forward {
        Forward { method, uri, headers, body }
    }

    /// Sends the request to the leader named in `err` and relays its answer; any other error
    /// is answered as it is.
    pub async fn or_answer(self, node: &Node, err: ApiError) -> Response {
        match err {
            ApiError::NotLeader(Some((id, addr))) if !self.headers.contains_key(FORWARDED_HEADER) => {
                self.send(node, id, &addr).await.unwrap_or_else(IntoResponse::into_response)
            }
            ApiError::NotLeader(Some(_)) => {
                ApiError::Unavailable("leadership moved while the request was being forwarded; retry".into()).into_response()
            }
            ApiError::NotLeader(None) => ApiError::NoLeader.into_response(),
            other => other.into_response(),
        }
    }

    async fn send(self, node: &Node, leader: u64, addr: &str) -> Result<Response, ApiError> {
        node.faults.check(node.id, leader).map_err(|e| ApiError::Unavailable(format!("leader {leader} unreachable: {e}")))?;
        node.metrics.forwarded.inc();
        let path = self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        // A leader that stopped answering (paused, cut off) must not hold the client: it will
        // try another node. Blocking queries may wait up to their `wait`.
        let timeout = if self.uri.query().is_some_and(|q| q.contains("index=")) { Duration::from_secs(310) } else { Duration::from_secs(3) };
        let mut req = node.http.request(self.method, format!("http://{addr}{path}")).timeout(timeout).header(FORWARDED_HEADER, node.id.to_string());
        if let Some(ct) = self.headers.get(axum::http::header::CONTENT_TYPE) {
            req = req.header(axum::http::header::CONTENT_TYPE, ct);
        }
        let resp = req
            .body(self.body)
            .send()
            .await
            .map_err(|e| ApiError::Unavailable(format!("forwarding to leader {leader} at {addr} failed: {e}")))?;
        let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let content_type = resp.headers().get(reqwest::header::CONTENT_TYPE).cloned();
        let bytes = resp.bytes().await.map_err(|e| ApiError::Unavailable(format!("reading the leader's answer failed: {e}")))?;
        let mut out = Response::builder().status(status);
        if let Some(ct) = content_type {
            out = out.header(axum::http::header::CONTENT_TYPE, ct.as_bytes());
        }
        Ok(out.body(Body::from(bytes)).expect("valid response"))
    }
}
