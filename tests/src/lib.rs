//! Harness for end-to-end tests: starts the real binaries as processes on free loopback ports,
//! waits on conditions with deadlines, and prints every process's log when a test fails.

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Path of a workspace binary (`registry`, `announcer`, `syncer`), built by `cargo build`.
/// `E2E_BIN_DIR` overrides the directory.
pub fn binary(name: &str) -> PathBuf {
    let dir = std::env::var_os("E2E_BIN_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
        target.join(if cfg!(debug_assertions) { "debug" } else { "release" })
    });
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: run `cargo build --workspace --bins` first (or set E2E_BIN_DIR)", path.display());
    path
}

/// A loopback port that was free a moment ago. The OS picks it (port 0), so tests never
/// hard-code ports; a process started right after binds it.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub use testkit::wait_for;

/// A child process whose output goes to a log file; killed when dropped.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
    program: PathBuf,
    args: Vec<String>,
}

impl Proc {
    pub fn spawn(name: &str, program: &Path, args: &[String], log_dir: &Path) -> Proc {
        let mut p = Proc { name: name.to_string(), child: None, log: log_dir.join(format!("{name}.log")), program: program.to_path_buf(), args: args.to_vec() };
        p.start();
        p
    }

    /// Adds an argument for the next `start`.
    pub fn push_arg(&mut self, arg: &str) {
        self.args.push(arg.to_string());
    }

    /// Starts (again) with the same arguments, appending to the same log.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(&self.program)
            .args(&self.args)
            .env("RUST_LOG", std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.program.display()));
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// The exit code once the process has ended (a signal death counts as -1).
    pub fn exit_code(&mut self) -> Option<i32> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status.code().unwrap_or(-1))
    }

    /// Waits up to `limit` for the process to exit (after a signal, say) and reaps it, so it
    /// can be started again; its exit code, or None if it is still running.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(code) = self.exit_code() {
                return Some(code);
            }
            if self.child.is_none() || tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(std::env::var("E2E_LOG_LINES").ok().and_then(|n| n.parse().ok()).unwrap_or(60)).collect();
            eprintln!("----- last lines of {} ({}) -----", self.name, self.log.display());
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
        self.kill();
    }
}

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
pub mod chaos;
pub mod dataplane_double;
pub mod haproxy;
pub mod secure;
pub mod tcp_proxy;
pub mod zookeeper;

/// Runs a benchmark's body on a fresh runtime until it finishes or the process gets SIGINT or
/// SIGTERM; dropping the body on a signal drops its processes, which kills them. Returns the
/// exit code, after printing the error prefixed with `name`.
pub fn run_bench<F>(name: &str, body: F) -> std::process::ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = rt.block_on(async {
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term = async {
            match sigterm.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            r = body => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted (Ctrl-C); processes killed")),
            _ = term => Err(anyhow::anyhow!("terminated (SIGTERM); processes killed")),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The certificate (DER) a TLS node at `addr` (`127.0.0.1:PORT`) serves to a new connection,
/// verified against the CA in `ca`.
pub async fn served_certificate(addr: &str, ca: &Path) -> Result<Vec<u8>, String> {
    use rustls::pki_types::ServerName;
    let config = secure::Secured::rustls_config(ca)?;
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr).to_string();
    let name = ServerName::try_from(host).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await.map_err(|e| e.to_string())?;
    tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).ok_or_else(|| "no certificate served".to_string())
}
