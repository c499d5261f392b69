//! Tokens at the door (`acl`): on every client route, the `Authorization: Bearer` token is
//! looked up by its hash in this node's replicated store and checked against what the route
//! needs (`acl::need`, the one table). The caller it proves goes to the handler as a `Caller`
//! extension, for the lease-ownership checks `Node` makes. `/raft` is `peer`'s business.

use std::future::Future;
use std::sync::Arc;

use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::acl::{Caller, Need, TokenHash, TokenId};
use crate::error::ApiError;
use crate::metrics::ReasonLabels;
use crate::node::{AclView, Node};

/// The token check as a layer of its own (the routes every node serves itself).
pub async fn layer(
    State(node): State<Arc<Node>>,
    matched: MatchedPath,
    params: Result<RawPathParams, RawPathParamsRejection>,
    req: Request,
    next: Next,
) -> Response {
    around(&node, &matched, params, req, |req| next.run(req)).await
}

/// Checks the request's token for the route `matched`, then runs `inner` with the `Caller`.
/// Path parameters that cannot be read (not UTF-8 once decoded) are refused here, inside the
/// audit and in-flight steps, as the extractor of a layer of its own would.
pub async fn around<F: Future<Output = Response>>(
    node: &Node,
    matched: &MatchedPath,
    params: Result<RawPathParams, RawPathParamsRejection>,
    mut req: Request,
    inner: impl FnOnce(Request) -> F,
) -> Response {
    let params = match params {
        Ok(p) => p,
        Err(rejection) => return rejection.into_response(),
    };
    let service = params.iter().find_map(|(k, v)| (k == "service").then_some(v));
    let need = crate::acl::need(req.method().as_str(), matched.as_str(), service, node.config().metrics_open);
    let peer = req.extensions().get::<super::peer::PeerProven>().is_some();
    match check(node, &need, req.headers(), peer) {
        Ok(caller) => {
            // A blocking query may answer minutes later: by then its token may be revoked, and
            // the answer must not go out. (Watches check on their own, as they stream.)
            let blocking = req.uri().query().is_some_and(|q| q.split('&').any(|kv| kv.starts_with("index=")));
            req.extensions_mut().insert(caller.clone());
            let mut resp = inner(req).await;
            if blocking && !node.still_allowed(&caller) {
                node.metrics().auth_denied.get_or_create(&ReasonLabels { reason: "unknown_token" }).inc();
                resp = ApiError::Unauthenticated("the token was revoked while the query waited".into()).into_response();
            }
            if let Some(id) = caller.token {
                resp.extensions_mut().insert(super::audit::AuditToken(id));
            }
            resp
        }
        Err((reason, e, token)) => {
            node.metrics().auth_denied.get_or_create(&ReasonLabels { reason }).inc();
            let mut resp = e.into_response();
            if let Some(id) = token {
                resp.extensions_mut().insert(super::audit::AuditToken(id));
            }
            resp
        }
    }
}

/// The caller, or why not: the reason label, the answer, and the token's id when the token is
/// known but lacks the scope.
fn check(node: &Node, need: &Need, headers: &HeaderMap, peer: bool) -> Result<Caller, (&'static str, ApiError, Option<TokenId>)> {
    check_token(node, need, bearer(headers), peer)
}

/// What a keepalive relayed by a follower (`relay`) gets: the check its own request would have
/// had here, with the client's token; a refusal is counted as at the door.
pub fn relayed_caller(node: &Node, token: Option<&str>) -> Result<Caller, ApiError> {
    check_token(node, &Need::LeaseOwner, token, false).map_err(|(reason, e, _)| {
        node.metrics().auth_denied.get_or_create(&ReasonLabels { reason }).inc();
        e
    })
}

fn check_token(node: &Node, need: &Need, token: Option<&str>, peer: bool) -> Result<Caller, (&'static str, ApiError, Option<TokenId>)> {
    let view = node.acl_view();
    if view == AclView::Off || *need == Need::Open || (peer && matches!(need, Need::AdminOrPeer | Need::ReadOrPeer)) {
        return Ok(Caller::UNRESTRICTED);
    }
    let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) else {
        return Err((
            "missing_token",
            ApiError::Unauthenticated("this cluster needs a token: send `Authorization: Bearer TOKEN` (--token-file or REGISTRY_TOKEN)".into()),
            None,
        ));
    };
    let hash = TokenHash::of(token);
    let unknown = || ("unknown_token", ApiError::Unauthenticated("unknown or revoked token".into()), None);
    if let AclView::Bootstrapping(boot) = view {
        return if boot == hash { Ok(Caller { token: None, admin: true, hash: Some(hash) }) } else { Err(unknown()) };
    }
    // Judged under the store's lock, so the token is not copied on every request.
    let (id, allowed, admin) = node.read_store(|s| s.acl().by_hash(&hash).map(|t| (t.id, t.allows(need), t.is_admin()))).ok_or_else(unknown)?;
    if !allowed {
        let wanted = match need {
            Need::Read | Need::ReadOrPeer => "read".to_string(),
            Need::Grant | Need::LeaseOwner => "an announce: scope".to_string(),
            Need::Service(s) => format!("announce: matching {s:?}"),
            Need::Admin | Need::Open => "admin".to_string(),
            Need::AdminOrPeer => "admin (or the cluster's peer credentials)".to_string(),
        };
        return Err(("insufficient_scope", ApiError::Forbidden(format!("token {id} does not allow this: it needs {wanted}")), Some(id)));
    }
    Ok(Caller { token: Some(id), admin, hash: Some(hash) })
}

pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}
