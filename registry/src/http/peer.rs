//! Peer authentication at the door (`peer_auth`): a `/raft` request or a membership change
//! without a member's proof is answered 401 or 403 before it reaches openraft or is forwarded,
//! so it changes no vote, term, log, store or membership; on the client API, the headers only a
//! forwarding peer may set are dropped from anyone else.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::extract::CLIENT_ADDR_HEADER;
use super::FORWARDED_HEADER;
use crate::error::ApiError;
use crate::metrics::ReasonLabels;
use crate::node::Node;
use crate::peer_auth::{Denied, SECRET_HEADER};
use crate::tls::listener::Conn;

pub async fn layer(State(node): State<Arc<Node>>, mut req: Request, next: Next) -> Response {
    // A node certificate counts only for a host that is a member now: one the CA signed for a
    // host since removed, or never added, is not a peer.
    let node_certificate = req.extensions().get::<ConnectInfo<Conn>>().and_then(|c| c.0.node_hosts.clone()).is_some_and(|hosts| node.is_member_host(&hosts));
    let verdict = node.config().peer_auth.check(req.headers().get(SECRET_HEADER).map(|v| v.as_bytes()), node_certificate);
    // Not for handlers to see, or to relay by mistake.
    req.headers_mut().remove(SECRET_HEADER);
    if let Err(why) = verdict {
        if let Some(what) = members_only(req.method(), req.uri().path()) {
            node.metrics().auth_denied.get_or_create(&ReasonLabels { reason: why.as_str() }).inc();
            tracing::debug!(path = %req.uri().path(), reason = why.as_str(), "peer request refused");
            let err = match why {
                Denied::Missing => ApiError::Unauthenticated(format!("{what} needs the cluster's credentials (see docs/security.md)")),
                Denied::WrongSecret => ApiError::Forbidden("wrong cluster secret".into()),
                Denied::NoNodeCertificate => ApiError::Forbidden(format!("{what} needs a node certificate signed by the cluster CA, for a member's host")),
            };
            return err.into_response();
        }
        // A client, not a peer: it may not claim to be forwarded or speak for another address.
        req.headers_mut().remove(FORWARDED_HEADER);
        req.headers_mut().remove(CLIENT_ADDR_HEADER);
    }
    next.run(req).await
}

/// What a request is, if only members of the cluster may make it: peer RPC, and membership
/// changes (a member added by an outsider would be sent the whole log, and one removed by an
/// outsider would cost the quorum its margin).
fn members_only(method: &Method, path: &str) -> Option<&'static str> {
    if path.starts_with("/raft/") {
        Some("peer RPC")
    } else if path.starts_with("/v1/cluster/members") && method != Method::GET {
        Some("changing the membership (`registry members --cluster-secret-file`)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_rpc_and_membership_changes_are_members_only() {
        assert!(members_only(&Method::POST, "/raft/append").is_some());
        assert!(members_only(&Method::POST, "/v1/cluster/members").is_some());
        assert!(members_only(&Method::DELETE, "/v1/cluster/members/3").is_some());
        assert!(members_only(&Method::GET, "/v1/cluster").is_none());
        assert!(members_only(&Method::POST, "/v1/leases").is_none());
        assert!(members_only(&Method::PUT, "/v1/services/a/instances/b").is_none());
    }
}
