//! What drives HAProxy: the `Driver` trait the reconciler calls, its error, and the two
//! implementations, the Runtime API (`runtime`) and the Data Plane API (`dataplane`).

pub mod dataplane;
pub mod runtime;

use crate::model::{ActualServer, Op};

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// HAProxy (or the Data Plane API) cannot be reached; try again later.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// HAProxy refused an operation.
    #[error("refused: {0}")]
    Refused(String),
    /// The answer could not be understood.
    #[error("bad answer: {0}")]
    Protocol(String),
}

impl DriverError {
    pub fn is_retriable(&self) -> bool {
        !matches!(self, DriverError::Protocol(_))
    }
}

/// Identity of the running HAProxy process; a change means it restarted or reloaded and lost
/// every dynamic server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation(pub String);

/// What drives HAProxy: the Runtime API or the Data Plane API.
#[allow(async_fn_in_trait)]
pub trait Driver {
    /// The running process's identity (pid and start time, or the Data Plane API's equivalent).
    async fn generation(&mut self) -> Result<Generation, DriverError>;

    /// Every server of `backend`, managed or not.
    async fn servers(&mut self, backend: &str) -> Result<Vec<ActualServer>, DriverError>;

    /// Applies `ops` to `backend` in order. Stops at the first failure and says which ops were
    /// done (their count) alongside the error, so the caller re-reads and re-plans.
    async fn apply(&mut self, backend: &str, ops: &[Op]) -> Result<(), (usize, DriverError)>;
}
