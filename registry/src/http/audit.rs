//! The audit layer: one line in the audit log (`crate::audit`) per write a client sent to this
//! node, written once the answer is known. Outermost on the client routes, so a request refused
//! for its token is logged too; the token layer and the forwarding layer leave what they know on
//! the response (`AuditToken`, `AuditCode`, `AuditLeader`) for this layer to read.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
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

pub async fn layer(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let Some(log) = node.audit() else { return next.run(req).await };
    let method = req.method().clone();
    // Reads are not audited, and a relayed request was logged where the client sent it.
    if method == Method::GET || method == Method::HEAD || req.headers().contains_key(super::FORWARDED_HEADER) {
        return next.run(req).await;
    }
    let path = req.uri().path().to_string();
    let (parts, body) = req.into_parts();
    let client = super::extract::connection_ip(&parts);
    let started = Instant::now();
    let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let resp = next.run(Request::from_parts(parts, body)).await;
    let status = resp.status().as_u16();
    if path.ends_with("/keepalive") && !(400..500).contains(&status) {
        return resp;
    }
    log.record(&Record {
        time,
        node: node.id(),
        client: client.as_deref(),
        token: resp.extensions().get::<AuditToken>().map(|t| t.0),
        method: method.as_str(),
        path: &path,
        status,
        result: result_of(status),
        code: resp.extensions().get::<AuditCode>().map(|c| c.0),
        leader: resp.extensions().get::<AuditLeader>().map(|l| l.0),
        duration_ms: started.elapsed().as_secs_f64() * 1e3,
    });
    resp
}
