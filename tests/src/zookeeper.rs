//! A real standalone ZooKeeper 3.8 (the Debian `zookeeper` package) for one test: its own data
//! directory, `zoo.cfg` and free loopback port, started as a plain `java` process (see
//! scripts/lib/zookeeper.sh for why not `zkServer.sh`), and a small client for looking at it.

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
/// uses, so there is one definition of it (scripts/lib/zookeeper.sh, `zookeeper_classpath`).
fn classpath() -> &'static str {
    static CP: OnceLock<String> = OnceLock::new();
    CP.get_or_init(|| {
        let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lib/zookeeper.sh");
        let out = Command::new("bash")
            .arg("-c")
            .arg(r#". "$1" && zookeeper_classpath"#)
            .arg("bash")
            .arg(&lib)
            .output()
            .unwrap_or_else(|e| panic!("running bash for {}: {e}", lib.display()));
        let cp = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            out.status.success() && !cp.is_empty(),
            "no ZooKeeper classpath ({}): install it with scripts/test or `apt-get install zookeeper`",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        cp
    })
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
        let args: Vec<String> = vec![
            // Several servers may run side by side under nextest: keep each JVM small.
            "-Xmx256m".into(),
            "-XX:+UseSerialGC".into(),
            // /etc/zookeeper/conf/log4j.properties (on the classpath) leaves the root logger to
            // this property; the console goes to the Proc's log, printed when a test fails.
            "-Dzookeeper.root.logger=INFO,CONSOLE".into(),
            format!("-Dzookeeper.log.dir={}", dir.path().display()),
            "-cp".into(),
            classpath().to_string(),
            "org.apache.zookeeper.server.quorum.QuorumPeerMain".into(),
            cfg.display().to_string(),
        ];
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
