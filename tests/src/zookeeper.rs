//! A real standalone ZooKeeper 3.8 (the Debian `zookeeper` package) for one test: its own data
//! directory, `zoo.cfg` and free loopback port, started as a plain `java` process (see
//! scripts/lib/zookeeper.sh for why not `zkServer.sh`), and a small client for looking at it.
//! `Ensemble`: a replicated ZooKeeper of several servers with the package's defaults, for the
//! side-by-side benchmark.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::Mutex;
use zookeeper_client as zk;

use crate::{free_port, wait_for, Proc};

pub use zk::Stat;

/// ZooKeeper's tick. Session timeouts are negotiated in ticks (default bounds 2..20 ticks), so a
/// short tick lets tests use session timeouts of a second or two.
pub const TICK: Duration = Duration::from_millis(200);

/// The Java classpath, computed once per test process by the same shell function scripts/demo
/// uses, so there is one definition of it (scripts/lib/zookeeper.sh, `zookeeper_classpath`); or
/// why there is none.
fn classpath() -> Result<&'static str, String> {
    static CP: OnceLock<Result<String, String>> = OnceLock::new();
    let cp = CP.get_or_init(|| {
        let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lib/zookeeper.sh");
        let out = Command::new("bash")
            .arg("-c")
            .arg(r#". "$1" && zookeeper_classpath"#)
            .arg("bash")
            .arg(&lib)
            .output()
            .map_err(|e| format!("running bash for {}: {e}", lib.display()))?;
        let cp = String::from_utf8_lossy(&out.stdout).trim().to_string();
        match out.status.success() && !cp.is_empty() {
            true => Ok(cp),
            false => Err(format!(
                "no ZooKeeper classpath ({}): install it with scripts/test or `apt-get install zookeeper`",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    });
    cp.as_deref().map_err(Clone::clone)
}

/// The `java` arguments that run a server with `cfg`, logging to the console (the `Proc`'s log):
/// `jvm` first, then the classpath and `QuorumPeerMain`.
fn java_args(jvm: &[&str], cfg: &Path, log_dir: &Path) -> Result<Vec<String>, String> {
    let mut args: Vec<String> = jvm.iter().map(|s| s.to_string()).collect();
    args.extend([
        // /etc/zookeeper/conf/log4j.properties (on the classpath) leaves the root logger to
        // this property.
        "-Dzookeeper.root.logger=INFO,CONSOLE".into(),
        format!("-Dzookeeper.log.dir={}", log_dir.display()),
        "-cp".into(),
        classpath()?.to_string(),
        "org.apache.zookeeper.server.quorum.QuorumPeerMain".into(),
        cfg.display().to_string(),
    ]);
    Ok(args)
}

/// One standalone ZooKeeper server process, killed when dropped.
pub struct Zookeeper {
    proc: Proc,
    port: u16,
    /// Holds zoo.cfg, the data directory and the log; deleted on drop.
    dir: tempfile::TempDir,
    /// A session for the inspection helpers, opened on first use and replaced when it breaks.
    client: Mutex<Option<zk::Client>>,
}

impl Zookeeper {
    /// Starts a server on a free loopback port and waits until it serves.
    pub async fn start() -> Zookeeper {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let cfg = dir.path().join("zoo.cfg");
        std::fs::write(&cfg, zoo_cfg(&data, port)).unwrap();
        // Several servers may run side by side under nextest: keep each JVM small. The log is
        // printed when a test fails.
        let args = java_args(&["-Xmx256m", "-XX:+UseSerialGC"], &cfg, dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let proc = Proc::spawn("zookeeper", Path::new("java"), &args, dir.path());
        let z = Zookeeper { proc, port, dir, client: Mutex::new(None) };
        z.wait_serving().await;
        z
    }

    /// `127.0.0.1:PORT`, the connect string for `--zookeeper`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Kills the server (SIGKILL: a crash, not a clean shutdown). The data directory stays, so
    /// `start_again` brings back the same tree and the sessions it knew.
    pub fn stop(&mut self) {
        self.proc.kill();
        *self.client.get_mut() = None;
    }

    /// Starts the stopped server again on the same port with the same data, and waits until it
    /// serves.
    pub async fn start_again(&mut self) {
        self.proc.start();
        self.wait_serving().await;
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }

    /// Waits until the `ruok` four-letter word answers `imok` and a client session opens: the
    /// first says the JVM is up and listening, the second that it serves requests.
    async fn wait_serving(&self) {
        // A JVM plus ZooKeeper starts in 1-3 s on an idle machine; leave room for a busy one.
        let limit = Duration::from_secs(30);
        let addr = self.addr();
        wait_for(limit, &format!("ZooKeeper on {addr} to answer ruok"), || {
            let addr = addr.clone();
            async move { tokio::task::spawn_blocking(move || (four_letter(&addr, "ruok").as_deref() == Some("imok")).then_some(())).await.unwrap() }
        })
        .await;
        wait_for(limit, &format!("a ZooKeeper session on {addr}"), || async { self.client().await.ok().map(|_| ()) }).await;
    }

    /// A fresh client session (closed when the returned client and its clones are dropped).
    pub async fn connect(&self, session_timeout: Duration) -> Result<zk::Client, zk::Error> {
        let addr = self.addr();
        let connect = zk::Client::connector().with_session_timeout(session_timeout).with_fail_eagerly().connect(&addr);
        match tokio::time::timeout(session_timeout + Duration::from_secs(2), connect).await {
            Ok(r) => r,
            Err(_) => Err(zk::Error::Timeout),
        }
    }

    /// The shared inspection session, reconnected if the last one broke (e.g. across
    /// `stop`/`start_again`).
    pub async fn client(&self) -> Result<zk::Client, zk::Error> {
        let mut guard = self.client.lock().await;
        if let Some(c) = guard.as_ref() {
            if !c.state().is_terminated() {
                return Ok(c.clone());
            }
        }
        let c = self.connect(Duration::from_secs(10)).await?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Children of `path`, sorted; empty when `path` does not exist.
    pub async fn children(&self, path: &str) -> Result<Vec<String>, zk::Error> {
        let c = self.client().await?;
        match c.list_children(path).await {
            Ok(mut v) => {
                v.sort();
                Ok(v)
            }
            Err(zk::Error::NoNode) => Ok(Vec::new()),
            Err(e) => Err(self.forget(e).await),
        }
    }

    /// Data and stat of `path`, or `None` when it does not exist.
    pub async fn get(&self, path: &str) -> Result<Option<(Vec<u8>, Stat)>, zk::Error> {
        let c = self.client().await?;
        match c.get_data(path).await {
            Ok(v) => Ok(Some(v)),
            Err(zk::Error::NoNode) => Ok(None),
            Err(e) => Err(self.forget(e).await),
        }
    }

    /// The data of `path` parsed as JSON with its stat, or `None` when it does not exist.
    /// Panics if the data is not JSON.
    pub async fn get_json(&self, path: &str) -> Result<Option<(serde_json::Value, Stat)>, zk::Error> {
        Ok(self.get(path).await?.map(|(data, stat)| {
            let v = serde_json::from_slice(&data).unwrap_or_else(|e| panic!("{path} holds no JSON ({e}): {:?}", String::from_utf8_lossy(&data)));
            (v, stat)
        }))
    }

    /// Drops the shared session after a connection-level error so the next call reconnects.
    async fn forget(&self, e: zk::Error) -> zk::Error {
        if matches!(e, zk::Error::ConnectionLoss | zk::Error::SessionExpired | zk::Error::ClientClosed | zk::Error::Timeout) {
            *self.client.lock().await = None;
        }
        e
    }

    /// Polls until `path` exists and `pred` holds for its JSON data; returns it. Connection
    /// errors count as "not yet".
    pub async fn wait_json(&self, limit: Duration, path: &str, pred: impl Fn(&serde_json::Value, &Stat) -> bool) -> (serde_json::Value, Stat) {
        wait_for(limit, &format!("znode {path} with the expected data"), || async {
            match self.get_json(path).await {
                Ok(Some((v, s))) if pred(&v, &s) => Some((v, s)),
                _ => None,
            }
        })
        .await
    }

    /// Polls until the server no longer lists `session` (an ephemeral owner) in its `dump`: it
    /// has expired the session, and with it the session's ephemeral znodes.
    pub async fn wait_session_expired(&self, limit: Duration, session: i64) {
        let session = format!("{session:#x}");
        wait_for(limit, &format!("the server to expire session {session}"), || async {
            let addr = self.addr();
            let dump = tokio::task::spawn_blocking(move || four_letter(&addr, "dump")).await.unwrap()?;
            (!dump.contains(&session)).then_some(())
        })
        .await
    }

    /// Polls until `path` does not exist (a successful read says so; errors count as "not yet").
    pub async fn wait_gone(&self, limit: Duration, path: &str) {
        wait_for(limit, &format!("znode {path} to disappear"), || async { matches!(self.get(path).await, Ok(None)).then_some(()) }).await
    }
}

/// A replicated ZooKeeper: `n` servers forming one quorum, each with the Debian package's
/// settings (`/etc/zookeeper/conf/zoo.cfg`: tickTime 2000, initLimit 10, syncLimit 5, and no JVM
/// flags, as its `zkServer.sh` starts it) and otherwise ZooKeeper's defaults (fsync on every
/// transaction log write, `forceSync=yes`); only ports and directories are set. Server `i`
/// (0-based) is `nodes[i]` with `myid` i+1. Killed when dropped, its directory removed.
pub struct Ensemble {
    pub nodes: Vec<Proc>,
    client_ports: Vec<u16>,
    dir: tempfile::TempDir,
}

impl Ensemble {
    /// Starts `n` servers with data under `data_root` (default: the system temp dir) and waits
    /// up to `limit` until every one serves as leader or follower.
    pub async fn start(n: usize, data_root: Option<&Path>, limit: Duration) -> anyhow::Result<Ensemble> {
        use anyhow::Context as _;
        let root = data_root.map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let dir = tempfile::Builder::new().prefix("zookeeper-").tempdir_in(&root).with_context(|| format!("a directory in {}", root.display()))?;
        let client_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let servers: String = (0..n).map(|i| format!("server.{}=127.0.0.1:{}:{}\n", i + 1, free_port(), free_port())).collect();
        let mut nodes = Vec::new();
        for (i, port) in client_ports.iter().enumerate() {
            let node_dir = dir.path().join(format!("zk{}", i + 1));
            let data = node_dir.join("data");
            std::fs::create_dir_all(&data)?;
            std::fs::write(data.join("myid"), format!("{}\n", i + 1))?;
            let cfg = node_dir.join("zoo.cfg");
            let text = format!(
                "\
# The Debian package's zoo.cfg, with this server's own directory and ports.
tickTime=2000
initLimit=10
syncLimit=5
dataDir={data}
clientPort={port}
clientPortAddress=127.0.0.1
# The AdminServer stays on (the default), on a free port instead of 8080.
admin.serverPort={admin}
{servers}",
                data = data.display(),
                admin = free_port(),
            );
            std::fs::write(&cfg, text)?;
            let args = java_args(&[], &cfg, &node_dir).map_err(anyhow::Error::msg)?;
            nodes.push(Proc::spawn(&format!("zookeeper-{}", i + 1), Path::new("java"), &args, &node_dir));
        }
        let e = Ensemble { nodes, client_ports, dir };
        crate::until(limit, "every ZooKeeper server to serve as leader or follower", || async {
            if let Some(n) = e.nodes.iter().find(|n| n.has_exited()) {
                return Some(Err(anyhow::anyhow!("{} exited; the end of its log ({}):\n{}", n.name, n.log.display(), n.log_tail(10))));
            }
            e.settled().await.then_some(Ok(()))
        })
        .await??;
        Ok(e)
    }

    /// `127.0.0.1:PORT` of server `i`.
    pub fn addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.client_ports[i])
    }

    /// Every server, as a client's connect string.
    pub fn connect_string(&self) -> String {
        (0..self.nodes.len()).map(|i| self.addr(i)).collect::<Vec<_>>().join(",")
    }

    /// The servers' directories (configuration, data, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Leaves the directory behind when dropped; returns where it is.
    pub fn keep_data(&mut self) -> PathBuf {
        self.dir.disable_cleanup(true);
        self.dir.path().to_path_buf()
    }

    /// A fresh session through `connect` (one server, or several comma-separated), closed when
    /// the client and its clones are dropped.
    pub async fn connect(&self, connect: &str, session_timeout: Duration) -> Result<zk::Client, zk::Error> {
        let connecting = zk::Client::connector().with_session_timeout(session_timeout).connect(connect);
        match tokio::time::timeout(session_timeout + Duration::from_secs(2), connecting).await {
            Ok(r) => r,
            Err(_) => Err(zk::Error::Timeout),
        }
    }

    /// The answer of `srvr` (the one four-letter word the default whitelist allows) from server
    /// `i`, or None when it does not answer.
    pub async fn srvr(&self, i: usize) -> Option<String> {
        let addr = self.addr(i);
        tokio::task::spawn_blocking(move || four_letter(&addr, "srvr")).await.ok().flatten()
    }

    /// `leader` or `follower` once server `i` serves (`srvr`'s `Mode:`), else None.
    pub async fn mode(&self, i: usize) -> Option<String> {
        let text = self.srvr(i).await?;
        text.lines().find_map(|l| l.strip_prefix("Mode:")).map(|m| m.trim().to_string())
    }

    /// Index of the first server that says it leads.
    pub async fn leader(&self) -> Option<usize> {
        for i in 0..self.nodes.len() {
            if self.mode(i).await.as_deref() == Some("leader") {
                return Some(i);
            }
        }
        None
    }

    /// Every server serves, exactly one as leader (a restarted follower serves only once it
    /// has synced with the leader).
    pub async fn settled(&self) -> bool {
        let mut leaders = 0;
        for i in 0..self.nodes.len() {
            match self.mode(i).await.as_deref() {
                Some("leader") => leaders += 1,
                Some("follower") => {}
                _ => return false,
            }
        }
        leaders == 1
    }

    /// `srvr`'s `Zookeeper version:` line from the first server that answers.
    pub async fn version(&self) -> Option<String> {
        for i in 0..self.nodes.len() {
            if let Some(v) = self.srvr(i).await.and_then(|t| t.lines().find_map(|l| l.strip_prefix("Zookeeper version:").map(|v| v.trim().to_string()))) {
                return Some(v);
            }
        }
        None
    }
}

/// zoo.cfg for a throwaway standalone server.
fn zoo_cfg(data: &Path, port: u16) -> String {
    format!(
        "\
tickTime={tick}
# Explicit bounds, so the session timeout a test asks for is the one it gets: 2 ticks up to a
# minute (the default upper bound, 20 ticks = 4 s, would silently shorten longer ones).
minSessionTimeout={min}
maxSessionTimeout=60000
dataDir={data}
clientPort={port}
# Loopback only.
clientPortAddress=127.0.0.1
# The AdminServer would bind a fixed port (8080).
admin.enableServer=false
# ruok: readiness; srvr, cons, dump (sessions and their ephemeral nodes): debugging by hand.
4lw.commands.whitelist=ruok,srvr,cons,dump
# Every test client connects from 127.0.0.1; the default is 60 connections per address.
maxClientCnxns=0
# No fsync per write: `stop` kills the process, not the machine, so written data survives it,
# and tests do not wait on the disk.
forceSync=no
",
        tick = TICK.as_millis(),
        min = 2 * TICK.as_millis(),
        data = data.display(),
    )
}

/// Sends a four-letter-word command and returns the trimmed answer, or `None` if the server
/// is not there (yet).
pub fn four_letter(addr: &str, cmd: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(cmd.as_bytes()).ok()?;
    let mut out = String::new();
    // The server answers and closes the connection.
    s.read_to_string(&mut out).ok()?;
    Some(out.trim().to_string())
}
