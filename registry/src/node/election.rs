//! When this node campaigns: a pre-vote, then openraft's election, timed to the voters' lease.
//!
//! openraft 0.9 has no pre-vote, and its own timer campaigns only after its leader lease *plus*
//! a random election timeout (`election_timeout_max` + [min, max) since the leader was last
//! heard), which is most of what a failover costs. So openraft's timer is switched off and this
//! task decides instead:
//!
//! - A follower campaigns once the leader has been silent for `election_timeout_max` plus a
//!   random spread of up to `election_timeout_max - election_timeout_min`. Earlier is useless:
//!   every voter refuses a vote for `election_timeout_max` after it last heard from a leader
//!   (openraft's leader lease, which this module leaves in place as the safety net).
//! - Before it campaigns it asks every voter whether it would vote (`/raft/prevote`). A voter
//!   says yes only if its own lease has run out, it does not lead with a fresh quorum itself,
//!   and the candidate's log is at least as up to date as its own. Without a majority of yeses
//!   the node does not campaign, so its term stays where it is. A node cut off from the
//!   majority, or just restarted while the leader is healthy, therefore never raises the term
//!   and never makes a healthy leader step down when it comes back.
//! - A voter that says yes to a candidate holds back its own campaign for one round (once per
//!   candidate and term), so two survivors rarely split the vote.
//!
//! The pre-vote is advisory: the vote itself is still openraft's, with its own checks.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use openraft::{LogId, ServerState};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::types::NodeId;

/// `POST /raft/prevote`: would you vote for me if I campaigned now?
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreVoteRequest {
    pub candidate: NodeId,
    /// The candidate's current term; it would campaign in the next one.
    pub term: u64,
    pub last_log_id: Option<LogId<NodeId>>,
}

/// The answer to a pre-vote.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreVoteResponse {
    pub granted: bool,
    /// When refused because this voter heard from a leader recently: how long until its lease
    /// runs out, so the candidate knows when asking again can succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    pub reason: String,
}

/// This node's side of elections: when it last had reason to think a leader was alive.
pub struct Election {
    /// openraft's leader lease: a voter refuses votes this long after it last heard a leader.
    lease: Duration,
    /// Random spread added to each wait, so survivors do not campaign at the same moment.
    spread: Duration,
    state: Mutex<ElectionState>,
    /// The last candidate and term this node granted a pre-vote to.
    granted: Mutex<Option<(NodeId, u64)>>,
}

#[derive(Debug, Clone, Copy)]
struct ElectionState {
    /// The later of: start-up, the last time this node led, its last pre-vote or campaign,
    /// and the last pre-vote it granted. Contact from a leader is tracked by `Leadership`.
    quiet_since: Instant,
    /// This round's share of the spread.
    jitter: Duration,
    /// Not before this (a voter told us when its lease runs out).
    not_before: Option<Instant>,
}

/// What a pre-vote round ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    Granted,
    /// Refused; ask again no earlier than this.
    Refused(Option<Duration>),
}

impl Election {
    pub fn new(election_timeout: (Duration, Duration), now: Instant) -> Election {
        let spread = election_timeout.1.saturating_sub(election_timeout.0);
        let state = Mutex::new(ElectionState { quiet_since: now, jitter: random_upto(spread), not_before: None });
        Election { lease: election_timeout.1, spread, state, granted: Mutex::new(None) }
    }

    /// Something happened that says a leader is alive (or a candidate is being helped): the
    /// wait starts over from `now`, with a new random share of the spread.
    pub(super) fn restart(&self, now: Instant) {
        let mut s = self.state.lock().unwrap();
        s.quiet_since = s.quiet_since.max(now);
        s.jitter = random_upto(self.spread);
        s.not_before = None;
    }

    /// When this node may next campaign, given the last contact from a leader.
    fn due(&self, contact: Option<Instant>) -> Instant {
        let s = *self.state.lock().unwrap();
        let since = contact.map_or(s.quiet_since, |c| c.max(s.quiet_since));
        let due = since + self.lease + s.jitter;
        s.not_before.map_or(due, |n| n.max(due))
    }

    /// Whether this is the first pre-vote granted to `candidate` for `term`.
    fn first_grant(&self, candidate: NodeId, term: u64) -> bool {
        let mut last = self.granted.lock().unwrap();
        let first = *last != Some((candidate, term));
        *last = Some((candidate, term));
        first
    }

    fn retry_at(&self, at: Instant) {
        self.state.lock().unwrap().not_before = Some(at);
    }
}

fn random_upto(d: Duration) -> Duration {
    if d.is_zero() {
        return d;
    }
    Duration::from_micros(rand::thread_rng().gen_range(0..d.as_micros() as u64))
}

/// Majority in every configuration of a (possibly joint) membership.
pub(super) fn is_quorum(configs: &[BTreeSet<NodeId>], granted: &BTreeSet<NodeId>) -> bool {
    configs.iter().all(|c| c.iter().filter(|id| granted.contains(id)).count() * 2 > c.len())
}

impl super::Node {
    /// Answers a pre-vote: yes only if this node would grant the vote itself right now.
    pub(crate) async fn prevote(&self, req: PreVoteRequest) -> PreVoteResponse {
        let refuse = |reason: String, retry: Option<Duration>| PreVoteResponse { granted: false, retry_after_ms: retry.map(|d| d.as_millis() as u64), reason };
        if !self.may_vote() {
            return refuse("rejoining with an empty log; not voting".into(), None);
        }
        let now = Instant::now();
        if self.leadership.fresh_term(now).is_ok() {
            return refuse(format!("node {} leads with a fresh quorum", self.id), None);
        }
        let lease = self.election.lease;
        // openraft's own view: when the vote was last confirmed by a leader's message, and
        // whether that vote is a leader's. Through its core loop, so bounded: a stalled core
        // cannot answer its real vote either.
        let state = self.raft.with_raft_state(|st| (st.vote_last_modified(), st.vote_ref().is_committed(), st.vote_ref().leader_id.term));
        let Ok(Ok((utime, committed, term))) = tokio::time::timeout(self.config.election_timeout.0, state).await else {
            return refuse("its Raft core did not answer".into(), None);
        };
        if committed {
            if let Some(t) = utime {
                let until = t + lease;
                if now <= until {
                    return refuse(format!("heard from the leader of term {term} {:?} ago", now - t), Some(until - now));
                }
            }
        }
        let mine = self.last_log_id();
        if req.last_log_id < mine {
            return refuse(format!("the candidate's log ends at {:?}, this node's at {mine:?}", req.last_log_id), None);
        }
        // Hold back this node's own campaign once per candidate and term, so two survivors do
        // not split the vote; not on every repeat, or a candidate that cannot win (it reaches
        // too few voters) would keep this node from ever campaigning.
        if self.election.first_grant(req.candidate, req.term) {
            self.election.restart(now);
        }
        tracing::info!(candidate = req.candidate, term = req.term, "pre-vote granted");
        PreVoteResponse { granted: true, retry_after_ms: None, reason: "ok".into() }
    }

    /// The last log id this node holds, written or not: what a vote compares.
    pub(super) fn last_log_id(&self) -> Option<LogId<NodeId>> {
        let m = self.raft.metrics().borrow().clone();
        [self.log.last_log_id(), m.snapshot, m.purged].into_iter().max().flatten()
    }

    /// Asks every other voter for a pre-vote; returns as soon as the outcome is known.
    async fn prevote_round(&self) -> Round {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let configs: Vec<BTreeSet<NodeId>> = membership.get_joint_config().clone();
        let req = PreVoteRequest { candidate: self.id, term: m.current_term, last_log_id: self.last_log_id() };
        let mut granted: BTreeSet<NodeId> = [self.id].into();
        if is_quorum(&configs, &granted) {
            return Round::Granted;
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().filter(|v| *v != self.id).collect();
        let mut asks: FuturesUnordered<_> = voters
            .iter()
            .filter_map(|v| membership.get_node(v).map(|n| (*v, n.addr.clone())))
            .map(|(id, addr)| {
                let req = req.clone();
                async move { (id, self.ask_prevote(id, &addr, &req).await) }
            })
            .collect();
        let mut pending = voters.clone();
        let mut retry: Option<Duration> = None;
        while let Some((id, answer)) = asks.next().await {
            pending.remove(&id);
            match answer {
                Ok(a) if a.granted => {
                    granted.insert(id);
                    if is_quorum(&configs, &granted) {
                        return Round::Granted;
                    }
                }
                Ok(a) => {
                    tracing::debug!(voter = id, reason = %a.reason, "pre-vote refused");
                    if let Some(ms) = a.retry_after_ms {
                        let d = Duration::from_millis(ms);
                        retry = Some(retry.map_or(d, |r| r.min(d)));
                    }
                }
                Err(e) => tracing::debug!(voter = id, error = %e, "pre-vote not answered"),
            }
            // Could the ones still out make a quorum? If not, stop waiting for them.
            let possible: BTreeSet<NodeId> = granted.union(&pending).copied().collect();
            if pending.is_empty() || !is_quorum(&configs, &possible) {
                break;
            }
        }
        Round::Refused(retry)
    }

    async fn ask_prevote(&self, to: NodeId, addr: &str, req: &PreVoteRequest) -> Result<PreVoteResponse, String> {
        let delay = self.faults.check(self.id, to).map_err(|e| e.to_string())?;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let url = format!("{}/raft/prevote", self.peers.base(addr));
        let resp = self.peers.http().post(url).json(req).timeout(self.config.election_timeout.0).send().await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("answered {}", resp.status()));
        }
        resp.json().await.map_err(|e| e.to_string())
    }
}

/// The election task: sleeps until this node may campaign, runs a pre-vote, and triggers
/// openraft's election only when a majority would vote. Ends on `stop` or when the node is
/// dropped.
pub(super) async fn run(node: super::NodeRef, mut stop: watch::Receiver<bool>) {
    loop {
        let due = {
            let Some(n) = node.upgrade() else { return };
            let now = Instant::now();
            let voter = n.raft.metrics().borrow().membership_config.membership().voter_ids().any(|v| v == n.id);
            if n.raft.metrics().borrow().state == ServerState::Leader || !voter || !n.may_vote() {
                // Leading (or not allowed to campaign): nothing is due; look again in a while.
                n.election.restart(now);
                now + n.config.heartbeat
            } else {
                let due = n.election.due(n.leadership.last_contact());
                if due <= now {
                    campaign(&n, now).await;
                    continue;
                }
                due
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn campaign(n: &super::Node, now: Instant) {
    match n.prevote_round().await {
        Round::Granted => {
            let silent = n.leadership.last_contact().map(|c| now - c);
            tracing::info!(?silent, "pre-vote won; campaigning");
            n.election.restart(Instant::now());
            if let Err(e) = n.raft.trigger().elect().await {
                tracing::warn!(error = %e, "could not start an election");
            }
        }
        Round::Refused(retry) => {
            // Ask again when the earliest lease runs out, or soon if nobody said; a little
            // random so two candidates drift apart.
            let wait = retry.unwrap_or(n.config.heartbeat) + random_upto(n.config.heartbeat / 2);
            n.election.retry_at(Instant::now() + wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[NodeId]) -> BTreeSet<NodeId> {
        v.iter().copied().collect()
    }

    #[test]
    fn quorum_is_a_majority_of_every_configuration() {
        let one = vec![ids(&[1, 2, 3])];
        assert!(!is_quorum(&one, &ids(&[1])));
        assert!(is_quorum(&one, &ids(&[1, 3])));
        let joint = vec![ids(&[1, 2, 3]), ids(&[3, 4, 5])];
        assert!(!is_quorum(&joint, &ids(&[1, 2])), "no majority of the new configuration");
        assert!(is_quorum(&joint, &ids(&[1, 3, 4])));
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_campaigns_one_lease_plus_its_jitter_after_the_last_contact() {
        let e = Election::new((Duration::from_millis(200), Duration::from_millis(300)), Instant::now());
        let contact = Instant::now() + Duration::from_millis(40);
        let due = e.due(Some(contact));
        let wait = due - contact;
        assert!(wait >= Duration::from_millis(300) && wait < Duration::from_millis(400), "waited {wait:?}");
        e.retry_at(contact + Duration::from_secs(1));
        assert_eq!(e.due(Some(contact)), contact + Duration::from_secs(1), "a voter's lease pushes it back");
        tokio::time::advance(Duration::from_millis(500)).await;
        e.restart(Instant::now());
        assert!(e.due(Some(contact)) >= Instant::now() + Duration::from_millis(300), "granting a pre-vote starts the wait over");
    }
}
