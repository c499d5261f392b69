//! Is this node's view of leadership current? One task follows openraft's metrics and owns the
//! answer: it stamps every publish, tracks contact with the leader, and promotes and demotes
//! the lease clocks.
//!
//! openraft publishes metrics only when its core loop runs, and in 0.9 that loop waits on every
//! log fsync. A leader whose disk hangs therefore keeps showing a fresh `millis_since_quorum_ack`
//! while its followers elect someone else (etcd #15247). So freshness is judged as the age of
//! the quorum ack *when it was published* plus the time since the publish: a stalled core makes
//! that grow, and renewals stop being acknowledged.

use std::sync::Mutex;
use std::time::Duration;

use openraft::ServerState;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::types::{NodeId, RaftMetrics};

/// What the leadership task saw at the last metrics publish.
#[derive(Debug, Clone, Copy)]
struct Seen {
    at: Instant,
    leader: bool,
    term: u64,
    quorum_ack_ms: Option<u64>,
}

pub struct Leadership {
    id: NodeId,
    /// Oldest quorum ack a leader still acts on: the longest election timeout less one
    /// heartbeat. Every voter of that quorum refuses votes for the longest election timeout
    /// after the append it acknowledged (openraft's leader lease), and no node campaigns
    /// sooner after its last contact (`election`), so no other leader can exist meanwhile.
    /// (The ack's age counts from when the acknowledged append was sent.)
    lease: Duration,
    /// How long a follower trusts its leader without hearing from it: the longest election
    /// timeout, by which it would have started an election itself.
    follower_trust: Duration,
    seen: Mutex<Option<Seen>>,
    /// Last time a leader's append reached this node.
    contact: Mutex<Option<Instant>>,
    /// Last time (when the probe was sent) the leader confirmed it still has a quorum. A cut-off
    /// leader keeps sending appends to whoever it still reaches (openraft 0.9 has no check
    /// quorum), so contact alone does not make a follower current.
    confirmed: Mutex<Option<Instant>>,
    /// The term in which this node leads *and* has applied an entry of its own, so its store
    /// holds everything its predecessors committed. Lease clocks run only then.
    ready: watch::Sender<Option<u64>>,
}

/// Why this node may not act as leader right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotFresh {
    /// Another node leads, or nobody.
    NotLeader,
    /// It leads on paper, but has not heard from a quorum recently enough (cut off, or its
    /// core is stalled).
    Stale,
    /// It leads, but has not yet applied an entry of its own term.
    NotReady,
}

impl Leadership {
    pub fn new(id: NodeId, heartbeat: Duration, election_timeout: (Duration, Duration)) -> Leadership {
        Leadership {
            id,
            lease: election_timeout.1.saturating_sub(heartbeat),
            follower_trust: election_timeout.1,
            seen: Mutex::new(None),
            contact: Mutex::new(None),
            confirmed: Mutex::new(None),
            ready: watch::channel(None).0,
        }
    }

    /// Records one metrics publish. Called by the leadership task as soon as it changes.
    pub fn observe(&self, m: &RaftMetrics, now: Instant) {
        let leader = m.state == ServerState::Leader && m.current_leader == Some(self.id);
        *self.seen.lock().unwrap() = Some(Seen { at: now, leader, term: m.current_term, quorum_ack_ms: m.millis_since_quorum_ack });
    }

    /// A leader's append reached this node.
    pub fn note_contact(&self, now: Instant) {
        *self.contact.lock().unwrap() = Some(now);
    }

    /// The term this node leads in, if it has heard from a quorum within its lease.
    pub fn fresh_term(&self, now: Instant) -> Result<u64, NotFresh> {
        let seen = (*self.seen.lock().unwrap()).ok_or(NotFresh::NotLeader)?;
        if !seen.leader {
            return Err(NotFresh::NotLeader);
        }
        let ack_age = Duration::from_millis(seen.quorum_ack_ms.ok_or(NotFresh::Stale)?) + now.saturating_duration_since(seen.at);
        if ack_age > self.lease {
            return Err(NotFresh::Stale);
        }
        Ok(seen.term)
    }

    /// `fresh_term`, and the leader has applied an entry of that term.
    pub fn ready_term(&self, now: Instant) -> Result<u64, NotFresh> {
        let term = self.fresh_term(now)?;
        match *self.ready.borrow() {
            Some(t) if t == term => Ok(term),
            _ => Err(NotFresh::NotReady),
        }
    }

    /// Waits up to `wait` for this node to become ready in a fresh term.
    pub async fn wait_ready(&self, wait: Duration) -> Result<u64, NotFresh> {
        // The keepalive path: a ready leader answers without subscribing to anything.
        match self.ready_term(Instant::now()) {
            Err(NotFresh::NotReady) => {}
            other => return other,
        }
        let deadline = Instant::now() + wait;
        let mut rx = self.ready.subscribe();
        loop {
            match self.ready_term(Instant::now()) {
                Err(NotFresh::NotReady) => {}
                other => return other,
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                return self.ready_term(Instant::now());
            }
        }
    }

    /// The leader answered a probe sent at `sent` saying it has a fresh quorum.
    pub fn note_confirmed(&self, sent: Instant) {
        let mut c = self.confirmed.lock().unwrap();
        if c.is_none_or(|t| t < sent) {
            *c = Some(sent);
        }
    }

    /// Whether a follower heard from its leader, and its leader confirmed a quorum, recently
    /// enough to serve what it has applied.
    pub fn follower_current(&self, now: Instant) -> bool {
        let recent = |t: &Mutex<Option<Instant>>| t.lock().unwrap().is_some_and(|t| now.saturating_duration_since(t) <= self.follower_trust);
        recent(&self.contact) && recent(&self.confirmed)
    }

    /// Whether a leader's append reached this node within an election timeout: its leader is
    /// worth forwarding to.
    pub fn leader_heard(&self, now: Instant) -> bool {
        self.since_contact(now).is_some_and(|d| d <= self.follower_trust)
    }

    /// When a leader's append last reached this node.
    pub fn last_contact(&self) -> Option<Instant> {
        *self.contact.lock().unwrap()
    }

    /// Time since a leader's append last reached this node.
    pub fn since_contact(&self, now: Instant) -> Option<Duration> {
        self.contact.lock().unwrap().map(|t| now.saturating_duration_since(t))
    }

    pub fn ready_now(&self) -> Option<u64> {
        *self.ready.borrow()
    }

    pub fn set_ready(&self, term: Option<u64>) {
        self.ready.send_if_modified(|t| std::mem::replace(t, term) != term);
    }
}

/// Decides the time a metrics publish is stamped with: when it may have been published at the
/// earliest.
///
/// The task consumes the channel every time it wakes, so a publish it sees now came after its
/// previous wake-up; it is stamped with that wake-up, never with "now". A process stopped
/// (SIGSTOP) or starved of CPU for seconds therefore sees, when it runs again, a publish
/// stamped seconds ago: a leader that was frozen does not look fresh for another lease (and
/// acknowledge renewals while another node leads). The task wakes at least every `tick`, so
/// a running task understates freshness by at most one tick, and no threshold has to guess
/// how late a wake-up must be to count as a stall.
#[derive(Debug)]
pub struct StallGuard {
    tick: Duration,
    last_wake: Instant,
}

impl StallGuard {
    pub fn new(tick: Duration, now: Instant) -> StallGuard {
        StallGuard { tick, last_wake: now }
    }

    /// How often the task must wake.
    pub fn tick(&self) -> Duration {
        self.tick
    }

    /// The task woke at `now`; returns the stamp for what it sees in the channel now.
    pub fn woke(&mut self, now: Instant) -> Instant {
        std::mem::replace(&mut self.last_wake, now)
    }
}

/// The leadership task: follows every metrics publish, stamps it, counts leader changes, and
/// promotes or demotes the lease clocks (`Node::align_clocks`). Nothing else starts or stops
/// them. Ends on `stop`, when Raft stops, or when the node is dropped.
pub(super) async fn follow(node: super::NodeRef, mut rx: watch::Receiver<RaftMetrics>, mut stop: watch::Receiver<bool>) {
    let mut last_leader = None;
    let mut guard = match node.upgrade() {
        Some(n) => StallGuard::new(n.config.heartbeat / 2, Instant::now()),
        None => return,
    };
    let mut published = true;
    loop {
        // The time first, then the channel: a publish landing in between would otherwise be
        // seen next time and stamped with this `now`, later than it was made.
        let now = Instant::now();
        let m = rx.borrow_and_update().clone();
        let stamp = guard.woke(now);
        let Some(node) = node.upgrade() else { return };
        if published {
            node.leadership.observe(&m, stamp);
        }
        if m.current_leader != last_leader {
            if m.current_leader.is_some() {
                node.metrics.leader_changes.inc();
            }
            tracing::info!(leader = ?m.current_leader, term = m.current_term, "leader changed");
            last_leader = m.current_leader;
        }
        node.align_clocks(&m, now);
        drop(node);
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
                published = true;
            }
            _ = tokio::time::sleep(guard.tick()) => published = rx.has_changed().unwrap_or(false),
            _ = stop.changed() => return,
        }
    }
}

/// On the leader: a heartbeat to every follower each `--heartbeat`. openraft's own heartbeats
/// come only every `append_timeout` (its `heartbeat_interval` is also its append timeout, which
/// is kept longer); one already waiting behind an append is not sent twice. Ends on `stop` or
/// when the node is dropped.
pub(super) async fn pulse(node: super::NodeRef, mut stop: watch::Receiver<bool>) {
    let every = {
        let Some(n) = node.upgrade() else { return };
        n.config.heartbeat
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let Some(n) = node.upgrade() else { return };
        if n.is_leader() && n.raft.trigger().heartbeat().await.is_err() {
            return;
        }
    }
}

/// On a follower: asks its leader, a few times per election timeout, whether it still has a
/// fresh quorum (its `x-registry-leader` header names itself only then), and records the
/// answer for `follower_current`. Ends on `stop` or when the node is dropped.
pub(super) async fn confirm_leader(node: super::NodeRef, mut stop: watch::Receiver<bool>) {
    let every = {
        let Some(n) = node.upgrade() else { return };
        n.config.election_timeout.0 / 4
    };
    loop {
        // Each probe runs on its own, so a slow answer does not delay the next one past the
        // trust window (that would make every follower of a busy leader flap).
        let Some(n) = node.upgrade() else { return };
        tokio::spawn(async move { probe_leader(&n).await });
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn probe_leader(n: &super::Node) {
    let Some((leader, addr)) = n.leader() else { return };
    if leader == n.id || n.faults.check(n.id, leader).is_err() {
        return;
    }
    let sent = Instant::now();
    let url = format!("{}/v1/cluster", n.peers.base(&addr));
    let answer = n.peers.http().get(&url).header(crate::http::FORWARDED_HEADER, n.id.to_string()).timeout(n.config.election_timeout.1).send().await;
    let named = answer.ok().and_then(|r| r.headers().get(proto::LEADER_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string));
    if named.as_deref() == Some(n.peers.base(&addr).as_str()) {
        n.leadership.note_confirmed(sent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(leader: bool, term: u64, ack: Option<u64>) -> RaftMetrics {
        let mut m = RaftMetrics::new_initial(1);
        m.current_term = term;
        if leader {
            m.state = ServerState::Leader;
            m.current_leader = Some(1);
        }
        m.millis_since_quorum_ack = ack;
        m
    }

    fn leadership() -> Leadership {
        Leadership::new(1, Duration::from_millis(100), (Duration::from_millis(500), Duration::from_millis(1000)))
    }

    /// etcd #15247: a leader whose core stalls keeps its last metrics; their age must count.
    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_metrics_stop_moving_goes_stale() {
        let l = leadership();
        l.observe(&metrics(true, 3, Some(20)), Instant::now());
        assert_eq!(l.fresh_term(Instant::now()), Ok(3));
        tokio::time::advance(Duration::from_millis(880)).await;
        assert_eq!(l.fresh_term(Instant::now()), Ok(3), "20 ms at publish + 880 ms since is within the 900 ms lease");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(l.fresh_term(Instant::now()), Err(NotFresh::Stale), "no publish for 881 ms: the ack is older than the lease");
        l.observe(&metrics(true, 3, Some(10)), Instant::now());
        assert_eq!(l.fresh_term(Instant::now()), Ok(3), "a new publish with a recent ack makes it fresh again");
    }

    /// A process stopped for a while must not stamp what was published before the stop as new.
    #[tokio::test(start_paused = true)]
    async fn a_publish_seen_after_a_stall_is_stamped_before_the_stall() {
        let l = leadership();
        let tick = Duration::from_millis(50);
        let mut g = StallGuard::new(tick, Instant::now());
        tokio::time::advance(tick).await;
        l.observe(&metrics(true, 3, Some(10)), g.woke(Instant::now()));
        assert_eq!(l.fresh_term(Instant::now()), Ok(3), "a publish seen on time is fresh");
        // The process is stopped for 1.5 s; on waking it sees a publish from before the stop.
        tokio::time::advance(Duration::from_millis(1500)).await;
        let stamp = g.woke(Instant::now());
        assert_eq!(Instant::now() - stamp, Duration::from_millis(1500), "stamped at the wake-up before the stall");
        l.observe(&metrics(true, 3, Some(10)), stamp);
        assert_eq!(l.fresh_term(Instant::now()), Err(NotFresh::Stale), "what was published before the stall does not make it fresh");
        tokio::time::advance(Duration::from_millis(5)).await;
        l.observe(&metrics(true, 3, Some(10)), g.woke(Instant::now()));
        assert_eq!(l.fresh_term(Instant::now()), Ok(3), "the next publish is recent, and fresh again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_is_ready_only_once_it_applied_its_own_term() {
        let l = leadership();
        l.observe(&metrics(true, 4, Some(0)), Instant::now());
        assert_eq!(l.ready_term(Instant::now()), Err(NotFresh::NotReady));
        l.set_ready(Some(3));
        assert_eq!(l.ready_term(Instant::now()), Err(NotFresh::NotReady), "ready in an older term does not count");
        l.set_ready(Some(4));
        assert_eq!(l.ready_term(Instant::now()), Ok(4));
        l.observe(&metrics(false, 5, None), Instant::now());
        assert_eq!(l.ready_term(Instant::now()), Err(NotFresh::NotLeader));
    }

    /// A follower forwards to its leader only while it hears from it: a dead leader stays
    /// openraft's `current_leader` until someone else wins.
    #[tokio::test(start_paused = true)]
    async fn a_silent_leader_is_not_worth_forwarding_to() {
        let l = leadership();
        assert!(!l.leader_heard(Instant::now()), "never heard");
        l.note_contact(Instant::now());
        tokio::time::advance(Duration::from_millis(1000)).await;
        assert!(l.leader_heard(Instant::now()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!l.leader_heard(Instant::now()), "silent for longer than an election timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_trusts_its_leader_for_one_election_timeout() {
        let l = leadership();
        assert!(!l.follower_current(Instant::now()), "no contact yet");
        l.note_contact(Instant::now());
        assert!(!l.follower_current(Instant::now()), "appends alone: the leader may be cut off with us");
        l.note_confirmed(Instant::now());
        tokio::time::advance(Duration::from_millis(1000)).await;
        assert!(l.follower_current(Instant::now()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!l.follower_current(Instant::now()));
    }
}
