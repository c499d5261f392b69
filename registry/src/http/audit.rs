//! The audit layer: one line in the audit log (`crate::audit`) per write a client sent to this
//! node, written once the answer is known. Outermost on the client routes, so a request refused
//! for its token is logged too; the token layer and the forwarding layer leave what they know on
//! the response (`AuditToken`, `AuditCode`, `AuditLeader`) for this layer to read.

use std::future::Future;
use std::time::SystemTime;

use axum::extract::Request;
use axum::http::Method;
use axum::response::Response;
use tokio::time::Instant;

use crate::acl::TokenId;
use crate::audit::{result_of, Record};
use crate::node::Node;

/// The caller's token id, left on the response by the token layer.
#[derive(Debug, Clone, Copy)]
pub struct AuditToken(pub TokenId);

/// The error code of an error answer, left on the response where it was made.
#[derive(Debug, Clone, Copy)]
pub struct AuditCode(pub proto::ErrorCode);

/// The leader a request was relayed to, left on the response by the forwarding layer.
#[derive(Debug, Clone, Copy)]
pub struct AuditLeader(pub u64);

/// Runs `inner`, and logs the request with its answer.
pub async fn around<F: Future<Output = Response>>(node: &Node, req: Request, inner: impl FnOnce(Request) -> F) -> Response {
    if node.audit().is_none() || !audited(req.method(), req.headers()) {
        return inner(req).await;
    }
    let (parts, body) = req.into_parts();
    // Written when the answer is known; if the request is dropped first (the client went
    // away, the process is stopping), written anyway as `cancelled`: the write may have applied.
    let mut line = Pending::new(node, &parts.method, parts.uri.path(), super::extract::connection_ip(&parts));
    let resp = inner(Request::from_parts(parts, body)).await;
    let status = resp.status().as_u16();
    let keepalive = line.method == Method::POST && line.path.starts_with("/v1/leases/") && line.path.ends_with("/keepalive");
    if keepalive && !(400..500).contains(&status) {
        line.skip();
        return resp;
    }
    line.finish(
        status,
        resp.extensions().get::<AuditToken>().map(|t| t.0),
        resp.extensions().get::<AuditCode>().map(|c| c.0),
        resp.extensions().get::<AuditLeader>().map(|l| l.0),
    );
    resp
}

/// Whether a request is audited here: a write, not relayed in by a peer (the node the client
/// sent it to logs it).
fn audited(method: &Method, headers: &axum::http::HeaderMap) -> bool {
    !(method == Method::GET || method == Method::HEAD || headers.contains_key(super::FORWARDED_HEADER))
}

/// One refusal made before the token check (the peer layer's, for membership changes).
pub fn refused(node: &Node, method: &Method, path: &str, headers: &axum::http::HeaderMap, client: Option<String>, status: u16, code: proto::ErrorCode) {
    if node.audit().is_none() || !audited(method, headers) {
        return;
    }
    Pending::new(node, method, path, client).finish(status, None, Some(code), None);
}

/// A line waiting for its answer.
struct Pending<'a> {
    node: &'a Node,
    method: Method,
    path: String,
    client: Option<String>,
    time: String,
    started: Instant,
    done: bool,
}

impl<'a> Pending<'a> {
    fn new(node: &'a Node, method: &Method, path: &str, client: Option<String>) -> Pending<'a> {
        let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        Pending { node, method: method.clone(), path: path.to_string(), client, time, started: Instant::now(), done: false }
    }

    fn skip(&mut self) {
        self.done = true;
    }

    fn finish(&mut self, status: u16, token: Option<TokenId>, code: Option<proto::ErrorCode>, leader: Option<u64>) {
        self.write(status, result_of(status), token, code, leader);
    }

    fn write(&mut self, status: u16, result: &'static str, token: Option<TokenId>, code: Option<proto::ErrorCode>, leader: Option<u64>) {
        self.done = true;
        let Some(log) = self.node.audit() else { return };
        log.record(&Record {
            time: std::mem::take(&mut self.time),
            node: self.node.id(),
            client: self.client.as_deref(),
            token,
            method: self.method.as_str(),
            path: &self.path,
            status,
            result,
            code,
            leader,
            duration_ms: self.started.elapsed().as_secs_f64() * 1e3,
        });
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.write(0, "cancelled", None, None, None);
        }
    }
}
