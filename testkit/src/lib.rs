//! What every test suite in the workspace shares, kept apart so that a crate's tests can use it
//! without depending on the end-to-end harness (which pulls in every binary's crate).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Polls `f` until it returns `Some`, panicking with `what` after `limit`. Tests wait on
/// conditions with a deadline this way, never with fixed sleeps.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
