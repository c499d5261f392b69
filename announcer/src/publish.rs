//! What the announcer publishes, and the trait its two backends (the registry, ZooKeeper)
//! implement. The agent computes the desired set; a publisher makes its backend hold exactly it.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use tokio::sync::mpsc;

/// `(service, instance id)`.
pub type Key = (String, String);

/// One instance as it should appear in the backend. It is exactly what a znode holds
/// (`proto::ZnodeData`); the registry publisher maps it onto an `InstanceSpec`.
pub type Announcement = proto::ZnodeData;

/// The full desired set: every instance this announcer should have published.
pub type Desired = BTreeMap<Key, Announcement>;

/// What is known of the balancers' progress with a drain (docs/announcer.md, "Graceful stop"):
/// the rule is `client::convergence`'s, shared with `registry deregister --wait`.
pub use client::convergence::{Convergence as DrainProgress, Late};

/// A task that follows the balancers through a drain.
pub type DrainFollower = Pin<Box<dyn Future<Output = ()> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The backend cannot be reached right now; try again after a backoff.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// Our lease or session is gone: what was published is gone with it. The next `sync`
    /// must start over (new lease / new session) and publish everything again.
    #[error("lease or session lost: {0}")]
    Lost(String),
    /// The backend refused the request; retrying the same request will not help.
    #[error("rejected: {0}")]
    Rejected(String),
}

impl PublishError {
    pub fn is_retriable(&self) -> bool {
        !matches!(self, PublishError::Rejected(_))
    }
}

/// A backend that holds ephemeral registrations.
///
/// The agent calls `sync` whenever the desired set changes (and again after an error, with
/// backoff), `tick` at `tick_interval`, and `shutdown` once at the end.
#[allow(async_fn_in_trait)]
pub trait Publisher {
    /// How often `tick` should run (the registry: TTL/3).
    fn tick_interval(&self) -> std::time::Duration;

    /// Makes the backend hold exactly `desired` for this announcer: creates, updates and removes.
    async fn sync(&mut self, desired: &Desired) -> Result<(), PublishError>;

    /// Keeps the registrations alive (keepalive, session check). `Err(Lost)` means they are gone
    /// and the agent must `sync` again.
    async fn tick(&mut self) -> Result<(), PublishError>;

    /// Removes everything this announcer published and releases the lease or session.
    async fn shutdown(&mut self) -> Result<(), PublishError>;

    /// Called after `sync` published a drain: a task (the agent spawns it) that follows the
    /// balancers' progress with it and sends every new finding to `progress`, ending after
    /// `Applied` or `Unknown`. By default the backend cannot tell (ZooKeeper has no reports).
    fn follow_drain(&self, progress: mpsc::Sender<DrainProgress>) -> DrainFollower {
        Box::pin(async move {
            let _ = progress.send(DrainProgress::Unknown { why: "this backend has no balancer reports".into() }).await;
        })
    }
}
