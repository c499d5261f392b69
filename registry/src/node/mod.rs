//! One registry node: storage, Raft, leadership, the leader's lease clocks and the expiry loop.
//!
//! `Node` is the façade the HTTP layer calls: every write with its checks (`writes`), every
//! read with its consistency rule (`reads`), membership and cluster info (`membership`). It
//! knows nothing of HTTP. Background tasks run beside it, all stopped by `shutdown` or when
//! the node is dropped: `leadership::follow` and `confirm_leader`, `expiry::run`,
//! `election::run` and `membership::record_started`.

mod batch;
mod election;
mod expiry;
mod handover;
pub mod leadership;
mod membership;
mod reads;
mod transfer;
mod writes;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::storage::RaftLogStorage;
use openraft::{BasicNode, ServerState};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use election::{PreVoteRequest, PreVoteResponse};
pub use handover::{RenewalAck, RenewalShare};
pub use reads::{ReadOptions, Staleness, DEFAULT_WAIT, MAX_WAIT};
pub use transfer::{TimeoutNow, TimeoutNowAck, Transfer};
pub use writes::check_names;

use crate::command::{Proposal, Resp};
use crate::error::ApiError;
use crate::faults::Faults;
use crate::lease::{LeaseKeeper, Renewals};
use crate::metrics::Metrics;
use crate::network::Network;
use crate::peer_auth::PeerAuth;
use crate::peer_client::PeerClient;
use crate::state_machine::{Shared, StateMachine};
use crate::storage::log_store::{LogReader, LogStore};
use crate::store::Store;
use crate::types::{NodeId, Raft, RaftMetrics};
use election::Election;
use leadership::{Leadership, NotFresh};

/// Which ACL rules a node applies (`acl`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AclView {
    /// No ACLs in this cluster: anyone may do anything.
    Off,
    /// This node was told to turn ACLs on and the entry has not applied yet: only the bootstrap
    /// token, as `admin`, so the cluster is never open on its way to being closed.
    Bootstrapping(crate::acl::TokenHash),
    /// The replicated tokens decide.
    On,
}

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
    /// Bounds on what clients can make a node hold.
    pub limits: Limits,
    /// Take a snapshot after this many log entries.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot, so a slightly lagging follower catches up from the
    /// log instead of a whole snapshot.
    pub keep_after_snapshot: u64,
    /// Size at which the log starts a new segment file; compaction deletes whole segments.
    pub segment_bytes: u64,
    /// After an expiry could not be carried out (leadership unconfirmed), how long the leader
    /// waits before trying again. The expiry loop otherwise sleeps until the next deadline.
    pub lease_check: Duration,
    /// How long a write may wait for commit before the client is told to retry.
    pub write_timeout: Duration,
    /// Rejoin an existing cluster from an empty data directory (a node that lost its disk),
    /// instead of bootstrapping from `peers`.
    pub join: bool,
    /// `--join-token-file`: the admin token `--join` sends (a node that is not a member's host).
    pub join_token: Option<String>,
    /// Source address of this node's outgoing peer and forwarding connections: the address it
    /// listens on, when that is a specific one, so peers (and firewalls) see one address per node.
    pub source_ip: Option<std::net::IpAddr>,
    /// How peers prove they are members (`peer_auth`). The library default is `Insecure`;
    /// `registry serve` refuses to start that way unless told `--insecure`.
    pub peer_auth: PeerAuth,
    /// TLS for the client API and peer RPC (`--tls-*`); with it, `peer_auth` is
    /// `NodeCertificate`.
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// `--acl-bootstrap-token-file`: turn ACLs on with this token (its hash) as the first admin.
    pub acl_bootstrap: Option<crate::acl::TokenHash>,
    /// `--metrics-open`: `/metrics` needs no token even with ACLs on.
    pub metrics_open: bool,
    /// `--audit-log`: where to log every write clients send this node (`crate::audit`).
    pub audit_log: Option<PathBuf>,
}

/// Leader heartbeat interval. On a LAN a round trip is well under a millisecond; 50 ms leaves
/// room for a loaded host and still lets followers notice a dead leader quickly.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(50);

/// Election timeouts (min, max). The max is also openraft's leader lease: a voter refuses votes
/// that long after it last heard a leader, which sets the floor of a failover (docs/operations.md,
/// "Failover timing"); less a heartbeat, it is how long a leader acts on its last quorum ack.
pub const DEFAULT_ELECTION_TIMEOUT: (Duration, Duration) = (Duration::from_millis(200), Duration::from_millis(300));

/// How long openraft waits for an append (its `heartbeat_interval`): half the shortest election
/// timeout, never less than one heartbeat.
pub fn append_timeout(config: &NodeConfig) -> Duration {
    (config.election_timeout.0 / 2).max(config.heartbeat)
}

impl NodeConfig {
    /// Defaults for everything but identity and location.
    pub fn new(id: NodeId, advertise: String, data_dir: PathBuf, peers: BTreeMap<NodeId, String>) -> NodeConfig {
        NodeConfig {
            id,
            advertise,
            data_dir,
            peers,
            heartbeat: DEFAULT_HEARTBEAT,
            election_timeout: DEFAULT_ELECTION_TIMEOUT,
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(3600),
            history: 100_000,
            limits: Limits::default(),
            snapshot_every: 10_000,
            keep_after_snapshot: 1000,
            segment_bytes: crate::storage::log_store::DEFAULT_SEGMENT_LIMIT,
            lease_check: Duration::from_millis(50),
            write_timeout: Duration::from_secs(5),
            join: false,
            join_token: None,
            source_ip: None,
            peer_auth: PeerAuth::Insecure,
            tls: None,
            acl_bootstrap: None,
            metrics_open: false,
            audit_log: None,
        }
    }
}

/// Bounds on what clients can make one node hold; past them the answer is 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open watch streams on this node.
    pub max_watches: usize,
    /// Blocking queries waiting on this node.
    pub max_blocking_queries: usize,
    /// Live leases one client (by address) may hold.
    pub max_leases_per_client: u64,
    /// Approximate bytes of watch history this node keeps (beside `history`, a count).
    pub history_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_watches: 10_000, max_blocking_queries: 10_000, max_leases_per_client: 20_000, history_bytes: crate::watch::DEFAULT_HISTORY_BYTES }
    }
}

/// Holds one of a limited number of places (a watch, a blocking query); frees it on drop.
pub struct Permit(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn take_permit(count: &Arc<std::sync::atomic::AtomicUsize>, max: usize, what: &str, flag: &str) -> Result<Permit, ApiError> {
    if count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= max {
        count.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        return Err(ApiError::TooMany(format!("this node already serves {max} {what} ({flag}); try another node or later")));
    }
    Ok(Permit(count.clone()))
}

pub struct Node {
    id: NodeId,
    config: NodeConfig,
    raft: Raft,
    shared: Arc<Shared>,
    keeper: Mutex<LeaseKeeper>,
    /// As a follower: when each lease was last renewed, as the leader shared it (`handover`).
    renewals: Mutex<Renewals>,
    leadership: Leadership,
    election: Election,
    /// A reader over the log openraft writes, for the last log id a pre-vote compares.
    log: LogReader,
    metrics: Metrics,
    /// How this node reaches its peers (forwarding, pre-votes, renewal shares, checks).
    peers: PeerClient,
    faults: Faults,
    /// Wakes the expiry loop when the earliest deadline may have moved earlier.
    expiry_wake: Arc<Notify>,
    /// The snapshot being received from the leader: its id and how many bytes have arrived.
    receiving: Mutex<Option<(String, u64)>>,
    /// Rejoining with an empty log (`--join`): no votes until back in the membership.
    joining: std::sync::atomic::AtomicBool,
    /// While rejoining, until the old self is out of the membership: no appends either, so
    /// the leader never sees this id's log go backwards.
    old_self_listed: std::sync::atomic::AtomicBool,
    watches: Arc<std::sync::atomic::AtomicUsize>,
    blocking: Arc<std::sync::atomic::AtomicUsize>,
    /// Client writes being answered (`http::inflight`), for a graceful stop to wait on.
    writes: Arc<std::sync::atomic::AtomicUsize>,
    /// The audit log, with `--audit-log`.
    audit: Option<Arc<crate::audit::AuditLog>>,
    /// Held for writing while leadership is handed off (`transfer`); every proposal holds it
    /// for reading, so the log stops growing during a hand-off.
    transfer_gate: tokio::sync::RwLock<()>,
    /// Client writes waiting to share a log entry (`batch`).
    batches: batch::Queue,
    /// Set while a hand-off runs; renewals and writes wait for it to end.
    transferring: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("storage: {0}")]
    Storage(String),
    #[error("raft: {0}")]
    Raft(String),
    /// The data directory is empty but the cluster knows this node: it must `--join`.
    #[error("{0}")]
    LostData(String),
}

/// How long a write or keepalive waits for a just-elected leader to apply its first entry
/// before answering 503.
pub const READY_WAIT: Duration = Duration::from_secs(1);

impl Node {
    /// Opens the data directory, starts Raft, bootstraps a new cluster from `peers` if the data
    /// directory is new and this node is one of them, and starts the background tasks.
    pub async fn start(config: NodeConfig, faults: Faults) -> Result<Arc<Node>, StartError> {
        let mut log = LogStore::open_with(&config.data_dir.join("raft"), faults.disk_hook(config.id)).map_err(|e| StartError::Storage(e.to_string()))?;
        log.segment_limit = config.segment_bytes;
        crate::storage::frame::create_dir_durable(&config.data_dir).map_err(|e| StartError::Storage(e.to_string()))?;
        let sm = StateMachine::open(&config.data_dir.join("state"), config.history, config.limits.history_bytes)
            .map_err(|e| StartError::Storage(e.to_string()))?
            .with_faults(config.id, faults.clone());
        let shared = sm.shared();
        // A data directory seeded by `snapshot restore` has a snapshot (with the new cluster's
        // membership) and nothing else: not fresh, nothing to bootstrap.
        let fresh = log.get_log_state().await.map_err(|e| StartError::Storage(e.to_string()))?.last_log_id.is_none()
            && log.read_vote().await.map_err(|e| StartError::Storage(e.to_string()))?.is_none()
            && shared.read().last_applied.is_none();
        let raft_config = openraft::Config {
            cluster_name: "registry".into(),
            // openraft 0.9 gives every append this long to arrive, and sends its own heartbeats
            // at this pace. Half the shortest election timeout lets a large append behind a
            // slow fsync complete (at one heartbeat it timed out again and again, and the
            // leader went stale with no election); `leadership::pulse` sends the heartbeats
            // every `--heartbeat` instead.
            heartbeat_interval: append_timeout(&config).as_millis() as u64,
            election_timeout_min: config.election_timeout.0.as_millis() as u64,
            election_timeout_max: config.election_timeout.1.as_millis() as u64,
            // Each snapshot chunk (3 MiB, about 10 MiB as JSON) must arrive and be written within
            // this; openraft's 200 ms default fails on a busy or slow link and retries forever.
            install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT.as_millis() as u64,
            max_payload_entries: MAX_PAYLOAD_ENTRIES,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: config.keep_after_snapshot,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let peers = PeerClient::new(config.peer_auth.clone(), config.tls.clone(), config.source_ip).map_err(StartError::Raft)?;
        let log_reader = log.get_log_reader().await;
        let network = Network { from: config.id, peers: peers.clone(), faults: faults.clone() };
        let raft = Raft::new(config.id, Arc::new(raft_config), network, log, sm).await.map_err(|e| StartError::Raft(e.to_string()))?;
        // Elections are decided by `election::run` (a pre-vote, timed to the voters' lease),
        // not by openraft's own timer.
        raft.runtime_config().elect(false);
        let bootstrap = fresh && config.peers.contains_key(&config.id) && !config.join;
        if bootstrap {
            membership::check_not_amnesiac(config.id, &config.data_dir, &config.peers, &peers).await.map_err(StartError::LostData)?;
        }
        // A join interrupted by a crash resumes: the node has a log by then, but not yet its
        // place back in the membership.
        let marker = config.data_dir.join(JOIN_MARKER);
        let joining = (config.join && fresh) || marker.exists();
        if config.join && !joining {
            tracing::info!("--join ignored: the data directory already holds this node's log");
        }
        if joining {
            crate::storage::frame::write_atomic(&marker, b"rejoining the cluster").map_err(|e| StartError::Storage(e.to_string()))?;
        }
        if bootstrap {
            let members: BTreeMap<NodeId, BasicNode> = config.peers.iter().map(|(id, addr)| (*id, BasicNode { addr: addr.clone() })).collect();
            // Every initial member initializes with the same membership; openraft accepts that,
            // and it means no single node has to be up first.
            if let Err(e) = raft.initialize(members).await {
                tracing::info!(error = %e, "not bootstrapping");
            } else {
                tracing::info!(peers = ?config.peers, "bootstrapped a new cluster");
            }
        }
        let metrics = Metrics::default();
        let audit = match &config.audit_log {
            None => None,
            Some(p) => Some(
                crate::audit::AuditLog::open(p, metrics.audit_dropped.clone())
                    .map(Arc::new)
                    .map_err(|e| StartError::Storage(format!("audit log {}: {e}", p.display())))?,
            ),
        };
        let (batches, batch_queue) = batch::queue();
        let node = Arc::new(Node {
            id: config.id,
            leadership: Leadership::new(config.id, config.heartbeat, config.election_timeout),
            election: Election::new(config.election_timeout, Instant::now()),
            log: log_reader,
            config,
            raft,
            shared,
            keeper: Mutex::new(LeaseKeeper::new()),
            renewals: Mutex::new(Renewals::default()),
            metrics,
            audit,
            peers,
            faults,
            expiry_wake: Arc::new(Notify::new()),
            receiving: Mutex::new(None),
            joining: Default::default(),
            old_self_listed: Default::default(),
            watches: Default::default(),
            blocking: Default::default(),
            writes: Default::default(),
            transfer_gate: tokio::sync::RwLock::new(()),
            batches,
            transferring: watch::channel(false).0,
            stop: watch::channel(false).0,
            tasks: Mutex::new(Vec::new()),
        });
        let mut tasks = vec![
            tokio::spawn(leadership::follow(Arc::downgrade(&node), node.raft.metrics(), node.stop.subscribe())),
            tokio::spawn(expiry::run(Arc::downgrade(&node), node.expiry_wake.clone(), node.stop.subscribe())),
            tokio::spawn(membership::record_started(Arc::downgrade(&node), node.stop.subscribe())),
            tokio::spawn(leadership::confirm_leader(Arc::downgrade(&node), node.stop.subscribe())),
            tokio::spawn(leadership::pulse(Arc::downgrade(&node), node.stop.subscribe())),
            tokio::spawn(election::run(Arc::downgrade(&node), node.stop.subscribe())),
            tokio::spawn(handover::share(Arc::downgrade(&node), node.stop.subscribe())),
            tokio::spawn(batch::run(Arc::downgrade(&node), batch_queue, node.stop.subscribe())),
            tokio::spawn(batch::snapshot_by_writes(Arc::downgrade(&node), node.stop.subscribe())),
        ];
        if joining {
            node.joining.store(true, std::sync::atomic::Ordering::SeqCst);
            node.old_self_listed.store(true, std::sync::atomic::Ordering::SeqCst);
            let peers: Vec<String> = node.config.peers.iter().filter(|(id, _)| **id != node.id).map(|(_, a)| a.clone()).collect();
            tasks.push(tokio::spawn(membership::join(Arc::downgrade(&node), node.id, node.config.advertise.clone(), peers, node.stop.subscribe())));
        }
        *node.tasks.lock().unwrap() = tasks;
        Ok(node)
    }

    /// A client write began; it ends when the permit drops.
    pub fn write_started(&self) -> Permit {
        self.writes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Permit(self.writes.clone())
    }

    /// Waits up to `limit` until no client write is being answered; whether none is.
    pub async fn writes_settled(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.writes.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// Stops the background tasks and Raft. Safe to call more than once.
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        if let Some(log) = &self.audit {
            // Lines queued by the last requests are written before the process exits.
            let log = log.clone();
            let _ = tokio::task::spawn_blocking(move || log.flush(Duration::from_secs(2))).await;
        }
        let tasks: Vec<_> = self.tasks.lock().unwrap().drain(..).collect();
        for t in tasks {
            let _ = t.await;
        }
        let _ = self.raft.shutdown().await;
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn audit(&self) -> Option<&crate::audit::AuditLog> {
        self.audit.as_deref()
    }

    pub(crate) fn raft(&self) -> &Raft {
        &self.raft
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Whether one of `hosts` (a peer certificate's names) is the host of a current member, or
    /// this node knows no membership yet (it is about to be added, and its first contact is the
    /// leader's).
    pub fn is_member_host(&self, hosts: &[String]) -> bool {
        // Borrowed, not cloned: this runs on every peer request under TLS.
        let m = self.raft.metrics();
        let m = m.borrow();
        let mut members = m.membership_config.membership().nodes().map(|(_, n)| crate::tls::host_of(&n.addr)).peekable();
        members.peek().is_none() || members.any(|h| hosts.contains(&h))
    }

    /// The ACL rules this node applies right now.
    pub fn acl_view(&self) -> AclView {
        let enabled = self.read_store(|s| s.acl().enabled);
        match (enabled, &self.config.acl_bootstrap) {
            (true, _) => AclView::On,
            (false, Some(hash)) => AclView::Bootstrapping(*hash),
            (false, None) => AclView::Off,
        }
    }

    /// Whether a request checked as `caller` would still pass now: its token not revoked, and
    /// ACLs not turned on since an open request began. For long reads (watches, blocking
    /// queries), which must end when their right to read does.
    pub fn still_allowed(&self, caller: &crate::acl::Caller) -> bool {
        match (self.acl_view(), &caller.hash) {
            (AclView::Off, _) => true,
            (AclView::Bootstrapping(boot), Some(h)) => boot == *h,
            (AclView::On, Some(h)) => self.read_store(|s| s.acl().by_hash(h).is_some()),
            (_, None) => false,
        }
    }

    pub(crate) fn peers(&self) -> &PeerClient {
        &self.peers
    }

    pub(crate) fn http(&self) -> reqwest::Client {
        self.peers.http()
    }

    pub(crate) fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Reads the replicated store as this node has applied it.
    pub fn read_store<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        f(&self.shared.read().store)
    }

    pub fn raft_metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    /// Whether Raft stopped for good (a storage error); the process should exit.
    pub fn fatal(&self) -> Option<String> {
        self.raft.metrics().borrow().running_state.as_ref().err().map(|e| e.to_string())
    }

    /// A receiver that changes with every metrics publish, to wait on `fatal`.
    pub fn watch_metrics(&self) -> watch::Receiver<RaftMetrics> {
        self.raft.metrics()
    }

    /// The leader's id and address, if one is known.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?;
        Some((id, node.addr.clone()))
    }

    /// The leader's address to name to clients (`x-registry-leader`), only while this node's
    /// view is current: this node as leader with a recent quorum, or a follower that heard
    /// from its leader recently. A stalled or cut-off node names nobody, so clients move on.
    /// `with` gets the address in place: this runs on every answer, so nothing is copied.
    pub fn leader_hint<T>(&self, with: impl FnOnce(&str) -> T) -> Option<T> {
        let metrics = self.raft.metrics();
        let id = metrics.borrow().current_leader?;
        let now = Instant::now();
        let current = if id == self.id { self.leadership.fresh_term(now).is_ok() } else { self.leadership.follower_current(now) };
        if !current {
            return None;
        }
        let m = metrics.borrow();
        Some(with(&m.membership_config.membership().get_node(&id)?.addr))
    }

    /// Starts an election now instead of waiting for the timeout (tests; a leader hand-off).
    pub async fn campaign(&self) -> Result<(), ApiError> {
        self.raft.trigger().elect().await.map_err(|e| ApiError::Unavailable(e.to_string()))
    }

    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    /// "Not the leader": naming the leader (so the request is forwarded to it) only while it
    /// was heard from within an election timeout. A dead or frozen leader stays openraft's
    /// `current_leader` until someone else wins; forwarding to it would hold the client until
    /// its own timeout, where `no_leader` sends it on to another node at once.
    pub fn not_leader(&self) -> ApiError {
        match self.leader() {
            Some((id, addr)) if id != self.id && self.leadership.leader_heard(Instant::now()) => ApiError::NotLeader(Some((id, addr))),
            _ => ApiError::NoLeader,
        }
    }

    fn not_fresh(&self, why: NotFresh) -> ApiError {
        match why {
            NotFresh::NotLeader => self.not_leader(),
            NotFresh::Stale => {
                ApiError::Unavailable("this node has not heard from a quorum recently; its leadership is not confirmed, retry another node".into())
            }
            NotFresh::NotReady => ApiError::Unavailable("this node was just elected and is still applying its predecessor's log; retry shortly".into()),
        }
    }

    /// Succeeds on a leader with a recent quorum that has applied an entry of its own term, so
    /// its store holds every committed change (etcd #6978), waiting a little for a new leader.
    async fn ready(&self) -> Result<u64, ApiError> {
        self.transfer_settled().await;
        // Stopping: its leadership task may be gone, so its view of leadership is no longer
        // kept current.
        if *self.stop.borrow() {
            return Err(ApiError::Unavailable("this node is stopping; retry another node".into()));
        }
        self.leadership.wait_ready(READY_WAIT).await.map_err(|e| self.not_fresh(e))
    }

    /// Whether this node's applied state is current enough to serve watches and stale reads
    /// from: it is a member, and it leads with a recent quorum or heard from its leader within
    /// an election timeout.
    pub fn serving_current(&self) -> Result<(), ApiError> {
        let m = self.raft.metrics();
        let (member, leader) = {
            let m = m.borrow();
            (m.membership_config.membership().get_node(&self.id).is_some(), m.current_leader)
        };
        if !member {
            return Err(ApiError::Unavailable("this node is not a member of the cluster".into()));
        }
        let now = Instant::now();
        match leader {
            Some(l) if l == self.id => self.leadership.fresh_term(now).map(|_| ()).map_err(|e| self.not_fresh(e)),
            Some(_) if self.leadership.follower_current(now) => Ok(()),
            _ => Err(ApiError::Unavailable("this node has no current leader (cut off or electing); use another node".into())),
        }
    }

    /// Whether this node may answer vote requests: not while it rejoins with an empty log.
    pub(crate) fn may_vote(&self) -> bool {
        !self.joining.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether this node may take appends: not while its old self is still a member.
    pub(crate) fn may_append(&self) -> bool {
        !self.old_self_listed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The old self is out of the membership (or was never in it): appends may come.
    fn old_self_removed(&self) {
        self.old_self_listed.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// The join finished: vote again, and forget the marker.
    fn joined(&self) {
        self.joining.store(false, std::sync::atomic::Ordering::SeqCst);
        let marker = self.config.data_dir.join(JOIN_MARKER);
        if let Err(e) = std::fs::remove_file(&marker) {
            tracing::warn!(error = %e, path = %marker.display(), "could not remove the join marker");
        }
    }

    /// A place for one more watch stream, or 429.
    pub fn watch_permit(&self) -> Result<Permit, ApiError> {
        take_permit(&self.watches, self.config.limits.max_watches, "watch streams", "--max-watches")
    }

    /// A place for one more blocking query, or 429.
    fn blocking_permit(&self) -> Result<Permit, ApiError> {
        take_permit(&self.blocking, self.config.limits.max_blocking_queries, "blocking queries", "--max-blocking-queries")
    }

    /// Checks one chunk of a snapshot from the leader before openraft sees it: it ends under
    /// `MAX_SNAPSHOT_BYTES`, and within the snapshot being received it leaves no gap. (A chunk
    /// of a snapshot not being received, at an offset past 0, openraft refuses by itself with
    /// `SnapshotMismatch`, which makes the leader start over.)
    pub(crate) fn check_snapshot_chunk(&self, id: &str, offset: u64, len: u64) -> Result<(), ApiError> {
        if offset.checked_add(len).is_none_or(|e| e > MAX_SNAPSHOT_BYTES) {
            return Err(ApiError::InvalidArgument(format!("snapshot chunk at {offset}+{len} is past the {MAX_SNAPSHOT_BYTES}-byte limit")));
        }
        match self.receiving.lock().unwrap().as_ref() {
            Some((current, received)) if current == id && offset > *received => {
                Err(ApiError::InvalidArgument(format!("snapshot chunk at {offset} leaves a gap after {received} bytes")))
            }
            _ => Ok(()),
        }
    }

    /// openraft accepted a chunk (from the current leader): track how far the snapshot got.
    pub(crate) fn note_snapshot_chunk(&self, id: &str, offset: u64, len: u64) {
        let mut r = self.receiving.lock().unwrap();
        match r.as_mut() {
            Some((current, received)) if current == id => *received = (*received).max(offset + len),
            _ if offset == 0 => *r = Some((id.to_string(), len)),
            _ => {}
        }
    }

    /// A leader's append reached this node (called by the peer RPC handler).
    pub(crate) fn note_leader_contact(&self) {
        self.leadership.note_contact(Instant::now());
    }

    /// Proposes a command and waits for it to be applied on this node (the leader).
    async fn propose(&self, mut proposal: Proposal) -> Result<Resp, ApiError> {
        // The wall clock goes into the entry (for the removals record), so `apply` reads none.
        if proposal.at_ms.is_none() {
            proposal.at_ms = now_ms();
        }
        // Held until the answer: a hand-off waits for proposals in flight, and new ones wait
        // for it (then find this node a follower, and are relayed).
        let _gate = self.transfer_gate.read().await;
        let started = Instant::now();
        let write = tokio::time::timeout(self.config.write_timeout, self.raft.client_write(proposal)).await;
        self.metrics.write_seconds.observe(started.elapsed().as_secs_f64());
        match write {
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
    /// everything committed before the call (including its own first entry): a read after
    /// this is linearizable.
    /// A backup of the store as of now (`backup::document`), taken on the leader after a
    /// linearizable read barrier, so it holds every write acknowledged before the call.
    pub async fn snapshot(&self) -> Result<proto::SnapshotDocument, ApiError> {
        self.linearize().await?;
        let store = self.shared.read().store.clone();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        // Encoding a large store must not hold an async worker.
        tokio::task::spawn_blocking(move || crate::backup::document(&store, now)).await.map_err(|e| ApiError::Internal(e.to_string()))
    }

    async fn linearize(&self) -> Result<(), ApiError> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        match tokio::time::timeout(self.config.write_timeout, self.raft.ensure_linearizable()).await {
            Err(_) => Err(ApiError::Unavailable("timed out confirming leadership".into())),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(_))) => Err(self.not_leader()),
            Ok(Err(e)) => Err(ApiError::Unavailable(e.to_string())),
        }
    }

    /// Makes the lease clocks match leadership, from the leadership task only. A leader starts
    /// the clocks once it has applied an entry of its own term (then its store holds every
    /// lease its predecessors granted), each from the last renewal it was told of
    /// (`lease::inherited`); a node that stops leading drops its clocks, keeping their renewal
    /// times as a follower would have been told them.
    fn align_clocks(&self, m: &RaftMetrics, now: Instant) {
        let leader = m.state == ServerState::Leader && m.current_leader == Some(self.id);
        let applied_own_term = m.last_applied.is_some_and(|l| l.leader_id.term == m.current_term);
        // Lock order everywhere: `shared.data`, then `keeper`, then `renewals`. (std's RwLock
        // queues a reader behind a waiting writer, so another order deadlocks against `apply`.)
        let d = self.shared.read();
        let mut k = self.keeper.lock().unwrap();
        let stop = |k: &mut LeaseKeeper| {
            let mut r = self.renewals.lock().unwrap();
            for (id, at) in k.stop() {
                r.note(id, at);
            }
        };
        if leader && applied_own_term {
            if k.term() != Some(m.current_term) {
                // Leading an earlier term still (this task missed the steps between): its
                // renewal times are facts the new term's clocks start from, as after any stop.
                if k.term().is_some() {
                    stop(&mut k);
                }
                let known = self.renewals.lock().unwrap();
                k.start_term(m.current_term, d.store.leases().values(), &known, now, crate::lease::settle(self.config.election_timeout.1));
                let inherited = d.store.leases().keys().filter(|id| known.get(**id).is_some()).count();
                drop(known);
                tracing::info!(term = m.current_term, leases = k.len(), inherited, "leader: started the lease clocks from the renewals it was told of");
                self.leadership.set_ready(Some(m.current_term));
                self.expiry_wake.notify_one();
            }
        } else if leader {
            // Elected, still applying the predecessor's tail.
            if k.term().is_some_and(|t| t != m.current_term) {
                stop(&mut k);
            }
            self.leadership.set_ready(None);
        } else {
            if k.term().is_some() {
                tracing::info!(term = m.current_term, "no longer leader: dropped the lease clocks");
                stop(&mut k);
            }
            self.leadership.set_ready(None);
        }
    }

    /// Runs `f` on the lease keeper, for the leader's own operations. Never call it while
    /// holding `shared.data` the other way round: the order is data, then keeper.
    fn keeper<T>(&self, f: impl FnOnce(&mut LeaseKeeper) -> T) -> T {
        f(&mut self.keeper.lock().unwrap())
    }
}

/// In the data directory while a `--join` is under way.
const JOIN_MARKER: &str = "joining";

/// Largest snapshot a node accepts from its leader; it is assembled in memory.
pub const MAX_SNAPSHOT_BYTES: u64 = 4 << 30;

/// How long one chunk of a snapshot may take to reach a follower and be stored there.
pub const INSTALL_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(10);

/// Entries per append RPC. openraft 0.9 gives an append its `heartbeat_interval`
/// (`append_timeout`, 100 ms by default) to arrive and be stored; its default of 300 entries of
/// up to 64 KiB each (the API's body limit) is 20 MB, which never makes it, and a follower that
/// far behind never catches up. 16 bounds the count; `network::APPEND_BYTES` cuts an append of
/// large entries further, to what arrives in time.
pub const MAX_PAYLOAD_ENTRIES: u64 = 16;

/// The wall clock for an entry's `at_ms` (ms since the Unix epoch).
fn now_ms() -> Option<u64> {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_millis() as u64)
}

/// A weak handle for background tasks: they must not keep a dropped node alive.
type NodeRef = Weak<Node>;
