//! Reads, with their consistency rule: linearizable on the leader by default; `stale` from
//! this node's replica, saying how stale it is; blocking queries that wait for a change.

use std::time::Duration;

use proto::{RemovalList, ServiceInstances, ServiceList, ServiceSummary};
use tokio::time::Instant;

use super::Node;
use crate::error::ApiError;
use crate::store::Store;

/// Longest `?wait=` a blocking query may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(300);
/// `?wait=` when a blocking query gives none.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions {
    /// Serve from this node's replica without confirming it is current.
    pub stale: bool,
    /// Blocking query: answer once the index passes this, or after `wait`.
    pub index: Option<u64>,
    pub wait: Option<Duration>,
}

/// How current a read served by this node is (Consul's `X-Consul-LastContact` and
/// `X-Consul-KnownLeader`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Staleness {
    /// Whether this node knows a current leader (or is one).
    pub known_leader: bool,
    /// Milliseconds since this node last heard from its leader; 0 on a fresh leader.
    pub last_contact_ms: Option<u64>,
}

impl Node {
    /// Before a read: confirm it may be served here, and how current it is.
    async fn before_read(&self, opts: &ReadOptions) -> Result<Staleness, ApiError> {
        if !opts.stale {
            self.linearize().await?;
        }
        Ok(self.staleness())
    }

    pub fn staleness(&self) -> Staleness {
        let now = Instant::now();
        let last_contact_ms = if self.leadership.fresh_term(now).is_ok() { Some(0) } else { self.leadership.since_contact(now).map(|d| d.as_millis() as u64) };
        Staleness { known_leader: self.serving_current().is_ok(), last_contact_ms }
    }

    /// Blocks until `current(store)` passes `index` or `wait` runs out. A node that loses its
    /// leader meanwhile answers 503 rather than a frozen state.
    async fn wait_for_change(&self, opts: &ReadOptions, current: impl Fn(&Store) -> u64) -> Result<(), ApiError> {
        let Some(index) = opts.index else { return Ok(()) };
        let _permit = self.blocking_permit()?;
        let deadline = Instant::now() + opts.wait.unwrap_or(DEFAULT_WAIT).min(MAX_WAIT);
        let mut rx = self.shared.hub().subscribe();
        // Look again at least this often whether this node is still current.
        let recheck = self.config.election_timeout.1;
        loop {
            if current(&self.shared.read().store) > index {
                return Ok(());
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return Ok(()) },
                _ = tokio::time::sleep_until(deadline) => return Ok(()),
                _ = tokio::time::sleep(recheck) => {}
            }
            self.serving_current()?;
        }
    }

    pub async fn services(&self, opts: ReadOptions) -> Result<(ServiceList, Staleness), ApiError> {
        self.before_read(&opts).await?;
        self.wait_for_change(&opts, Store::last_change).await?;
        let d = self.shared.read();
        let services =
            d.store.services().iter().map(|(name, m)| ServiceSummary { service: name.clone(), instances: m.len(), index: d.store.index_of(name) }).collect();
        let list = ServiceList { revision: d.store.revision(), index: d.store.last_change(), services };
        drop(d);
        Ok((list, self.staleness()))
    }

    /// The most recent instance removals with their causes, oldest first (a blocking query
    /// waits for any change).
    pub async fn removals(&self, opts: ReadOptions) -> Result<(RemovalList, Staleness), ApiError> {
        self.before_read(&opts).await?;
        self.wait_for_change(&opts, Store::last_change).await?;
        let d = self.shared.read();
        let list = RemovalList { revision: d.store.revision(), removals: d.store.removals().iter().cloned().collect() };
        drop(d);
        Ok((list, self.staleness()))
    }

    pub async fn service(&self, service: &str, opts: ReadOptions) -> Result<(ServiceInstances, Staleness), ApiError> {
        proto::validate::service_name(service).map_err(ApiError::InvalidArgument)?;
        self.before_read(&opts).await?;
        self.wait_for_change(&opts, |s| s.index_of(service)).await?;
        Ok((self.read_service(service), self.staleness()))
    }

    /// A service's instances, with lease timings where this node keeps the clocks.
    fn read_service(&self, service: &str) -> ServiceInstances {
        let (revision, index, mut instances) = {
            let d = self.shared.read();
            (d.store.revision(), d.store.index_of(service), d.store.instances(service))
        };
        let keeper = self.keeper.lock().unwrap();
        if keeper.term().is_some() {
            let now = Instant::now();
            for i in &mut instances {
                i.lease = i.lease_id.and_then(|id| keeper.info(id, now));
            }
        }
        ServiceInstances { service: service.to_string(), revision, index, instances }
    }
}
