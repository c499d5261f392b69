//! Peer authentication at the door (`peer_auth`): a `/raft` request or a membership change
//! without a member's proof is answered 401 or 403 before it reaches openraft or is forwarded,
//! so it changes no vote, term, log, store or membership; on the client API, the headers only a
//! forwarding peer may set are dropped from anyone else. Once ACLs are on, a membership change
//! without the proof goes on to the token check, which wants `admin` (`acl::Need::AdminOrPeer`).

use std::future::Future;

use axum::extract::{ConnectInfo, Request};
use axum::http::Method;
use axum::response::{IntoResponse, Response};

use super::extract::CLIENT_ADDR_HEADER;
use super::forward::PEER_ORIGIN_HEADER;
use super::FORWARDED_HEADER;
use crate::error::ApiError;
use crate::metrics::ReasonLabels;
use crate::node::{AclView, Node};
use crate::peer_auth::{Denied, PeerAuth, SECRET_HEADER};
use crate::tls::listener::Conn;

/// Marks a request whose sender proved it is a member of the cluster.
#[derive(Clone, Copy)]
pub struct PeerProven;

/// Settles whether `req` comes from a peer, answers it here if it must and does not, and
/// runs `inner` otherwise.
pub async fn admit<F: Future<Output = Response>>(node: &Node, mut req: Request, inner: impl FnOnce(Request) -> F) -> Response {
    // A node certificate counts only for a host that is a member now: one the CA signed for a
    // host since removed, or never added, is not a peer.
    let node_certificate = req.extensions().get::<ConnectInfo<Conn>>().and_then(|c| c.0.node_hosts.clone()).is_some_and(|hosts| node.is_member_host(&hosts));
    let verdict = node.config().peer_auth.check(req.headers().get(SECRET_HEADER).map(|v| v.as_bytes()), node_certificate);
    // Not for handlers to see, or to relay by mistake.
    req.headers_mut().remove(SECRET_HEADER);
    let peer_origin = req.headers_mut().remove(PEER_ORIGIN_HEADER).is_some();
    if let Err(why) = verdict {
        // With ACLs on, the token check decides a membership change (it wants `admin`).
        // A wrong secret is a wrong secret, whatever else the request holds.
        let by_token = |k: &MembersOnly| *k == MembersOnly::Membership && why != Denied::WrongSecret && node.acl_view() != AclView::Off;
        if let Some(kind) = members_only(req.method(), req.uri().path()).filter(|k| !by_token(k)) {
            let what = kind.what();
            node.metrics().auth_denied.get_or_create(&ReasonLabels { reason: why.as_str() }).inc();
            tracing::debug!(path = %req.uri().path(), reason = why.as_str(), "peer request refused");
            let err = match why {
                Denied::Missing => ApiError::Unauthenticated(format!("{what} needs the cluster's credentials (see docs/security.md)")),
                Denied::WrongSecret => ApiError::Forbidden("wrong cluster secret".into()),
                Denied::NoNodeCertificate => ApiError::Forbidden(format!("{what} needs a node certificate signed by the cluster CA, for a member's host")),
            };
            if kind == MembersOnly::Membership {
                let client = req.extensions().get::<ConnectInfo<Conn>>().map(|c| c.0.addr.ip().to_string());
                let status = if matches!(why, Denied::Missing) { 401 } else { 403 };
                super::audit::refused(node, req.method(), req.uri().path(), req.headers(), client, status, err.code());
            }
            return err.into_response();
        }
        // A client, not a peer: it may not claim to be forwarded or speak for another address.
        req.headers_mut().remove(FORWARDED_HEADER);
        req.headers_mut().remove(CLIENT_ADDR_HEADER);
    } else if !matches!(node.config().peer_auth, PeerAuth::Insecure) && (!req.headers().contains_key(FORWARDED_HEADER) || peer_origin) {
        // A peer relaying a client's request vouches for the connection, not for the client.
        req.extensions_mut().insert(PeerProven);
    }
    inner(req).await
}

/// Requests only members of the cluster may make: peer RPC, and membership changes (a member
/// added by an outsider would be sent the whole log, and one removed by an outsider would cost
/// the quorum its margin).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MembersOnly {
    PeerRpc,
    Membership,
}

impl MembersOnly {
    fn what(self) -> &'static str {
        match self {
            MembersOnly::PeerRpc => "peer RPC",
            MembersOnly::Membership => "changing the membership (`registry members` with an admin token, or --cluster-secret-file)",
        }
    }
}

fn members_only(method: &Method, path: &str) -> Option<MembersOnly> {
    if path.starts_with("/raft/") {
        Some(MembersOnly::PeerRpc)
    } else if path.starts_with("/v1/cluster/members") && method != Method::GET {
        Some(MembersOnly::Membership)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_rpc_and_membership_changes_are_members_only() {
        assert_eq!(members_only(&Method::POST, "/raft/append"), Some(MembersOnly::PeerRpc));
        assert_eq!(members_only(&Method::POST, "/v1/cluster/members"), Some(MembersOnly::Membership));
        assert_eq!(members_only(&Method::DELETE, "/v1/cluster/members/3"), Some(MembersOnly::Membership));
        assert!(members_only(&Method::GET, "/v1/cluster").is_none());
        assert!(members_only(&Method::POST, "/v1/leases").is_none());
        assert!(members_only(&Method::PUT, "/v1/services/a/instances/b").is_none());
    }
}
