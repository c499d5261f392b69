//! Keeping leases alive from a test or a benchmark, as an announcer does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Renews a fixed set of leases, round after round, until stopped or dropped.
pub struct Renewer {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    not_found: AtomicU64,
    failed: AtomicU64,
}

/// What the keepalives of a `Renewer` met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewals {
    /// Answered 404: the lease had expired (or was revoked).
    pub not_found: u64,
    /// Any other failure (no leader, node down, timeout).
    pub failed: u64,
}

impl Renewer {
    /// Renews every lease in `leases` through `client` now and then every `every` (from the
    /// start of one round to the start of the next), the way the announcer renews at TTL/3.
    pub fn start(client: Arc<client::Client>, leases: Vec<u64>, every: Duration) -> Renewer {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let counts = Arc::new(Counts::default());
        let task = {
            let counts = counts.clone();
            tokio::spawn(async move {
                loop {
                    let round = Instant::now();
                    for l in &leases {
                        if *stopped.borrow() {
                            return;
                        }
                        match client.keepalive(*l).await {
                            Ok(_) => {}
                            Err(e) if e.is_not_found() => {
                                counts.not_found.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(_) => {
                                counts.failed.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep_until(round + every) => {}
                        _ = stopped.changed() => return,
                    }
                }
            })
        };
        Renewer { stop, task, counts }
    }

    /// What the keepalives so far met.
    pub fn renewals(&self) -> Renewals {
        Renewals { not_found: self.counts.not_found.load(Ordering::SeqCst), failed: self.counts.failed.load(Ordering::SeqCst) }
    }

    /// Stops renewing (the keepalive in flight, if any, is finished first) and says what the
    /// keepalives met.
    pub async fn stop(mut self) -> Renewals {
        let _ = self.stop.send(true);
        let _ = (&mut self.task).await;
        self.renewals()
    }
}

impl Drop for Renewer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
