//! Sources of the desired state: the registry (a resumable watch) and ZooKeeper (children
//! watches). A source says what it learned as `Discovery` values and when it failed; its `Feed` folds the
//! updates into a `Snapshot` and keeps a `SourceState` current in a `tokio::sync::watch`
//! channel, which the reconciler reads: it always sees the latest full state, never a queue of
//! deltas.

mod backoff;
mod discovery;
mod feed;
pub mod registry;
pub mod zookeeper;

pub use backoff::Backoff;
pub use discovery::Discovery;
pub use feed::Feed;

use std::collections::BTreeMap;
use std::time::SystemTime;

use proto::InstanceState;
use serde::{Deserialize, Serialize};

/// One endpoint of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Saved in `desired.json` as `addr`, the name earlier builds read, so a rollback keeps
    /// the saved state; `address` is accepted too.
    #[serde(rename = "addr", alias = "address")]
    pub address: String,
    pub port: u16,
    pub weight: u32,
    pub state: InstanceState,
}

/// Every endpoint of every watched service, by service then instance id, at `revision`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Registry revision (ZooKeeper: the highest zxid seen) this state reflects.
    pub revision: u64,
    pub services: BTreeMap<String, BTreeMap<String, Endpoint>>,
}

#[derive(Debug, Clone, Default)]
pub struct SourceState {
    /// `None` until the source has delivered a complete state once.
    pub snapshot: Option<Snapshot>,
    /// Whether the source is connected and current right now.
    pub healthy: bool,
    /// When the source was last known current.
    pub last_ok: Option<SystemTime>,
    pub error: Option<String>,
    /// Endpoints a periodic re-list found wrong (missed by the watch), since start.
    pub corrections: u64,
}

pub type Tx = tokio::sync::watch::Sender<SourceState>;
pub type Rx = tokio::sync::watch::Receiver<SourceState>;

pub fn channel() -> (Tx, Rx) {
    tokio::sync::watch::channel(SourceState::default())
}
