use serde::{Deserialize, Serialize};

/// The JSON body of every 4xx/5xx answer of the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable machine-readable code, e.g. `invalid_argument`, `not_found`, `no_leader`.
    pub code: String,
    /// A human-readable explanation.
    pub message: String,
}
