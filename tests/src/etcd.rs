//! A real etcd cluster (Debian `etcd-server`, 3.4) for the side-by-side benchmarks: its own
//! defaults, only names, ports and data directories set, every node on a free loopback port; and
//! what the harness asks it through its JSON gateway (no gRPC client needed): who leads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde_json::{json, Value};

use crate::{free_port, Proc};

/// Where Debian's `etcd-server` installs etcd.
pub const DEFAULT_BIN: &str = "/usr/bin/etcd";

/// `n` etcd processes forming one cluster. Node `i` (0-based) is `nodes[i]`, named `n{i+1}`,
/// serving clients at `client_urls[i]`. The nodes are killed when it is dropped, and their
/// directory removed.
pub struct EtcdCluster {
    pub nodes: Vec<Proc>,
    /// `http://127.0.0.1:PORT`, in node order.
    pub client_urls: Vec<String>,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `n` nodes of the etcd at `bin` with data under `data_root` (default: the system
    /// temp dir); does not wait for them (see `wait_settled`).
    pub fn start(bin: &Path, n: usize, data_root: Option<&Path>) -> Result<EtcdCluster> {
        anyhow::ensure!(bin.exists(), "{} is missing (install Debian's etcd-server)", bin.display());
        let root = data_root.map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let dir = tempfile::Builder::new().prefix("etcd-").tempdir_in(&root).with_context(|| format!("a directory in {}", root.display()))?;
        let peer: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let client: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let initial = (0..n).map(|i| format!("n{}=http://127.0.0.1:{}", i + 1, peer[i])).collect::<Vec<_>>().join(",");
        let nodes = (0..n)
            .map(|i| {
                let args: Vec<String> = vec![
                    format!("--name=n{}", i + 1),
                    format!("--data-dir={}", dir.path().join(format!("n{}", i + 1)).display()),
                    format!("--listen-client-urls=http://127.0.0.1:{}", client[i]),
                    format!("--advertise-client-urls=http://127.0.0.1:{}", client[i]),
                    format!("--listen-peer-urls=http://127.0.0.1:{}", peer[i]),
                    format!("--initial-advertise-peer-urls=http://127.0.0.1:{}", peer[i]),
                    format!("--initial-cluster={initial}"),
                    "--initial-cluster-state=new".into(),
                    "--initial-cluster-token=e2e-bench".into(),
                    // Only its own log is quieter; nothing that changes how it serves.
                    "--log-level=warn".into(),
                ];
                Proc::spawn(&format!("etcd-{}", i + 1), bin, &args, dir.path())
            })
            .collect();
        let http = reqwest::Client::builder().connect_timeout(Duration::from_millis(500)).timeout(Duration::from_secs(10)).no_proxy().build()?;
        let client_urls = client.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
        Ok(EtcdCluster { nodes, client_urls, http, dir })
    }

    /// The nodes' data directories and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Leaves the directory (data, logs) behind when dropped; returns where it is.
    pub fn keep_data(&mut self) -> PathBuf {
        self.dir.disable_cleanup(true);
        self.dir.path().to_path_buf()
    }

    /// An HTTP client for the JSON gateway (`/v3/...`, keys and values in base64).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// (this member's id, the leader's id) from `/v3/maintenance/status` of node `i`; the
    /// leader's id is "0" while there is none.
    pub async fn status(&self, i: usize) -> Option<(String, String)> {
        let resp =
            self.http.post(format!("{}/v3/maintenance/status", self.client_urls[i])).json(&json!({})).timeout(Duration::from_millis(200)).send().await.ok()?;
        let v: Value = resp.json().await.ok()?;
        Some((v["header"]["member_id"].as_str()?.to_string(), v["leader"].as_str()?.to_string()))
    }

    /// Index of the first node that says it leads.
    pub async fn leader(&self) -> Option<usize> {
        for i in 0..self.nodes.len() {
            if self.leads(i).await {
                return Some(i);
            }
        }
        None
    }

    pub async fn leads(&self, i: usize) -> bool {
        self.status(i).await.is_some_and(|(me, leader)| me == leader)
    }

    /// Every node answers and names the same leader.
    pub async fn settled(&self) -> bool {
        let mut leaders = Vec::new();
        for i in 0..self.nodes.len() {
            match self.status(i).await {
                Some((_, l)) if l != "0" => leaders.push(l),
                _ => return false,
            }
        }
        leaders.iter().all(|l| *l == leaders[0])
    }

    /// Waits until `settled`; the leader's index. An error naming the node if one exits.
    pub async fn wait_settled(&self, limit: Duration) -> Result<usize> {
        crate::until(limit, "etcd to elect a leader every node knows", || async {
            if let Some(n) = self.nodes.iter().find(|n| n.has_exited()) {
                return Some(Err(anyhow::anyhow!("{} exited; the end of its log ({}):\n{}", n.name, n.log.display(), n.log_tail(10))));
            }
            match self.settled().await {
                true => self.leader().await.map(Ok),
                false => None,
            }
        })
        .await?
    }
}

/// The first line of `etcd --version` (e.g. `etcd Version: 3.4.23`).
pub fn version(bin: &Path) -> Option<String> {
    let out = std::process::Command::new(bin).arg("--version").output().ok()?;
    String::from_utf8_lossy(&out.stdout).lines().next().map(|l| l.trim().to_string())
}
