//! The in-process cluster harness shared by the cluster test binaries: nodes on port-0
//! listeners in one process, faults injected through one shared `Faults`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proto::InstanceSpec;
use registry::faults::Faults;
use registry::node::{Node, NodeConfig};
use registry::peer_auth::{ClusterSecret, PeerAuth};
use testkit::wait_for as wait_until;

pub struct TestNode {
    pub node: Arc<Node>,
    pub url: String,
    pub http: tokio::task::JoinHandle<()>,
}

pub struct Cluster {
    pub nodes: BTreeMap<u64, TestNode>,
    pub faults: Faults,
    pub _dir: tempfile::TempDir,
    /// Where `tls init` wrote the cluster's certificates, for a TLS cluster.
    pub tls_dir: Option<std::path::PathBuf>,
}

impl Cluster {
    pub async fn start(n: u64) -> Cluster {
        Self::start_with(n, |_| {}).await
    }

    /// A cluster with the settings a user gets: no test timings.
    pub async fn start_defaults(n: u64) -> Cluster {
        Self::start_from(n, |c| c, |_| {}).await
    }

    /// Default timings, with `tweak` (storage settings, say) applied.
    pub async fn start_defaults_with(n: u64, tweak: fn(&mut NodeConfig)) -> Cluster {
        Self::start_from(n, |c| c, tweak).await
    }

    /// Every cluster runs with the timings a user gets; `tweak` changes what a test needs.
    pub async fn start_with(n: u64, tweak: fn(&mut NodeConfig)) -> Cluster {
        Self::start_from(n, |c| c, tweak).await
    }

    async fn start_from(n: u64, base: fn(NodeConfig) -> NodeConfig, tweak: fn(&mut NodeConfig)) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(
            dir,
            n,
            move |c| {
                *c = base(c.clone());
                tweak(c)
            },
            None,
        )
        .await
    }

    /// A cluster over TLS, as `registry tls init` and `--tls-*` set one up: every node serves
    /// (and proves membership with) the node certificate for 127.0.0.1.
    pub async fn start_tls(n: u64) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("tls");
        registry::tls::init::init(&certs, &["127.0.0.1".to_string()]).unwrap();
        let files = node_tls_files(&certs);
        let tls = move |cfg: &mut NodeConfig| {
            cfg.tls = Some(registry::tls::Tls::load(files.clone()).unwrap());
            cfg.peer_auth = PeerAuth::NodeCertificate;
        };
        Self::start_in(dir, n, tls, Some(certs)).await
    }

    /// `start_tls`, but each node's certificate, key and CA are `files(id)`'s: for a node that
    /// holds another CA's certificate. Returns once the nodes in `electing` agree on a leader.
    pub async fn start_tls_by(n: u64, files: impl Fn(u64) -> registry::tls::TlsFiles, electing: &[u64]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let tls = move |cfg: &mut NodeConfig| {
            cfg.tls = Some(registry::tls::Tls::load(files(cfg.id)).unwrap());
            cfg.peer_auth = PeerAuth::NodeCertificate;
        };
        let c = Self::spawn_all(dir, n, tls, None).await;
        c.wait_leader(Some(electing)).await;
        c
    }

    /// `n` nodes on port-0 listeners in `dir`, each configured by `configure`.
    async fn start_in(dir: tempfile::TempDir, n: u64, configure: impl Fn(&mut NodeConfig), tls_dir: Option<std::path::PathBuf>) -> Cluster {
        let c = Self::spawn_all(dir, n, configure, tls_dir).await;
        c.wait_leader(None).await;
        c
    }

    /// `start_in` without waiting for a leader.
    async fn spawn_all(dir: tempfile::TempDir, n: u64, configure: impl Fn(&mut NodeConfig), tls_dir: Option<std::path::PathBuf>) -> Cluster {
        // `RUST_LOG=info cargo nextest run ...` shows the nodes' logs when a test fails.
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
        }
        let faults = Faults::default();
        let mut listeners = BTreeMap::new();
        for id in 1..=n {
            listeners.insert(id, tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let peers: BTreeMap<u64, String> = listeners.iter().map(|(id, l)| (*id, l.local_addr().unwrap().to_string())).collect();
        let mut nodes = BTreeMap::new();
        for (id, l) in listeners {
            let mut cfg = NodeConfig::new(id, peers[&id].clone(), dir.path().join(format!("n{id}")), peers.clone());
            configure(&mut cfg);
            nodes.insert(id, Self::spawn(l, cfg, faults.clone()).await);
        }
        Cluster { nodes, faults, _dir: dir, tls_dir }
    }

    /// Starts a node; one left `Insecure` gets the harness's cluster secret, so every test
    /// cluster runs with peer authentication on, as `registry serve` demands.
    pub async fn spawn(l: tokio::net::TcpListener, mut cfg: NodeConfig, faults: Faults) -> TestNode {
        if matches!(cfg.peer_auth, PeerAuth::Insecure) {
            cfg.peer_auth = cluster_secret();
        }
        let scheme = if cfg.tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", l.local_addr().unwrap());
        let (node, http) = registry::server::start(l, cfg, faults).await.unwrap();
        TestNode { node, url, http }
    }

    pub fn client(&self) -> client::Client {
        self.client_for(&self.nodes.keys().copied().collect::<Vec<_>>())
    }

    /// A client of these nodes; of a TLS cluster, one that trusts its CA.
    pub fn client_for(&self, ids: &[u64]) -> client::Client {
        let urls: Vec<String> = ids.iter().map(|i| self.nodes[i].url.clone()).collect();
        let b = client::Client::builder(&urls).unwrap();
        match &self.tls_dir {
            Some(d) => b.tls(&client::TlsFiles { ca: Some(d.join("ca.pem")), cert: None, key: None }).unwrap().build().unwrap(),
            None => b.build().unwrap(),
        }
    }

    /// A client holding the cluster secret, as an operator changing the membership does.
    pub fn operator_client_for(&self, ids: &[u64]) -> client::Client {
        let urls: Vec<String> = ids.iter().map(|i| self.nodes[i].url.clone()).collect();
        client::Client::builder(&urls).unwrap().cluster_secret(CLUSTER_SECRET).unwrap().build().unwrap()
    }

    pub fn leader_of(&self, id: u64) -> Option<u64> {
        self.nodes[&id].node.raft_metrics().current_leader
    }

    /// Waits until every node in `among` (all if None) agrees on one leader that is one of them,
    /// and each is current (serves watches).
    pub async fn wait_leader(&self, among: Option<&[u64]>) -> u64 {
        let ids: Vec<u64> = among.map(|a| a.to_vec()).unwrap_or_else(|| self.nodes.keys().copied().collect());
        wait_until(Duration::from_secs(15), "a leader agreed by all", || async {
            let leaders: Vec<Option<u64>> = ids.iter().map(|i| self.leader_of(*i)).collect();
            match leaders[0] {
                Some(l)
                    if ids.contains(&l)
                        && leaders.iter().all(|x| *x == Some(l))
                        && self.nodes[&l].node.is_leader()
                        && ids.iter().all(|i| self.nodes[i].node.serving_current().is_ok()) =>
                {
                    Some(l)
                }
                _ => None,
            }
        })
        .await
    }

    /// The ids other than `except`.
    pub fn others(&self, except: &[u64]) -> Vec<u64> {
        self.nodes.keys().copied().filter(|i| !except.contains(i)).collect()
    }

    pub fn applied(&self, id: u64) -> u64 {
        self.nodes[&id].node.read_store(|s| s.revision())
    }

    pub async fn stop(&mut self, id: u64) -> TestNode {
        let n = self.nodes.remove(&id).unwrap();
        n.http.abort();
        n.node.shutdown().await;
        n
    }
}

impl Drop for Cluster {
    /// Lifts every fault first: a node whose disk is still stalled would hang the test's exit
    /// in its log writer thread.
    fn drop(&mut self) {
        self.faults.heal();
    }
}

/// The secret every harness node proves to its peers.
pub const CLUSTER_SECRET: &str = "dGVzdC1jbHVzdGVyLXNlY3JldC1mb3ItdGhlLWhhcm5lc3M=";

/// A node's `--tls-*` files in a `tls init` directory.
pub fn node_tls_files(dir: &std::path::Path) -> registry::tls::TlsFiles {
    registry::tls::TlsFiles { cert: dir.join("node-127.0.0.1.pem"), key: dir.join("node-127.0.0.1-key.pem"), ca: dir.join("ca.pem") }
}

pub fn cluster_secret() -> PeerAuth {
    PeerAuth::Secret(ClusterSecret::new(CLUSTER_SECRET).unwrap())
}

pub fn spec(port: u64, lease: Option<u64>) -> InstanceSpec {
    InstanceSpec { address: "10.0.0.5".into(), port, lease_id: lease, weight: 100, state: Default::default(), meta: Default::default() }
}
