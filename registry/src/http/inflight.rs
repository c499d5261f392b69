//! Counts the client writes this node is answering (`Node::writes_in_flight`), so a graceful
//! stop can let them finish: a write held during a leadership hand-off, then relayed to the new
//! leader, must get its answer before the process exits, or the client retries a write that
//! applied.

use std::future::Future;

use axum::extract::Request;
use axum::http::Method;
use axum::response::Response;

use crate::node::Node;

/// Runs `inner`, counted while it runs if the request is a write.
pub async fn around<F: Future<Output = Response>>(node: &Node, req: Request, inner: impl FnOnce(Request) -> F) -> Response {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return inner(req).await;
    }
    let _counted = node.write_started();
    inner(req).await
}
