//! Lease deadlines, kept on the leader only (docs/api.md, "Leases").
//!
//! A keepalive moves a deadline in memory; it is not a log entry. Only expiry goes through Raft.
//! The keeper belongs to one leadership term: when a node becomes leader it starts every lease's
//! clock afresh (deadline = now + TTL), so a leader change never expires a lease that was being
//! renewed, whatever the previous leader's clocks said.
//!
//! Deadlines are kept in an ordered index as well as by id, so the expiry loop can sleep until
//! the next one and find what is due without scanning every lease.
//!
//! Architecture Invariant: this module is pure; callers pass `now` (tokio's monotonic clock).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use proto::{LeaseId, LeaseInfo};
use tokio::time::Instant;

use crate::store::Lease;

#[derive(Debug, Default)]
pub struct LeaseKeeper {
    /// The term these clocks belong to; `None` when this node is not leader.
    term: Option<u64>,
    clocks: HashMap<LeaseId, Clock>,
    /// Every clock's `(deadline, id)`, earliest first.
    by_deadline: BTreeSet<(Instant, LeaseId)>,
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

/// A keepalive for a lease whose deadline has passed: it is dead, and its expiry is due or
/// already under way. Renewing it now would answer "alive" just before it is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired;

impl LeaseKeeper {
    pub fn new() -> LeaseKeeper {
        LeaseKeeper::default()
    }

    pub fn term(&self) -> Option<u64> {
        self.term
    }

    /// Starts the clocks of a new leadership: every lease gets a full TTL from `now`.
    pub fn start_term<'a>(&mut self, term: u64, leases: impl IntoIterator<Item = &'a Lease>, now: Instant) {
        self.stop();
        self.term = Some(term);
        for l in leases {
            self.insert(l.id, Clock::start(l.ttl_ms, now));
        }
    }

    /// This node is no longer leader: its clocks mean nothing any more.
    pub fn stop(&mut self) {
        self.term = None;
        self.clocks.clear();
        self.by_deadline.clear();
    }

    fn insert(&mut self, id: LeaseId, clock: Clock) {
        if let Some(old) = self.clocks.insert(id, clock) {
            self.by_deadline.remove(&(old.deadline, id));
        }
        self.by_deadline.insert((clock.deadline, id));
    }

    /// Starts the clock of a lease the store knows about (just granted), unless it has one.
    pub fn start(&mut self, id: LeaseId, ttl_ms: u64, now: Instant) {
        if self.term.is_some() && !self.clocks.contains_key(&id) {
            self.insert(id, Clock::start(ttl_ms, now));
        }
    }

    /// Renews a lease the store knows about and returns its TTL. A lease without a clock (the
    /// store has it but the keeper has not synced yet) gets a full TTL from now; a lease whose
    /// deadline has passed is not renewed.
    pub fn keepalive(&mut self, id: LeaseId, ttl_ms: u64, now: Instant) -> Result<Duration, Expired> {
        let mut clock = match self.clocks.get(&id) {
            Some(c) if c.deadline <= now => return Err(Expired),
            Some(c) => *c,
            None => Clock::start(ttl_ms, now),
        };
        clock.deadline = now + clock.ttl;
        clock.renewed = now;
        self.insert(id, clock);
        Ok(clock.ttl)
    }

    pub fn has_clock(&self, id: LeaseId) -> bool {
        self.clocks.contains_key(&id)
    }

    /// Drops the clock of a lease that is gone (revoked, expired).
    pub fn forget(&mut self, id: LeaseId) {
        if let Some(c) = self.clocks.remove(&id) {
            self.by_deadline.remove(&(c.deadline, id));
        }
    }

    /// Starts clocks for leases the store has and the keeper lacks, and forgets leases that are
    /// gone. A backstop: grants, revokes and expiries on this leader update the keeper directly.
    pub fn sync(&mut self, leases: &BTreeMap<LeaseId, Lease>, now: Instant) {
        if self.term.is_none() {
            return;
        }
        let gone: Vec<LeaseId> = self.clocks.keys().filter(|id| !leases.contains_key(id)).copied().collect();
        for id in gone {
            self.forget(id);
        }
        for l in leases.values() {
            self.start(l.id, l.ttl_ms, now);
        }
    }

    /// Leases whose deadline has passed, in id order.
    pub fn expired(&self, now: Instant) -> Vec<LeaseId> {
        let mut ids: Vec<LeaseId> = self.by_deadline.iter().take_while(|(d, _)| *d <= now).map(|(_, id)| *id).collect();
        ids.sort_unstable();
        ids
    }

    /// The earliest deadline, to know when to look again.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.by_deadline.first().map(|(d, _)| *d)
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
        specs.iter().map(|&(id, ttl_ms)| (id, Lease { id, ttl_ms, instances: BTreeSet::new(), owner: None })).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_expires_one_ttl_after_its_last_keepalive() {
        let store = leases(&[(1, 3000)]);
        let mut k = LeaseKeeper::new();
        k.start_term(1, store.values(), Instant::now());
        tokio::time::advance(Duration::from_millis(2000)).await;
        k.keepalive(1, 3000, Instant::now()).unwrap();
        tokio::time::advance(Duration::from_millis(2999)).await;
        assert!(k.expired(Instant::now()).is_empty());
        assert_eq!(k.next_deadline(), Some(Instant::now() + Duration::from_millis(1)));
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
        k.start(2, 1000, Instant::now());
        assert!(k.is_empty());
        assert_eq!(k.next_deadline(), None);
    }

    /// etcd refuses to renew an expired lease: once the deadline has passed the expiry loop may
    /// already have picked the lease, and a 200 now would be followed by its deletion.
    #[tokio::test(start_paused = true)]
    async fn a_keepalive_after_the_deadline_does_not_revive_the_lease() {
        let mut k = LeaseKeeper::new();
        k.start_term(1, leases(&[(1, 1000), (2, 1000)]).values(), Instant::now());
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(k.keepalive(2, 1000, Instant::now()), Ok(Duration::from_secs(1)), "just in time");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(k.expired(Instant::now()), vec![1], "the expiry loop picks lease 1");
        assert_eq!(k.keepalive(1, 1000, Instant::now()), Err(Expired));
        assert_eq!(k.expired(Instant::now()), vec![1], "still due: the refused keepalive moved nothing");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(k.keepalive(1, 1000, Instant::now()), Err(Expired), "and it stays refused");
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_index_follows_keepalives_and_forgets() {
        let mut k = LeaseKeeper::new();
        k.start_term(1, leases(&[(1, 1000), (2, 2000), (3, 3000)]).values(), Instant::now());
        let t0 = Instant::now();
        assert_eq!(k.next_deadline(), Some(t0 + Duration::from_secs(1)));
        tokio::time::advance(Duration::from_millis(500)).await;
        k.keepalive(1, 1000, Instant::now()).unwrap();
        assert_eq!(k.next_deadline(), Some(t0 + Duration::from_millis(1500)));
        k.forget(1);
        assert_eq!(k.next_deadline(), Some(t0 + Duration::from_secs(2)));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(k.expired(Instant::now()), vec![2, 3]);
        assert_eq!(k.len(), 2);
    }
}
