//! Membership changes and what a node reports about the cluster: `/v1/cluster`, readiness,
//! the index gauges of `/metrics`.

use std::collections::BTreeSet;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use proto::{ClusterInfo, Member, NodeRole, WriteResult};

use super::Node;
use crate::error::ApiError;
use crate::types::RaftMetrics;

fn membership_error(e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> ApiError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => match (f.leader_id, f.leader_node) {
            (Some(id), Some(n)) => ApiError::NotLeader(Some((id, n.addr))),
            _ => ApiError::NoLeader,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => ApiError::InvalidArgument(e.to_string()),
        RaftError::Fatal(e) => ApiError::Unavailable(e.to_string()),
    }
}

fn role(m: &RaftMetrics, voters: &BTreeSet<u64>, id: u64) -> NodeRole {
    match m.state {
        ServerState::Leader => NodeRole::Leader,
        ServerState::Candidate => NodeRole::Candidate,
        ServerState::Shutdown => NodeRole::Shutdown,
        ServerState::Learner => NodeRole::Learner,
        ServerState::Follower if voters.contains(&id) => NodeRole::Follower,
        ServerState::Follower => NodeRole::Learner,
    }
}

/// On the leader: the highest index a majority of voters has; elsewhere unknown.
fn commit_index(m: &RaftMetrics, voters: &BTreeSet<u64>) -> Option<u64> {
    let repl = m.replication.as_ref()?;
    let mut matched: Vec<u64> = voters
        .iter()
        .map(|id| if *id == m.id { m.last_log_index.unwrap_or(0) } else { repl.get(id).cloned().flatten().map(|l| l.index).unwrap_or(0) })
        .collect();
    matched.sort_unstable_by(|a, b| b.cmp(a));
    matched.get(voters.len() / 2).copied()
}

/// Log positions as this node sees them, for `/v1/cluster` and `/metrics`.
pub struct Indexes {
    pub applied: u64,
    pub commit: u64,
    pub last_log: u64,
}

impl Node {
    pub fn indexes(&self) -> Indexes {
        let m = self.raft_metrics();
        let voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
        let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
        Indexes { applied, commit: commit_index(&m, &voters).unwrap_or(applied), last_log: m.last_log_index.unwrap_or(0) }
    }

    pub fn cluster_info(&self) -> ClusterInfo {
        let m = self.raft_metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let matched = |id: u64| m.replication.as_ref().and_then(|r| r.get(&id).cloned().flatten()).map(|l| l.index);
        let members = membership
            .nodes()
            .map(|(id, n)| Member {
                id: *id,
                addr: n.addr.clone(),
                voter: voters.contains(id),
                matched_index: if *id == self.id && m.state == ServerState::Leader { m.last_log_index } else { matched(*id) },
            })
            .collect::<Vec<_>>();
        let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
        ClusterInfo {
            node_id: self.id,
            role: role(&m, &voters, self.id),
            leader: m.current_leader,
            leader_addr: self.leader().map(|(_, a)| a),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            commit_index: commit_index(&m, &voters).unwrap_or(applied),
            applied_index: applied,
            members,
        }
    }

    /// `Ok(leader)` when this node is part of a cluster with a known leader.
    pub fn readiness(&self) -> Result<u64, &'static str> {
        let m = self.raft_metrics();
        let member = m.membership_config.membership().get_node(&self.id).is_some();
        match (member, m.current_leader) {
            (true, Some(leader)) => Ok(leader),
            (false, _) => Err("not a member of a cluster"),
            (true, None) => Err("no leader known"),
        }
    }

    /// Adds a node as a learner, lets it catch up, then promotes it to voter.
    pub async fn add_member(&self, id: u64, addr: String) -> Result<WriteResult, ApiError> {
        crate::config::check_host_port(&addr).map_err(|e| ApiError::InvalidArgument(format!("addr: {e}")))?;
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        tracing::info!(id, %addr, "adding a learner, then promoting it to voter");
        self.raft.add_learner(id, BasicNode { addr }, true).await.map_err(membership_error)?;
        let r = self.raft.change_membership(ChangeMembers::AddVoterIds([id].into()), false).await.map_err(membership_error)?;
        Ok(WriteResult { revision: r.log_id.index })
    }

    /// Removes a member: demotes it if it votes, then drops it.
    pub async fn remove_member(&self, id: u64) -> Result<WriteResult, ApiError> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        let membership = self.raft_metrics().membership_config.membership().clone();
        if membership.get_node(&id).is_none() {
            return Err(ApiError::NotFound(format!("member {id}")));
        }
        let mut revision = 0;
        if membership.voter_ids().any(|v| v == id) {
            revision = self.raft.change_membership(ChangeMembers::RemoveVoters([id].into()), false).await.map_err(membership_error)?.log_id.index;
        }
        if self.raft_metrics().membership_config.membership().get_node(&id).is_some() {
            revision = self.raft.change_membership(ChangeMembers::RemoveNodes([id].into()), false).await.map_err(membership_error)?.log_id.index;
        }
        Ok(WriteResult { revision })
    }
}
