//! What every test suite in the workspace shares, kept apart so that a crate's tests can use it
//! without depending on the end-to-end harness (which pulls in every binary's crate).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(25);

/// Polls `f` until it returns `Some`, panicking with `what` after `limit`. Tests wait on
/// conditions with a deadline this way, never with fixed sleeps.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll_until(limit, what, f).await.unwrap_or_else(|e| panic!("{e}"))
}

/// `wait_for` that returns the timeout as an error (for benchmarks, which report it).
pub async fn poll_until<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {limit:?} waiting for {what}"));
        }
        tokio::time::sleep(POLL).await;
    }
}
