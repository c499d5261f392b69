use std::fmt;

use serde::{Deserialize, Serialize};

/// The JSON body of every 4xx/5xx answer of the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable machine-readable code.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
}

/// The stable codes of `ErrorBody`, compared by programs at both ends. docs/api.md lists when
/// each is answered. A code this version does not know reads as `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidArgument,
    PayloadTooLarge,
    NotFound,
    LeaseNotFound,
    MethodNotAllowed,
    IdempotencyKeyReused,
    ResourceExhausted,
    /// No leader, or not the leader after one forward: nothing ran, always safe to retry.
    NoLeader,
    Unavailable,
    /// 401: credentials are needed and none came.
    Unauthenticated,
    /// 403: the credentials do not allow this.
    Forbidden,
    /// 409: it exists already (a token with the same secret).
    AlreadyExists,
    Internal,
    /// A code from a newer registry, or an answer that was not the API's error body.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::NotFound => "not_found",
            ErrorCode::LeaseNotFound => "lease_not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::IdempotencyKeyReused => "idempotency_key_reused",
            ErrorCode::ResourceExhausted => "resource_exhausted",
            ErrorCode::NoLeader => "no_leader",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_their_snake_case_names_and_unknown_ones_are_tolerated() {
        for c in [
            ErrorCode::InvalidArgument,
            ErrorCode::NoLeader,
            ErrorCode::IdempotencyKeyReused,
            ErrorCode::ResourceExhausted,
            ErrorCode::Unauthenticated,
            ErrorCode::Forbidden,
        ] {
            assert_eq!(serde_json::to_value(c).unwrap(), serde_json::Value::String(c.as_str().into()));
        }
        let b: ErrorBody = serde_json::from_str(r#"{"code":"quota_exceeded","message":"x"}"#).unwrap();
        assert_eq!(b.code, ErrorCode::Unknown);
    }
}
