//! The one place that maps domain errors to HTTP answers with the JSON error body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use proto::ErrorBody;

use super::forward::ForwardTo;
use crate::error::ApiError;

/// The HTTP status of an error.
pub fn status_of(e: &ApiError) -> StatusCode {
    match e {
        ApiError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        ApiError::LeaseNotFound(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
        ApiError::NotLeader(_) | ApiError::NoLeader | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        ApiError::KeyReused(_) => StatusCode::UNPROCESSABLE_ENTITY,
        ApiError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
        ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
        ApiError::Conflict(_) => StatusCode::CONFLICT,
        ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(&self);
        let forward = match &self {
            ApiError::NotLeader(Some((id, addr))) => Some(ForwardTo { id: *id, addr: addr.clone() }),
            _ => None,
        };
        let body = ErrorBody { code: self.code(), message: self.to_string() };
        let code = body.code;
        let mut resp = (status, Json(body)).into_response();
        resp.extensions_mut().insert(super::audit::AuditCode(code));
        if let Some(f) = forward {
            // The forwarding layer relays the request there; without it the client sees 503.
            resp.extensions_mut().insert(f);
        }
        resp
    }
}
