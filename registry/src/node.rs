//! One registry node: storage, Raft, the leader's lease clocks and the expiry loop.
//!
//! The HTTP layer calls into `Node`; `Node` knows nothing of HTTP.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::storage::RaftLogStorage;
use openraft::{BasicNode, ServerState};
use tokio::time::Instant;

use crate::command::{Cmd, Resp};
use crate::error::ApiError;
use crate::lease::LeaseKeeper;
use crate::metrics::Metrics;
use crate::network::{Faults, Network};
use crate::state_machine::{Shared, StateMachine};
use crate::storage::log_store::LogStore;
use crate::types::{NodeId, Raft, RaftMetrics};

/// Everything a node needs to start; built from flags or a config file by `config`.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: NodeId,
    /// The address other nodes and clients use to reach this node (`HOST:PORT`).
    pub advertise: String,
    pub data_dir: PathBuf,
    /// Initial members, used only when the data directory is new.
    pub peers: BTreeMap<NodeId, String>,
    pub heartbeat: Duration,
    pub election_timeout: (Duration, Duration),
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    /// How many change events each node retains for watchers.
    pub history: usize,
    /// Take a snapshot after this many log entries.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot, so a slightly lagging follower catches up from the
    /// log instead of a whole snapshot.
    pub keep_after_snapshot: u64,
    /// Size at which the log starts a new segment file; compaction deletes whole segments.
    pub segment_bytes: u64,
    /// How often the leader looks for expired leases.
    pub lease_check: Duration,
    /// How long a write may wait for commit before the client is told to retry.
    pub write_timeout: Duration,
    /// Source address of this node's outgoing peer and forwarding connections: the address it
    /// listens on, when that is a specific one, so peers (and firewalls) see one address per node.
    pub source_ip: Option<std::net::IpAddr>,
}

impl NodeConfig {
    /// Defaults for everything but identity and location.
    pub fn new(id: NodeId, advertise: String, data_dir: PathBuf, peers: BTreeMap<NodeId, String>) -> NodeConfig {
        NodeConfig {
            id,
            advertise,
            data_dir,
            peers,
            heartbeat: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(500), Duration::from_millis(1000)),
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(3600),
            history: 100_000,
            snapshot_every: 10_000,
            keep_after_snapshot: 1000,
            segment_bytes: crate::storage::log_store::DEFAULT_SEGMENT_LIMIT,
            lease_check: Duration::from_millis(50),
            write_timeout: Duration::from_secs(5),
            source_ip: None,
        }
    }
}

pub struct Node {
    pub id: NodeId,
    pub config: NodeConfig,
    pub raft: Raft,
    pub shared: Arc<Shared>,
    pub keeper: Mutex<LeaseKeeper>,
    pub metrics: Metrics,
    /// HTTP client for forwarding to the leader.
    pub http: reqwest::Client,
    pub faults: Faults,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("storage: {0}")]
    Storage(String),
    #[error("raft: {0}")]
    Raft(String),
}

impl Node {
    /// Opens the data directory, starts Raft, bootstraps a new cluster from `peers` if the data
    /// directory is new and this node is one of them, and starts the background tasks.
    pub async fn start(config: NodeConfig, faults: Faults) -> Result<Arc<Node>, StartError> {
        let mut log = LogStore::open(&config.data_dir.join("raft")).map_err(|e| StartError::Storage(e.to_string()))?;
        log.segment_limit = config.segment_bytes;
        let sm = StateMachine::open(&config.data_dir.join("state"), config.history).map_err(|e| StartError::Storage(e.to_string()))?;
        let fresh = log.get_log_state().await.map_err(|e| StartError::Storage(e.to_string()))?.last_log_id.is_none()
            && log.read_vote().await.map_err(|e| StartError::Storage(e.to_string()))?.is_none();
        let shared = sm.shared();
        let raft_config = openraft::Config {
            cluster_name: "registry".into(),
            heartbeat_interval: config.heartbeat.as_millis() as u64,
            election_timeout_min: config.election_timeout.0.as_millis() as u64,
            election_timeout_max: config.election_timeout.1.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: config.keep_after_snapshot,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let http = reqwest::Client::builder()
            .local_address(config.source_ip)
            .pool_idle_timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_millis(500))
            .build()
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let network = Network { from: config.id, http: http.clone(), faults: faults.clone() };
        let raft = Raft::new(config.id, Arc::new(raft_config), network, log, sm).await.map_err(|e| StartError::Raft(e.to_string()))?;
        if fresh && config.peers.contains_key(&config.id) {
            let members: BTreeMap<NodeId, BasicNode> = config.peers.iter().map(|(id, addr)| (*id, BasicNode { addr: addr.clone() })).collect();
            // Every initial member initializes with the same membership; openraft accepts that,
            // and it means no single node has to be up first.
            if let Err(e) = raft.initialize(members).await {
                tracing::info!(error = %e, "not bootstrapping");
            } else {
                tracing::info!(peers = ?config.peers, "bootstrapped a new cluster");
            }
        }
        let node = Arc::new(Node {
            id: config.id,
            config,
            raft,
            shared,
            keeper: Mutex::new(LeaseKeeper::new()),
            metrics: Metrics::default(),
            http,
            faults,
        });
        tokio::spawn(watch_leadership(node.clone()));
        tokio::spawn(expire_leases(node.clone()));
        Ok(node)
    }

    pub fn raft_metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    /// The leader's id and address, if one is known.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?;
        Some((id, node.addr.clone()))
    }

    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    /// Fails unless this node is leader and has heard from a quorum within the minimum election
    /// timeout, so a leader cut off from its peers stops taking keepalives that the real leader
    /// would never see.
    pub fn check_fresh_leader(&self) -> Result<(), ApiError> {
        let (leader, since_ack) = {
            let rx = self.raft.metrics();
            let m = rx.borrow();
            (m.state == ServerState::Leader, m.millis_since_quorum_ack)
        };
        if !leader {
            return Err(self.not_leader());
        }
        let limit = self.config.election_timeout.0.as_millis() as u64;
        match since_ack {
            Some(ms) if ms <= limit => Ok(()),
            _ => Err(ApiError::NoLeader),
        }
    }

    pub fn require_leader(&self) -> Result<(), ApiError> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(self.not_leader())
        }
    }

    pub fn not_leader(&self) -> ApiError {
        match self.leader() {
            Some((id, addr)) if id != self.id => ApiError::NotLeader(Some((id, addr))),
            _ => ApiError::NoLeader,
        }
    }

    /// Proposes a command and waits for it to be applied on this node (the leader).
    pub async fn propose(&self, cmd: Cmd) -> Result<Resp, ApiError> {
        let write = self.raft.client_write(cmd);
        match tokio::time::timeout(self.config.write_timeout, write).await {
            Err(_) => Err(ApiError::Unavailable("timed out waiting for the write to commit; it may still apply".into())),
            Ok(Ok(r)) => Ok(r.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => match (f.leader_id, f.leader_node) {
                (Some(id), Some(n)) if id != self.id => Err(ApiError::NotLeader(Some((id, n.addr)))),
                _ => Err(ApiError::NoLeader),
            },
            Ok(Err(e)) => Err(ApiError::Unavailable(e.to_string())),
        }
    }

    /// Waits until this node, as leader, has confirmed leadership with a quorum and applied
    /// everything committed before the call: a read after this is linearizable.
    pub async fn linearize(&self) -> Result<(), ApiError> {
        self.require_leader()?;
        match tokio::time::timeout(self.config.write_timeout, self.raft.ensure_linearizable()).await {
            Err(_) => Err(ApiError::Unavailable("timed out confirming leadership".into())),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(_))) => Err(self.not_leader()),
            Ok(Err(e)) => Err(ApiError::Unavailable(e.to_string())),
        }
    }

    /// Renews a lease. Leader only.
    pub fn keepalive(&self, lease_id: u64) -> Result<u64, ApiError> {
        self.check_fresh_leader()?;
        let ttl_ms = {
            let d = self.shared.data.read().unwrap();
            d.store.leases.get(&lease_id).map(|l| l.ttl_ms).ok_or(ApiError::LeaseNotFound(lease_id))?
        };
        let mut k = self.keeper.lock().unwrap();
        self.align_keeper(&mut k);
        if k.term().is_none() {
            return Err(self.not_leader());
        }
        let ttl = k.keepalive(lease_id, ttl_ms, Instant::now());
        self.metrics.keepalives.inc();
        Ok(ttl.as_millis() as u64)
    }

    /// Starts a just-granted lease's clock, so it shows in listings at once.
    pub fn start_clock(&self, lease_id: u64, ttl_ms: u64) {
        let mut k = self.keeper.lock().unwrap();
        self.align_keeper(&mut k);
        if k.term().is_some() {
            k.keepalive(lease_id, ttl_ms, Instant::now());
        }
    }

    /// Makes the keeper match the current leadership: new term, new clocks.
    fn align_keeper(&self, k: &mut LeaseKeeper) {
        let m = self.raft.metrics();
        let (leader, term) = {
            let m = m.borrow();
            (m.state == ServerState::Leader && m.current_leader == Some(self.id), m.current_term)
        };
        if leader && k.term() != Some(term) {
            let d = self.shared.data.read().unwrap();
            k.start_term(term, d.store.leases.values(), Instant::now());
            tracing::info!(term, leases = k.len(), "leader: started every lease's clock afresh");
        } else if !leader && k.term().is_some() {
            k.stop();
        }
    }
}

/// Follows leadership changes: counts them and resets the lease clocks.
async fn watch_leadership(node: Arc<Node>) {
    let mut rx = node.raft.metrics();
    let mut last_leader = None;
    loop {
        let leader = rx.borrow_and_update().current_leader;
        if leader != last_leader {
            if leader.is_some() {
                node.metrics.leader_changes.inc();
            }
            tracing::info!(?leader, "leader changed");
            last_leader = leader;
        }
        {
            let mut k = node.keeper.lock().unwrap();
            node.align_keeper(&mut k);
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// The leader's expiry loop: finds leases past their deadline, confirms leadership with a
/// quorum, and proposes their expiry stamped with the term that decided it.
async fn expire_leases(node: Arc<Node>) {
    let mut tick = tokio::time::interval(node.config.lease_check);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut synced_at = u64::MAX;
    loop {
        tick.tick().await;
        if node.raft.metrics().borrow().running_state.is_err() {
            return;
        }
        let due = {
            let revision = node.shared.data.read().unwrap().store.revision;
            let mut k = node.keeper.lock().unwrap();
            node.align_keeper(&mut k);
            if k.term().is_none() {
                synced_at = u64::MAX;
                continue;
            }
            if revision != synced_at {
                let d = node.shared.data.read().unwrap();
                k.sync(&d.store.leases, Instant::now());
                synced_at = revision;
            }
            k.expired(Instant::now())
        };
        if due.is_empty() {
            continue;
        }
        let Some(term) = node.keeper.lock().unwrap().term() else { continue };
        if node.linearize().await.is_err() || node.raft.metrics().borrow().current_term != term {
            node.metrics.expiry_refused.inc();
            tracing::warn!(term, leases = due.len(), "leases look expired but leadership is not confirmed; not expiring");
            continue;
        }
        // A keepalive may have landed while leadership was being confirmed.
        let still_due: Vec<u64> = {
            let k = node.keeper.lock().unwrap();
            let now_due = k.expired(Instant::now());
            due.into_iter().filter(|id| now_due.binary_search(id).is_ok()).collect()
        };
        for chunk in still_due.chunks(1000) {
            let cmd = Cmd::ExpireLeases { term, lease_ids: chunk.to_vec() };
            match node.propose(cmd).await {
                Ok(Resp::Ok { revision }) => {
                    node.metrics.lease_expiries.inc_by(chunk.len() as u64);
                    tracing::info!(term, revision, leases = ?chunk, "expired leases");
                }
                Ok(other) => tracing::warn!(?other, "expiry not applied"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not propose expiry");
                    break;
                }
            }
        }
    }
}
