//! Lease deadlines, kept on the leader only (DESIGN.md decisions 1 and 2).
//!
//! A keepalive moves a deadline in memory; it is not a log entry. Only expiry goes through Raft.
//! The keeper belongs to one leadership term: when a node becomes leader it starts every lease's
//! clock afresh (deadline = now + TTL), so a leader change never expires a lease that was being
//! renewed, whatever the previous leader's clocks said.
//!
//! Architecture Invariant: this module is pure; callers pass `now` (tokio's monotonic clock).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use proto::{LeaseId, LeaseInfo};
use tokio::time::Instant;

use crate::store::Lease;

#[derive(Debug, Default)]
pub struct LeaseKeeper {
    /// The term these clocks belong to; `None` when this node is not leader.
    term: Option<u64>,
    clocks: HashMap<LeaseId, Clock>,
}

#[derive(Debug, Clone, Copy)]
struct Clock {
    ttl: Duration,
    deadline: Instant,
    renewed: Instant,
}

impl Clock {
    fn start(ttl_ms: u64, now: Instant) -> Clock {
        let ttl = Duration::from_millis(ttl_ms);
        Clock { ttl, deadline: now + ttl, renewed: now }
    }
}

impl LeaseKeeper {
    pub fn new() -> LeaseKeeper {
        LeaseKeeper::default()
    }

    pub fn term(&self) -> Option<u64> {
        self.term
    }

    /// Starts the clocks of a new leadership: every lease gets a full TTL from `now`.
    pub fn start_term<'a>(&mut self, term: u64, leases: impl IntoIterator<Item = &'a Lease>, now: Instant) {
        self.term = Some(term);
        self.clocks = leases.into_iter().map(|l| (l.id, Clock::start(l.ttl_ms, now))).collect();
    }

    /// This node is no longer leader: its clocks mean nothing any more.
    pub fn stop(&mut self) {
        self.term = None;
        self.clocks.clear();
    }

    /// Renews a lease the store knows about; returns its TTL.
    pub fn keepalive(&mut self, id: LeaseId, ttl_ms: u64, now: Instant) -> Duration {
        let c = self.clocks.entry(id).or_insert_with(|| Clock::start(ttl_ms, now));
        c.deadline = now + c.ttl;
        c.renewed = now;
        c.ttl
    }

    /// Starts clocks for leases granted since the last call and forgets leases that are gone.
    pub fn sync(&mut self, leases: &BTreeMap<LeaseId, Lease>, now: Instant) {
        if self.term.is_none() {
            return;
        }
        self.clocks.retain(|id, _| leases.contains_key(id));
        for l in leases.values() {
            self.clocks.entry(l.id).or_insert_with(|| Clock::start(l.ttl_ms, now));
        }
    }

    /// Leases whose deadline has passed, in id order.
    pub fn expired(&self, now: Instant) -> Vec<LeaseId> {
        let mut ids: Vec<_> = self.clocks.iter().filter(|(_, c)| c.deadline <= now).map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids
    }

    /// The earliest deadline, to know when to look again.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.clocks.values().map(|c| c.deadline).min()
    }

    pub fn info(&self, id: LeaseId, now: Instant) -> Option<LeaseInfo> {
        let c = self.clocks.get(&id)?;
        Some(LeaseInfo {
            lease_id: id,
            ttl_ms: c.ttl.as_millis() as u64,
            remaining_ms: c.deadline.saturating_duration_since(now).as_millis() as u64,
            since_renewal_ms: now.saturating_duration_since(c.renewed).as_millis() as u64,
        })
    }

    pub fn len(&self) -> usize {
        self.clocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clocks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn leases(specs: &[(LeaseId, u64)]) -> BTreeMap<LeaseId, Lease> {
        specs.iter().map(|&(id, ttl_ms)| (id, Lease { id, ttl_ms, instances: BTreeSet::new() })).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_expires_one_ttl_after_its_last_keepalive() {
        let store = leases(&[(1, 3000)]);
        let mut k = LeaseKeeper::new();
        k.start_term(1, store.values(), Instant::now());
        tokio::time::advance(Duration::from_millis(2000)).await;
        k.keepalive(1, 3000, Instant::now());
        tokio::time::advance(Duration::from_millis(2999)).await;
        assert!(k.expired(Instant::now()).is_empty());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(k.expired(Instant::now()), vec![1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_term_restarts_every_clock() {
        let store = leases(&[(1, 1000), (2, 5000)]);
        let mut k = LeaseKeeper::new();
        k.start_term(1, store.values(), Instant::now());
        tokio::time::advance(Duration::from_millis(4000)).await;
        assert_eq!(k.expired(Instant::now()), vec![1]);
        // Leadership moves; the new leader knows nothing of old deadlines.
        k.stop();
        assert!(k.expired(Instant::now()).is_empty());
        k.start_term(2, store.values(), Instant::now());
        assert!(k.expired(Instant::now()).is_empty(), "a leader change must not expire anything");
        tokio::time::advance(Duration::from_millis(1000)).await;
        assert_eq!(k.expired(Instant::now()), vec![1]);
    }

    #[tokio::test(start_paused = true)]
    async fn sync_starts_new_leases_and_forgets_gone_ones() {
        let mut k = LeaseKeeper::new();
        k.start_term(3, leases(&[(1, 1000)]).values(), Instant::now());
        tokio::time::advance(Duration::from_millis(900)).await;
        k.sync(&leases(&[(2, 1000)]), Instant::now());
        assert_eq!(k.len(), 1);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(k.expired(Instant::now()).is_empty(), "lease 2's clock started at sync time");
        let info = k.info(2, Instant::now()).unwrap();
        assert_eq!((info.remaining_ms, info.since_renewal_ms), (500, 500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_keeps_no_clocks() {
        let mut k = LeaseKeeper::new();
        k.sync(&leases(&[(1, 1000)]), Instant::now());
        assert!(k.is_empty());
        assert_eq!(k.next_deadline(), None);
    }
}
