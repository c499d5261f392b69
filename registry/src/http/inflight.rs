//! Counts the client writes this node is answering (`Node::writes_in_flight`), so a graceful
//! stop can let them finish: a write held during a leadership hand-off, then relayed to the new
//! leader, must get its answer before the process exits, or the client retries a write that
//! applied.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

use crate::node::Node;

pub async fn layer(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return next.run(req).await;
    }
    let _counted = node.write_started();
    next.run(req).await
}
