//! A JSON body extractor whose failures are answered with the API's error body.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use super::API_BODY_LIMIT;
use crate::error::ApiError;

/// The raw body, kept for forwarding; too-large bodies get the API's 413.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(req, state).await.map(RawBody).map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit: API_BODY_LIMIT }
            } else {
                ApiError::InvalidArgument(format!("could not read the request body: {e}"))
            }
        })
    }
}

impl RawBody {
    /// Decodes the body as JSON of `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if self.0.is_empty() {
            return Err(ApiError::InvalidArgument("the request needs a JSON body".into()));
        }
        serde_json::from_slice(&self.0).map_err(|e| ApiError::InvalidArgument(format!("invalid JSON body: {e}")))
    }
}
