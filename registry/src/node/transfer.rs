//! Handing leadership to a follower before this node stops, as etcd does on shutdown, so a
//! rolling restart costs no election timeout.
//!
//! openraft 0.9 has no leader transfer, and every voter that heard from the leader within its
//! lease refuses to vote (the safety net `election` leaves in place). One voter does vote: the
//! leader itself, whose own lease check counts from its election, long past. So, on SIGTERM:
//!
//! 1. New proposals wait (`propose` holds the gate for reading; the hand-off holds it for
//!    writing), as do renewals (`ready`): this node's log stops growing, and what waits is
//!    relayed to the new leader once there is one.
//! 2. The voter whose log matches this node's last entry is picked, waiting briefly for one.
//! 3. It gets every lease's last renewal (`handover`), so lease clocks carry over whole.
//! 4. It is told to campaign at once (`POST /raft/timeout_now`), skipping its pre-vote. Its
//!    vote request reaches this node, which grants it (its log is as long), and its own vote
//!    with this node's is a majority of three.
//!
//! With five voters two votes are not a majority and the others hold to their lease, so no
//! hand-off is tried: the node stops, and the others elect as after a crash.
//!
//! Safety does not rest on any of this: the vote is still openraft's, with its log check. The
//! one thing the hand-off gives up is the leader-side lease argument ("no voter of my last
//! quorum votes for a while"): this node votes at once. So it stops acting as leader (renewals,
//! expiries) before it votes, and until its leadership task has seen the new term.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::{LogId, ServerState};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::election::is_quorum;
use crate::types::NodeId;

/// `POST /raft/timeout_now`: the leader of `term` asks the receiver to campaign now.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutNow {
    pub leader: NodeId,
    pub term: u64,
    /// The leader's last log id; the receiver campaigns only if its own log is as long.
    pub last_log_id: Option<LogId<NodeId>>,
}

/// The answer to a `TimeoutNow`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutNowAck {
    pub campaigning: bool,
    pub reason: String,
}

/// How a hand-off ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transfer {
    /// This node did not lead (or had not yet applied its own term): nothing to hand off.
    NotLeader,
    /// This node is the only voter: there is no one to hand off to.
    Alone,
    /// `to` leads now, in `term`.
    Done { to: NodeId, term: u64 },
    /// Not handed off; the node stops as if it had crashed, and the others elect.
    Failed(String),
}

/// A hand-off that has not produced a new leader by then is abandoned: about three times what
/// one normally takes on a LAN, and well short of a supervisor's stop timeout.
const LIMIT: Duration = Duration::from_secs(2);

impl super::Node {
    /// Hands leadership to an up-to-date follower, if this node leads. Called before a
    /// graceful stop; the node is not expected to lead again afterwards (a failed hand-off
    /// leaves it leader, so it may).
    pub async fn hand_off(&self) -> Transfer {
        let Ok(term) = self.leadership.ready_term(Instant::now()) else { return Transfer::NotLeader };
        // Before anything waits: with no voter that can win with this one's vote (five
        // voters, or one), there is nothing to try.
        if self.raft.metrics().borrow().membership_config.membership().voter_ids().all(|v| v == self.id) {
            return Transfer::Alone;
        }
        if let Err(why) = self.able_successors() {
            return self.transfer_ended(Transfer::Failed(why));
        }
        self.transferring.send_replace(true);
        let asked = std::sync::atomic::AtomicBool::new(false);
        let out = match tokio::time::timeout(LIMIT, self.try_hand_off(term, &asked)).await {
            Ok(out) => out,
            Err(_) => Transfer::Failed(format!("no new leader within {LIMIT:?}")),
        };
        // Renewals and writes wait no more once another node leads, or when no candidate was
        // ever asked to campaign (this node still leads, alone). After a failed attempt in which
        // one was, this node may be deposed at any moment without having seen it: it keeps
        // holding them until it stops (`ready` refuses once stopping).
        if matches!(out, Transfer::Done { .. }) || !asked.load(std::sync::atomic::Ordering::SeqCst) {
            self.transferring.send_replace(false);
        }
        self.transfer_ended(out)
    }

    fn transfer_ended(&self, out: Transfer) -> Transfer {
        match &out {
            Transfer::Done { to, term } => {
                self.metrics.leader_transfers.get_or_create(&crate::metrics::ResultLabels { result: "done" }).inc();
                tracing::info!(to, term, "leadership handed off");
            }
            Transfer::Failed(why) => {
                self.metrics.leader_transfers.get_or_create(&crate::metrics::ResultLabels { result: "failed" }).inc();
                tracing::warn!(reason = %why, "leadership not handed off; the others will elect a leader after their lease");
            }
            Transfer::NotLeader | Transfer::Alone => {}
        }
        out
    }

    /// The voters whose vote and this node's make a majority of every configuration.
    fn able_successors(&self) -> Result<Vec<NodeId>, String> {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let configs: Vec<BTreeSet<NodeId>> = membership.get_joint_config().clone();
        let able: Vec<NodeId> = membership.voter_ids().filter(|v| *v != self.id && is_quorum(&configs, &[self.id, *v].into())).collect();
        if able.is_empty() {
            return Err(format!("no single other voter makes a majority with this one ({} voters)", membership.voter_ids().count()));
        }
        Ok(able)
    }

    async fn try_hand_off(&self, term: u64, asked: &std::sync::atomic::AtomicBool) -> Transfer {
        // No proposal in flight and none new from here on: the log stops growing (a membership
        // change, which does not go through `propose`, is caught below).
        let _gate = self.transfer_gate.write().await;
        let mut metrics = self.raft.metrics();
        let (to, addr, last) = loop {
            let last = self.last_log_id();
            let m = metrics.borrow_and_update().clone();
            if m.current_term != term || m.state != ServerState::Leader {
                return Transfer::Failed("leadership changed during the hand-off".into());
            }
            let able = match self.able_successors() {
                Ok(a) => a,
                Err(why) => return Transfer::Failed(why),
            };
            let matched = m.replication.clone().unwrap_or_default();
            let membership = m.membership_config.membership();
            let current = able.into_iter().find(|v| matched.get(v).copied().flatten() >= last && last.is_some());
            let Some((to, addr)) = current.and_then(|v| membership.get_node(&v).map(|n| (v, n.addr.clone()))) else {
                // Wait for replication to catch a voter up.
                if metrics.changed().await.is_err() {
                    return Transfer::Failed("raft stopped".into());
                }
                continue;
            };
            // openraft grants a vote only once its own vote is older than its lease; this
            // node's dates from its election, so this waits only for a leader elected a moment
            // ago.
            let vote_time = self.raft.with_raft_state(|st| st.vote_last_modified()).await.ok().flatten();
            if let Some(t) = vote_time {
                tokio::time::sleep_until(t + self.config.election_timeout.1 + Duration::from_millis(1)).await;
            }
            // Still the same log (a membership change may have appended meanwhile): else this
            // node would refuse the candidate's vote, and be deposed by its higher term anyway.
            if self.last_log_id() == last {
                break (to, addr, last);
            }
        };
        // Every lease's last renewal, so the successor's clocks start where this node's stand.
        // Built after `transferring` was set: a keepalive that renews later sees the flag and is
        // not acknowledged (`writes::keepalive`).
        let share = self.renewals_for(term, None, Instant::now());
        if !self.send_renewals_within(to, &addr, &share, LIMIT / 2).await {
            return Transfer::Failed(format!("node {to} did not take the lease renewals"));
        }
        let req = TimeoutNow { leader: self.id, term, last_log_id: last };
        asked.store(true, std::sync::atomic::Ordering::SeqCst);
        match self.send_timeout_now(to, &addr, &req).await {
            Ok(ack) if ack.campaigning => {}
            Ok(ack) => return Transfer::Failed(format!("node {to} would not campaign: {}", ack.reason)),
            Err(e) => return Transfer::Failed(format!("node {to} not reached: {e}")),
        }
        // Someone else leads in a later term and has committed an entry of it (this node has
        // applied one: the new leader is ready for writes), and this node's leadership task has
        // seen that it does not lead any more: what was held here then goes to the new leader.
        loop {
            let m = metrics.borrow_and_update().clone();
            let applied_new_term = m.last_applied.is_some_and(|l| l.leader_id.term > term);
            if m.current_term > term
                && m.current_leader.is_some_and(|l| l != self.id)
                && applied_new_term
                && self.leadership.fresh_term(Instant::now()).is_err()
            {
                return Transfer::Done { to: m.current_leader.unwrap_or(to), term: m.current_term };
            }
            // The leadership task observes on its own schedule: look again shortly, too.
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() {
                    return Transfer::Failed("raft stopped".into());
                },
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
    }

    async fn send_timeout_now(&self, to: NodeId, addr: &str, req: &TimeoutNow) -> Result<TimeoutNowAck, String> {
        self.faults.check(self.id, to).map_err(|e| e.to_string())?;
        let url = format!("{}/raft/timeout_now", self.peers.base(addr));
        let resp = self.peers.http().post(url).json(req).timeout(self.config.election_timeout.0).send().await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("answered {}", resp.status()));
        }
        resp.json().await.map_err(|e| e.to_string())
    }

    /// The receiving side: campaign now, if the sender leads this node's term and this node's
    /// log is as long as the sender's.
    pub(crate) async fn timeout_now(&self, req: TimeoutNow) -> TimeoutNowAck {
        let refuse = |reason: String| TimeoutNowAck { campaigning: false, reason };
        let (term, leader, voter) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.current_term, m.current_leader, m.membership_config.membership().voter_ids().any(|v| v == self.id))
        };
        if req.leader == self.id || leader != Some(req.leader) || term != req.term {
            return refuse(format!("node {} does not lead term {} here (this node: term {term}, leader {leader:?})", req.leader, req.term));
        }
        if !voter || !self.may_vote() {
            return refuse("this node is not a voter".into());
        }
        if *self.stop.borrow() {
            return refuse("this node is stopping too".into());
        }
        let mine = self.last_log_id();
        if mine < req.last_log_id {
            return refuse(format!("this node's log ends at {mine:?}, the leader's at {:?}", req.last_log_id));
        }
        tracing::info!(from = req.leader, term = req.term, "the leader hands off: campaigning now");
        self.election.restart(Instant::now());
        match self.raft.trigger().elect().await {
            Ok(()) => TimeoutNowAck { campaigning: true, reason: "ok".into() },
            Err(e) => refuse(format!("could not start an election: {e}")),
        }
    }

    /// Renewals and writes wait while a hand-off runs (bounded by its limit): afterwards they
    /// find this node a follower and are relayed to the new leader.
    pub(super) async fn transfer_settled(&self) {
        if !*self.transferring.borrow() {
            return;
        }
        let mut rx = self.transferring.subscribe();
        let _ = tokio::time::timeout(LIMIT, rx.wait_for(|busy| !*busy)).await;
    }
}
