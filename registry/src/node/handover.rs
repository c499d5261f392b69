//! What a leader hands its successors ahead of time: how recently each lease was renewed.
//!
//! Renewals are not log entries (they would cost an fsync each). Instead the ready leader
//! sends every voter, once a heartbeat, the leases renewed since the last message that voter
//! took, each with its age (`POST /raft/renewals`). A follower turns ages into its own clock's
//! instants and keeps them in `Renewals`; if it becomes leader it starts each lease's clock
//! from there (`lease::inherited`) instead of giving every lease a full TTL.
//!
//! Only the leader of a follower's current term is listened to, so a deposed or partitioned
//! leader's renewals do not count once another leader has been elected.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use proto::LeaseId;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::types::NodeId;

/// `POST /raft/renewals`: leases the sender, leader of `term`, saw renewed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewalShare {
    pub leader: NodeId,
    pub term: u64,
    /// `(lease id, milliseconds since its last renewal)` when the message was built. Ages, not
    /// times, so the nodes' clocks need not agree; the time in flight makes the receiver's
    /// estimate later, never earlier, than the renewal.
    pub renewals: Vec<(LeaseId, u64)>,
}

/// Whether the receiver took it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewalAck {
    pub accepted: bool,
}

impl super::Node {
    /// A follower takes renewals from the leader of its current term only.
    pub(crate) fn receive_renewals(&self, share: RenewalShare) -> RenewalAck {
        let now = Instant::now();
        let (term, leader) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.current_term, m.current_leader)
        };
        if share.term != term || leader != Some(share.leader) || share.leader == self.id {
            return RenewalAck { accepted: false };
        }
        let leases = {
            let d = self.shared.read();
            let mut r = self.renewals.lock().unwrap();
            for (id, age_ms) in &share.renewals {
                r.note(*id, now.checked_sub(Duration::from_millis(*age_ms)).unwrap_or(now));
            }
            // Leases that are gone are forgotten now and then, not on every message.
            if r.len() > 2 * d.store.leases().len() + 1024 {
                r.retain(|id| d.store.lease(id).is_some());
            }
            r.len()
        };
        tracing::trace!(leases, renewals = share.renewals.len(), "renewals from the leader");
        RenewalAck { accepted: true }
    }

    /// What voter `to` has not taken yet, as leader of `term`: the leases renewed since
    /// `since` (when the last message it took was built), with their ages now.
    pub(super) fn renewals_for(&self, term: u64, since: Option<Instant>, now: Instant) -> RenewalShare {
        let renewals =
            self.keeper(|k| k.renewed_since(since)).into_iter().map(|(lease, at)| (lease, now.saturating_duration_since(at).as_millis() as u64)).collect();
        RenewalShare { leader: self.id, term, renewals }
    }

    fn other_voters(&self) -> Vec<(NodeId, String)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        membership.voter_ids().filter(|v| *v != self.id).filter_map(|v| membership.get_node(&v).map(|n| (v, n.addr.clone()))).collect()
    }

    pub(super) async fn send_renewals(&self, to: NodeId, addr: &str, share: &RenewalShare) -> bool {
        self.send_renewals_within(to, addr, share, self.config.election_timeout.0).await
    }

    /// `send_renewals` with a deadline of its own (a hand-off sends every lease at once).
    pub(super) async fn send_renewals_within(&self, to: NodeId, addr: &str, share: &RenewalShare, limit: std::time::Duration) -> bool {
        if self.faults.check(self.id, to).is_err() {
            return false;
        }
        let url = format!("{}/raft/renewals", self.peers.base(addr));
        let sent = self.peers.http().post(url).json(share).timeout(limit).send().await;
        match sent {
            Ok(r) if r.status().is_success() => r.json::<RenewalAck>().await.is_ok_and(|a| a.accepted),
            _ => false,
        }
    }
}

/// The sharing task: once a heartbeat, while this node is a ready leader, sends each voter the
/// renewals it has not taken yet. One message in flight per voter, so a slow or unreachable
/// voter does not hold up the others. Ends on `stop` or when the node is dropped.
pub(super) async fn share(node: super::NodeRef, mut stop: watch::Receiver<bool>) {
    let every = match node.upgrade() {
        Some(n) => n.config.heartbeat,
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Per voter: when the last message it took was built.
    let mut delivered: HashMap<NodeId, Instant> = HashMap::new();
    let mut in_flight: HashSet<NodeId> = HashSet::new();
    let mut sends: JoinSet<(NodeId, u64, Instant, bool)> = JoinSet::new();
    let mut term_shared = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(Ok((id, term, built, ok))) = sends.join_next() => {
                in_flight.remove(&id);
                if ok && term_shared == Some(term) {
                    delivered.insert(id, built);
                }
                continue;
            }
            _ = stop.changed() => return,
        }
        let Some(n) = node.upgrade() else { return };
        let Ok(term) = n.leadership.ready_term(Instant::now()) else {
            term_shared = None;
            continue;
        };
        if term_shared != Some(term) {
            // A new term: every voter gets everything once.
            delivered.clear();
            term_shared = Some(term);
        }
        for (id, addr) in n.other_voters() {
            if !in_flight.insert(id) {
                continue;
            }
            let built = Instant::now();
            let share = n.renewals_for(term, delivered.get(&id).copied(), built);
            let n = n.clone();
            sends.spawn(async move { (id, term, built, n.send_renewals(id, &addr, &share).await) });
        }
    }
}
