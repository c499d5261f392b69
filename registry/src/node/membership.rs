//! Membership changes and what a node reports about the cluster: `/v1/cluster`, readiness,
//! the index gauges of `/metrics`.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use proto::{ClusterInfo, Member, NodeRole, WriteResult};
use tokio::sync::watch;
use tokio::time::Instant;

use super::Node;
use crate::command::Cmd;
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
        let (cluster_id, started) = self.read_store(|s| (s.cluster_id().map(str::to_string), s.started().clone()));
        let members = membership
            .nodes()
            .map(|(id, n)| Member {
                id: *id,
                addr: n.addr.clone(),
                voter: voters.contains(id),
                matched_index: if *id == self.id && m.state == ServerState::Leader { m.last_log_index } else { matched(*id) },
                started: started.contains(id),
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
            cluster_id,
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

/// How often a leader looks for members to record as started.
const RECORD_EVERY: Duration = Duration::from_secs(1);

/// On a ready leader: names the cluster if it has no name yet, turns ACLs on if told to
/// (`--acl-bootstrap-token-file`), and records every member that has acknowledged the log
/// (`Cmd::MembersStarted`), so one that later comes back with an empty data directory is
/// recognised. A few entries in a cluster's life.
pub(super) async fn record_started(node: super::NodeRef, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RECORD_EVERY) => {}
            _ = stop.changed() => return,
        }
        let Some(n) = node.upgrade() else { return };
        if n.leadership.ready_term(Instant::now()).is_err() {
            continue;
        }
        if let Some(cmd) = n.membership_record() {
            if let Err(e) = n.propose(cmd.into()).await {
                tracing::debug!(error = %e, "could not record cluster membership facts yet");
            }
        }
    }
}

impl Node {
    /// What the leader still has to record, if anything.
    fn membership_record(&self) -> Option<Cmd> {
        let (has_id, started, acl_on) = self.read_store(|s| (s.cluster_id().is_some(), s.started().clone(), s.acl().enabled));
        if !has_id {
            return Some(Cmd::InitCluster { cluster_id: format!("{:016x}", rand::random::<u64>()) });
        }
        // `--acl-bootstrap-token-file`: ACLs on, with that token as the first admin. Until this
        // applies, a node so configured takes only that token (`Node::acl_view`).
        if let (false, Some(hash)) = (acl_on, &self.config.acl_bootstrap) {
            return Some(Cmd::AclBootstrap { hash: *hash });
        }
        let m = self.raft_metrics();
        let acked = |id: u64| id == self.id || m.replication.as_ref().is_some_and(|r| r.get(&id).cloned().flatten().is_some());
        let ids: Vec<u64> = m.membership_config.membership().nodes().map(|(id, _)| *id).filter(|id| !started.contains(id) && acked(*id)).collect();
        (!ids.is_empty()).then_some(Cmd::MembersStarted { ids })
    }
}

/// Before bootstrapping on an empty data directory: asks the peers whether this node already
/// took part in their cluster. `Err` with what to do if it did (its disk was wiped or
/// replaced), or if a peer refuses to say (its credentials are not this node's: starting
/// anyway could be a wiped member voting with an empty log); `Ok` if no peer says so, or none
/// answers (a brand-new cluster starting up).
pub async fn check_not_amnesiac(
    id: u64,
    data_dir: &std::path::Path,
    peers: &std::collections::BTreeMap<u64, String>,
    reach: &crate::peer_client::PeerClient,
) -> Result<(), String> {
    let others: Vec<&String> = peers.iter().filter(|(p, _)| **p != id).map(|(_, a)| a).collect();
    if others.is_empty() {
        return Ok(());
    }
    let others: Vec<String> = others.into_iter().cloned().collect();
    let client = reach.member_client(&others).map_err(|e| e.to_string())?;
    let answers = futures::future::join_all(others.iter().map(|a| client.cluster_at(a))).await;
    for (addr, info) in others.iter().zip(answers) {
        let info = match info {
            Ok(info) => info,
            // Down, or starting too: a brand-new cluster comes up this way.
            Err(e) if e.is_retriable() => continue,
            // It answered but would not say: this check is what keeps a wiped member from
            // voting with an empty log, so it does not pass on a refusal.
            Err(e) => {
                return Err(format!(
                    "node {id}: the data directory {} is empty, and peer {addr} refused to say whether node {id} is already a member: {e}. \
                     Check that this node has the cluster's credentials (--cluster-secret-file, or --tls-* with a node certificate for \
                     its host) before starting it.",
                    data_dir.display()
                ));
            }
        };
        if info.members.iter().any(|m| m.id == id && m.started) {
            return Err(format!(
                "node {id}: the data directory {} is empty, but cluster {} (asked {addr}) already counts node {id} as a member that took part. \
                 Its log and vote are gone (a wiped or replaced disk), and voting again with an empty log can lose committed writes. \
                 Start it again with --join: it is removed from the cluster, added back as a learner, and promoted once it has caught up.",
                data_dir.display(),
                info.cluster_id.as_deref().unwrap_or("(unnamed)"),
            ));
        }
    }
    Ok(())
}

/// `--join`: makes this (empty) node a member again through the cluster at `peers`: removes
/// its old self if the membership still lists it, then adds it as a learner that is promoted
/// once caught up. Retries until it succeeds or `stop`. While it runs the node refuses to vote
/// (its log is empty; its old self may still count as a voter), and a marker file in the data
/// directory makes a restart resume it.
pub async fn join(node: super::NodeRef, id: u64, advertise: String, peers: Vec<String>, mut stop: watch::Receiver<bool>) {
    let Some((client, tls, token)) = node.upgrade().and_then(|n| {
        let token = n.config().join_token.clone();
        let client = n.peers().member_client_with(&peers, token.as_deref()).ok()?;
        Some((client, n.peers().uses_tls(), token.is_some()))
    }) else {
        return;
    };
    let mut wait = Duration::from_millis(200);
    let mut removed = false;
    loop {
        let result = join_once(&client, id, &advertise, (tls, token), &mut removed, || {
            if let Some(n) = node.upgrade() {
                n.old_self_removed();
            }
        })
        .await;
        match result {
            Ok(()) => {
                tracing::info!(id, "joined the cluster as a voter");
                if let Some(n) = node.upgrade() {
                    n.joined();
                }
                return;
            }
            Err(e) => tracing::warn!(id, error = %e, retry_in = ?wait, "could not join the cluster yet"),
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// `(tls, token)`: whether peers prove themselves with certificates, and whether an admin token
/// came with --join-token-file.
async fn join_once(
    client: &client::Client,
    id: u64,
    advertise: &str,
    (tls, token): (bool, bool),
    removed: &mut bool,
    on_removed: impl FnOnce(),
) -> Result<(), client::Error> {
    let info = client.cluster().await?;
    // Under TLS a certificate proves membership only for a member's host. Once the old self is
    // gone, a node whose host no other member shares could not add itself back, and the cluster
    // would stay a voter short: without a token, it does not start.
    let host = crate::tls::host_of(advertise);
    if tls && !token && !info.members.iter().any(|m| m.id != id && crate::tls::host_of(&m.addr) == host) {
        return Err(client::Error::BadCredentials(format!(
            "under TLS, a node on {host}, a host no other member is on, cannot add itself with its certificate; \
             give --join-token-file with an admin token (nothing was changed)"
        )));
    }
    // Once removed, a listing of this id is this node's new self (an add whose answer was lost).
    if !*removed && info.members.iter().any(|m| m.id == id) {
        // Removing a voter shrinks the quorum's margin; with another voter down it would stop
        // every write. Wait until every other voter answers.
        for m in info.members.iter().filter(|m| m.voter && m.id != id) {
            if let Err(e) = client.cluster_at(&m.addr).await {
                return Err(client::Error::Unavailable(format!("not removing the old self while voter {} is unreachable: {e}", m.id)));
            }
        }
        tracing::info!(id, "the membership still lists this node's old self; removing it first");
        match client.remove_member(id).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    *removed = true;
    on_removed();
    tracing::info!(id, %advertise, "asking to be added as a learner, then promoted");
    client.add_member(id, advertise).await.map(|_| ())
}
