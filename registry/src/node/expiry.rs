//! The leader's expiry loop: sleeps until the next lease deadline, confirms leadership with a
//! quorum, and proposes the expiry of what is due, stamped with the term that decided it.
//!
//! Architecture Invariant: only a leader that has just confirmed its leadership with a quorum,
//! in the same term as its clocks, proposes an expiry.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::{Node, NodeRef};
use crate::command::{Cmd, Resp};

/// How often the keeper is reconciled with the store as a backstop (leases the keeper missed,
/// or still holds after they were removed); grants, revokes and expiries update it directly.
const SYNC_EVERY: Duration = Duration::from_secs(5);
/// Leases per `ExpireLeases` entry, to keep entries (and their watch bursts) bounded.
const CHUNK: usize = 1000;

pub(super) async fn run(node: NodeRef, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    let mut last_sync = Instant::now();
    let mut retry_at: Option<Instant> = None;
    loop {
        let at = {
            let Some(n) = node.upgrade() else { return };
            let next = n.keeper(|k| k.next_deadline()).unwrap_or(last_sync + SYNC_EVERY);
            let at = next.min(last_sync + SYNC_EVERY);
            retry_at.map_or(at, |r| at.max(r))
        };
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {}
            _ = wake.notified() => {}
            _ = stop.changed() => return,
        }
        let Some(n) = node.upgrade() else { return };
        if n.fatal().is_some() {
            return;
        }
        let now = Instant::now();
        if now >= last_sync + SYNC_EVERY {
            let d = n.shared.read();
            n.keeper(|k| k.sync(d.store.leases(), now));
            last_sync = now;
        }
        if retry_at.is_some_and(|r| now < r) {
            continue;
        }
        retry_at = match n.expire_due().await {
            Ok(()) => None,
            Err(()) => Some(Instant::now() + n.config.lease_check),
        };
    }
}

impl Node {
    /// Expires every lease past its deadline, if leadership is confirmed. `Err` when something
    /// was due and could not be expired now.
    async fn expire_due(&self) -> Result<(), ()> {
        let now = Instant::now();
        let (term, due) = {
            let d = self.shared.read();
            let mut k = self.keeper.lock().unwrap();
            let Some(term) = k.term() else { return Ok(()) };
            let (due, gone): (Vec<u64>, Vec<u64>) = k.expired(now).into_iter().partition(|id| d.store.lease(*id).is_some());
            for id in gone {
                k.forget(id);
            }
            (term, due)
        };
        if due.is_empty() {
            return Ok(());
        }
        // A keepalive cannot revive a lease past its deadline (`LeaseKeeper::keepalive`), so
        // `due` stays due while leadership is confirmed.
        let confirmed = self.linearize().await.is_ok() && self.raft.metrics().borrow().current_term == term && self.keeper(|k| k.term()) == Some(term);
        if !confirmed {
            self.metrics.expiry_refused.inc();
            tracing::warn!(term, leases = due.len(), "leases look expired but leadership is not confirmed; not expiring");
            return Err(());
        }
        for chunk in due.chunks(CHUNK) {
            let cmd = Cmd::ExpireLeases { term, lease_ids: chunk.to_vec() };
            match self.propose(cmd.into()).await {
                Ok(Resp::Ok { revision }) => {
                    self.metrics.lease_expiries.inc_by(chunk.len() as u64);
                    self.keeper(|k| chunk.iter().for_each(|id| k.forget(*id)));
                    tracing::info!(term, revision, leases = ?chunk, "expired leases");
                }
                Ok(other) => {
                    tracing::warn!(?other, "expiry not applied");
                    return Err(());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not propose expiry");
                    return Err(());
                }
            }
        }
        Ok(())
    }
}
