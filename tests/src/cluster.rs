//! `RegistryCluster`: a cluster of real `registry serve` processes, and the `registry` CLI.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::{free_port_on, stop_all};
use crate::{binary, secure, until, wait_for, Proc};

/// Writes a fresh random cluster secret (`registry serve --cluster-secret-file`) into `dir`,
/// readable by its owner only, and returns its path.
pub fn write_cluster_secret(dir: &Path) -> PathBuf {
    use base64::Engine as _;
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("cluster-secret");
    let bytes: [u8; 32] = rand::random();
    std::fs::write(&path, base64::engine::general_purpose::STANDARD.encode(bytes) + "\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// How to start a `RegistryCluster`. The default is what the tests use: secured, every node on
/// 127.0.0.1, the `registry` of this build, a fresh temp dir removed on drop, SIGKILL on drop.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// TLS with node certificates and ACLs on (`secure::Secured`); otherwise plain HTTP,
    /// peers proving themselves with the cluster secret.
    pub secure: bool,
    /// Each node on a loopback address of its own (127.X.0.1, .2, ...; X random), as on
    /// separate hosts: a node certificate then vouches for one node only.
    pub own_hosts: bool,
    /// Appended to every node's `registry serve` arguments.
    pub node_args: Vec<String>,
    /// The `registry` binary (default: `binary("registry")`).
    pub bin: Option<PathBuf>,
    /// Where the cluster's directory (data, logs, credentials) is made (default: the system
    /// temp dir), and the start of its name.
    pub data_root: Option<PathBuf>,
    pub dir_prefix: String,
    /// Leave the directory behind when the cluster is dropped.
    pub keep_data: bool,
    /// The nodes' `RUST_LOG` (default: the harness's, see `Proc::env`).
    pub log_filter: Option<String>,
    /// SIGTERM the nodes when dropped, SIGKILL those still running after this
    /// (`Proc::stop_grace`); default: SIGKILL at once.
    pub stop_grace: Option<Duration>,
    /// How long the nodes get to elect a leader, and then (secured) to be ready.
    pub ready_limit: Duration,
}

impl Default for ClusterOptions {
    fn default() -> ClusterOptions {
        ClusterOptions {
            secure: true,
            own_hosts: false,
            node_args: Vec::new(),
            bin: None,
            data_root: None,
            dir_prefix: ".tmp".into(),
            keep_data: false,
            log_filter: None,
            stop_grace: None,
            ready_limit: Duration::from_secs(15),
        }
    }
}

/// A registry cluster of real `registry serve` processes. Secured by default, as a user's
/// should be: TLS with node certificates and ACLs on (`secure::Secured`); `start_plain` runs
/// one with only the cluster secret, for the tests about that mode. Node `i` (0-based) is
/// `nodes[i]` at `addrs[i]`, with `--id i+1`, its data in `data_dir(i)` and its log in
/// `nodes[i].log`. The nodes are stopped together when it is dropped.
pub struct RegistryCluster {
    pub nodes: Vec<Proc>,
    pub addrs: Vec<String>,
    pub dir: tempfile::TempDir,
    /// TLS files and the admin token, unless started plain.
    pub secured: Option<secure::Secured>,
    /// The cluster secret (`--cluster-secret-file`) of a plain cluster.
    pub secret_file: PathBuf,
    /// When the nodes were started.
    pub started: Instant,
}

impl RegistryCluster {
    /// Starts `n` secured nodes with default timings and waits until every node is ready.
    pub async fn start(n: usize) -> RegistryCluster {
        Self::start_with(n, &[]).await
    }

    pub async fn start_with(n: usize, extra: &[&str]) -> RegistryCluster {
        Self::launched(n, ClusterOptions { node_args: extra.iter().map(|s| s.to_string()).collect(), ..Default::default() }).await
    }

    /// Secured, each node on a loopback address of its own (`ClusterOptions::own_hosts`).
    pub async fn start_on_own_hosts(n: usize) -> RegistryCluster {
        Self::launched(n, ClusterOptions { own_hosts: true, ..Default::default() }).await
    }

    /// Plain HTTP, no ACLs: peers prove themselves with the cluster secret only.
    pub async fn start_plain(n: usize) -> RegistryCluster {
        Self::start_plain_with(n, &[]).await
    }

    pub async fn start_plain_with(n: usize, extra: &[&str]) -> RegistryCluster {
        Self::launched(n, ClusterOptions { secure: false, node_args: extra.iter().map(|s| s.to_string()).collect(), ..Default::default() }).await
    }

    /// `launch` for tests: failing to start fails the test.
    async fn launched(n: usize, opts: ClusterOptions) -> RegistryCluster {
        Self::launch(n, opts).await.unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Starts `n` nodes as `opts` says and waits until one leads and, when secured, every node
    /// is ready; an error if that takes longer than `opts.ready_limit`, or at once if a node
    /// exits meanwhile.
    pub async fn launch(n: usize, opts: ClusterOptions) -> anyhow::Result<RegistryCluster> {
        use anyhow::Context as _;
        let ips: Vec<String> = match opts.own_hosts {
            true => {
                let net: u8 = rand::random::<u8>() % 200 + 20;
                (1..=n).map(|i| format!("127.{net}.0.{i}")).collect()
            }
            false => vec!["127.0.0.1".to_string(); n],
        };
        let root = opts.data_root.clone().unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let mut dir = tempfile::Builder::new().prefix(&opts.dir_prefix).tempdir_in(&root).with_context(|| format!("a directory in {}", root.display()))?;
        dir.disable_cleanup(opts.keep_data);
        let addrs: Vec<String> = ips.iter().map(|ip| format!("{ip}:{}", free_port_on(ip))).collect();
        let peers = addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect::<Vec<_>>().join(",");
        let bin = opts.bin.clone().unwrap_or_else(|| binary("registry"));
        let secret_file = write_cluster_secret(dir.path());
        let mut hosts: Vec<&str> = ips.iter().map(|s| s.as_str()).collect();
        hosts.dedup();
        let secured = opts.secure.then(|| secure::Secured::init_with(&bin, dir.path(), &hosts));
        let nodes = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let mut args: Vec<String> = vec![
                    "serve".into(),
                    "--id".into(),
                    (i + 1).to_string(),
                    "--listen".into(),
                    a.clone(),
                    "--data-dir".into(),
                    data_dir_in(dir.path(), i).display().to_string(),
                    "--peers".into(),
                    peers.clone(),
                ];
                match &secured {
                    Some(s) => args.extend(s.node_args(&ips[i])),
                    None => args.extend(["--cluster-secret-file".into(), secret_file.display().to_string()]),
                }
                args.extend(opts.node_args.iter().cloned());
                let mut p = Proc::new(&format!("registry-{}", i + 1), &bin, &args, dir.path());
                if let Some(filter) = &opts.log_filter {
                    p = p.env("RUST_LOG", filter);
                }
                if let Some(grace) = opts.stop_grace {
                    p = p.stop_grace(grace);
                }
                p.start();
                p
            })
            .collect();
        let mut c = RegistryCluster { nodes, addrs, dir, secured, secret_file, started: Instant::now() };
        if let Err(e) = c.wait_started(opts.ready_limit).await {
            // Whoever reads the error gets to read the logs too.
            let kept = c.keep_data();
            return Err(e.context(format!("starting a registry cluster (its logs and data are kept in {})", kept.display())));
        }
        Ok(c)
    }

    /// Waits until a node leads and, when secured, every node is ready.
    async fn wait_started(&self, limit: Duration) -> anyhow::Result<()> {
        let client = self.client();
        until(limit, "a leader", || async {
            match self.check_running() {
                Ok(()) => self.leader_by(&client).await.map(Ok),
                Err(e) => Some(Err(e)),
            }
        })
        .await??;
        if let Some(s) = &self.secured {
            // Every node ready (`/readyz` waits for the ACL bootstrap to apply there too).
            let http = s.http();
            until(limit, "ACLs on and every node ready", || async {
                for u in self.urls() {
                    if http.get(format!("{u}/readyz")).send().await.ok()?.status() != 200 {
                        return None;
                    }
                }
                Some(())
            })
            .await?;
        }
        Ok(())
    }

    /// An error naming the first node that has exited, with the end of its log.
    pub fn check_running(&self) -> anyhow::Result<()> {
        match self.nodes.iter().find(|n| n.has_exited()) {
            Some(n) => anyhow::bail!("{} exited; the end of its log ({}):\n{}", n.name, n.log.display(), n.log_tail(10)),
            None => Ok(()),
        }
    }

    /// The data directory of node `i` (0-based).
    pub fn data_dir(&self, i: usize) -> PathBuf {
        data_dir_in(self.dir.path(), i)
    }

    /// Leaves the cluster's directory (data, logs, credentials) behind when it is dropped;
    /// returns where it is.
    pub fn keep_data(&mut self) -> PathBuf {
        self.dir.disable_cleanup(true);
        self.dir.path().to_path_buf()
    }

    /// Prints the last `lines` lines of every node's log to stderr.
    pub fn print_log_tails(&self, lines: usize) {
        for n in &self.nodes {
            n.print_log_tail(lines);
        }
    }

    /// `https://` for a secured cluster, `http://` for a plain one.
    pub fn scheme(&self) -> &'static str {
        if self.secured.is_some() {
            "https"
        } else {
            "http"
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.addrs.iter().map(|a| format!("{}://{a}", self.scheme())).collect()
    }

    /// The admin token, when ACLs are on.
    pub fn admin_token(&self) -> Option<&str> {
        self.secured.as_ref().map(|s| s.admin_token.as_str())
    }

    /// An admin client of every node.
    pub fn client(&self) -> client::Client {
        self.client_for(&self.urls())
    }

    /// An admin client of the nodes at `urls` only.
    pub fn client_for<S: AsRef<str>>(&self, urls: &[S]) -> client::Client {
        match &self.secured {
            Some(s) => s.client(urls, &s.admin_token),
            None => client::Client::new(urls).unwrap(),
        }
    }

    /// An HTTP client for raw requests (it trusts the cluster CA; it sends no token).
    pub fn http(&self) -> reqwest::Client {
        match &self.secured {
            Some(s) => s.http(),
            None => reqwest::Client::new(),
        }
    }

    /// The flags an agent or the CLI needs to reach this cluster with a token of `scopes`,
    /// minted for it under `name` (nothing for a plain cluster).
    pub async fn access_args(&self, name: &str, scopes: &[&str]) -> Vec<String> {
        match &self.secured {
            Some(s) => {
                let file = s.mint(&self.client(), name, scopes).await;
                s.client_args(&file)
            }
            None => Vec::new(),
        }
    }

    /// The flags that give the CLI the admin token (nothing for a plain cluster).
    pub fn admin_args(&self) -> Vec<String> {
        self.secured.as_ref().map(|s| s.client_args(&s.admin_token_file)).unwrap_or_default()
    }

    /// Runs the `registry` CLI against this cluster as admin: `args`, then `--registry` and
    /// the credentials.
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(["--registry".into(), self.urls().join(",")]);
        all.extend(self.admin_args());
        let all: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
        registry_cli(&all)
    }

    /// One look at every node: the index in `nodes` of the first that says it leads.
    pub async fn leader(&self) -> Option<usize> {
        self.leader_by(&self.client()).await
    }

    /// `leader`, asking through `c`.
    async fn leader_by(&self, c: &client::Client) -> Option<usize> {
        for (i, a) in self.addrs.iter().enumerate() {
            if c.cluster_at(a).await.is_ok_and(|info| info.role == proto::NodeRole::Leader) {
                return Some(i);
            }
        }
        None
    }

    /// Waits until a reachable node says it leads; returns its index in `nodes`.
    pub async fn wait_leader(&self, limit: Duration) -> usize {
        let c = self.client();
        wait_for(limit, "a leader", || self.leader_by(&c)).await
    }
}

impl Drop for RegistryCluster {
    fn drop(&mut self) {
        stop_all(&mut self.nodes);
    }
}

fn data_dir_in(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("data{}", i + 1))
}

/// Runs the `registry` CLI and returns (exit code, stdout, stderr).
pub fn registry_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary("registry")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}
