//! `BenchCluster`: a `RegistryCluster` as the registry benchmarks drive it: nodes named by
//! `--id`, an admin HTTP client for cluster state and metrics, and the load generator's own
//! connections (`http1::Target`) with a token of their own when the cluster is secured.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use serde_json::Value;

use crate::http1::{ConnSecurity, Target};
use crate::metrics::{self, Samples};
use crate::procstat::{self, Mem};
use crate::{until, ClusterOptions, RegistryCluster};

/// A node as the benchmarks name it: by its `--id`.
pub struct Node {
    pub id: u64,
    pub addr: SocketAddr,
    pub url: String,
}

pub struct BenchCluster {
    /// The processes (`RegistryCluster`: stopped when dropped, as its options say).
    pub procs: RegistryCluster,
    pub nodes: Vec<Node>,
    /// Admin requests (cluster state, metrics, watches): with the admin token when secured.
    pub http: reqwest::Client,
    /// TLS and the load generator's token (`announce:*`), when secured.
    pub secure: Option<Arc<ConnSecurity>>,
}

impl BenchCluster {
    /// Starts `n` nodes as `opts` says (secured: TLS with node certificates and ACLs on, as
    /// `registry tls init` and `--acl-bootstrap-token-file` make them; otherwise plain HTTP
    /// with the cluster secret). When secured, the load generator gets an `announce:*` token
    /// minted under `token_name`, as an announcer would: every request it makes pays the token
    /// check and the lease-owner check.
    pub async fn start(n: usize, opts: ClusterOptions, token_name: &str) -> Result<BenchCluster> {
        let procs = RegistryCluster::launch(n, opts).await?;
        let mut http =
            reqwest::Client::builder().connect_timeout(Duration::from_millis(500)).pool_idle_timeout(Duration::from_secs(30)).http1_only().no_proxy();
        let mut secure = None;
        if let Some(s) = &procs.secured {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {}", s.admin_token).parse()?);
            http = http.add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&s.ca)?)?).default_headers(headers);
            let token_file = s.mint(&procs.client(), token_name, &["announce:*"]).await;
            let token = std::fs::read_to_string(&token_file)?;
            secure = Some(Arc::new(ConnSecurity::new(&s.ca, token.trim())?));
        }
        let nodes = procs.addrs.iter().zip(procs.urls()).zip(1..).map(|((a, url), id)| Ok(Node { id, addr: a.parse()?, url })).collect::<Result<_>>()?;
        Ok(BenchCluster { procs, nodes, http: http.build()?, secure })
    }

    /// The nodes' data directories and logs.
    pub fn dir(&self) -> &Path {
        self.procs.dir.path()
    }

    /// Where the load generator's connections to node `addr` go, and how.
    pub fn target(&self, addr: SocketAddr) -> Target {
        Target { addr, secure: self.secure.clone(), source: None }
    }

    pub fn node(&self, id: u64) -> &Node {
        self.nodes.iter().find(|n| n.id == id).expect("known node id")
    }

    /// The index in `procs.nodes` of node `id`.
    pub fn index(&self, id: u64) -> usize {
        self.nodes.iter().position(|n| n.id == id).expect("known node id")
    }

    pub async fn get_json(&self, url: &str) -> Result<Value> {
        let resp = self.http.get(url).timeout(Duration::from_secs(5)).send().await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        ensure!(status.is_success(), "GET {url}: {status}: {}", String::from_utf8_lossy(&body));
        Ok(serde_json::from_slice(&body)?)
    }

    /// `GET /v1/cluster` of node `n`: its view of the cluster.
    pub async fn cluster_info(&self, n: &Node) -> Result<Value> {
        self.get_json(&format!("{}/v1/cluster", n.url)).await
    }

    /// Waits until every node names the same leader and that node says it is leader.
    pub async fn wait_leader(&self, limit: Duration) -> Result<u64> {
        let last = Mutex::new(String::from("no answer yet"));
        let agreed = until(limit, "the nodes to agree on a leader", || async {
            if let Err(e) = self.procs.check_running() {
                return Some(Err(e));
            }
            let mut leaders = Vec::new();
            let mut leader_role = None;
            for n in &self.nodes {
                match self.cluster_info(n).await {
                    Ok(v) => {
                        leaders.push(v["leader"].as_u64());
                        if v["role"] == "leader" {
                            leader_role = Some(n.id);
                        }
                    }
                    Err(e) => {
                        *last.lock().unwrap() = format!("node {}: {e:#}", n.id);
                        leaders.push(None);
                    }
                }
            }
            if let (Some(Some(l)), Some(r)) = (leaders.first(), leader_role) {
                if leaders.iter().all(|x| *x == Some(*l)) && *l == r {
                    return Some(Ok(r));
                }
            }
            if leaders.iter().any(Option::is_some) {
                *last.lock().unwrap() = format!("leaders as seen by nodes 1..{}: {leaders:?}", self.nodes.len());
            }
            None
        })
        .await;
        match agreed {
            Ok(leader) => leader,
            Err(_) => bail!("no leader agreed on within {limit:?}: {}", last.lock().unwrap()),
        }
    }

    /// The leader the first node that answers names.
    pub async fn current_leader(&self) -> Result<u64> {
        for n in &self.nodes {
            if let Ok(v) = self.cluster_info(n).await {
                if let Some(l) = v["leader"].as_u64() {
                    return Ok(l);
                }
            }
        }
        bail!("no node names a leader")
    }

    pub async fn metrics(&self, n: &Node) -> Result<Samples> {
        metrics::scrape(&self.http, &format!("{}/metrics", n.url)).await.with_context(|| format!("reading the metrics of node {}", n.id))
    }

    /// A metric's value on every node (sum over label sets), in node order.
    pub async fn metric_all(&self, name: &str) -> Result<Vec<f64>> {
        let mut out = Vec::new();
        for n in &self.nodes {
            let samples = self.metrics(n).await.with_context(|| format!("reading {name} from node {}", n.id))?;
            out.push(metrics::sum(&samples, name).with_context(|| format!("node {} has no metric {name}", n.id))?);
        }
        Ok(out)
    }

    /// `registry_keepalives_total` on node `n` (0 if it has none yet).
    pub async fn keepalives(&self, n: &Node) -> Result<f64> {
        Ok(metrics::sum(&self.metrics(n).await?, "registry_keepalives_total").unwrap_or(0.0))
    }

    /// `registry_lease_expiries_total`, summed over every node.
    pub async fn expiries(&self) -> Result<u64> {
        Ok(self.metric_all("registry_lease_expiries_total").await?.iter().sum::<f64>() as u64)
    }

    /// The nodes' process ids, in node order (0 for one not running).
    pub fn pids(&self) -> Vec<u32> {
        self.procs.nodes.iter().map(|p| p.pid().unwrap_or(0)).collect()
    }

    pub fn rss(&self) -> Vec<Mem> {
        self.pids().into_iter().map(Mem::of).collect()
    }

    /// Waits until every node has applied at least `index`; returns how long that took.
    pub async fn wait_applied(&self, index: u64, limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        until(limit, &format!("every node to apply index {index}"), || async {
            for n in &self.nodes {
                if self.cluster_info(n).await.ok().and_then(|v| v["applied_index"].as_u64()).unwrap_or(0) < index {
                    return None;
                }
            }
            Some(start.elapsed())
        })
        .await
    }

    /// Every node's data directory size, in node order.
    pub fn data_sizes(&self) -> Vec<u64> {
        (0..self.nodes.len()).map(|i| procstat::dir_size(&self.procs.data_dir(i))).collect()
    }
}
