//! Extractors whose failures are answered with the API's error body.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::API_BODY_LIMIT;
use crate::command::RequestId;
use crate::error::ApiError;

/// A JSON body of `T`; an empty, malformed or too-large body is a 400 or 413.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit: API_BODY_LIMIT }
            } else {
                ApiError::InvalidArgument(format!("could not read the request body: {e}"))
            }
        })?;
        if bytes.is_empty() {
            return Err(ApiError::InvalidArgument("the request needs a JSON body".into()));
        }
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| ApiError::InvalidArgument(format!("invalid JSON body: {e}")))
    }
}

/// The query string as `T`; a bad one is a 400.
pub struct QueryOf<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryOf<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Query::<T>::try_from_uri(&parts.uri).map(|q| QueryOf(q.0)).map_err(|e| ApiError::InvalidArgument(format!("bad query string: {e}")))
    }
}

/// The `Idempotency-Key` header, if any (see `proto::IDEMPOTENCY_KEY_HEADER`).
pub struct RequestIdHeader(pub Option<RequestId>);

/// Longest accepted request id.
pub const MAX_REQUEST_ID_LEN: usize = 128;

impl<S: Send + Sync> FromRequestParts<S> for RequestIdHeader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(v) = parts.headers.get(proto::IDEMPOTENCY_KEY_HEADER) else { return Ok(RequestIdHeader(None)) };
        let s = v.to_str().map_err(|_| ApiError::InvalidArgument(format!("{} must be visible ASCII", proto::IDEMPOTENCY_KEY_HEADER)))?;
        if s.is_empty() || s.len() > MAX_REQUEST_ID_LEN || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ApiError::InvalidArgument(format!("{} must be 1 to {MAX_REQUEST_ID_LEN} visible ASCII characters", proto::IDEMPOTENCY_KEY_HEADER)));
        }
        Ok(RequestIdHeader(Some(s.to_string())))
    }
}

/// A path id that must be a number.
pub fn parse_id(kind: &str, raw: &str) -> Result<u64, ApiError> {
    raw.parse().map_err(|_| ApiError::InvalidArgument(format!("{kind} id {raw:?} is not a number")))
}

/// Carries the original client's address on a forwarded request. Trusted only because it comes
/// with `x-registry-forwarded` from a peer; peer authentication (docs/security.md) is what makes
/// that trust hold on a shared network.
pub const CLIENT_ADDR_HEADER: &str = "x-registry-client-addr";

/// The address of the client a request comes from: the connection's peer, or for a request a
/// peer forwarded, the client that peer saw.
pub struct ClientAddr(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        if parts.headers.contains_key(super::FORWARDED_HEADER) {
            let v = parts.headers.get(CLIENT_ADDR_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
            return Ok(ClientAddr(v));
        }
        Ok(ClientAddr(connection_ip(parts)))
    }
}

/// The IP of the connection's peer, if the server recorded it.
pub fn connection_ip(parts: &Parts) -> Option<String> {
    connection_addr(parts).map(|a| a.ip().to_string())
}

/// The address the request's connection comes from.
pub fn connection_addr(parts: &Parts) -> Option<std::net::SocketAddr> {
    parts.extensions.get::<axum::extract::ConnectInfo<crate::tls::listener::Conn>>().map(|c| c.0.addr)
}
