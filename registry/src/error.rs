//! Errors at the API boundary. `http::error` is the one place that turns them into HTTP answers.

use proto::LeaseId;

use crate::types::NodeId;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("lease {0} not found (never granted, revoked or expired)")]
    LeaseNotFound(LeaseId),
    #[error("{0} not found")]
    NotFound(String),
    /// This node is not the leader; the leader is known if `Some`.
    #[error("this node is not the leader")]
    NotLeader(Option<(NodeId, String)>),
    #[error("no leader is known right now; retry shortly")]
    NoLeader,
    #[error("{0}")]
    Unavailable(String),
    /// A limit (watches, blocking queries, leases per client) is reached.
    #[error("{0}")]
    TooMany(String),
    /// An idempotency key reused for a different request.
    #[error("{0}")]
    KeyReused(String),
    /// No credentials, where they are needed.
    #[error("{0}")]
    Unauthenticated(String),
    /// Credentials that do not allow this.
    #[error("{0}")]
    Forbidden(String),
    /// It exists already.
    #[error("{0}")]
    Conflict(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// Whether the same request may succeed if sent again (to this or another node).
    pub fn is_retriable(&self) -> bool {
        matches!(self, ApiError::NotLeader(_) | ApiError::NoLeader | ApiError::Unavailable(_))
    }

    pub fn code(&self) -> proto::ErrorCode {
        use proto::ErrorCode as C;
        match self {
            ApiError::InvalidArgument(_) => C::InvalidArgument,
            ApiError::PayloadTooLarge { .. } => C::PayloadTooLarge,
            ApiError::LeaseNotFound(_) => C::LeaseNotFound,
            ApiError::NotFound(_) => C::NotFound,
            ApiError::NotLeader(_) | ApiError::NoLeader => C::NoLeader,
            ApiError::Unavailable(_) => C::Unavailable,
            ApiError::KeyReused(_) => C::IdempotencyKeyReused,
            ApiError::TooMany(_) => C::ResourceExhausted,
            ApiError::Unauthenticated(_) => C::Unauthenticated,
            ApiError::Forbidden(_) => C::Forbidden,
            ApiError::Conflict(_) => C::AlreadyExists,
            ApiError::Internal(_) => C::Internal,
        }
    }
}
