//! `RegistryCluster`: a cluster of real `registry serve` processes, and the `registry` CLI.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{binary, secure, wait_for, Proc};

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

/// A registry cluster of real `registry serve` processes. Secured by default, as a user's
/// should be: TLS with node certificates and ACLs on (`secure::Secured`); `start_plain` runs
/// one with only the cluster secret, for the tests about that mode.
pub struct RegistryCluster {
    pub nodes: Vec<Proc>,
    pub addrs: Vec<String>,
    pub dir: tempfile::TempDir,
    /// TLS files and the admin token, unless started plain.
    pub secured: Option<secure::Secured>,
    /// The cluster secret (`--cluster-secret-file`) of a plain cluster.
    pub secret_file: PathBuf,
}

impl RegistryCluster {
    /// Starts `n` secured nodes with default timings and waits until every node is ready.
    pub async fn start(n: usize) -> RegistryCluster {
        Self::start_with(n, &[]).await
    }

    pub async fn start_with(n: usize, extra: &[&str]) -> RegistryCluster {
        Self::start_in(tempfile::tempdir().unwrap(), &vec!["127.0.0.1".to_string(); n], extra, true).await
    }

    /// Secured, each node on a loopback address of its own (127.X.0.1, .2, ...; X random), as
    /// on separate hosts: a node certificate then vouches for one node only.
    pub async fn start_on_own_hosts(n: usize) -> RegistryCluster {
        let net: u8 = rand::random::<u8>() % 200 + 20;
        let ips: Vec<String> = (1..=n).map(|i| format!("127.{net}.0.{i}")).collect();
        Self::start_in(tempfile::tempdir().unwrap(), &ips, &[], true).await
    }

    /// Plain HTTP, no ACLs: peers prove themselves with the cluster secret only.
    pub async fn start_plain(n: usize) -> RegistryCluster {
        Self::start_plain_with(n, &[]).await
    }

    pub async fn start_plain_with(n: usize, extra: &[&str]) -> RegistryCluster {
        Self::start_in(tempfile::tempdir().unwrap(), &vec!["127.0.0.1".to_string(); n], extra, false).await
    }

    /// One node per entry of `ips`.
    async fn start_in(dir: tempfile::TempDir, ips: &[String], extra: &[&str], secure: bool) -> RegistryCluster {
        let free_on = |ip: &str| TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port();
        let addrs: Vec<String> = ips.iter().map(|ip| format!("{ip}:{}", free_on(ip))).collect();
        let peers = addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect::<Vec<_>>().join(",");
        let bin = binary("registry");
        let secret_file = write_cluster_secret(dir.path());
        let mut hosts: Vec<&str> = ips.iter().map(|s| s.as_str()).collect();
        hosts.dedup();
        let secured = secure.then(|| secure::Secured::init(dir.path(), &hosts));
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
                    dir.path().join(format!("data{}", i + 1)).display().to_string(),
                    "--peers".into(),
                    peers.clone(),
                ];
                match &secured {
                    Some(s) => args.extend(s.node_args(&ips[i])),
                    None => args.extend(["--cluster-secret-file".into(), secret_file.display().to_string()]),
                }
                args.extend(extra.iter().map(|s| s.to_string()));
                Proc::spawn(&format!("registry-{}", i + 1), &bin, &args, dir.path())
            })
            .collect();
        let c = RegistryCluster { nodes, addrs, dir, secured, secret_file };
        c.wait_leader(Duration::from_secs(15)).await;
        if let Some(s) = &c.secured {
            // Every node ready (`/readyz` waits for the ACL bootstrap to apply there too).
            let http = s.http();
            wait_for(Duration::from_secs(15), "ACLs on and every node ready", || async {
                for u in c.urls() {
                    if http.get(format!("{u}/readyz")).send().await.ok()?.status() != 200 {
                        return None;
                    }
                }
                Some(())
            })
            .await;
        }
        c
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

    /// Waits until a reachable node names a leader that itself says it leads; returns its
    /// index in `nodes`.
    pub async fn wait_leader(&self, limit: Duration) -> usize {
        let c = self.client();
        wait_for(limit, "a leader", || async {
            for a in &self.addrs {
                if let Ok(info) = c.cluster_at(a).await {
                    if info.role == proto::NodeRole::Leader {
                        return self.addrs.iter().position(|x| x == a);
                    }
                }
            }
            None
        })
        .await
    }
}

/// Runs the `registry` CLI and returns (exit code, stdout, stderr).
pub fn registry_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary("registry")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}
