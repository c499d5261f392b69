//! The convergence report (docs/syncer.md, "How it works"): the syncer keeps an instance of the reserved
//! service `_syncers` in the registry, under its own lease, whose meta says which revision each
//! backend reflects. `registry status` turns that into "which balancer is behind".

use std::time::Duration;

use client::Client;
use proto::{BackendReport, InstanceSpec, SyncerReport, SYNCER_SERVICE};
use tokio::sync::watch;

use crate::reconcile::{Applied, Mapping};

const TTL: Duration = Duration::from_secs(10);
/// At most one report write per this interval, however fast revisions move.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

pub struct Reporter {
    pub client: Client,
    pub id: String,
    pub address: String,
    pub port: u16,
    pub mappings: Vec<Mapping>,
}

impl Reporter {
    fn spec(&self, lease: u64, applied: &Applied) -> InstanceSpec {
        let report = SyncerReport {
            backends: self
                .mappings
                .iter()
                .map(|m| (m.backend.clone(), BackendReport { service: m.service.clone(), applied: applied.get(&m.backend).copied() }))
                .collect(),
        };
        let meta = report.to_meta();
        InstanceSpec { address: self.address.clone(), port: self.port as u64, lease_id: Some(lease), weight: 0, state: proto::InstanceState::Up, meta }
    }

    /// Runs until `applied` closes; failures are logged and retried (the report is advisory).
    pub async fn run(self, mut applied: watch::Receiver<Applied>) {
        let mut lease: Option<u64> = None;
        let mut reported: Option<Applied> = None;
        // One ticker for the whole run: a select that re-created its sleep on every change
        // would starve the keepalive while revisions move.
        let mut keepalive = tokio::time::interval(TTL / 3);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_put = tokio::time::Instant::now() - MIN_INTERVAL;
        loop {
            let current = applied.borrow_and_update().clone();
            if lease.is_none() {
                match self.client.grant(TTL).await {
                    Ok(g) => {
                        lease = Some(g.lease_id);
                        reported = None;
                    }
                    Err(e) => tracing::debug!(error = %e, "convergence report: no lease yet"),
                }
            }
            if let Some(l) = lease {
                if reported.as_ref() != Some(&current) && last_put.elapsed() >= MIN_INTERVAL {
                    last_put = tokio::time::Instant::now();
                    match self.client.put_instance(SYNCER_SERVICE, &self.id, &self.spec(l, &current)).await {
                        Ok(_) => reported = Some(current),
                        Err(e) if e.is_not_found() => lease = None,
                        Err(e) => tracing::debug!(error = %e, "convergence report failed"),
                    }
                }
            }
            tokio::select! {
                r = applied.changed() => {
                    if r.is_err() {
                        break;
                    }
                }
                _ = keepalive.tick() => {
                    if let Some(l) = lease {
                        if let Err(e) = self.client.keepalive(l).await {
                            if e.is_not_found() {
                                lease = None;
                            }
                        }
                    }
                }
                // Retry a report held back by MIN_INTERVAL or a failed write.
                _ = tokio::time::sleep(MIN_INTERVAL), if reported.as_ref() != Some(&*applied.borrow()) => {}
            }
        }
        if let Some(l) = lease {
            let _ = self.client.revoke(l).await;
        }
    }
}
