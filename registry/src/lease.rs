//! Lease deadlines, kept on the leader only (docs/api.md, "Lease semantics").
//!
//! A keepalive moves a deadline in memory; it is not a log entry. Only expiry goes through Raft.
//! The keeper belongs to one leadership term. The leader shares how recently each lease was
//! renewed with its followers (outside the log), and they keep it in `Renewals`; a node that
//! becomes leader starts each lease's clock from there (`inherited`): a dead holder's lease
//! runs out about when it would have under the old leader, and a live holder always has time to
//! reach the new one.
//!
//! Deadlines are kept in an ordered index as well as by id, so the expiry loop can sleep until
//! the next one and find what is due without scanning every lease.
//!
//! Architecture Invariant: this module is pure; callers pass `now` (tokio's monotonic clock).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use proto::{LeaseId, LeaseInfo};
use tokio::time::Instant;

use crate::store::Lease;

#[derive(Debug)]
pub struct LeaseKeeper {
    /// The term these clocks belong to; `None` when this node is not leader.
    term: Option<u64>,
    /// What every `Tick` counts from.
    epoch: Instant,
    clocks: HashMap<LeaseId, Clock>,
    /// Every clock's `(deadline, id)`, earliest first.
    by_deadline: BTreeSet<(Tick, LeaseId)>,
    /// Every clock's `(renewed, id)`, oldest first: what to share since a given time.
    by_renewal: BTreeSet<(Tick, LeaseId)>,
}

/// A time on this node's monotonic clock, in nanoseconds from the keeper's `epoch` (negative
/// before it: an inherited renewal can predate the keeper). Eight bytes where an `Instant` takes
/// sixteen: the clocks and both indexes hold three per lease, which at 100,000 leases is about
/// 7 MB of the leader's memory (docs/performance.md, "Memory").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Tick(i64);

/// The deadline a new leader gives a lease it inherits, and the renewal time it records.
///
/// - Renewed at `last` (as shared by the previous leader): `last + ttl`, but not before
///   `now + min(ttl, ttl/3 + settle)`. A holder renews every ttl/3; whatever the failover cost,
///   its next renewal reaches the new leader within ttl/3 of the new leader being ready, plus
///   `settle`: a renewal stuck on the dead leader until the client's keepalive timeout, then
///   the time for followers to learn the new leader and forward.
/// - Nothing known (granted in the last moments before the change): a full `ttl` from now.
pub fn inherited(ttl: Duration, last: Option<Instant>, now: Instant, settle: Duration) -> (Instant, Instant) {
    match last {
        Some(t) => ((t + ttl).max(now + ttl.min(ttl / 3 + settle)), t.min(now)),
        None => (now + ttl, now),
    }
}

/// `settle` for `inherited`: a keepalive the client sent to the dead leader hangs until the
/// client's keepalive timeout (1 s, `client::Client::keepalive`), then it goes through a
/// follower that must know the new leader (a heartbeat) and forward, twice the election
/// timeout being a generous bound for both.
pub fn settle(election_timeout_max: Duration) -> Duration {
    Duration::from_secs(1) + 2 * election_timeout_max
}

/// On a follower: when each lease was last renewed, as its leaders shared it. Times are this
/// node's own monotonic clock (the leader sends ages, not instants).
#[derive(Debug, Default)]
pub struct Renewals {
    last: HashMap<LeaseId, Instant>,
}

impl Renewals {
    /// Records a renewal; an older report never moves a time back.
    pub fn note(&mut self, id: LeaseId, at: Instant) {
        let t = self.last.entry(id).or_insert(at);
        *t = (*t).max(at);
    }

    pub fn get(&self, id: LeaseId) -> Option<Instant> {
        self.last.get(&id).copied()
    }

    /// Forgets leases that are gone.
    pub fn retain(&mut self, mut keep: impl FnMut(LeaseId) -> bool) {
        self.last.retain(|id, _| keep(*id));
    }

    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

#[derive(Debug, Clone, Copy)]
struct Clock {
    ttl_ms: u64,
    deadline: Tick,
    renewed: Tick,
}

/// A keepalive for a lease whose deadline has passed: it is dead, and its expiry is due or
/// already under way. Renewing it now would answer "alive" just before it is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired;

impl Default for LeaseKeeper {
    fn default() -> LeaseKeeper {
        LeaseKeeper::new()
    }
}

impl LeaseKeeper {
    pub fn new() -> LeaseKeeper {
        LeaseKeeper { term: None, epoch: Instant::now(), clocks: HashMap::new(), by_deadline: BTreeSet::new(), by_renewal: BTreeSet::new() }
    }

    pub fn term(&self) -> Option<u64> {
        self.term
    }

    fn tick(&self, t: Instant) -> Tick {
        let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        match t.checked_duration_since(self.epoch) {
            Some(after) => Tick(nanos(after)),
            None => Tick(-nanos(self.epoch - t)),
        }
    }

    fn instant(&self, t: Tick) -> Instant {
        match u64::try_from(t.0) {
            Ok(after) => self.epoch + Duration::from_nanos(after),
            Err(_) => self.epoch - Duration::from_nanos(t.0.unsigned_abs()),
        }
    }

    fn clock(&self, ttl_ms: u64, deadline: Instant, renewed: Instant) -> Clock {
        Clock { ttl_ms, deadline: self.tick(deadline), renewed: self.tick(renewed) }
    }

    /// Starts the clocks of a new leadership from the renewals this node was told of
    /// (`inherited`).
    pub fn start_term<'a>(&mut self, term: u64, leases: impl IntoIterator<Item = &'a std::sync::Arc<Lease>>, known: &Renewals, now: Instant, settle: Duration) {
        self.stop();
        self.term = Some(term);
        for l in leases {
            let (deadline, renewed) = inherited(Duration::from_millis(l.ttl_ms), known.get(l.id), now, settle);
            self.insert(l.id, self.clock(l.ttl_ms, deadline, renewed));
        }
    }

    /// This node is no longer leader: its clocks mean nothing any more. Returns the renewal
    /// times it knew, which stay true facts for whoever leads next.
    pub fn stop(&mut self) -> Vec<(LeaseId, Instant)> {
        self.term = None;
        self.by_deadline.clear();
        self.by_renewal.clear();
        let clocks = std::mem::take(&mut self.clocks);
        clocks.into_iter().map(|(id, c)| (id, self.instant(c.renewed))).collect()
    }

    fn insert(&mut self, id: LeaseId, clock: Clock) {
        if let Some(old) = self.clocks.insert(id, clock) {
            self.by_deadline.remove(&(old.deadline, id));
            self.by_renewal.remove(&(old.renewed, id));
        }
        self.by_deadline.insert((clock.deadline, id));
        self.by_renewal.insert((clock.renewed, id));
    }

    /// Leases renewed (or whose clock started) at or after `since`, with when.
    pub fn renewed_since(&self, since: Option<Instant>) -> Vec<(LeaseId, Instant)> {
        let from = since.map_or(Tick(i64::MIN), |s| self.tick(s));
        self.by_renewal.range((from, 0)..).map(|(t, id)| (*id, self.instant(*t))).collect()
    }

    /// Starts the clock of a lease the store knows about (just granted), unless it has one.
    pub fn start(&mut self, id: LeaseId, ttl_ms: u64, now: Instant) {
        if self.term.is_some() && !self.clocks.contains_key(&id) {
            self.insert(id, self.clock(ttl_ms, now + Duration::from_millis(ttl_ms), now));
        }
    }

    /// Renews a lease the store knows about and returns its TTL. A lease without a clock (the
    /// store has it but the keeper has not synced yet) gets a full TTL from now; a lease whose
    /// deadline has passed is not renewed.
    pub fn keepalive(&mut self, id: LeaseId, ttl_ms: u64, now: Instant) -> Result<Duration, Expired> {
        let now_tick = self.tick(now);
        let ttl_ms = match self.clocks.get(&id) {
            Some(c) if c.deadline <= now_tick => return Err(Expired),
            Some(c) => c.ttl_ms,
            None => ttl_ms,
        };
        let ttl = Duration::from_millis(ttl_ms);
        self.insert(id, self.clock(ttl_ms, now + ttl, now));
        Ok(ttl)
    }

    pub fn has_clock(&self, id: LeaseId) -> bool {
        self.clocks.contains_key(&id)
    }

    /// Drops the clock of a lease that is gone (revoked, expired).
    pub fn forget(&mut self, id: LeaseId) {
        if let Some(c) = self.clocks.remove(&id) {
            self.by_deadline.remove(&(c.deadline, id));
            self.by_renewal.remove(&(c.renewed, id));
        }
    }

    /// Starts clocks for leases the store has and the keeper lacks, and forgets leases that are
    /// gone. A backstop: grants, revokes and expiries on this leader update the keeper directly.
    pub fn sync(&mut self, leases: &crate::store::Leases, now: Instant) {
        if self.term.is_none() {
            return;
        }
        let gone: Vec<LeaseId> = self.clocks.keys().filter(|id| !leases.contains_key(*id)).copied().collect();
        for id in gone {
            self.forget(id);
        }
        for l in leases.values() {
            self.start(l.id, l.ttl_ms, now);
        }
    }

    /// Leases whose deadline has passed, in id order.
    pub fn expired(&self, now: Instant) -> Vec<LeaseId> {
        let now = self.tick(now);
        let mut ids: Vec<LeaseId> = self.by_deadline.iter().take_while(|(d, _)| *d <= now).map(|(_, id)| *id).collect();
        ids.sort_unstable();
        ids
    }

    /// The earliest deadline, to know when to look again.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.by_deadline.first().map(|(d, _)| self.instant(*d))
    }

    pub fn info(&self, id: LeaseId, now: Instant) -> Option<LeaseInfo> {
        let c = self.clocks.get(&id)?;
        Some(LeaseInfo {
            lease_id: id,
            ttl_ms: c.ttl_ms,
            remaining_ms: self.instant(c.deadline).saturating_duration_since(now).as_millis() as u64,
            since_renewal_ms: now.saturating_duration_since(self.instant(c.renewed)).as_millis() as u64,
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

    use super::*;

    fn leases(specs: &[(LeaseId, u64)]) -> crate::store::Leases {
        specs.iter().map(|&(id, ttl_ms)| (id, std::sync::Arc::new(Lease { id, ttl_ms, instances: Default::default(), owner: None, token: None }))).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_expires_one_ttl_after_its_last_keepalive() {
        let store = leases(&[(1, 3000)]);
        let mut k = LeaseKeeper::new();
        k.start_term(1, store.values(), &Renewals::default(), Instant::now(), SETTLE);
        tokio::time::advance(Duration::from_millis(2000)).await;
        k.keepalive(1, 3000, Instant::now()).unwrap();
        tokio::time::advance(Duration::from_millis(2999)).await;
        assert!(k.expired(Instant::now()).is_empty());
        assert_eq!(k.next_deadline(), Some(Instant::now() + Duration::from_millis(1)));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(k.expired(Instant::now()), vec![1]);
    }

    const SETTLE: Duration = Duration::from_millis(1600);

    #[tokio::test(start_paused = true)]
    async fn a_new_term_without_shared_renewals_restarts_every_clock() {
        let store = leases(&[(1, 1000), (2, 5000)]);
        let mut k = LeaseKeeper::new();
        k.start_term(1, store.values(), &Renewals::default(), Instant::now(), SETTLE);
        tokio::time::advance(Duration::from_millis(4000)).await;
        assert_eq!(k.expired(Instant::now()), vec![1]);
        // Leadership moves; the new leader was told of no renewal.
        k.stop();
        assert!(k.expired(Instant::now()).is_empty());
        k.start_term(2, store.values(), &Renewals::default(), Instant::now(), SETTLE);
        assert!(k.expired(Instant::now()).is_empty(), "a leader change must not expire anything");
        tokio::time::advance(Duration::from_millis(1000)).await;
        assert_eq!(k.expired(Instant::now()), vec![1]);
    }

    /// One leader renews, shares with a follower, dies; the follower leads next. Three times.
    #[tokio::test(start_paused = true)]
    async fn a_renewed_lease_survives_three_leader_changes_in_a_row() {
        let store = leases(&[(1, 3000)]);
        let mut leader = LeaseKeeper::new();
        leader.start_term(1, store.values(), &Renewals::default(), Instant::now(), SETTLE);
        for term in 2..=4 {
            // The holder renews every TTL/3; the leader shares each renewal within a heartbeat.
            let mut follower = Renewals::default();
            for _ in 0..3 {
                tokio::time::advance(Duration::from_millis(1000)).await;
                leader.keepalive(1, 3000, Instant::now()).unwrap();
                tokio::time::advance(Duration::from_millis(50)).await;
                for (id, at) in leader.renewed_since(None) {
                    follower.note(id, at);
                }
            }
            // The leader dies just before the next renewal; an election takes up to a second.
            tokio::time::advance(Duration::from_millis(900)).await;
            leader.stop();
            tokio::time::advance(Duration::from_millis(1000)).await;
            leader.start_term(term, store.values(), &follower, Instant::now(), SETTLE);
            assert!(leader.expired(Instant::now()).is_empty(), "term {term}: the change expired a renewed lease");
            // The holder's retry lands within its renewal period of the new leader being ready.
            tokio::time::advance(Duration::from_millis(1000)).await;
            assert!(leader.keepalive(1, 3000, Instant::now()).is_ok(), "term {term}: the holder's next renewal was refused");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_whose_holder_died_with_the_leader_keeps_its_old_deadline() {
        let store = leases(&[(1, 3000)]);
        let mut follower = Renewals::default();
        let last = Instant::now();
        follower.note(1, last);
        // The holder and the leader die right after that renewal; the election takes 350 ms.
        tokio::time::advance(Duration::from_millis(350)).await;
        let mut k = LeaseKeeper::new();
        k.start_term(2, store.values(), &follower, Instant::now(), SETTLE);
        assert_eq!(k.next_deadline(), Some(last + Duration::from_millis(3000)), "TTL from the last renewal, not from the election");
        let info = k.info(1, Instant::now()).unwrap();
        assert_eq!(info.since_renewal_ms, 350);
    }

    #[tokio::test(start_paused = true)]
    async fn inherited_deadlines_leave_a_live_holder_one_renewal_period() {
        let now = Instant::now();
        tokio::time::advance(Duration::from_secs(10)).await;
        let later = Instant::now();
        let ttl = Duration::from_secs(3);
        assert_eq!(inherited(ttl, None, later, SETTLE), (later + ttl, later), "nothing known: a full TTL");
        let (deadline, renewed) = inherited(ttl, Some(now), later, SETTLE);
        assert_eq!((deadline, renewed), (later + Duration::from_millis(2600), now), "a long failover: TTL/3 + settle from now");
        let short = Duration::from_secs(1);
        assert_eq!(inherited(short, Some(now), later, SETTLE).0, later + short, "never more than a full TTL");
        let recent = later - Duration::from_millis(100);
        assert_eq!(inherited(ttl, Some(recent), later, SETTLE).0, recent + ttl, "a short one: TTL from the last renewal");
    }

    #[test]
    fn renewals_never_move_back() {
        let mut r = Renewals::default();
        let t = Instant::now();
        r.note(1, t + Duration::from_secs(2));
        r.note(1, t);
        assert_eq!(r.get(1), Some(t + Duration::from_secs(2)));
        r.retain(|id| id != 1);
        assert!(r.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn renewed_since_lists_what_changed() {
        let mut k = LeaseKeeper::new();
        k.start_term(1, leases(&[(1, 1000), (2, 1000)]).values(), &Renewals::default(), Instant::now(), SETTLE);
        let t0 = Instant::now();
        tokio::time::advance(Duration::from_millis(100)).await;
        k.keepalive(2, 1000, Instant::now()).unwrap();
        assert_eq!(k.renewed_since(None).len(), 2);
        assert_eq!(k.renewed_since(Some(t0 + Duration::from_millis(1))), vec![(2, Instant::now())]);
        k.forget(2);
        assert!(k.renewed_since(Some(t0 + Duration::from_millis(1))).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn sync_starts_new_leases_and_forgets_gone_ones() {
        let mut k = LeaseKeeper::new();
        k.start_term(3, leases(&[(1, 1000)]).values(), &Renewals::default(), Instant::now(), SETTLE);
        tokio::time::advance(Duration::from_millis(900)).await;
        k.sync(&leases(&[(2, 1000)]), Instant::now());
        assert_eq!(k.len(), 1);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(k.expired(Instant::now()).is_empty(), "lease 2's clock started at sync time");
        let info = k.info(2, Instant::now()).unwrap();
        assert_eq!((info.remaining_ms, info.since_renewal_ms), (500, 500));
    }

    /// Times are kept as offsets from the keeper's creation; a renewal heard of before it (a
    /// node that became leader soon after it started) must come back exact, not clamped.
    #[tokio::test(start_paused = true)]
    async fn a_renewal_older_than_the_keeper_keeps_its_time() {
        tokio::time::advance(Duration::from_secs(60)).await;
        let before = Instant::now() - Duration::from_millis(4_321);
        let mut known = Renewals::default();
        known.note(1, before);
        let mut k = LeaseKeeper::new();
        let now = Instant::now();
        k.start_term(1, leases(&[(1, 10_000), (2, 10_000)]).values(), &known, now, SETTLE);
        assert_eq!(k.renewed_since(None), vec![(1, before), (2, now)]);
        assert_eq!(k.renewed_since(Some(before + Duration::from_nanos(1))), vec![(2, now)]);
        assert_eq!(k.next_deadline(), Some(before + Duration::from_secs(10)));
        let info = k.info(1, now).unwrap();
        assert_eq!((info.ttl_ms, info.remaining_ms, info.since_renewal_ms), (10_000, 10_000 - 4_321, 4_321));
        let mut told = k.stop();
        told.sort();
        assert_eq!(told, vec![(1, before), (2, now)]);
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
        k.start_term(1, leases(&[(1, 1000), (2, 1000)]).values(), &Renewals::default(), Instant::now(), SETTLE);
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
        k.start_term(1, leases(&[(1, 1000), (2, 2000), (3, 3000)]).values(), &Renewals::default(), Instant::now(), SETTLE);
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
