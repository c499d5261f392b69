//! Peer authentication at the door (`peer_auth`): a `/raft` request without a member's proof is
//! answered 401 or 403 before it reaches openraft, so it changes no vote, term, log or store;
//! on the client API, the headers only a forwarding peer may set are dropped from anyone else.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::extract::CLIENT_ADDR_HEADER;
use super::FORWARDED_HEADER;
use crate::error::ApiError;
use crate::metrics::DeniedLabels;
use crate::node::Node;
use crate::peer_auth::{Denied, SECRET_HEADER};

pub async fn layer(State(node): State<Arc<Node>>, mut req: Request, next: Next) -> Response {
    let verdict = node.config().peer_auth.check(req.headers().get(SECRET_HEADER).map(|v| v.as_bytes()));
    // Not for handlers to see, or to relay by mistake.
    req.headers_mut().remove(SECRET_HEADER);
    if let Err(why) = verdict {
        if req.uri().path().starts_with("/raft/") {
            node.metrics().auth_denied.get_or_create(&DeniedLabels { reason: why.as_str() }).inc();
            tracing::debug!(path = %req.uri().path(), reason = why.as_str(), "peer request refused");
            let err = match why {
                Denied::Missing => ApiError::Unauthenticated("peer RPC needs the cluster's credentials (see docs/security.md)".into()),
                Denied::WrongSecret => ApiError::Forbidden("wrong cluster secret".into()),
            };
            return err.into_response();
        }
        // A client, not a peer: it may not claim to be forwarded or speak for another address.
        req.headers_mut().remove(FORWARDED_HEADER);
        req.headers_mut().remove(CLIENT_ADDR_HEADER);
    }
    next.run(req).await
}
