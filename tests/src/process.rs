//! Processes: where the workspace's binaries are, free loopback ports, and `Proc`, a child
//! process with its own log file, stopped when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The directory of the workspace's binaries: `E2E_BIN_DIR`, else `profile` (`debug` or
/// `release`) under `$CARGO_TARGET_DIR` or the workspace's `target/`.
pub fn bin_dir(profile: &str) -> PathBuf {
    std::env::var_os("E2E_BIN_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
        target.join(profile)
    })
}

/// Path of a workspace binary (`registry`, `announcer`, `syncer`) of this build's profile, built
/// by `cargo build`, or what to do when it is missing. `E2E_BIN_DIR` overrides the directory.
pub fn try_binary(name: &str) -> Result<PathBuf, String> {
    let path = bin_dir(if cfg!(debug_assertions) { "debug" } else { "release" }).join(name);
    match path.exists() {
        true => Ok(path),
        false => Err(format!("{} is missing: run `cargo build --workspace --bins` first (or set E2E_BIN_DIR)", path.display())),
    }
}

/// `try_binary` for tests: a missing binary fails the test.
pub fn binary(name: &str) -> PathBuf {
    try_binary(name).unwrap_or_else(|e| panic!("{e}"))
}

/// A loopback port that was free a moment ago. The OS picks it (port 0), so tests never
/// hard-code ports; a process started right after binds it.
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// `free_port` on another loopback address (127.X.Y.Z).
pub fn free_port_on(ip: &str) -> u16 {
    TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

/// Set by `die_with_parent`.
static DIE_WITH_PARENT: AtomicBool = AtomicBool::new(false);

/// From now on every process a `Proc` starts dies with this one (`PR_SET_PDEATHSIG`), even if
/// this one is SIGKILLed and runs no destructors. For the benchmarks (`run_bench` calls it),
/// not the tests: the signal comes when the *thread* that started the process ends, so it is
/// only for programs that start their processes from threads that live as long as they do.
pub fn die_with_parent() {
    DIE_WITH_PARENT.store(true, Ordering::Relaxed);
}

/// A child process whose output goes to a log file; stopped when dropped (SIGKILL, or SIGTERM
/// first with a `stop_grace`).
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
    program: PathBuf,
    args: Vec<String>,
    /// Set for every start, after the harness's own `RUST_LOG`.
    env: Vec<(String, String)>,
    stop_grace: Option<Duration>,
}

impl Proc {
    /// Starts `program` now, logging to `log_dir/NAME.log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log_dir: &Path) -> Proc {
        let mut p = Proc::new(name, program, args, log_dir);
        p.start();
        p
    }

    /// Like `spawn`, but not started yet: set it up (`env`, `stop_grace`), then `start`.
    pub fn new(name: &str, program: &Path, args: &[String], log_dir: &Path) -> Proc {
        Proc {
            name: name.to_string(),
            child: None,
            log: log_dir.join(format!("{name}.log")),
            program: program.to_path_buf(),
            args: args.to_vec(),
            env: Vec::new(),
            stop_grace: None,
        }
    }

    /// An environment variable for every start; `RUST_LOG` here wins over the harness's
    /// (`E2E_RUST_LOG`, else `info,openraft=warn`).
    pub fn env(mut self, key: &str, value: &str) -> Proc {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// When dropped (or `stop`ped), SIGTERM first and SIGKILL only if it is still running after
    /// `grace`, so that it can shut down as it would for its operator (and a profiler wrapping
    /// it can write its output). Without it: SIGKILL at once.
    pub fn stop_grace(mut self, grace: Duration) -> Proc {
        self.stop_grace = Some(grace);
        self
    }

    /// Adds an argument for the next `start`.
    pub fn push_arg(&mut self, arg: &str) {
        self.args.push(arg.to_string());
    }

    /// Starts (again) with the same arguments, appending to the same log.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env("RUST_LOG", std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if DIE_WITH_PARENT.load(Ordering::Relaxed) {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe, and the closure touches nothing else.
            unsafe {
                cmd.pre_exec(|| match libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                });
            }
        }
        self.child = Some(cmd.spawn().unwrap_or_else(|e| panic!("starting {}: {e}", self.program.display())));
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

    /// Stops it as `stop_grace` says (blocking) and reaps it.
    pub fn stop(&mut self) {
        stop_all(std::slice::from_mut(self));
    }

    /// SIGTERM, then waits up to `limit` for it to exit: its exit code, or None if it is still
    /// running (see `wait_exit`).
    pub async fn terminate(&mut self, limit: Duration) -> Option<i32> {
        self.signal("TERM");
        self.wait_exit(limit).await
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// Whether it was started and has ended since, without reaping it (so `exit_code` can
    /// still tell how), for callers that hold it shared.
    pub fn has_exited(&self) -> bool {
        let Some(pid) = self.pid() else { return false };
        // SAFETY: waitid only writes `info`; WNOWAIT leaves the child to be reaped by `Child`.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        match unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT) } {
            0 => (unsafe { info.si_pid() }) != 0,
            // ECHILD: `Child` has reaped it already.
            _ => std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD),
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

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Prints the last `lines` lines of its log to stderr.
    pub fn print_log_tail(&self, lines: usize) {
        eprintln!("----- last lines of {} ({}) -----", self.name, self.log.display());
        eprintln!("{}", self.log_tail(lines));
    }
}

/// `Proc::stop` for several at once: every one with a stop grace gets its SIGTERM before any is
/// waited for, so they shut down side by side; whatever still runs at the end is SIGKILLed.
pub fn stop_all(procs: &mut [Proc]) {
    let start = Instant::now();
    for p in procs.iter_mut().filter(|p| p.stop_grace.is_some()) {
        if p.is_running() {
            p.signal("TERM");
        }
    }
    for p in procs.iter_mut() {
        while p.stop_grace.is_some_and(|grace| start.elapsed() < grace) && p.is_running() {
            std::thread::sleep(Duration::from_millis(10));
        }
        p.kill();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_log_tail(std::env::var("E2E_LOG_LINES").ok().and_then(|n| n.parse().ok()).unwrap_or(60));
        }
        self.stop();
    }
}
