//! Peer RPC, client side: openraft's messages as JSON over HTTP to the peer's single address.
//!
//! `Faults` is the seam where tests inject unreachable nodes, delays and drops; in production it
//! is empty and costs one mutex check per RPC.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::types::{NodeId, TypeConfig};

/// Injected network faults, shared by every node of an in-process test cluster.
#[derive(Clone, Default)]
pub struct Faults {
    rules: Arc<Mutex<Rules>>,
}

#[derive(Default)]
struct Rules {
    isolated: HashSet<NodeId>,
    cut: HashSet<(NodeId, NodeId)>,
    delay: HashMap<NodeId, Duration>,
    drop_one_in: Option<u64>,
    counter: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("fault injected: {0}")]
pub struct Injected(&'static str);

impl Faults {
    /// Cuts `node` off from every other node, both ways.
    pub fn isolate(&self, node: NodeId) {
        self.rules.lock().unwrap().isolated.insert(node);
    }

    /// Cuts the link from `from` to `to` (one way).
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.rules.lock().unwrap().cut.insert((from, to));
    }

    /// Delays every RPC sent to `node`.
    pub fn delay_to(&self, node: NodeId, by: Duration) {
        self.rules.lock().unwrap().delay.insert(node, by);
    }

    /// Drops one RPC in `n` (deterministically, by count).
    pub fn drop_one_in(&self, n: u64) {
        self.rules.lock().unwrap().drop_one_in = Some(n.max(1));
    }

    pub fn heal(&self) {
        *self.rules.lock().unwrap() = Rules::default();
    }

    /// Whether an RPC from `from` to `to` may pass, and after what delay.
    pub fn check(&self, from: NodeId, to: NodeId) -> Result<Duration, Injected> {
        let mut r = self.rules.lock().unwrap();
        if r.isolated.contains(&from) || r.isolated.contains(&to) {
            return Err(Injected("node isolated"));
        }
        if r.cut.contains(&(from, to)) {
            return Err(Injected("link cut"));
        }
        if let Some(n) = r.drop_one_in {
            r.counter += 1;
            if r.counter % n == 0 {
                return Err(Injected("rpc dropped"));
            }
        }
        Ok(r.delay.get(&to).copied().unwrap_or_default())
    }
}

/// Creates one connection per peer; all share one HTTP connection pool.
#[derive(Clone)]
pub struct Network {
    pub from: NodeId,
    pub http: reqwest::Client,
    pub faults: Faults,
}

pub struct Connection {
    net: Network,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        Connection { net: self.clone(), target, addr: node.addr.clone() }
    }
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl Connection {
    async fn call<Req, Resp, E>(&self, path: &str, req: &Req, option: &RPCOption) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let delay = self.net.faults.check(self.net.from, self.target).map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let url = format!("http://{}/raft/{path}", self.addr);
        let resp = self
            .net
            .http
            .post(url)
            .timeout(option.hard_ttl())
            .json(req)
            .send()
            .await
            .map_err(|e| if e.is_connect() { RPCError::Unreachable(Unreachable::new(&e)) } else { RPCError::Network(NetworkError::new(&e)) })?;
        let body: Result<Resp, RaftError<NodeId, E>> = resp.json().await.map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        body.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        self.call("append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call("vote", &rpc, &option).await
    }
}
