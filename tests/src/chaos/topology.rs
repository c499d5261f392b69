//! The processes of a chaos run: 3 registry nodes, each on its own loopback address so one can
//! be cut off with a firewall rule; web hosts (a demo web server on two ports plus an announcer
//! for `web-servers` and `api-servers`); HAProxy with a syncer. Secured as a user's cluster
//! should be (`secure::Secured`): TLS with node certificates, ACLs on, and a token of its own
//! for each agent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::haproxy::Haproxy;
use crate::process::free_port_on;
use crate::secure::Secured;
use crate::{binary, free_port, wait_for, Proc};

pub const TTL: Duration = Duration::from_secs(3);

pub struct Node {
    pub proc: Proc,
    pub ip: String,
    pub addr: String,
    /// While this file exists the node's Raft log stalls (`--fault-disk-stall-file`).
    pub stall_file: std::path::PathBuf,
}

pub struct Host {
    pub name: String,
    pub web: Proc,
    pub announcer: Proc,
    pub web_port: u16,
    pub api_port: u16,
    pub alive: bool,
}

pub struct Topology {
    pub dir: tempfile::TempDir,
    pub secured: Secured,
    /// The announcers' token (`announce:` both services).
    announcer_token: PathBuf,
    pub nodes: Vec<Node>,
    pub hosts: Vec<Host>,
    pub haproxy: Haproxy,
    pub syncer: Proc,
}

impl Topology {
    /// `net` picks the loopback block (127.net.0.x) so parallel runs do not collide.
    pub async fn start(hosts: usize, net: u8) -> Topology {
        let dir = tempfile::tempdir().unwrap();
        let ips: Vec<String> = (1..=3).map(|i| format!("127.{net}.0.{i}")).collect();
        let addrs: Vec<String> = ips.iter().map(|ip| format!("{ip}:{}", free_port_on(ip))).collect();
        let peers = addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect::<Vec<_>>().join(",");
        let secured = Secured::init(dir.path(), &ips.iter().map(|s| s.as_str()).collect::<Vec<_>>());
        let nodes = (0..3)
            .map(|i| {
                let stall_file = dir.path().join(format!("stall-disk-{}", i + 1));
                let mut args: Vec<String> = [
                    "serve",
                    "--id",
                    &(i + 1).to_string(),
                    "--listen",
                    &addrs[i],
                    "--data-dir",
                    &dir.path().join(format!("data{}", i + 1)).display().to_string(),
                    "--peers",
                    &peers,
                    // No timing flags: the chaos run holds the registry to its defaults.
                    "--fault-disk-stall-file",
                    &stall_file.display().to_string(),
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                args.extend(secured.node_args(&ips[i]));
                Node {
                    proc: Proc::spawn(&format!("registry-{}", i + 1), &binary("registry"), &args, dir.path()),
                    ip: ips[i].clone(),
                    addr: addrs[i].clone(),
                    stall_file,
                }
            })
            .collect();
        let haproxy = Haproxy::start(&["web-servers", "api-servers"]).await;
        let urls: Vec<String> = addrs.iter().map(|a| format!("https://{a}")).collect();
        let admin = secured.client(&urls, &secured.admin_token);
        // A token can be minted once the cluster has a leader and ACLs are on.
        wait_for(Duration::from_secs(20), "a registry leader with ACLs on", || async { admin.tokens().await.ok() }).await;
        let syncer_token = secured.mint(&admin, "syncer", &["read", "announce:_syncers"]).await;
        let announcer_token = secured.mint(&admin, "announcers", &["announce:web-servers", "announce:api-servers"]).await;
        let syncer = spawn_syncer(&urls, &secured.client_args(&syncer_token), &haproxy, dir.path());
        let mut t = Topology { syncer, dir, secured, announcer_token, nodes, hosts: Vec::new(), haproxy };
        t.wait_leader(Duration::from_secs(20)).await;
        for i in 0..hosts {
            let h = t.spawn_host(&format!("host-{i:02}"), free_port(), free_port());
            t.hosts.push(h);
        }
        t
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("https://{}", n.addr)).collect()
    }

    /// An admin client of every node.
    pub fn client(&self) -> client::Client {
        self.client_for(&self.urls())
    }

    /// An admin client of the nodes at `urls` only.
    pub fn client_for<S: AsRef<str>>(&self, urls: &[S]) -> client::Client {
        self.secured.client(urls, &self.secured.admin_token)
    }

    /// A client of every node with a new token of `scopes`.
    pub async fn minted_client(&self, name: &str, scopes: &[&str]) -> client::Client {
        let file = self.secured.mint(&self.client(), name, scopes).await;
        let token = std::fs::read_to_string(file).unwrap();
        self.secured.client(&self.urls(), token.trim())
    }

    /// The flags the `registry` CLI needs, as admin.
    pub fn admin_args(&self) -> Vec<String> {
        self.secured.client_args(&self.secured.admin_token_file)
    }

    pub fn announcer_config(&self, web_port: u16, api_port: u16) -> String {
        format!(
            r#"registry = "{registry}"
ca_file = "{ca}"
token_file = "{token}"
ttl = "{ttl}s"
drain = "0s"
admin = "127.0.0.1:{admin}"

[[services]]
name = "web-servers"
address = "127.0.0.1:{web_port}"
check = {{ http = "http://127.0.0.1:{web_port}/health", interval = "300ms", timeout = "1s", rise = 1, fall = 3 }}

[[services]]
name = "api-servers"
address = "127.0.0.1:{api_port}"
check = {{ tcp = "127.0.0.1:{api_port}", interval = "300ms", timeout = "1s", rise = 1, fall = 3 }}
"#,
            registry = self.urls().join(","),
            ca = self.secured.ca.display(),
            token = self.announcer_token.display(),
            ttl = TTL.as_secs(),
            admin = free_port(),
        )
    }

    pub fn spawn_host(&self, name: &str, web_port: u16, api_port: u16) -> Host {
        let web_args: Vec<String> =
            vec!["--listen".into(), format!("127.0.0.1:{web_port}"), "--listen".into(), format!("127.0.0.1:{api_port}"), "--name".into(), name.into()];
        let web = Proc::spawn(&format!("{name}-web"), &binary("demo_web"), &web_args, self.dir.path());
        let cfg: PathBuf = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&cfg, self.announcer_config(web_port, api_port)).unwrap();
        let announcer = Proc::spawn(&format!("{name}-announcer"), &binary("announcer"), &["--config".into(), cfg.display().to_string()], self.dir.path());
        Host { name: name.into(), web, announcer, web_port, api_port, alive: true }
    }

    /// Index of the node that says it leads, if any answers.
    pub async fn leader(&self) -> Option<usize> {
        let c = self.client();
        for (i, n) in self.nodes.iter().enumerate() {
            if let Ok(info) = c.cluster_at(&n.addr).await {
                if info.role == proto::NodeRole::Leader {
                    return Some(i);
                }
            }
        }
        None
    }

    /// A node other than `n` that says it leads (`n` may still say so, frozen or stalled).
    pub async fn leader_other_than(&self, n: usize) -> Option<usize> {
        let c = self.client();
        for (i, node) in self.nodes.iter().enumerate().filter(|(i, _)| *i != n) {
            if c.cluster_at(&node.addr).await.is_ok_and(|info| info.role == proto::NodeRole::Leader) {
                return Some(i);
            }
        }
        None
    }

    pub async fn wait_leader(&self, limit: Duration) -> usize {
        wait_for(limit, "a registry leader", || self.leader()).await
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn spawn_syncer(urls: &[String], access: &[String], haproxy: &Haproxy, dir: &Path) -> Proc {
    let mut args: Vec<String> = [
        "--registry",
        &urls.join(","),
        "--haproxy-socket",
        &haproxy.socket_path().display().to_string(),
        "--backend",
        "web-servers",
        "--backend",
        "api-servers",
        "--state-dir",
        &dir.join("syncer").display().to_string(),
        "--id",
        "chaos-lb",
        "--drain-timeout",
        "1s",
        "--admin",
        &format!("127.0.0.1:{}", free_port()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(access.iter().cloned());
    Proc::spawn("syncer", &binary("syncer"), &args, dir)
}
