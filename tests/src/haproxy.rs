//! A real HAProxy 2.6 (the Debian `haproxy` package, see scripts/lib/haproxy.sh) for one test:
//! `haproxy -W -db -S master.sock -f haproxy.cfg` (master-worker, foreground) with a generated
//! config, its sockets in a temp dir and one frontend per backend on a free loopback port.
//!
//! Reload counting: the master CLI's `show proc` prints the master's reload counter
//! (`<pid> master <reloads> [failed: N] <uptime> <version>`), which counts every reload however
//! it was triggered (master CLI `reload`, SIGUSR2). A restart starts a new master whose counter
//! starts at 0, so [`Haproxy::reloads`] adds the counts of the masters that came before. The
//! master's log says `Loading success.` once per start and once per reload; [`Haproxy::loads`]
//! counts those lines as a cross-check. Both were checked on HAProxy 2.6.12.

use std::path::{Path, PathBuf};
use std::time::Duration;

use syncer::driver::runtime::{parse_servers_state, Endpoint, RuntimeApi, StateRow};
use syncer::driver::DriverError;

use crate::{free_port, wait_for, Proc};

/// How long a start, reload or restart may take before the test fails.
const READY_LIMIT: Duration = Duration::from_secs(10);

/// A server declared in haproxy.cfg (not added at run time), e.g. to check that the syncer
/// leaves such servers alone.
#[derive(Debug, Clone)]
pub struct StaticServer {
    pub backend: String,
    pub name: String,
    /// `host:port`
    pub addr: String,
}

/// One HAProxy master-worker process tree, stopped when dropped.
pub struct Haproxy {
    proc: Proc,
    /// Holds haproxy.cfg, both sockets and the log; deleted on drop.
    dir: tempfile::TempDir,
    /// (backend, frontend port), in the order given to `start`.
    frontends: Vec<(String, u16)>,
    /// Port of the second, TCP, admin socket (for the driver's TCP endpoint).
    tcp_port: u16,
    /// Reloads counted by masters that have since been restarted.
    earlier_reloads: u64,
}

impl Haproxy {
    /// Starts HAProxy with the named backends (`balance roundrobin`, no servers), each behind
    /// its own frontend, and waits until the admin and master sockets answer.
    pub async fn start(backends: &[&str]) -> Haproxy {
        Self::start_with(backends, &[]).await
    }

    /// Like `start`, with servers declared in the config.
    pub async fn start_with(backends: &[&str], static_servers: &[StaticServer]) -> Haproxy {
        assert!(!backends.is_empty(), "HAProxy needs at least one backend");
        let dir = tempfile::tempdir().unwrap();
        let frontends: Vec<(String, u16)> = backends.iter().map(|b| (b.to_string(), free_port())).collect();
        let tcp_port = free_port();
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg, config(dir.path(), tcp_port, &frontends, static_servers)).unwrap();
        let args: Vec<String> = vec![
            "-W".into(),
            "-db".into(),
            "-S".into(),
            format!("{},mode,600", dir.path().join("master.sock").display()),
            "-f".into(),
            cfg.display().to_string(),
        ];
        // On drop the master gets SIGTERM and stops its workers; a worker also exits when its
        // master dies, so a SIGKILL after the grace leaves nothing behind.
        let mut proc = Proc::new("haproxy", &haproxy_program(), &args, dir.path()).stop_grace(Duration::from_secs(3));
        proc.start();
        let h = Haproxy { proc, dir, frontends, tcp_port, earlier_reloads: 0 };
        h.wait_ready(None).await;
        h
    }

    /// The admin-level Runtime API socket (`stats socket`), served by the current worker.
    pub fn socket_path(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    /// `127.0.0.1:PORT` of the same Runtime API over TCP (`stats socket ipv4@...`).
    pub fn tcp_address(&self) -> String {
        format!("127.0.0.1:{}", self.tcp_port)
    }

    /// The master CLI socket (`-S`): `show proc`, `reload`, `@1 <command>`.
    pub fn master_socket_path(&self) -> PathBuf {
        self.dir.path().join("master.sock")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("haproxy.cfg")
    }

    /// URL of the frontend of the first backend.
    pub fn frontend_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.frontends[0].1)
    }

    /// URL of the frontend whose default backend is `backend`.
    pub fn frontend_url_for(&self, backend: &str) -> String {
        let (_, port) = self.frontends.iter().find(|(b, _)| b == backend).unwrap_or_else(|| panic!("no backend {backend} in this HAProxy"));
        format!("http://127.0.0.1:{port}")
    }

    /// Runs one Runtime API command on the admin socket and returns the answer.
    pub async fn show(&self, cmd: &str) -> String {
        command(&self.socket_path(), cmd).await.unwrap_or_else(|e| panic!("admin socket: {e}"))
    }

    /// Runs one command on the master CLI.
    pub async fn master(&self, cmd: &str) -> String {
        command(&self.master_socket_path(), cmd).await.unwrap_or_else(|e| panic!("master socket: {e}"))
    }

    /// The current worker's pid, from `show info` on the admin socket.
    pub async fn worker_pid(&self) -> u32 {
        info_pid(&self.show("show info").await).expect("no Pid in show info")
    }

    /// Reloads through the master CLI (`reload`, what `systemctl reload` does too) and waits
    /// until a new worker serves the admin socket and the master has counted the reload.
    pub async fn reload(&self) {
        let before = self.reloads().await;
        let old = self.worker_pid().await;
        // The master re-executes itself and drops the CLI connection; the answer is empty.
        self.master("reload").await;
        wait_for(READY_LIMIT, "HAProxy to count the reload", || async {
            (self.master_reloads().await.map(|n| n + self.earlier_reloads) > Some(before)).then_some(())
        })
        .await;
        self.wait_ready(Some(old)).await;
    }

    /// Stops the process tree (SIGTERM, then SIGKILL after a deadline) and starts it again
    /// with the same config; waits until the new worker answers.
    pub async fn restart(&mut self) {
        self.earlier_reloads += self.master_reloads().await.unwrap_or(0);
        let old = self.worker_pid().await;
        self.stop().await;
        self.proc.start();
        self.wait_ready(Some(old)).await;
    }

    /// Every reload since `start`, restarts excluded (see the module doc).
    pub async fn reloads(&self) -> u64 {
        self.earlier_reloads + self.master_reloads().await.expect("master CLI: no master line in show proc")
    }

    /// `Loading success.` lines in the master's log: starts plus reloads (restarts included).
    pub fn loads(&self) -> usize {
        self.proc.log_text().lines().filter(|l| l.contains("Loading success.")).count()
    }

    /// Ports of the servers the syncer manages (`sd-` prefix) in `backend` (`managed_servers`).
    /// Empty when HAProxy does not answer.
    pub async fn managed_ports(&self, backend: &str) -> std::collections::BTreeSet<u16> {
        match managed_servers(&self.socket_path(), backend).await {
            Ok(rows) => rows.into_iter().map(|s| s.port).collect(),
            Err(_) => Default::default(),
        }
    }

    /// The HAProxy log (master and workers write to stderr with `-db`).
    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }

    /// The master's reload counter, or None if the master CLI does not answer.
    async fn master_reloads(&self) -> Option<u64> {
        parse_master_reloads(&command(&self.master_socket_path(), "show proc").await.ok()?)
    }

    /// Starts it again after `stop`, with the same config; waits until it answers.
    pub async fn start_again(&mut self) {
        self.proc.start();
        self.wait_ready(None).await;
    }

    pub async fn stop(&mut self) {
        // The master passes SIGTERM to its workers; a worker also exits when its master dies,
        // so SIGKILL after the deadline leaves nothing behind.
        if self.proc.terminate(READY_LIMIT).await.is_none() {
            self.proc.kill();
        }
    }

    /// Waits until the admin socket answers `show info` from a worker other than `old_pid`
    /// and the master CLI answers.
    async fn wait_ready(&self, old_pid: Option<u32>) {
        wait_for(READY_LIMIT, "HAProxy's admin and master sockets to answer", || async {
            let pid = info_pid(&command(&self.socket_path(), "show info").await.ok()?)?;
            if Some(pid) == old_pid {
                return None;
            }
            self.master_reloads().await.map(|_| ())
        })
        .await;
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- {} -----\n{}", self.config_path().display(), std::fs::read_to_string(self.config_path()).unwrap_or_default());
        }
        // `proc` is dropped next: SIGTERM to the master, which stops its workers.
    }
}

/// One command on a HAProxy CLI socket (the admin socket or the master CLI), through the
/// syncer's own Runtime API client: send it, half-close, read until HAProxy closes, with the
/// driver's deadline.
pub async fn command(socket: &Path, cmd: &str) -> Result<String, DriverError> {
    RuntimeApi::new(Endpoint::Unix(socket.to_path_buf()), "").command(cmd).await
}

/// The servers the syncer manages (`sd-` prefix) in `backend`, from one `show servers state`
/// read with the syncer's own parser (one parser of that answer for the tests, the benchmarks
/// and the product).
pub async fn managed_servers(socket: &Path, backend: &str) -> Result<Vec<StateRow>, DriverError> {
    let rows = parse_servers_state(&command(socket, &format!("show servers state {backend}")).await?)?;
    Ok(rows.into_iter().filter(|r| syncer::model::is_managed(&r.name)).collect())
}

/// The generated haproxy.cfg.
fn config(dir: &Path, tcp_port: u16, frontends: &[(String, u16)], static_servers: &[StaticServer]) -> String {
    let mut c = format!(
        "global
    # expose-fd listeners: a reload hands the listening sockets to the new worker.
    stats socket {sock} mode 600 level admin expose-fd listeners
    # The same API over TCP, loopback only.
    stats socket ipv4@127.0.0.1:{tcp_port} level admin
    # Old workers must not hold on to connections for long after a reload.
    hard-stop-after 5s

defaults
    mode http
    timeout connect 1s
    timeout client 10s
    timeout server 10s
    # A request to a server that just went away is retried on another one.
    retries 3
    option redispatch
",
        sock = dir.join("admin.sock").display()
    );
    for (backend, port) in frontends {
        c.push_str(&format!("\nfrontend fe_{backend}\n    bind 127.0.0.1:{port}\n    default_backend {backend}\n"));
    }
    for (backend, _) in frontends {
        c.push_str(&format!("\nbackend {backend}\n    balance roundrobin\n"));
        for s in static_servers.iter().filter(|s| &s.backend == backend) {
            c.push_str(&format!("    server {} {}\n", s.name, s.addr));
        }
    }
    c
}

/// `haproxy` from PATH, else where Debian puts it (/usr/sbin is not on every user's PATH).
fn haproxy_program() -> PathBuf {
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).map(|d| d.join("haproxy"));
    on_path
        .chain(["/usr/sbin/haproxy", "/usr/local/sbin/haproxy"].map(PathBuf::from))
        .find(|p| p.is_file())
        .expect("haproxy is not installed: run scripts/test (ensure_haproxy) or `apt-get install haproxy`")
}

fn info_pid(show_info: &str) -> Option<u32> {
    show_info.lines().find_map(|l| l.strip_prefix("Pid:")).and_then(|v| v.trim().parse().ok())
}

/// The master's reload count from the master CLI's `show proc`:
/// `#<PID> <type> <reloads> <uptime> <version>` then e.g. `29476 master 2 [failed: 0] 0d00h10m37s ...`.
pub fn parse_master_reloads(show_proc: &str) -> Option<u64> {
    show_proc.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 3 && f[1] == "master").then(|| f[2].parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_reloads_from_show_proc() {
        // Captured from HAProxy 2.6.12 after two reloads.
        let text = "#<PID>          <type>          <reloads>       <uptime>        <version>      \n29476           master          2 [failed: 0]   0d00h10m37s     2.6.12-1+deb12u4\n# workers\n7923            worker          0               0d00h00m01s     2.6.12-1+deb12u4\n# programs\n\n";
        assert_eq!(parse_master_reloads(text), Some(2));
        assert_eq!(parse_master_reloads("Unknown command.\n"), None);
    }
}
