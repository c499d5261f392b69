//! `scale_bench`: a benchmark (not a test) of the registry at scale (issue 11, item 4): a
//! 5-node loopback cluster with its default settings (TLS, ACL tokens, fsync on) holding
//! 100,000 instances, each under a lease of its own. Run through `scripts/bench scale`.
//!
//! It measures, in order, on one cluster:
//!
//! 1. **load**: granting the leases and registering the instances, 64 requests in flight to the
//!    leader (one `POST /v1/register` per instance where the registry has it, else the two calls
//!    `POST /v1/leases` and `PUT /v1/services/S/instances/I`), with the leases renewed at TTL/3
//!    from their grant on;
//! 2. **memory**: every node's VmRSS (and `smaps_rollup`) with everything loaded;
//! 3. **lease expiry cost**: the leader's CPU over a window with the leases renewed at TTL/3,
//!    and over one with nothing renewed, beside the same window before the load;
//! 4. **keepalive throughput** with every lease live: a pool of keep-alive connections to the
//!    leader renewing flat out for `--keepalive-window`;
//! 5. **snapshot build**: enough writes to reach the next snapshot, timed from each node's log
//!    (openraft's "push snapshot building command" to its "update_snapshot");
//! 6. **restart to ready**: a follower stopped with SIGTERM, another with SIGKILL, each started
//!    again; the time until `/readyz` answers 200 and until it has applied the leader's commit
//!    index;
//! 7. **snapshot install**: a follower's data directory wiped and the node started again with
//!    `--join` (docs/operations.md, "Replacing a node"); the time until it is a voter again and
//!    caught up, split by its log into receiving and installing the snapshot;
//! 8. **watch fan-out**: `--watchers` streams of `GET /v1/watch`, spread over every node, each on
//!    a keep-alive connection of its own; then sequential registrations, each timed from the
//!    leader's acknowledgement until the last watcher has seen it.
//!
//! Every loop is bounded in count and time; the benchmark talks to loopback addresses only; the
//! processes are killed when the run ends, fails or is interrupted (drop guards, plus
//! `PR_SET_PDEATHSIG` should the benchmark itself be killed).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::Parser;
use e2e::bench::{epoch_ns, nanos, percentile, r1, r3, write_json, Summary};
use e2e::bench_cluster::BenchCluster;
use e2e::http1::{write_retry, Conn, ConnSecurity, Target};
use e2e::lease::{LeaseSet, RenewPool};
use e2e::procstat::{self, rss_line, CpuWindow, Mem};
use e2e::ClusterOptions;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

#[derive(Parser, Debug)]
#[command(
    name = "scale_bench",
    about = "Scale figures for the registry: 100k instances under 100k leases on a 5-node loopback cluster with its default settings",
    long_about = "Scale figures for the registry on a loopback cluster with its default settings (TLS, ACL tokens, fsync on): \
load time and rate for --instances instances each under a lease of its own, every node's RSS with them, the leader's CPU \
with the leases renewed at TTL/3 and idle, keepalives/s with every lease live, snapshot build and install times, restart \
to ready, and register-to-visible latency to the last of --watchers watch streams. Every figure is from the --nodes-node \
cluster. The registry binary comes from $E2E_BIN_DIR (scripts/bench scale sets it to the release build)."
)]
struct Args {
    /// Registry nodes in the cluster.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Instances to register, each under a lease of its own.
    #[arg(long, default_value_t = 100_000)]
    instances: usize,
    /// Services the instances are spread over (round-robin).
    #[arg(long, default_value_t = 100)]
    services: usize,
    /// TTL of the leases. Renewed every TTL/3 (as the announcer does), 100k leases at 300 s
    /// cost 1,000 keepalives/s, a few per cent of what the leader can take, so the renewals
    /// do not drown the figures; the longest TTL a client may ask for is --max-ttl (1 h).
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Requests in flight while loading; each load worker connects from a loopback address of
    /// its own (127.77.X.Y), as from its own host, since one client address may hold at most
    /// --max-leases-per-client (20,000) live leases.
    #[arg(long, default_value_t = 64)]
    load_concurrency: usize,
    /// Keep-alive connections renewing flat out in the keepalive phase.
    #[arg(long, default_value_t = 16)]
    keepalive_conns: usize,
    /// Length of the keepalive throughput window.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    keepalive_window: Duration,
    /// Length of each CPU window of the lease expiry phase (0s skips the phase).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    cpu_window: Duration,
    /// Watch streams (`GET /v1/watch`), spread over the nodes (0 skips the phase).
    #[arg(long, default_value_t = 500)]
    watchers: usize,
    /// Sequential registrations timed to the last watcher.
    #[arg(long, default_value_t = 200)]
    watch_samples: usize,
    /// Phases to leave out, comma-separated: expiry, keepalive, snapshot, restart, install, watch.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<Phase>,
    /// Upper bound of each step that waits (loading, catching up, a snapshot, a restart).
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    step_timeout: Duration,
    /// Upper bound of the whole run.
    #[arg(long, default_value = "90m", value_parser = humantime::parse_duration)]
    run_timeout: Duration,
    /// Deadline for the cluster to elect a leader and be ready.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    startup_timeout: Duration,
    /// The `registry` binary [default: `registry` in $E2E_BIN_DIR, else the target directory's
    /// `release/`].
    #[arg(long)]
    registry_bin: Option<PathBuf>,
    /// Where the nodes' directories are made [default: the system temp dir]. A real disk, not
    /// tmpfs, for fsync to mean anything.
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Keep the data directories and node logs after the run.
    #[arg(long)]
    keep_data: bool,
    /// Extra argument for every `registry serve` (repeat); none by default, so the figures are
    /// the defaults'.
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    node_args: Vec<String>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Phase {
    Expiry,
    Keepalive,
    Snapshot,
    Restart,
    Install,
    Watch,
}

/// Targets of issue 11, item 4.
const RSS_TARGET_MIB: f64 = 150.0;
const READY_TARGET: Duration = Duration::from_secs(5);
const WATCH_P99_TARGET_MS: f64 = 50.0;

/// The registry's default `--max-leases-per-client`; a load worker stays well below it.
const LEASES_PER_SOURCE: usize = 18_000;

/// The nodes log at their default level, plus openraft's lines about snapshots (built,
/// received, installed), which the snapshot figures are read from.
const LOG_FILTER: &str = "info,openraft=warn,openraft::engine::handler::snapshot_handler=info,openraft::core::sm::worker=info";

fn main() -> ExitCode {
    let args = Args::parse();
    let fds = raise_fd_limit();
    e2e::run_bench("scale_bench", async move {
        let limit = args.run_timeout;
        match tokio::time::timeout(limit, run(args, fds)).await {
            Ok(r) => r,
            Err(_) => bail!("the run took longer than --run-timeout {}", humantime::format_duration(limit)),
        }
    })
}

/// Raises this process's open-file limit to its hard limit (the watch streams each hold one);
/// returns the soft limit in force.
fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    unsafe {
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return 0;
        }
        if l.rlim_cur < l.rlim_max {
            let want = libc::rlimit { rlim_cur: l.rlim_max, rlim_max: l.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur;
            }
        }
        l.rlim_cur
    }
}

async fn run(args: Args, fds: u64) -> Result<()> {
    ensure!(args.nodes >= 1 && args.nodes <= 9, "--nodes must be 1 to 9");
    ensure!(args.instances >= 1 && args.instances <= 1_000_000, "--instances must be 1 to 1,000,000");
    ensure!(args.services >= 1, "--services must be at least 1");
    ensure!(args.load_concurrency >= 1 && args.load_concurrency <= 1000, "--load-concurrency must be 1 to 1000");
    ensure!(args.keepalive_conns >= 1, "--keepalive-conns must be at least 1");
    ensure!(args.ttl >= Duration::from_secs(3), "--ttl must be at least 3s");
    ensure!(args.watchers <= 20_000 && args.watch_samples <= 100_000, "--watchers at most 20,000, --watch-samples at most 100,000");
    ensure!(
        args.instances.div_ceil(args.load_concurrency) <= LEASES_PER_SOURCE,
        "{} instances over {} load workers is more than {LEASES_PER_SOURCE} leases per client address: raise --load-concurrency",
        args.instances,
        args.load_concurrency
    );
    ensure!((args.watchers as u64) + 200 < fds, "--watchers {} needs more open files than the limit ({fds})", args.watchers);
    let registry_bin = args.registry_bin.clone().unwrap_or_else(|| e2e::process::bin_dir("release").join("registry"));
    let bin = std::fs::canonicalize(&registry_bin)
        .with_context(|| format!("registry binary {} not found (build it with `cargo build --release -p registry`)", registry_bin.display()))?;
    let opts = ClusterOptions {
        secure: true,
        node_args: args.node_args.clone(),
        bin: Some(bin.clone()),
        data_root: args.data_root.clone(),
        dir_prefix: "scale-bench-".into(),
        keep_data: args.keep_data,
        log_filter: Some(std::env::var("RUST_LOG").unwrap_or_else(|_| LOG_FILTER.into())),
        stop_grace: Some(Duration::from_secs(5)),
        ready_limit: args.startup_timeout,
        ..Default::default()
    };
    eprintln!("[scale] starting {} secured nodes ({})", args.nodes, bin.display());
    let cluster = BenchCluster::start(args.nodes, opts, "scale_bench").await?;
    let mut b = Bench::new(args, cluster, &bin).await?;
    let result = b.phases().await;
    if let Err(e) = &result {
        eprintln!("scale_bench: failed: {e:#}");
        b.cluster.procs.print_log_tails(30);
        // Whatever was measured before the failure is still worth reading.
        println!("{}", b.text);
    }
    result?;
    println!("{}", b.text);
    if let Some(path) = &b.args.json_out {
        write_json(path, &Value::Object(b.json.clone()))?;
        println!("JSON results written to {}", path.display());
    }
    if b.args.keep_data {
        println!("data directories and node logs kept in {}", b.cluster.dir().display());
    }
    Ok(())
}

/// One run: the cluster, the leases, the report so far.
struct Bench {
    args: Args,
    cluster: BenchCluster,
    leader_id: u64,
    leader: Target,
    /// Every lease of the load, renewed by `pool`.
    set: Arc<LeaseSet>,
    /// Renews `set` at TTL/3 while no phase needs otherwise.
    pool: Option<RenewPool>,
    /// Tells this run's idempotency keys from another's.
    run_id: u32,
    /// Paced keepalives answered 404, and failed otherwise, over the run.
    renew_404: u64,
    renew_failed: u64,
    /// Highest revision a load or snapshot write got.
    last_rev: Arc<AtomicU64>,
    started: Instant,
    text: String,
    json: serde_json::Map<String, Value>,
}

/// The loopback address load worker `w` connects from, as from a host of its own.
fn source_ip(w: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 77, (w / 250) as u8, (w % 250 + 1) as u8))
}

fn service_of(k: usize, services: usize) -> String {
    format!("svc-{:03}", k % services)
}

/// The PUT body (and `/v1/register` instance) of instance `k`.
fn instance_body(k: usize, lease_id: Option<u64>) -> Value {
    let mut v = json!({
        "address": format!("10.{}.{}.{}", (k >> 16) & 255, (k >> 8) & 255, k & 255),
        "port": 8080,
        "meta": {"zone": format!("z{}", k % 3)},
    });
    if let Some(l) = lease_id {
        v["lease_id"] = json!(l);
    }
    v
}

macro_rules! out {
    ($b:expr, $($arg:tt)*) => {{
        let _ = writeln!($b.text, $($arg)*);
    }};
}

impl Bench {
    async fn new(args: Args, cluster: BenchCluster, bin: &Path) -> Result<Bench> {
        let leader_id = cluster.wait_leader(args.startup_timeout).await?;
        let leader = cluster.target(cluster.node(leader_id).addr);
        let set = Arc::new(LeaseSet::with_capacity(args.instances));
        let mut b = Bench {
            cluster,
            leader_id,
            leader,
            set,
            pool: None,
            run_id: rand::random(),
            renew_404: 0,
            renew_failed: 0,
            last_rev: Arc::new(AtomicU64::new(0)),
            started: Instant::now(),
            text: String::new(),
            json: serde_json::Map::new(),
            args,
        };
        let a = &b.args;
        b.json.insert(
            "config".into(),
            json!({
                "nodes": a.nodes, "instances": a.instances, "leases": a.instances, "services": a.services,
                "ttl_ms": a.ttl.as_millis() as u64, "renew_every_ms": (a.ttl / 3).as_millis() as u64,
                "load_concurrency": a.load_concurrency, "keepalive_conns": a.keepalive_conns,
                "keepalive_window_secs": a.keepalive_window.as_secs_f64(), "cpu_window_secs": a.cpu_window.as_secs_f64(),
                "watchers": a.watchers, "watch_samples": a.watch_samples, "node_args": a.node_args,
                "registry_bin": bin, "tls_and_tokens": true, "fsync": true, "loopback": true, "cores": procstat::cores(),
            }),
        );
        out!(
            b,
            "\n=== registry scale benchmark: {} nodes on 127.0.0.1 (every figure below is from this {}-node cluster), default settings (TLS + ACL tokens, fsync on), {} cores shared with the load generator ===",
            a.nodes,
            a.nodes,
            procstat::cores()
        );
        out!(b, "leader: node {leader_id}; data and logs: {}", b.cluster.dir().display());
        out!(
            b,
            "{} instances over {} services, each under a lease of its own (TTL {}, renewed every TTL/3 = {}: {:.0} keepalives/s)",
            a.instances,
            a.services,
            humantime::format_duration(a.ttl),
            humantime::format_duration(a.ttl / 3),
            b.renew_rate()
        );
        if !a.node_args.is_empty() {
            out!(b, "NOT the defaults: extra node flags {:?}", a.node_args);
        }
        Ok(b)
    }

    fn renew_rate(&self) -> f64 {
        self.args.instances as f64 / (self.args.ttl.as_secs_f64() / 3.0)
    }

    fn pids(&self) -> Vec<u32> {
        self.cluster.pids()
    }

    fn leader_index(&self) -> usize {
        self.cluster.index(self.leader_id)
    }

    /// Starts renewing every lease at TTL/3 (2 connections to the leader).
    fn start_paced(&mut self) {
        if self.pool.is_none() {
            let rate = self.renew_rate();
            self.pool = Some(RenewPool::start(self.leader.clone(), self.set.clone(), 2, Some(rate), self.args.run_timeout));
        }
    }

    /// Stops the paced renewal, counting what its keepalives met.
    async fn stop_paced(&mut self) {
        if let Some(p) = self.pool.take() {
            let s = p.stats.clone();
            p.stop().await;
            self.renew_404 += s.not_found.load(Ordering::Relaxed);
            self.renew_failed += s.other_status.load(Ordering::Relaxed) + s.io_errors.load(Ordering::Relaxed);
        }
    }

    /// Waits until the nodes agree on a leader and aims at it: each phase starts here, so a
    /// leader change in an earlier one does not send this one's requests through a follower.
    async fn refresh_leader(&mut self) -> Result<()> {
        let id = self.cluster.wait_leader(self.args.startup_timeout).await?;
        if id != self.leader_id {
            eprintln!("[scale] the leader is now node {id} (was node {})", self.leader_id);
            self.leader_id = id;
            self.leader = self.cluster.target(self.cluster.node(id).addr);
            if self.pool.is_some() {
                self.stop_paced().await;
                self.start_paced();
            }
        }
        Ok(())
    }

    fn skipped(&self, p: Phase) -> bool {
        self.args.skip.contains(&p)
    }

    async fn phases(&mut self) -> Result<()> {
        let leader_changes_before = self.cluster.metric_all("registry_leader_changes_total").await.unwrap_or_default();
        let rss_idle = self.cluster.rss();
        let cpu_empty = if !self.skipped(Phase::Expiry) && !self.args.cpu_window.is_zero() {
            eprintln!("[scale] CPU with no leases ({})", humantime::format_duration(self.args.cpu_window));
            Some(self.cpu_window().await)
        } else {
            None
        };

        let from = self.begin().await?;
        self.load().await.context("load phase")?;
        self.end_phase("load", from);
        self.memory(&rss_idle).await.context("memory phase")?;
        if let Some(empty) = cpu_empty {
            let from = self.begin().await?;
            self.expiry(empty).await.context("lease expiry phase")?;
            self.end_phase("expiry", from);
        }
        if !self.skipped(Phase::Keepalive) {
            let from = self.begin().await?;
            self.keepalive().await.context("keepalive phase")?;
            self.end_phase("keepalive", from);
        }
        if !self.skipped(Phase::Snapshot) {
            let from = self.begin().await?;
            self.snapshot().await.context("snapshot phase")?;
            self.end_phase("snapshot_build", from);
        }
        if !self.skipped(Phase::Restart) && self.cluster.nodes.len() > 1 {
            let from = self.begin().await?;
            self.restart(self.follower(0), false).await.context("restart phase (SIGTERM)")?;
            self.end_phase("restart_sigterm", from);
            let from = self.begin().await?;
            self.restart(self.follower(1), true).await.context("restart phase (SIGKILL)")?;
            self.end_phase("restart_sigkill", from);
        }
        if !self.skipped(Phase::Install) && self.cluster.nodes.len() > 1 {
            let from = self.begin().await?;
            self.install(self.follower(2)).await.context("install phase")?;
            self.end_phase("install", from);
        }
        if !self.skipped(Phase::Watch) && self.args.watchers > 0 && self.args.watch_samples > 0 {
            let from = self.begin().await?;
            self.watch().await.context("watch phase")?;
            self.end_phase("watch", from);
        }
        self.finish(leader_changes_before).await
    }

    /// The start of a phase: the leader as the nodes agree now, and the time (for the logs).
    async fn begin(&mut self) -> Result<SystemTime> {
        self.refresh_leader().await?;
        Ok(SystemTime::now())
    }

    /// The end of the phase begun at `from`: what the logs say happened meanwhile, in the
    /// report and under the phase's key in the JSON.
    fn end_phase(&mut self, key: &str, from: SystemTime) {
        let (line, j) = self.happenings_line(from);
        out!(self, "{line}");
        if let Some(Value::Object(m)) = self.json.get_mut(key) {
            m.insert("happenings".into(), j);
        }
    }

    /// The `n`th follower of the current leader, counting down from the highest id (wrapping).
    fn follower(&self, n: usize) -> u64 {
        let followers: Vec<u64> = self.cluster.nodes.iter().rev().map(|n| n.id).filter(|id| *id != self.leader_id).collect();
        followers[n % followers.len()]
    }

    /// CPU of every node and of this process over `--cpu-window`, with the leader's keepalive
    /// rate over it.
    async fn cpu_window(&self) -> (CpuUse, f64) {
        let leader = self.cluster.node(self.leader_id);
        let ka0 = self.cluster.keepalives(leader).await.unwrap_or(0.0);
        let cpu = CpuWindow::open(&self.pids());
        let t0 = Instant::now();
        tokio::time::sleep(self.args.cpu_window).await;
        let used = CpuUse::close(&cpu);
        let ka1 = self.cluster.keepalives(leader).await.unwrap_or(0.0);
        (used, (ka1 - ka0) / t0.elapsed().as_secs_f64())
    }

    // -----------------------------------------------------------------------------------------
    // 1. Load.

    async fn load(&mut self) -> Result<()> {
        let n = self.args.instances;
        let conc = self.args.load_concurrency.min(n);
        let per = n.div_ceil(conc);
        let ttl_ms = self.args.ttl.as_millis() as u64;
        let deadline = Instant::now() + self.args.step_timeout;
        self.start_paced();

        // One call or two: asked once, with instance 0.
        let first = Conn::new(&self.leader.from_source(source_ip(0)));
        let (single, detect_note, first) = self.detect_register(first, ttl_ms).await?;
        eprintln!("[scale] loading {n} instances, {conc} in flight ({detect_note})");

        let leader_node = self.cluster.node(self.leader_id);
        let writes0 = self.write_time(leader_node).await;
        let pids = self.pids();
        let written0: Vec<u64> = pids.iter().map(|p| procstat::write_bytes(*p)).collect();
        let cpu = CpuWindow::open(&pids);
        let start = Instant::now();
        let done = Arc::new(AtomicUsize::new(usize::from(single)));
        // When each tenth of the instances was in: the rate as the state grows.
        let loaded = Arc::new(AtomicBool::new(false));
        let progress = {
            let (done, loaded) = (done.clone(), loaded.clone());
            tokio::spawn(async move {
                let mut tenths = Vec::new();
                for tick in 1..=1_000_000u64 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let d = done.load(Ordering::Relaxed);
                    while tenths.len() < 10 && d * 10 >= (tenths.len() + 1) * n {
                        tenths.push(start.elapsed());
                    }
                    if loaded.load(Ordering::Relaxed) {
                        break;
                    }
                    if tick % 100 == 0 {
                        eprintln!(
                            "[scale]   {d}/{n} instances after {:.0} s ({:.0}/s)",
                            start.elapsed().as_secs_f64(),
                            d as f64 / start.elapsed().as_secs_f64()
                        );
                    }
                }
                tenths
            })
        };
        let mut first = Some(first);
        let tasks: Vec<JoinHandle<Result<Latencies>>> = (0..conc)
            .map(|w| {
                let range = (w * per)..((w + 1) * per).min(n);
                let mut conn = match (w, first.take()) {
                    (0, Some(c)) => c,
                    (_, c) => {
                        first = c;
                        Conn::new(&self.leader.from_source(source_ip(w)))
                    }
                };
                let (set, last_rev, done) = (self.set.clone(), self.last_rev.clone(), done.clone());
                let (services, run_id) = (self.args.services, self.run_id);
                tokio::spawn(async move {
                    let (mut grants, mut puts) = (Vec::with_capacity(range.len()), Vec::with_capacity(range.len()));
                    let grant_body = serde_json::to_vec(&json!({ "ttl_ms": ttl_ms }))?;
                    for k in range {
                        if single && k == 0 {
                            continue;
                        }
                        let (svc, inst) = (service_of(k, services), format!("i-{k}"));
                        if single {
                            let mut one = instance_body(k, None);
                            one["service"] = json!(svc);
                            one["instance"] = json!(inst);
                            let body = serde_json::to_vec(&json!({"ttl_ms": ttl_ms, "instances": [one]}))?;
                            let t = Instant::now();
                            let v = write_retry(&mut conn, "POST", "/v1/register", &body, Some(&format!("scale-{run_id:08x}-r{k}")), deadline).await?;
                            puts.push(nanos(t.elapsed()));
                            let lease = v["lease_id"].as_u64().ok_or_else(|| anyhow!("register answer without lease_id: {v}"))?;
                            set.push(lease);
                            last_rev.fetch_max(v["revision"].as_u64().unwrap_or(0), Ordering::Relaxed);
                        } else {
                            let t = Instant::now();
                            let v = write_retry(&mut conn, "POST", "/v1/leases", &grant_body, Some(&format!("scale-{run_id:08x}-g{k}")), deadline).await?;
                            grants.push(nanos(t.elapsed()));
                            let lease = v["lease_id"].as_u64().ok_or_else(|| anyhow!("grant answer without lease_id: {v}"))?;
                            set.push(lease);
                            let body = serde_json::to_vec(&instance_body(k, Some(lease)))?;
                            let t = Instant::now();
                            let path = format!("/v1/services/{svc}/instances/{inst}");
                            let v = write_retry(&mut conn, "PUT", &path, &body, Some(&format!("scale-{run_id:08x}-p{k}")), deadline).await?;
                            puts.push(nanos(t.elapsed()));
                            last_rev.fetch_max(v["revision"].as_u64().unwrap_or(0), Ordering::Relaxed);
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((grants, puts))
                })
            })
            .collect();
        let (mut grants, mut puts) = (Vec::new(), Vec::new());
        let mut failure = None;
        for t in tasks {
            match t.await? {
                Ok((g, p)) => {
                    grants.extend(g);
                    puts.extend(p);
                }
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        let load_time = start.elapsed();
        loaded.store(true, Ordering::Relaxed);
        let tenths = progress.await.unwrap_or_default();
        if let Some(e) = failure {
            return Err(e);
        }
        let tenth_rates: Vec<f64> = tenths
            .iter()
            .scan(Duration::ZERO, |prev, t| {
                let d = t.saturating_sub(*prev).as_secs_f64().max(1e-3);
                *prev = *t;
                Some((n as f64 / 10.0) / d)
            })
            .collect();
        let used = CpuUse::close(&cpu);
        let written: Vec<u64> = pids.iter().zip(&written0).map(|(p, w0)| procstat::write_bytes(*p).saturating_sub(*w0)).collect();
        let writes1 = self.write_time(self.cluster.node(self.leader_id)).await;
        let propose_ms = if writes1.1 > writes0.1 { (writes1.0 - writes0.0) / (writes1.1 - writes0.1) * 1000.0 } else { 0.0 };
        let last = self.last_rev.load(Ordering::Relaxed);
        let caught_up = self.cluster.wait_applied(last, self.args.step_timeout).await?;
        let entries = if single { n } else { 2 * n };
        let snaps = self.snapshot_builds(self.leader_index());

        let (gs, ps) = (Summary::of(&mut grants), Summary::of(&mut puts));
        out!(self, "\n--- 1. load ({} nodes): {n} instances, {n} leases ---", self.args.nodes);
        out!(self, "write path: {detect_note}");
        out!(
            self,
            "loaded in {:.1} s: {:.0} instances/s ({:.0} Raft entries/s, {conc} requests in flight from {conc} loopback addresses); every node had applied it all {} ms later",
            load_time.as_secs_f64(),
            n as f64 / load_time.as_secs_f64(),
            entries as f64 / load_time.as_secs_f64(),
            caught_up.as_millis()
        );
        out!(self, "instances/s for each tenth of the load, first to last: {}", tenth_rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", "));
        if !single {
            out!(self, "POST /v1/leases latency:  {}", gs.line());
        }
        out!(self, "{} latency: {}", if single { "POST /v1/register" } else { "PUT instance latency:   " }, ps.line());
        out!(self, "on the leader, proposing an entry to its answer (committed by {} of {} and applied) took {propose_ms:.1} ms on average (registry_write_duration_seconds)", self.args.nodes / 2 + 1, self.args.nodes);
        out!(self, "CPU while loading (% of one core): {}", used.line(self.leader_id));
        // CPU time per entry does not depend on how busy the machine was: what the load would
        // cost on cores of its own.
        let per_entry = |pct: f64| pct / 100.0 * load_time.as_secs_f64() / entries as f64 * 1000.0;
        let li = self.leader_index();
        let all_nodes: f64 = used.nodes.iter().map(|c| per_entry(*c)).sum();
        let followers = (all_nodes - per_entry(used.nodes[li])) / (self.args.nodes.max(2) - 1) as f64;
        let ceiling = procstat::cores() as f64 * 1000.0 / (all_nodes + per_entry(used.me)).max(1e-9);
        out!(
            self,
            "CPU time per Raft entry: leader {:.3} ms, each follower {:.3} ms, all {} nodes {:.3} ms, load generator {:.3} ms; all of it on {} idle cores would allow at most ~{ceiling:.0} entries/s",
            per_entry(used.nodes[li]),
            followers,
            self.args.nodes,
            all_nodes,
            per_entry(used.me),
            procstat::cores()
        );
        out!(self, "written to disk while loading: {}", mib_list(&written));
        out!(
            self,
            "snapshots the leader built while loading: {} (each a full copy of the state; last at index {}, {} ms; longest {} ms)",
            snaps.len(),
            snaps.last().map(|s| s.index).unwrap_or(0),
            snaps.last().map(|s| s.ms).unwrap_or(0),
            snaps.iter().map(|s| s.ms).max().unwrap_or(0)
        );
        self.json.insert(
            "load".into(),
            json!({
                "single_call_register": single, "write_path": detect_note, "instances": n, "entries": entries,
                "secs": r3(load_time.as_secs_f64()), "instances_per_sec": r1(n as f64 / load_time.as_secs_f64()),
                "entries_per_sec": r1(entries as f64 / load_time.as_secs_f64()), "concurrency": conc,
                "apply_catch_up_ms": caught_up.as_millis() as u64,
                "instances_per_sec_by_tenth": tenth_rates.iter().map(|r| r1(*r)).collect::<Vec<_>>(),
                "grant_latency": gs.json(), "put_latency": ps.json(),
                "cpu": used.json(), "write_bytes_nodes": written, "leader_propose_mean_ms": r3(propose_ms),
                "cpu_ms_per_entry": {"leader": r3(per_entry(used.nodes[li])), "follower_mean": r3(followers), "all_nodes": r3(all_nodes), "load_generator": r3(per_entry(used.me))},
                "cpu_bound_entries_per_sec": r1(ceiling),
                "leader_snapshots": snaps.iter().map(|s| json!({"index": s.index, "build_ms": s.ms})).collect::<Vec<_>>(),
            }),
        );
        Ok(())
    }

    /// `registry_write_duration_seconds` of node `n`: (sum in seconds, count).
    async fn write_time(&self, n: &e2e::bench_cluster::Node) -> (f64, f64) {
        match self.cluster.metrics(n).await {
            Ok(m) => (
                e2e::metrics::sum(&m, "registry_write_duration_seconds_sum").unwrap_or(0.0),
                e2e::metrics::sum(&m, "registry_write_duration_seconds_count").unwrap_or(0.0),
            ),
            Err(_) => (0.0, 0.0),
        }
    }

    /// Registers instance 0 with `POST /v1/register`: `(true, ...)` if the registry has it,
    /// else `(false, ...)` and nothing was written. Gives the connection back.
    async fn detect_register(&self, mut conn: Conn, ttl_ms: u64) -> Result<(bool, String, Conn)> {
        let mut one = instance_body(0, None);
        one["service"] = json!(service_of(0, self.args.services));
        one["instance"] = json!("i-0");
        let body = serde_json::to_vec(&json!({"ttl_ms": ttl_ms, "instances": [one]}))?;
        let key = format!("scale-{:08x}-r0", self.run_id);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = conn.request_keyed("POST", "/v1/register", &body, Some(&key)).await;
            match r {
                Ok(r) if (200..300).contains(&r.status) => {
                    let v = r.json()?;
                    let lease = v["lease_id"].as_u64().ok_or_else(|| anyhow!("register answer without lease_id: {v}"))?;
                    self.set.push(lease);
                    self.last_rev.fetch_max(v["revision"].as_u64().unwrap_or(0), Ordering::Relaxed);
                    return Ok((true, "one POST /v1/register per instance (lease and instance in one entry)".into(), conn));
                }
                Ok(r) if r.status == 404 || r.status == 405 => {
                    return Ok((
                        false,
                        format!("POST /v1/leases then PUT /v1/services/S/instances/I per instance (POST /v1/register answered {})", r.status),
                        conn,
                    ))
                }
                Ok(r) if r.status < 500 && r.status != 429 => {
                    return Ok((
                        false,
                        format!(
                            "POST /v1/leases then PUT per instance (POST /v1/register answered {}: {})",
                            r.status,
                            r.text().chars().take(200).collect::<String>()
                        ),
                        conn,
                    ))
                }
                Ok(_) | Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
                Ok(r) => bail!("POST /v1/register: {}: {}", r.status, r.text()),
                Err(e) => return Err(e.context("POST /v1/register")),
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // 2. Memory.

    async fn memory(&mut self, idle: &[Mem]) -> Result<()> {
        // Let background work (snapshot builds, the allocator returning freed pages) settle,
        // still renewing: until no node's RSS moved by more than 1 MiB over a second.
        let prev = std::sync::Mutex::new(self.cluster.rss());
        let _ = e2e::until(Duration::from_secs(30), "every node's RSS to settle", || async {
            // The sampling interval of the comparison, not a wait for something.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = self.cluster.rss();
            let before = std::mem::replace(&mut *prev.lock().unwrap(), now.clone());
            now.iter().zip(&before).all(|(a, b)| a.rss_kb.abs_diff(b.rss_kb) <= 1024).then_some(())
        })
        .await;
        let mem = self.cluster.rss();
        let smaps: Vec<BTreeMap<String, u64>> = self.pids().into_iter().map(procstat::smaps_rollup).collect();
        let mut counts = Vec::new();
        for node in &self.cluster.nodes {
            let v = self.cluster.get_json(&format!("{}/v1/services?stale=true", node.url)).await?;
            let c: u64 = v["services"]
                .as_array()
                .map(|a| a.iter().filter(|s| s["service"].as_str().is_some_and(|s| s.starts_with("svc-"))).filter_map(|s| s["instances"].as_u64()).sum())
                .unwrap_or(0);
            counts.push(c);
        }
        let snapshot_bytes: Vec<u64> = (0..self.cluster.nodes.len())
            .map(|i| std::fs::metadata(self.cluster.procs.data_dir(i).join("state/snapshot")).map(|m| m.len()).unwrap_or(0))
            .collect();
        let wal_bytes: Vec<u64> = (0..self.cluster.nodes.len()).map(|i| procstat::dir_size(&self.cluster.procs.data_dir(i).join("raft"))).collect();
        let n = self.args.instances;
        let max_mib = mem.iter().map(Mem::mib).fold(0.0, f64::max);
        let per_instance: Vec<f64> = mem.iter().zip(idle).map(|(m, i)| (m.rss_kb.saturating_sub(i.rss_kb)) as f64 * 1024.0 / n as f64).collect();
        out!(self, "\n--- 2. memory ({} nodes) with {n} instances under {n} leases ---", self.args.nodes);
        out!(self, "instances per node (stale list): {counts:?}");
        out!(self, "RSS idle, after start: {}", rss_line(idle));
        out!(self, "RSS loaded:            {}", rss_line(&mem));
        out!(
            self,
            "largest RSS {max_mib:.1} MiB (target <= {RSS_TARGET_MIB:.0} MiB per node: {}); {} bytes of RSS per instance over idle",
            verdict(max_mib <= RSS_TARGET_MIB),
            per_instance.iter().map(|b| format!("{b:.0}")).collect::<Vec<_>>().join(" / ")
        );
        out!(
            self,
            "anonymous memory (smaps_rollup): {}",
            smaps
                .iter()
                .enumerate()
                .map(|(i, s)| format!("node{} {:.1} MiB", i + 1, *s.get("Anonymous").unwrap_or(&0) as f64 / 1024.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
        out!(self, "snapshot file: {}; Raft log directory: {}", mib_list(&snapshot_bytes), mib_list(&wal_bytes));
        self.json.insert(
            "memory".into(),
            json!({
                "instances_per_node": counts,
                "rss_idle": idle.iter().map(Mem::json).collect::<Vec<_>>(),
                "rss_loaded": mem.iter().map(Mem::json).collect::<Vec<_>>(),
                "smaps_rollup_kb": smaps,
                "rss_bytes_per_instance_over_idle": per_instance.iter().map(|b| r1(*b)).collect::<Vec<_>>(),
                "snapshot_file_bytes": snapshot_bytes, "raft_dir_bytes": wal_bytes,
                "target_mib": RSS_TARGET_MIB, "max_rss_mib": r1(max_mib), "met": max_mib <= RSS_TARGET_MIB,
            }),
        );
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // 3. Lease expiry cost.

    async fn expiry(&mut self, empty: (CpuUse, f64)) -> Result<()> {
        let secs = humantime::format_duration(self.args.cpu_window);
        eprintln!("[scale] CPU with the leases renewed at TTL/3 ({secs}), then with none renewed ({secs})");
        let renewed = self.cpu_window().await;
        self.stop_paced().await;
        let idle = self.cpu_window().await;
        self.start_paced();
        let l = self.leader_index();
        let per_ka_us = if renewed.1 > 0.0 { (renewed.0.nodes[l] - idle.0.nodes[l]) / 100.0 / renewed.1 * 1e6 } else { 0.0 };
        out!(self, "\n--- 3. lease expiry cost ({} nodes, leader node {}), CPU in % of one core over {secs} each ---", self.args.nodes, self.leader_id);
        out!(self, "no leases (before loading):           {}", empty.0.line(self.leader_id));
        out!(self, "{} leases renewed at TTL/3 ({:.0}/s):  {}", self.args.instances, renewed.1, renewed.0.line(self.leader_id));
        out!(self, "{} leases, none renewed:            {}", self.args.instances, idle.0.line(self.leader_id));
        out!(
            self,
            "leader: {:.1}% idle with no leases, {:.1}% idle with {} leases, {:.1}% renewed ({per_ka_us:.0} us of leader CPU per keepalive)",
            empty.0.nodes[l],
            idle.0.nodes[l],
            self.args.instances,
            renewed.0.nodes[l]
        );
        let j = |w: &(CpuUse, f64)| {
            let mut v = w.0.json();
            v["keepalives_per_sec"] = json!(r1(w.1));
            v
        };
        self.json.insert(
            "expiry".into(),
            json!({"window_secs": self.args.cpu_window.as_secs_f64(), "leader": self.leader_id, "no_leases": j(&empty), "renewed": j(&renewed), "idle": j(&idle), "leader_cpu_us_per_keepalive": r1(per_ka_us)}),
        );
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // 4. Keepalive throughput.

    async fn keepalive(&mut self) -> Result<()> {
        let window = self.args.keepalive_window;
        eprintln!("[scale] keepalives flat out: {} connections to the leader, {}", self.args.keepalive_conns, humantime::format_duration(window));
        let expired0 = self.cluster.expiries().await?;
        self.stop_paced().await;
        let leader = self.cluster.node(self.leader_id);
        let pool = RenewPool::start(self.leader.clone(), self.set.clone(), self.args.keepalive_conns, None, window + Duration::from_secs(60));
        // Warm: every connection open and renewing before the window starts.
        let warm = (self.args.keepalive_conns * 100) as u64;
        e2e::until(Duration::from_secs(30), "the keepalive connections to warm up", || async { (pool.stats.ok.load(Ordering::Relaxed) >= warm).then_some(()) })
            .await?;
        let ok0 = pool.stats.ok.load(Ordering::Relaxed);
        let ka0 = self.cluster.keepalives(leader).await?;
        let cpu = CpuWindow::open(&self.pids());
        pool.recording.store(true, Ordering::Relaxed);
        let t0 = Instant::now();
        tokio::time::sleep(window).await;
        let ok1 = pool.stats.ok.load(Ordering::Relaxed);
        let elapsed = t0.elapsed();
        pool.recording.store(false, Ordering::Relaxed);
        let used = CpuUse::close(&cpu);
        let ka1 = self.cluster.keepalives(leader).await?;
        let stats = pool.stats.clone();
        let mut samples = pool.stop().await;
        self.start_paced();
        let expired = self.cluster.expiries().await?.saturating_sub(expired0);
        let rate = (ok1 - ok0) as f64 / elapsed.as_secs_f64();
        let server_rate = (ka1 - ka0) / elapsed.as_secs_f64();
        let lat = Summary::of(&mut samples);
        let (nf, other, io) = (stats.not_found.load(Ordering::Relaxed), stats.other_status.load(Ordering::Relaxed), stats.io_errors.load(Ordering::Relaxed));
        out!(
            self,
            "\n--- 4. keepalive throughput ({} nodes), {} live leases, {} connections straight to the leader, {:.0} s window ---",
            self.args.nodes,
            self.set.len(),
            self.args.keepalive_conns,
            elapsed.as_secs_f64()
        );
        out!(self, "keepalives/s: {rate:.0} (client, 2xx), {server_rate:.0} (leader's registry_keepalives_total)");
        out!(self, "keepalive latency: {}", lat.line());
        out!(self, "CPU (% of one core): {}", used.line(self.leader_id));
        out!(self, "answers 404 / other non-2xx / I/O errors: {nf} / {other} / {io}; leases expired meanwhile: {expired}");
        self.json.insert(
            "keepalive".into(),
            json!({
                "leases": self.set.len(), "connections": self.args.keepalive_conns, "window_secs": r3(elapsed.as_secs_f64()),
                "keepalives_per_sec": r1(rate), "keepalives_per_sec_leader_metric": r1(server_rate), "latency": lat.json(),
                "cpu": used.json(), "not_found": nf, "other_non_2xx": other, "io_errors": io, "expired": expired,
            }),
        );
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // 5. Snapshot build.

    /// The snapshots node `i` built, from its log: each "push snapshot building command" paired
    /// with the "update_snapshot" after it.
    fn snapshot_builds(&self, i: usize) -> Vec<Build> {
        let text = self.cluster.procs.nodes[i].log_text();
        let mut out = Vec::new();
        let mut pushed: Option<SystemTime> = None;
        for line in text.lines() {
            if line.contains("push snapshot building command") {
                pushed = log_time(line);
            } else if line.contains("update_snapshot:") {
                if let (Some(p), Some(t)) = (pushed.take(), log_time(line)) {
                    let ms = t.duration_since(p).unwrap_or_default().as_millis() as u64;
                    out.push(Build { index: index_in(line).unwrap_or(0), ms, start: p });
                }
            }
        }
        out
    }

    /// Elections and snapshot builds on every node since `from`, from their logs.
    fn happenings(&self, from: SystemTime) -> Happenings {
        let builds: Vec<Build> = (0..self.cluster.nodes.len()).flat_map(|i| self.snapshot_builds(i)).filter(|b| b.end() >= from).collect();
        let mut h = Happenings { campaigns: 0, during_builds: 0, builds: builds.iter().filter(|b| b.start >= from).count(), build_ms: 0 };
        h.build_ms = builds.iter().filter(|b| b.start >= from).map(|b| b.ms).sum();
        for p in &self.cluster.procs.nodes {
            for t in p.log_text().lines().filter(|l| l.contains("pre-vote won; campaigning")).filter_map(log_time).filter(|t| *t >= from) {
                h.campaigns += 1;
                if builds.iter().any(|b| b.start <= t && t <= b.end() + Duration::from_secs(1)) {
                    h.during_builds += 1;
                }
            }
        }
        h
    }

    /// "elections: N (M of them while a node was building a snapshot, or within 1 s after);
    /// snapshot builds: K on all nodes, X s in all", for the phase that began at `from`.
    fn happenings_line(&self, from: SystemTime) -> (String, Value) {
        let h = self.happenings(from);
        (
            format!(
                "elections during this phase: {} ({} of them began while a node was building a snapshot, or within 1 s after); snapshot builds: {} over all nodes, {:.1} s in all",
                h.campaigns,
                h.during_builds,
                h.builds,
                h.build_ms as f64 / 1000.0
            ),
            json!({"elections": h.campaigns, "elections_during_snapshot_builds": h.during_builds, "snapshot_builds": h.builds, "snapshot_build_ms_total": h.build_ms}),
        )
    }

    async fn snapshot(&mut self) -> Result<()> {
        let li = self.leader_index();
        let before: Vec<usize> = (0..self.cluster.nodes.len()).map(|i| self.snapshot_builds(i).len()).collect();
        let pushes = |b: &Bench| b.cluster.procs.nodes[li].log_text().matches("push snapshot building command").count();
        let pushes0 = pushes(self);
        eprintln!("[scale] writing until the leader starts its next snapshot");
        // Each writer re-registers one lease-less instance of its own, unchanged: the state
        // keeps its size while the log grows to the snapshot threshold (--snapshot-every,
        // 10,000 entries by default).
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicUsize::new(0));
        let deadline = Instant::now() + self.args.step_timeout;
        let conc = self.args.load_concurrency;
        let body = Arc::new(serde_json::to_vec(&json!({"address": "10.255.0.1", "port": 9, "meta": {"probe": "snapshot"}}))?);
        let writers: Vec<JoinHandle<Result<()>>> = (0..conc)
            .map(|w| {
                let (stop, writes, last_rev, body) = (stop.clone(), writes.clone(), self.last_rev.clone(), body.clone());
                let mut conn = Conn::new(&self.leader.from_source(source_ip(w)));
                let run_id = self.run_id;
                tokio::spawn(async move {
                    let path = format!("/v1/services/snapshot-probe/instances/w{w}");
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let seq = writes.fetch_add(1, Ordering::Relaxed);
                        if seq >= 1_000_000 {
                            return Ok(());
                        }
                        let v = write_retry(&mut conn, "PUT", &path, &body, Some(&format!("scale-{run_id:08x}-s{seq}")), deadline).await?;
                        last_rev.fetch_max(v["revision"].as_u64().unwrap_or(0), Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        let t_write = Instant::now();
        // Stops waiting as soon as every writer has given up, so a refused write is reported
        // now (by `w.await??` below), not after the step timeout.
        let seen = e2e::until(self.args.step_timeout, "the leader to start a snapshot", || async {
            (pushes(self) > pushes0 || writers.iter().all(|w| w.is_finished())).then_some(())
        })
        .await;
        stop.store(true, Ordering::Relaxed);
        let triggered_after = t_write.elapsed();
        let cpu = CpuWindow::open(&self.pids());
        for w in writers {
            w.await??;
        }
        seen?;
        let wrote = writes.load(Ordering::Relaxed);
        // Every node builds its own snapshot at the same log index, so they build side by side.
        // Usually every node builds at the same index, side by side. A node whose last snapshot
        // came at another point (one built on its own schedule) reaches the threshold later:
        // it is reported as not building in this phase rather than waited for.
        let nodes = self.cluster.nodes.len();
        let leader_done = e2e::until(self.args.step_timeout, "the leader to finish its snapshot", || async {
            (self.snapshot_builds(li).len() > before[li]).then(Instant::now)
        })
        .await?;
        let builds = e2e::until(self.args.step_timeout, "every node to finish its snapshot", || async {
            let all: Vec<Vec<Build>> = (0..nodes).map(|i| self.snapshot_builds(i)).collect();
            let every = all.iter().zip(&before).all(|(b, n0)| b.len() > *n0);
            (every || leader_done.elapsed() > Duration::from_secs(20)).then_some(all)
        })
        .await?;
        let used = CpuUse::close(&cpu);
        let newest: Vec<Option<&Build>> = builds.iter().zip(&before).map(|(b, n0)| b.get(*n0..).and_then(|new| new.last())).collect();
        let leader_build = newest[li].expect("the leader built one");
        let per_node = |b: &Option<&Build>| b.map_or("none within 20 s of the leader's".to_string(), |b| format!("{} ms", b.ms));
        let snapshot_bytes = std::fs::metadata(self.cluster.procs.data_dir(li).join("state/snapshot")).map(|m| m.len()).unwrap_or(0);
        let mem = self.cluster.rss();
        out!(self, "\n--- 5. snapshot build ({} nodes) at {} instances and leases ---", self.args.nodes, self.set.len());
        out!(
            self,
            "forced by {wrote} writes in {:.1} s (a snapshot every --snapshot-every entries, 10,000 by default); snapshot at index {}, {:.1} MiB",
            triggered_after.as_secs_f64(),
            leader_build.index,
            snapshot_bytes as f64 / 1048576.0
        );
        out!(
            self,
            "build time, from openraft's \"push snapshot building command\" to its \"update_snapshot\" in each node's log: leader (node {}) {} ms; every node: {}",
            self.leader_id,
            leader_build.ms,
            newest.iter().enumerate().map(|(i, b)| format!("node{} {}", i + 1, per_node(b))).collect::<Vec<_>>().join(", ")
        );
        out!(
            self,
            "the nodes build at about the same log index, side by side on {} cores: CPU over the builds (% of one core): {}",
            procstat::cores(),
            used.line(self.leader_id)
        );
        out!(
            self,
            "peak RSS so far (VmHWM): {}",
            mem.iter().enumerate().map(|(i, m)| format!("node{} {:.1} MiB", i + 1, m.hwm_kb as f64 / 1024.0)).collect::<Vec<_>>().join(", ")
        );
        self.json.insert(
            "snapshot_build".into(),
            json!({
                "writes_to_trigger": wrote, "trigger_secs": r3(triggered_after.as_secs_f64()), "index": leader_build.index,
                "snapshot_file_bytes": snapshot_bytes, "leader_build_ms": leader_build.ms,
                "build_ms_per_node": newest.iter().map(|b| b.map(|b| b.ms)).collect::<Vec<_>>(),
                "cpu": used.json(), "peak_rss_kb": mem.iter().map(|m| m.hwm_kb).collect::<Vec<_>>(),
            }),
        );
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // 6. Restart to ready.

    /// The leader's commit index, as it says.
    async fn leader_commit(&self) -> Result<u64> {
        let v = self.cluster.cluster_info(self.cluster.node(self.leader_id)).await?;
        v["commit_index"].as_u64().ok_or_else(|| anyhow!("no commit_index in {v}"))
    }

    async fn restart(&mut self, id: u64, kill: bool) -> Result<()> {
        let how = if kill { "SIGKILL" } else { "SIGTERM" };
        eprintln!("[scale] restart of node {id} after {how}");
        let i = self.cluster.index(id);
        let url = self.cluster.node(id).url.clone();
        let commit = self.leader_commit().await?;
        let t_stop = Instant::now();
        let code = if kill {
            self.cluster.procs.nodes[i].kill();
            None
        } else {
            let code = self.cluster.procs.nodes[i].terminate(Duration::from_secs(30)).await;
            ensure!(code.is_some(), "node {id} did not exit within 30 s of SIGTERM");
            code
        };
        let stopped_ms = t_stop.elapsed().as_millis() as u64;
        let t0 = Instant::now();
        self.cluster.procs.nodes[i].start();
        let (ready, caught_up) = self.wait_ready(i, &url, commit, t0).await?;
        let mem = Mem::of(self.cluster.procs.nodes[i].pid().unwrap_or(0));
        let met = ready <= READY_TARGET;
        let n = if kill { "6b" } else { "6a" };
        out!(
            self,
            "\n--- {n}. restart to ready ({} nodes): follower node {id} stopped with {how}, started again, {} instances ---",
            self.args.nodes,
            self.set.len()
        );
        out!(
            self,
            "stop took {stopped_ms} ms{}; start -> /readyz 200: {} ms (target <= {} s: {}); start -> applied the leader's commit index {commit}: {} ms; RSS after: {:.1} MiB",
            code.map(|c| format!(" (exit code {c})")).unwrap_or_default(),
            ready.as_millis(),
            READY_TARGET.as_secs(),
            verdict(met),
            caught_up.as_millis(),
            mem.mib()
        );
        let key = if kill { "restart_sigkill" } else { "restart_sigterm" };
        self.json.insert(
            key.into(),
            json!({"node": id, "stop_ms": stopped_ms, "exit_code": code, "ready_ms": ready.as_millis() as u64, "caught_up_ms": caught_up.as_millis() as u64, "commit_index": commit, "target_ms": READY_TARGET.as_millis() as u64, "met": met}),
        );
        Ok(())
    }

    /// Polls node `i` every 10 ms from `t0` on: (until `/readyz` answers 200, until it has
    /// applied `index`).
    async fn wait_ready(&self, i: usize, url: &str, index: u64, t0: Instant) -> Result<(Duration, Duration)> {
        let deadline = t0 + self.args.step_timeout;
        let mut ready = None;
        loop {
            self.cluster.procs.check_running()?;
            if ready.is_none() {
                let r = self.cluster.http.get(format!("{url}/readyz")).timeout(Duration::from_secs(1)).send().await;
                if r.is_ok_and(|r| r.status() == 200) {
                    ready = Some(t0.elapsed());
                }
            }
            if let Some(r) = ready {
                let applied = self.cluster.cluster_info(&self.cluster.nodes[i]).await.ok().and_then(|v| v["applied_index"].as_u64()).unwrap_or(0);
                if applied >= index {
                    return Ok((r, t0.elapsed()));
                }
            }
            ensure!(Instant::now() < deadline, "node {} not ready and caught up within {:?}", i + 1, self.args.step_timeout);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    // -----------------------------------------------------------------------------------------
    // 7. Snapshot install.

    async fn install(&mut self, id: u64) -> Result<()> {
        eprintln!("[scale] node {id}: data directory wiped, started again with --join");
        let i = self.cluster.index(id);
        let li = self.leader_index();
        let url = self.cluster.node(id).url.clone();
        let log_from = self.cluster.procs.nodes[i].log_text().len();
        let leader_log_from = self.cluster.procs.nodes[li].log_text().len();
        let code = self.cluster.procs.nodes[i].terminate(Duration::from_secs(30)).await;
        ensure!(code.is_some(), "node {id} did not exit within 30 s of SIGTERM");
        let dir = self.cluster.procs.data_dir(i);
        std::fs::remove_dir_all(&dir).with_context(|| format!("wiping {}", dir.display()))?;
        let commit = self.leader_commit().await?;
        // docs/operations.md, "Replacing a node": the usual flags plus --join. (Every node here
        // is on 127.0.0.1, so its certificate still vouches for its host: no join token.)
        self.cluster.procs.nodes[i].push_arg("--join");
        let cpu = CpuWindow::open(&self.pids());
        let written0 = procstat::write_bytes(self.pids()[li]);
        let t0 = Instant::now();
        self.cluster.procs.nodes[i].start();
        let t0_wall = SystemTime::now();
        let (ready, caught_up) = self.wait_ready(i, &url, commit, t0).await?;
        // A voter again, as the leader sees it.
        let voter = e2e::until(self.args.step_timeout, "the rejoined node to be a voter", || async {
            let v = self.cluster.cluster_info(&self.cluster.nodes[li]).await.ok()?;
            let members = v["members"].as_array()?;
            members.iter().any(|m| m["id"] == id && m["voter"] == true).then(|| t0.elapsed())
        })
        .await?;
        let used = CpuUse::close(&cpu);
        let leader_written = procstat::write_bytes(self.pids()[li]).saturating_sub(written0);
        let log = self.cluster.procs.nodes[i].log_text();
        let log = log.get(log_from..).unwrap_or("");
        let leader_log = self.cluster.procs.nodes[li].log_text();
        let leader_log = leader_log.get(leader_log_from..).unwrap_or("");
        let at = |text: &str, pat: &str| text.lines().filter(|l| l.contains(pat)).find_map(log_time);
        let since = |t: Option<SystemTime>| t.and_then(|t| t.duration_since(t0_wall).ok()).map(|d| d.as_millis() as u64);
        let between = |a: Option<SystemTime>, b: Option<SystemTime>| match (a, b) {
            (Some(a), Some(b)) => b.duration_since(a).ok().map(|d| d.as_millis() as u64),
            _ => None,
        };
        let recv = at(log, "BeginReceivingSnapshot");
        let install = at(log, "install complete snapshot");
        let installed = at(log, "Done install complete snapshot");
        let sent = at(leader_log, "get snapshot");
        let snapshot_bytes = std::fs::metadata(dir.join("state/snapshot")).map(|m| m.len()).unwrap_or(0);
        let mem = self.cluster.rss();
        let ms = |v: Option<u64>| v.map(|m| format!("{m} ms")).unwrap_or_else(|| "?".into());
        out!(
            self,
            "\n--- 7. snapshot install ({} nodes): follower node {id} wiped and started again with --join, {} instances ---",
            self.args.nodes,
            self.set.len()
        );
        out!(
            self,
            "start -> /readyz 200: {} ms; -> applied the leader's commit index {commit}: {} ms; -> a voter again: {} ms",
            ready.as_millis(),
            caught_up.as_millis(),
            voter.as_millis()
        );
        out!(
            self,
            "from node {id}'s log, after its start: first snapshot chunk at {}, all received and install starts at {} (transfer {}), installed at {} (install {})",
            ms(since(recv)),
            ms(since(install)),
            ms(between(recv, install)),
            ms(since(installed)),
            ms(between(install, installed))
        );
        out!(self, "leader read its snapshot for sending at {} after the start; snapshot {:.1} MiB", ms(since(sent)), snapshot_bytes as f64 / 1048576.0);
        out!(
            self,
            "CPU over the install (% of one core): {}; leader wrote {:.1} MiB meanwhile; peak RSS (VmHWM): {}",
            used.line(self.leader_id),
            leader_written as f64 / 1048576.0,
            mem.iter().enumerate().map(|(i, m)| format!("node{} {:.1}", i + 1, m.hwm_kb as f64 / 1024.0)).collect::<Vec<_>>().join(", ")
        );
        self.json.insert(
            "install".into(),
            json!({
                "node": id, "ready_ms": ready.as_millis() as u64, "caught_up_ms": caught_up.as_millis() as u64, "voter_ms": voter.as_millis() as u64,
                "commit_index": commit, "first_chunk_ms": since(recv), "install_start_ms": since(install), "installed_ms": since(installed),
                "transfer_ms": between(recv, install), "install_ms": between(install, installed), "leader_get_snapshot_ms": since(sent),
                "snapshot_file_bytes": snapshot_bytes, "cpu": used.json(), "peak_rss_kb": mem.iter().map(|m| m.hwm_kb).collect::<Vec<_>>(),
            }),
        );
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // 8. Watch fan-out.

    async fn watch(&mut self) -> Result<()> {
        let (w, samples) = (self.args.watchers, self.args.watch_samples);
        let service = "scale-watch";
        eprintln!("[scale] {w} watchers over {} nodes, then {samples} registrations", self.cluster.nodes.len());
        let secured = self.cluster.procs.secured.as_ref().ok_or_else(|| anyhow!("the cluster is not secured"))?;
        let token_file = secured.mint(&self.cluster.procs.client(), "scale-watchers", &["read"]).await;
        let read = Arc::new(ConnSecurity::new(&secured.ca, std::fs::read_to_string(&token_file)?.trim())?);
        let table = Arc::new(WatchTable::new(samples, w));
        let connected = Arc::new(AtomicUsize::new(0));
        let broken = Arc::new(AtomicUsize::new(0));
        let nodes = self.cluster.nodes.len();
        let t_connect = Instant::now();
        let path = format!("/v1/watch?service={service}");
        let watchers: Vec<JoinHandle<()>> = (0..w)
            .map(|j| {
                let target = Target { addr: self.cluster.nodes[j % nodes].addr, secure: Some(read.clone()), source: None };
                let (table, connected, broken, path) = (table.clone(), connected.clone(), broken.clone(), path.clone());
                tokio::spawn(async move {
                    if let Err(e) = watcher(j, target, &path, &table, &connected).await {
                        if broken.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("[scale]   watcher {j} (node {}): {e:#}", j % nodes + 1);
                        }
                    }
                })
            })
            .collect();
        let res = self.watch_samples(service, w, samples, &table, &connected, &broken, t_connect).await;
        for t in &watchers {
            t.abort();
        }
        let WatchOutcome { connect_time, mut last, mut all, per_watcher_p99, per_node_p99_ms: per_node, cpu, wrong, missing } = res?;
        let last_s = Summary::of(&mut last);
        let all_s = Summary::of(&mut all);
        let mut p99s = per_watcher_p99;
        let p99s_s = Summary::of(&mut p99s);
        let met = last_s.p99 <= WATCH_P99_TARGET_MS && missing == 0;
        out!(
            self,
            "\n--- 8. watch fan-out ({} nodes): {w} watch streams ({} per node), one keep-alive connection each, {} instances loaded ---",
            self.args.nodes,
            w.div_ceil(nodes),
            self.set.len()
        );
        out!(
            self,
            "all {w} connected in {} ms; {samples} sequential registrations to service {service}, each waited for at every watcher",
            connect_time.as_millis()
        );
        out!(self, "ack -> seen by the LAST of {w} watchers: {}  (target p99 <= {WATCH_P99_TARGET_MS:.0} ms: {})", last_s.line(), verdict(met));
        out!(self, "ack -> seen, every watcher x registration: {}", all_s.line());
        out!(self, "per-watcher p99 over the registrations: median {:.3} ms, max {:.3} ms", p99s_s.p50, p99s_s.max);
        out!(
            self,
            "ack -> seen by the last watcher on each node, p99: {}",
            per_node
                .iter()
                .enumerate()
                .map(|(i, p)| format!("node{}{} {:.3} ms", i + 1, if i == self.leader_index() { " (leader)" } else { "" }, p))
                .collect::<Vec<_>>()
                .join(", ")
        );
        out!(
            self,
            "registrations not seen by every watcher within 5 s: {missing}; events with the wrong revision: {wrong}; watch streams broken: {}",
            broken.load(Ordering::Relaxed)
        );
        out!(self, "CPU while registering (% of one core; the load generator parses every stream): {}", cpu.line(self.leader_id));
        self.json.insert(
            "watch".into(),
            json!({
                "watchers": w, "samples": samples, "connect_ms": connect_time.as_millis() as u64,
                "ack_to_last_watcher": last_s.json(), "ack_to_each_watcher": all_s.json(), "per_watcher_p99": p99s_s.json(),
                "last_on_node_p99_ms": per_node.iter().map(|p| r3(*p)).collect::<Vec<_>>(),
                "missing": missing, "wrong_revision": wrong, "broken_streams": broken.load(Ordering::Relaxed),
                "cpu": cpu.json(), "target_p99_ms": WATCH_P99_TARGET_MS, "met": met,
            }),
        );
        Ok(())
    }

    /// The registrations of the watch phase, once every watcher is connected.
    #[allow(clippy::too_many_arguments)]
    async fn watch_samples(
        &self,
        service: &str,
        w: usize,
        samples: usize,
        table: &Arc<WatchTable>,
        connected: &AtomicUsize,
        broken: &AtomicUsize,
        t_connect: Instant,
    ) -> Result<WatchOutcome> {
        let limit = self.args.step_timeout.min(Duration::from_secs(300));
        e2e::until(limit, "every watcher to connect", || async {
            if broken.load(Ordering::Relaxed) > 0 {
                return Some(Err(anyhow!("a watch stream failed while connecting")));
            }
            (connected.load(Ordering::Relaxed) >= w).then_some(Ok(()))
        })
        .await??;
        let connect_time = t_connect.elapsed();
        let deadline = Instant::now() + limit;
        let mut conn = Conn::new(&self.leader);
        let lease_v =
            write_retry(&mut conn, "POST", "/v1/leases", &serde_json::to_vec(&json!({"ttl_ms": self.args.ttl.as_millis() as u64}))?, None, deadline).await?;
        let lease = lease_v["lease_id"].as_u64().ok_or_else(|| anyhow!("grant answer without lease_id"))?;
        let nodes = self.cluster.nodes.len();
        let cpu = CpuWindow::open(&self.pids());
        let mut acks = vec![0u64; samples];
        let mut revs = vec![0u64; samples];
        let mut missing = 0u64;
        for k in 0..samples {
            ensure!(Instant::now() < deadline, "the watch phase took longer than {limit:?}");
            let body = serde_json::to_vec(&json!({"address": "127.0.0.1", "port": 10000 + k % 50000, "lease_id": lease}))?;
            let path = format!("/v1/services/{service}/instances/w-{k}");
            let v = write_retry(&mut conn, "PUT", &path, &body, Some(&format!("scale-{:08x}-w{k}", self.run_id)), deadline).await?;
            acks[k] = epoch_ns(Instant::now());
            revs[k] = v["revision"].as_u64().unwrap_or(0);
            table.revision[k].store(revs[k], Ordering::Relaxed);
            if !table.wait(k, Duration::from_secs(5)).await {
                missing += 1;
            }
            // A little air between registrations, so each is measured on its own.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cpu = CpuUse::close(&cpu);
        let _ = write_retry(&mut conn, "DELETE", &format!("/v1/leases/{lease}"), b"", None, Instant::now() + Duration::from_secs(10)).await;
        let mut last = Vec::with_capacity(samples);
        let mut all = Vec::with_capacity(samples * w);
        let mut per_watcher: Vec<Vec<u64>> = vec![Vec::with_capacity(samples); w];
        let mut per_node_last: Vec<Vec<u64>> = vec![Vec::new(); nodes];
        for (k, ack) in acks.iter().enumerate() {
            if table.remaining[k].load(Ordering::Relaxed) > 0 {
                continue;
            }
            let mut worst = 0;
            let mut worst_node = vec![0u64; nodes];
            for (j, pw) in per_watcher.iter_mut().enumerate() {
                let seen = table.seen[k * w + j].load(Ordering::Relaxed);
                let d = seen.saturating_sub(*ack);
                all.push(d);
                pw.push(d);
                worst = worst.max(d);
                worst_node[j % nodes] = worst_node[j % nodes].max(d);
            }
            last.push(worst);
            for (i, d) in worst_node.into_iter().enumerate() {
                per_node_last[i].push(d);
            }
        }
        let p99 = |v: &mut Vec<u64>| {
            v.sort_unstable();
            percentile(v, 0.99).unwrap_or(0)
        };
        let per_watcher_p99: Vec<u64> = per_watcher.iter_mut().map(p99).collect();
        let per_node: Vec<f64> = per_node_last.iter_mut().map(|v| p99(v) as f64 / 1e6).collect();
        let wrong = table.wrong.load(Ordering::Relaxed);
        Ok(WatchOutcome { connect_time, last, all, per_watcher_p99, per_node_p99_ms: per_node, cpu, wrong, missing })
    }

    // -----------------------------------------------------------------------------------------
    // The end.

    async fn finish(&mut self, leader_changes_before: Vec<f64>) -> Result<()> {
        self.stop_paced().await;
        let (nf, failed) = (self.renew_404, self.renew_failed);
        let expired = self.cluster.expiries().await?;
        let end_leader = self.cluster.current_leader().await.ok();
        let changes = self.cluster.metric_all("registry_leader_changes_total").await.unwrap_or_default();
        let mem = self.cluster.rss();
        out!(self, "\n--- end ---");
        out!(self, "leases expired during the run: {expired} (must be 0: every lease was renewed); paced keepalives (TTL/3) answered 404 / failed (503 during elections, I/O): {nf} / {failed}");
        out!(
            self,
            "leader at the end: {end_leader:?} (at the start: {}); leader changes seen per node at the start {leader_changes_before:?}, at the end {changes:?}",
            self.leader_id
        );
        if end_leader != Some(self.leader_id) {
            out!(self, "WARNING: leadership moved during the run; later figures went to a follower that forwarded");
        }
        out!(self, "RSS at the end: {}", rss_line(&mem));
        out!(self, "elapsed: {:.0} s", self.started.elapsed().as_secs_f64());
        self.json.insert(
            "end".into(),
            json!({
                "expired": expired, "leader_at_start": self.leader_id, "leader_at_end": end_leader,
                "leader_changes_per_node": changes, "rss": mem.iter().map(Mem::json).collect::<Vec<_>>(),
                "elapsed_secs": r1(self.started.elapsed().as_secs_f64()),
            }),
        );
        Ok(())
    }
}

/// A load worker's request latencies (ns): grants, then registrations.
type Latencies = (Vec<u64>, Vec<u64>);

/// What the registrations of the watch phase met.
struct WatchOutcome {
    /// Until every watcher was connected.
    connect_time: Duration,
    /// Per registration: its acknowledgement until the last watcher saw it (ns).
    last: Vec<u64>,
    /// Per registration and watcher: acknowledgement until that watcher saw it (ns).
    all: Vec<u64>,
    /// Each watcher's p99 over the registrations (ns).
    per_watcher_p99: Vec<u64>,
    /// Per node: the p99 of the last of its watchers (ms).
    per_node_p99_ms: Vec<f64>,
    cpu: CpuUse,
    /// Events whose revision differed from the one the leader answered.
    wrong: u64,
    /// Registrations some watcher had not seen within 5 s.
    missing: u64,
}

/// One snapshot a node built, as its log tells.
#[derive(Debug, Clone, Copy)]
struct Build {
    index: u64,
    ms: u64,
    /// When the node started it (its "push snapshot building command").
    start: SystemTime,
}

impl Build {
    fn end(&self) -> SystemTime {
        self.start + Duration::from_millis(self.ms)
    }
}

/// What the nodes' logs say happened in a stretch of time: elections, and snapshot builds.
struct Happenings {
    /// Campaigns started ("pre-vote won; campaigning"), on any node.
    campaigns: usize,
    /// Those that started while some node was building a snapshot, or within a second after.
    during_builds: usize,
    /// Snapshot builds started, on all nodes together, and their total time.
    builds: usize,
    build_ms: u64,
}

/// When every watcher saw each registration of the watch phase.
struct WatchTable {
    watchers: usize,
    /// `epoch_ns` when watcher `j` saw registration `k`, at `k * watchers + j` (0: not yet).
    seen: Vec<AtomicU64>,
    /// Watchers that have not seen registration `k` yet.
    remaining: Vec<AtomicUsize>,
    /// The revision the leader answered for registration `k` (0 until it answered).
    revision: Vec<AtomicU64>,
    wrong: AtomicU64,
    done: Notify,
}

impl WatchTable {
    fn new(samples: usize, watchers: usize) -> WatchTable {
        WatchTable {
            watchers,
            seen: (0..samples * watchers).map(|_| AtomicU64::new(0)).collect(),
            remaining: (0..samples).map(|_| AtomicUsize::new(watchers)).collect(),
            revision: (0..samples).map(|_| AtomicU64::new(0)).collect(),
            wrong: AtomicU64::new(0),
            done: Notify::new(),
        }
    }

    fn saw(&self, k: usize, j: usize, at: u64, revision: u64) {
        if k >= self.remaining.len() || j >= self.watchers {
            return;
        }
        if self.seen[k * self.watchers + j].compare_exchange(0, at.max(1), Ordering::Relaxed, Ordering::Relaxed).is_err() {
            return;
        }
        let want = self.revision[k].load(Ordering::Relaxed);
        if want != 0 && want != revision {
            self.wrong.fetch_add(1, Ordering::Relaxed);
        }
        if self.remaining[k].fetch_sub(1, Ordering::Relaxed) == 1 {
            self.done.notify_waiters();
        }
    }

    /// Waits until every watcher has seen registration `k`; false after `limit`.
    async fn wait(&self, k: usize, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.remaining[k].load(Ordering::Relaxed) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.remaining[k].load(Ordering::Relaxed) == 0;
            }
        }
    }
}

/// One watch stream: connects, counts itself connected, then stamps every `put` of a `w-K`
/// instance as its line arrives.
async fn watcher(j: usize, target: Target, path: &str, table: &WatchTable, connected: &AtomicUsize) -> Result<()> {
    let mut stream = Conn::new(&target).stream(path).await?;
    connected.fetch_add(1, Ordering::Relaxed);
    let mut line = Vec::with_capacity(1024);
    for _ in 0..100_000_000u64 {
        if !stream.next_line(&mut line).await? {
            bail!("the watch stream ended");
        }
        let at = epoch_ns(Instant::now());
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<proto::WatchEvent>(&line).with_context(|| format!("bad watch line {}", String::from_utf8_lossy(&line)))? {
            proto::WatchEvent::Put { revision, instance } => {
                if let Some(k) = instance.instance.strip_prefix("w-").and_then(|k| k.parse::<usize>().ok()) {
                    table.saw(k, j, at, revision);
                }
            }
            proto::WatchEvent::Compacted { .. } => bail!("the watch answered compacted"),
            _ => {}
        }
    }
    Ok(())
}

/// CPU over a window, in % of one core: each node, this load generator, and the whole machine
/// (the cores are shared, with other users too).
#[derive(Debug, Clone, Default)]
struct CpuUse {
    nodes: Vec<f64>,
    me: f64,
    machine: f64,
}

impl CpuUse {
    fn close(w: &CpuWindow) -> CpuUse {
        let (nodes, me) = w.close();
        CpuUse { nodes, me, machine: w.machine() }
    }

    /// What the machine spent besides the nodes and the load generator.
    fn others(&self) -> f64 {
        (self.machine - self.nodes.iter().sum::<f64>() - self.me).max(0.0)
    }

    fn line(&self, leader: u64) -> String {
        format!(
            "nodes {}, load generator {:.0}%; machine busy {:.0}% of {}% (other processes {:.0}%)",
            pct_list(&self.nodes, leader),
            self.me,
            self.machine,
            100 * procstat::cores(),
            self.others()
        )
    }

    fn json(&self) -> Value {
        json!({
            "cpu_percent_nodes": self.nodes.iter().map(|c| r1(*c)).collect::<Vec<_>>(), "cpu_percent_load_generator": r1(self.me),
            "cpu_percent_machine": r1(self.machine), "cpu_percent_other_processes": r1(self.others()),
        })
    }
}

/// "25% (leader) / 3% / ..." for per-node figures in node order.
fn pct_list(v: &[f64], leader: u64) -> String {
    v.iter().enumerate().map(|(i, c)| format!("{c:.0}%{}", if i as u64 + 1 == leader { " (leader)" } else { "" })).collect::<Vec<_>>().join(" / ")
}

fn mib_list(v: &[u64]) -> String {
    v.iter().enumerate().map(|(i, b)| format!("node{} {:.1} MiB", i + 1, *b as f64 / 1048576.0)).collect::<Vec<_>>().join(", ")
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

/// The time at the start of a log line (`2026-12-04T17:28:38.123456Z  INFO ...`, UTC).
fn log_time(line: &str) -> Option<SystemTime> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min, sec) = (t.next()?.parse::<i64>().ok()?, t.next()?.parse::<i64>().ok()?, t.next()?.parse::<f64>().ok()?);
    let days = days_from_civil(y, m, day);
    let secs = days * 86_400 + h * 3600 + min * 60;
    Some(UNIX_EPOCH + Duration::from_secs(secs.try_into().ok()?) + Duration::from_secs_f64(sec))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The first `index: N` in a line (openraft's `SnapshotMeta` as `Debug`).
fn index_in(line: &str) -> Option<u64> {
    let rest = &line[line.find("index: ")? + 7..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_times_are_read_as_utc() {
        let t = log_time("2026-12-04T17:28:38.250000Z  INFO openraft::engine: push snapshot building command").unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().as_millis(), 1_796_405_318_250);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert!(log_time("no time here").is_none());
    }

    #[test]
    fn snapshot_index_is_read_from_the_meta() {
        let l = "update_snapshot: SnapshotMeta { last_log_id: Some(LogId { leader_id: CommittedLeaderId { term: 2, node_id: 1 }, index: 20013 }), last_membership: ..";
        assert_eq!(index_in(l), Some(20013));
    }
}
