//! `peers_bench`: the registry, etcd and ZooKeeper side by side, in one run, with one load shape.
//!
//! Each system runs as a 3-node cluster on 127.0.0.1 with its own defaults (only ports and
//! directories set), one system at a time, and one load generator (this process) drives it:
//! `--write-conns` connections with one request in flight each for writes, `--keepalive-conns`
//! for lease renewals. Per system, in this order:
//!
//! 1. **keepalives/s** with `--leases` live leases, through connections to the leader, then to
//!    a follower (which forwards them). Ours: `POST /v1/leases/{id}/keepalive`; etcd: its gRPC
//!    `LeaseKeepAlive` stream, one per connection, renewing the leases round-robin (as etcd's Go
//!    client multiplexes its leases on one stream). ZooKeeper has sessions, not leases: n/a.
//! 2. **durable registrations/s**, each acknowledged after its fsync on a quorum: ours
//!    `POST /v1/leases` then `PUT /v1/services/{s}/instances/{i}` with the lease, and ours in
//!    one call, `POST /v1/register` (n/a where the build lacks the route); etcd `LeaseGrant`
//!    then `Put` with the lease; ZooKeeper `create` EPHEMERAL (its sessions spread over the
//!    servers: its default limit is 60 connections per client address and server). Then lease
//!    grants/s alone (ours, etcd). Each row runs `--write-window` or `--writes` writes, whichever
//!    ends first, with p50/p99 latency; its leases are revoked (ZooKeeper: its sessions closed)
//!    before the next row, untimed.
//! 3. **register-to-visible**: one writer to the leader, each write acknowledged, until a watcher
//!    connected to a follower sees it. Ours `/v1/watch`; etcd `Watch`; ZooKeeper a `getChildren`
//!    watch, set again after each fire.
//! 4. **RSS** (VmRSS) of every node after those phases.
//! 5. **failover**: `--kills` leader SIGKILLs, each timed to the first acknowledged write issued
//!    after it (`e2e::failover`, as `failover_bench`).
//!
//! Every loop is bounded by count and time; the processes are killed when the run ends, fails or
//! is interrupted (drop guards, and `PR_SET_PDEATHSIG` should this process be killed). Run
//! through `scripts/bench peers`, which installs etcd, ZooKeeper and protoc and builds with
//! `--features peers`.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::Parser;
use e2e::bench::{nanos, percentile, r1, r3, write_json, Summary};
use e2e::etcd::EtcdCluster;
use e2e::failover::{self, Plan};
use e2e::http1::{write_retry, Conn, ConnSecurity, Target};
use e2e::load::{grant_leases, watcher, KeepaliveLoad, LeaseSet, Pending, RenewStats};
use e2e::procstat::Mem;
use e2e::zookeeper::Ensemble;
use e2e::{until, ClusterOptions, RegistryCluster};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use zookeeper_client as zk;

#[derive(Parser, Debug)]
#[command(
    name = "peers_bench",
    about = "The registry, etcd and ZooKeeper side by side: 3 loopback nodes each, their own defaults, one load generator",
    long_about = "The registry, etcd and ZooKeeper side by side: 3 loopback nodes each, their own defaults (only \
ports and directories set), one system at a time, one load generator (this process) with the same load shape for \
all: keepalives/s with --leases leases (to the leader, then through a follower), durable registrations/s and lease \
grants/s with --write-conns requests in flight (p50/p99 latency), register-to-visible latency through a follower's \
watch, RSS of every node, and failover (leader SIGKILL to the next acknowledged write). Prints one table with the \
ratios ours/etcd and ours/ZooKeeper. Everything shares this machine's cores and disk; fsync is on in all three.\n\n\
Run it through `scripts/bench peers [FLAGS]`, which installs etcd-server, zookeeper and protobuf-compiler and \
builds with `--features peers`. A short run: --leases 1000 --keepalive-window 2s --write-window 2s \
--visible-samples 100 --kills 1"
)]
struct Args {
    /// The `registry` binary [default: `registry` in $E2E_BIN_DIR, else in the target
    /// directory's `release/`].
    #[arg(long)]
    registry_bin: Option<PathBuf>,
    /// The etcd binary (Debian `etcd-server`).
    #[arg(long, default_value = e2e::etcd::DEFAULT_BIN)]
    etcd: PathBuf,
    /// The systems to run, in this order (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "registry,etcd,zookeeper")]
    systems: Vec<SystemKind>,
    /// The registry's setup: `secure` is its default (TLS and ACL tokens; the load generator
    /// holds an `announce:*` token), `plain` only the cluster secret, `both` runs it twice.
    #[arg(long, value_enum, default_value_t = Security::Secure)]
    security: Security,
    /// Live leases renewed in the keepalive phase (0 skips the phase).
    #[arg(long, default_value_t = 10_000)]
    leases: usize,
    /// TTL of the leases of the keepalive and write phases, in milliseconds (etcd: whole
    /// seconds, rounded up).
    #[arg(long, default_value_t = 10_000)]
    ttl_ms: u64,
    /// Connections renewing leases, one keepalive in flight each (registry_bench's default).
    #[arg(long, default_value_t = 16)]
    keepalive_conns: usize,
    /// Length of each keepalive measurement (to the leader, then through a follower).
    #[arg(long, default_value = "8s", value_parser = humantime::parse_duration)]
    keepalive_window: Duration,
    /// Renewal before each keepalive measurement opens.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Connections writing, one write in flight each (also used to grant and revoke leases).
    #[arg(long, default_value_t = 64)]
    write_conns: usize,
    /// Longest time each write row runs.
    #[arg(long, default_value = "8s", value_parser = humantime::parse_duration)]
    write_window: Duration,
    /// Most writes per row: below the registry's per-client lease limit (20,000 by default),
    /// since a row's leases live until the row ends.
    #[arg(long, default_value_t = 15_000)]
    writes: usize,
    /// Sequential writes timed from acknowledgement to a follower's watch (0 skips the phase).
    #[arg(long, default_value_t = 1000)]
    visible_samples: usize,
    /// Leader SIGKILLs per system (0 skips the phase).
    #[arg(long, default_value_t = 5)]
    kills: usize,
    /// During failover, a new write is issued this often.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    write_every: Duration,
    /// During failover, steady writes before each kill.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    steady: Duration,
    /// Upper bound of each setup step: a cluster start, granting, revoking, closing sessions.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    setup_limit: Duration,
    /// Directory under which the clusters' data directories are made [default: the system temp
    /// dir]. It must be a real disk, not tmpfs, for fsync to mean anything.
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Keep the clusters' data directories and logs after the run.
    #[arg(long)]
    keep_data: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum SystemKind {
    Registry,
    Etcd,
    Zookeeper,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Security {
    Secure,
    Plain,
    Both,
}

/// A per-request bound for the load generator's etcd and ZooKeeper calls (the registry's
/// connections have their own, `http1::REQUEST_TIMEOUT`).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a register-to-visible sample waits for its event.
const VISIBLE_TIMEOUT: Duration = Duration::from_secs(5);
/// The lease of the register-to-visible phase lives this long without renewal.
const VISIBLE_TTL_MS: u64 = 60_000;

fn main() -> ExitCode {
    let args = Args::parse();
    e2e::load::epoch_ns(Instant::now());
    e2e::run_bench("peers_bench", run(args))
}

async fn run(args: Args) -> Result<()> {
    ensure!(args.keepalive_conns >= 1 && args.write_conns >= 1, "--keepalive-conns and --write-conns must be at least 1");
    ensure!(args.write_conns <= 150, "--write-conns at most 150 (ZooKeeper allows 60 connections per client address and server)");
    ensure!(args.leases <= 1_000_000 && args.writes <= 1_000_000 && args.visible_samples <= 100_000, "counts too large");
    ensure!(args.ttl_ms >= 2000, "--ttl-ms at least 2000");
    ensure!(!args.keepalive_window.is_zero() && !args.write_window.is_zero(), "windows must not be zero");
    ensure!(args.keepalive_window <= Duration::from_secs(600) && args.write_window <= Duration::from_secs(600), "windows at most 10 minutes");
    let started = Instant::now();
    let mut columns: Vec<Column> = Vec::new();
    let mut failures = Vec::new();
    for kind in dedup(&args.systems) {
        let runs: Vec<(Option<bool>, String)> = match kind {
            SystemKind::Registry => match args.security {
                Security::Secure => vec![(Some(true), "registry".into())],
                Security::Plain => vec![(Some(false), "registry plain".into())],
                Security::Both => vec![(Some(true), "registry".into()), (Some(false), "registry plain".into())],
            },
            SystemKind::Etcd => vec![(None, "etcd".into())],
            SystemKind::Zookeeper => vec![(None, "ZooKeeper".into())],
        };
        for (secure, name) in runs {
            eprintln!("[peers] === {name} ===");
            let mut col = Column::new(kind, &name);
            let result = match kind {
                SystemKind::Registry => ours(&args, secure.unwrap_or(true), &mut col).await,
                SystemKind::Etcd => etcd(&args, &mut col).await,
                SystemKind::Zookeeper => zookeeper(&args, &mut col).await,
            };
            if let Err(e) = result {
                eprintln!("[peers] {name} failed: {e:#}");
                col.error = Some(format!("{e:#}"));
                failures.push(name.clone());
            }
            columns.push(col);
        }
    }
    let report = table(&args, &columns);
    println!("{report}");
    if let Some(path) = &args.json_out {
        let json = json!({
            "config": {
                "nodes_per_system": 3, "fsync": true, "loopback": true, "cores": cores(),
                "leases": args.leases, "ttl_ms": args.ttl_ms, "keepalive_conns": args.keepalive_conns,
                "keepalive_window_secs": args.keepalive_window.as_secs_f64(), "write_conns": args.write_conns,
                "write_window_secs": args.write_window.as_secs_f64(), "writes_max": args.writes,
                "visible_samples": args.visible_samples, "kills": args.kills,
            },
            "systems": columns.iter().map(|c| (c.name.clone(), c.json())).collect::<serde_json::Map<_, _>>(),
            "elapsed_secs": r1(started.elapsed().as_secs_f64()),
        });
        write_json(path, &json)?;
        println!("JSON results written to {}", path.display());
    }
    match failures.is_empty() {
        true => Ok(()),
        false => bail!("failed: {}", failures.join(", ")),
    }
}

fn dedup(kinds: &[SystemKind]) -> Vec<SystemKind> {
    let mut out = Vec::new();
    for k in kinds {
        if !out.contains(k) {
            out.push(*k);
        }
    }
    out
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Results: one column per system run, one cell per figure.

#[derive(Debug, Clone)]
enum Cell {
    Val(f64),
    Na(String),
}

struct Column {
    kind: SystemKind,
    name: String,
    /// A short description of the setup (version, security).
    setup: String,
    cells: BTreeMap<&'static str, Cell>,
    rss: Vec<Mem>,
    /// Details for the report below the table (errors, expiries, sanity checks).
    notes: Vec<String>,
    json: serde_json::Map<String, Value>,
    error: Option<String>,
}

impl Column {
    fn new(kind: SystemKind, name: &str) -> Column {
        Column {
            kind,
            name: name.to_string(),
            setup: String::new(),
            cells: BTreeMap::new(),
            rss: Vec::new(),
            notes: Vec::new(),
            json: serde_json::Map::new(),
            error: None,
        }
    }

    fn set(&mut self, key: &'static str, v: f64) {
        self.cells.insert(key, Cell::Val(v));
    }

    fn na(&mut self, key: &'static str, why: &str) {
        self.cells.insert(key, Cell::Na(why.to_string()));
    }

    fn note(&mut self, text: String) {
        eprintln!("[peers] {}: {text}", self.name);
        self.notes.push(text);
    }

    /// A write row's figures under `key` (rate), `key_p50`, `key_p99`.
    fn row(&mut self, key: &'static str, p50: &'static str, p99: &'static str, r: &RowResult) {
        self.set(key, r.rate());
        self.set(p50, r.lat.p50);
        self.set(p99, r.lat.p99);
        self.json.insert(key.to_string(), r.json());
        if r.errors > 0 {
            self.note(format!("{key}: {} failed writes (first: {})", r.errors, r.first_error.as_deref().unwrap_or("?")));
        }
    }

    fn json(&self) -> Value {
        let mut j = self.json.clone();
        j.insert("setup".into(), json!(self.setup));
        j.insert(
            "figures".into(),
            Value::Object(
                self.cells
                    .iter()
                    .map(|(k, c)| {
                        let v = match c {
                            Cell::Val(v) => json!(r3(*v)),
                            Cell::Na(why) => json!(format!("n/a ({why})")),
                        };
                        (k.to_string(), v)
                    })
                    .collect(),
            ),
        );
        j.insert("rss".into(), json!(self.rss.iter().map(Mem::json).collect::<Vec<_>>()));
        j.insert("notes".into(), json!(self.notes));
        if let Some(e) = &self.error {
            j.insert("error".into(), json!(e));
        }
        Value::Object(j)
    }
}

/// One write row.
#[derive(Debug, Default)]
struct RowResult {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    /// From the first request to the last answer.
    secs: f64,
    lat: Summary,
}

impl RowResult {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.secs.max(1e-9)
    }
    fn json(&self) -> Value {
        json!({"ok": self.ok, "errors": self.errors, "secs": r3(self.secs), "per_sec": r1(self.rate()), "latency": self.lat.json(), "first_error": self.first_error})
    }
}

/// Hands out write numbers until `max` or the deadline.
struct Quota {
    next: AtomicUsize,
    max: usize,
    deadline: Instant,
    /// Set to stop every worker (e.g. the route is missing).
    abort: AtomicBool,
}

impl Quota {
    fn new(max: usize, window: Duration) -> Arc<Quota> {
        Arc::new(Quota { next: AtomicUsize::new(0), max, deadline: Instant::now() + window, abort: AtomicBool::new(false) })
    }
    fn claim(&self) -> Option<usize> {
        if self.abort.load(Ordering::Relaxed) || Instant::now() >= self.deadline {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < self.max).then_some(i)
    }
}

/// What one writer did: latencies of its acknowledged writes, its failures, and what to clean
/// up (lease ids).
#[derive(Default)]
struct WorkerOut {
    lat_ns: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    leases: Vec<i64>,
    last_answer: Option<Instant>,
}

impl WorkerOut {
    fn fail(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }
}

/// Joins the workers of a row started at `start`.
async fn collect(start: Instant, tasks: Vec<JoinHandle<WorkerOut>>) -> (RowResult, Vec<i64>) {
    let mut r = RowResult::default();
    let mut lat = Vec::new();
    let mut leases = Vec::new();
    let mut last = start;
    for t in tasks {
        match t.await {
            Ok(w) => {
                r.ok += w.lat_ns.len() as u64;
                lat.extend(w.lat_ns);
                r.errors += w.errors;
                if r.first_error.is_none() {
                    r.first_error = w.first_error;
                }
                leases.extend(w.leases);
                last = last.max(w.last_answer.unwrap_or(start));
            }
            Err(e) => {
                r.errors += 1;
                r.first_error.get_or_insert_with(|| format!("worker panicked: {e}"));
            }
        }
    }
    r.secs = (last - start).as_secs_f64();
    r.lat = Summary::of(&mut lat);
    (r, leases)
}

/// Keepalive figures of one window.
struct KaResult {
    rate: f64,
    lat: Summary,
    not_found: u64,
    other: u64,
}

impl KaResult {
    fn json(&self) -> Value {
        json!({"per_sec": r1(self.rate), "latency": self.lat.json(), "not_found": self.not_found, "errors": self.other})
    }
}

/// Measures an already running renewal pool: opens the window after `warmup`, closes it after
/// `window`; returns the rate and the stats' deltas. `stop` ends the pool and gives back the
/// latency samples of the window.
async fn ka_window<F, Fut>(stats: &RenewStats, recording: &AtomicBool, warmup: Duration, window: Duration, stop: F) -> KaResult
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Vec<u64>>,
{
    tokio::time::sleep(warmup).await;
    let (ok0, nf0, other0) = (stats.ok.load(Ordering::Relaxed), stats.not_found.load(Ordering::Relaxed), other_errors(stats));
    recording.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let ok1 = stats.ok.load(Ordering::Relaxed);
    let elapsed = t0.elapsed();
    recording.store(false, Ordering::Relaxed);
    let mut samples = stop().await;
    KaResult {
        rate: (ok1 - ok0) as f64 / elapsed.as_secs_f64(),
        lat: Summary::of(&mut samples),
        not_found: stats.not_found.load(Ordering::Relaxed) - nf0,
        other: other_errors(stats) - other0,
    }
}

fn other_errors(s: &RenewStats) -> u64 {
    s.other_status.load(Ordering::Relaxed) + s.io_errors.load(Ordering::Relaxed)
}

/// Register-to-visible samples: each write waits for its own event.
#[derive(Default)]
struct Visible {
    pending: Pending,
    ack_to_visible: Vec<u64>,
    send_to_visible: Vec<u64>,
    seen_before_ack: u64,
    missing: u64,
    failed: u64,
    first_error: Option<String>,
}

impl Visible {
    /// Called just before the write of `name` is sent.
    fn expect(&self, name: &str) -> Expected {
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(name.to_string(), tx);
        Expected { rx, sent: Instant::now() }
    }

    /// The write of `name` was acknowledged at `acked`: waits for its event. Not `count`ed: a
    /// warm-up.
    async fn acked(&mut self, name: &str, acked: Instant, e: Expected, count: bool) {
        match tokio::time::timeout(VISIBLE_TIMEOUT, e.rx).await {
            Ok(Ok((seen, _))) if count => {
                if seen < acked {
                    self.seen_before_ack += 1;
                }
                self.ack_to_visible.push(nanos(seen.saturating_duration_since(acked)));
                self.send_to_visible.push(nanos(seen.saturating_duration_since(e.sent)));
            }
            Ok(Ok(_)) => {}
            _ => {
                self.pending.lock().unwrap().remove(name);
                self.missing += 1;
            }
        }
    }

    fn failed(&mut self, name: &str, e: impl std::fmt::Display) {
        self.pending.lock().unwrap().remove(name);
        self.failed += 1;
        self.first_error.get_or_insert_with(|| e.to_string());
    }

    /// Into the column: `visible_p50`, `visible_p99`, JSON, and a note when samples went missing.
    fn report(mut self, col: &mut Column) {
        let s = Summary::of(&mut self.ack_to_visible);
        let e2e = Summary::of(&mut self.send_to_visible);
        col.set("visible_p50", s.p50);
        col.set("visible_p99", s.p99);
        col.set("sent_visible_p50", e2e.p50);
        col.set("sent_visible_p99", e2e.p99);
        col.json.insert(
            "register_to_visible".into(),
            json!({"ack_to_visible": s.json(), "send_to_visible": e2e.json(), "seen_before_ack": self.seen_before_ack, "missing": self.missing, "failed_writes": self.failed, "first_error": self.first_error}),
        );
        if self.seen_before_ack > 0 {
            col.note(format!(
                "register-to-visible: {} of {} events reached the follower's watcher before the writer had the acknowledgement (counted as 0 ms)",
                self.seen_before_ack, s.count
            ));
        }
        if self.missing + self.failed > 0 {
            col.note(format!(
                "register-to-visible: {} events not seen within {VISIBLE_TIMEOUT:?}, {} failed writes (first: {})",
                self.missing,
                self.failed,
                self.first_error.as_deref().unwrap_or("-")
            ));
        }
    }
}

/// A write about to be sent, waiting for its event.
struct Expected {
    rx: oneshot::Receiver<(Instant, u64)>,
    sent: Instant,
}

fn rss_of(pids: impl Iterator<Item = Option<u32>>) -> Vec<Mem> {
    pids.map(|p| p.map(Mem::of).unwrap_or_default()).collect()
}

fn failover_into(col: &mut Column, kills: &[failover::Kill]) {
    let mut resumed: Vec<f64> = kills.iter().map(|k| k.resumed_ms).collect();
    resumed.sort_by(f64::total_cmp);
    if let (Some(p50), Some(max)) = (percentile(&resumed, 0.5), resumed.last().copied()) {
        col.set("failover_p50", p50);
        col.set("failover_max", max);
    }
    col.json.insert(
        "failover".into(),
        json!({"kills": kills.len(), "resumed_ms": resumed.iter().map(|m| r1(*m)).collect::<Vec<_>>(), "elected_ms": kills.iter().map(|k| k.elected_ms.map(r1)).collect::<Vec<_>>()}),
    );
}

fn plan(args: &Args) -> Plan {
    Plan { kills: args.kills, rolls: 0, write_every: args.write_every, steady: args.steady }
}

// ---------------------------------------------------------------------------------------------
// Ours.

async fn ours(args: &Args, secure: bool, col: &mut Column) -> Result<()> {
    let bin_path = args.registry_bin.clone().unwrap_or_else(|| e2e::process::bin_dir("release").join("registry"));
    let bin = std::fs::canonicalize(&bin_path)
        .with_context(|| format!("registry binary {} not found (build it with `cargo build --release -p registry`)", bin_path.display()))?;
    let mut cluster = RegistryCluster::launch(
        3,
        ClusterOptions {
            secure,
            bin: Some(bin.clone()),
            data_root: args.data_root.clone(),
            dir_prefix: "peers-bench-registry-".into(),
            keep_data: args.keep_data,
            log_filter: std::env::var("RUST_LOG").ok(),
            stop_grace: Some(Duration::from_secs(5)),
            ready_limit: args.setup_limit,
            ..Default::default()
        },
    )
    .await?;
    col.setup = format!("{} ({})", bin.display(), if secure { "TLS + ACL tokens, its default" } else { "plain HTTP, cluster secret" });
    let result = ours_phases(args, &mut cluster, col).await;
    if result.is_err() {
        cluster.print_log_tails(20);
    }
    if args.keep_data {
        col.note(format!("data and logs kept in {}", cluster.keep_data().display()));
    }
    result
}

async fn ours_phases(args: &Args, cluster: &mut RegistryCluster, col: &mut Column) -> Result<()> {
    let leader = until(args.setup_limit, "a registry leader", || cluster.leader()).await?;
    let follower = (leader + 1) % 3;
    // The load generator's connections: TLS and a token of its own (`announce:*`, as an
    // announcer holds) when secured; admin requests (watch, metrics) with the admin token.
    let mut admin_http = reqwest::Client::builder().connect_timeout(Duration::from_secs(2)).http1_only().no_proxy();
    let mut sec = None;
    if let Some(s) = &cluster.secured {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {}", s.admin_token).parse()?);
        admin_http = admin_http.add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&s.ca)?)?).default_headers(headers);
        let token_file = s.mint(&cluster.client(), "peers_bench", &["announce:*"]).await;
        sec = Some(Arc::new(ConnSecurity::new(&s.ca, std::fs::read_to_string(&token_file)?.trim())?));
    }
    let admin_http = admin_http.build()?;
    let targets: Vec<Target> = cluster.addrs.iter().map(|a| Ok(Target { addr: a.parse()?, secure: sec.clone(), source: None })).collect::<Result<_>>()?;
    let urls = cluster.urls();
    // A first write, so the leader's log is warm.
    let mut probe = Conn::new(&targets[leader]);
    let v = write_retry(&mut probe, "POST", "/v1/leases", br#"{"ttl_ms":10000}"#, None, Instant::now() + Duration::from_secs(10)).await?;
    let id = v["lease_id"].as_u64().ok_or_else(|| anyhow!("grant answer without lease_id: {v}"))?;
    write_retry(&mut probe, "DELETE", &format!("/v1/leases/{id}"), b"", None, Instant::now() + Duration::from_secs(10)).await?;
    let expiries = |http: reqwest::Client, urls: Vec<String>| async move {
        let mut sum = 0.0;
        for u in urls {
            let samples = e2e::metrics::scrape(&http, &format!("{u}/metrics")).await?;
            sum += e2e::metrics::sum(&samples, "registry_lease_expiries_total").unwrap_or(0.0);
        }
        Ok::<u64, anyhow::Error>(sum as u64)
    };
    let expired_before = expiries(admin_http.clone(), urls.clone()).await?;

    // 1. Keepalives.
    if args.leases > 0 {
        eprintln!(
            "[peers] {}: granting {} leases, renewing them over {} connections to node {} (leader)",
            col.name,
            args.leases,
            args.keepalive_conns,
            leader + 1
        );
        let set = Arc::new(LeaseSet::with_capacity(args.leases));
        let hard = args.setup_limit + args.keepalive_window * 2 + args.warmup * 2 + Duration::from_secs(30);
        let renewer = KeepaliveLoad::start(targets[leader].clone(), set.clone(), args.keepalive_conns, None, hard);
        if let Err(e) = grant_leases(&targets[leader], &set, args.leases, args.ttl_ms, args.write_conns, args.setup_limit).await {
            renewer.stop().await;
            return Err(e.context("granting the keepalive leases"));
        }
        let (stats, recording) = (renewer.stats.clone(), renewer.recording.clone());
        let to_leader = ka_window(&stats, &recording, args.warmup, args.keepalive_window, || renewer.stop()).await;
        eprintln!("[peers] {}: {:.0} keepalives/s to the leader; now through node {} (a follower)", col.name, to_leader.rate, follower + 1);
        let renewer = KeepaliveLoad::start(targets[follower].clone(), set.clone(), args.keepalive_conns, None, hard);
        let (stats, recording) = (renewer.stats.clone(), renewer.recording.clone());
        let via_follower = ka_window(&stats, &recording, args.warmup, args.keepalive_window, || renewer.stop()).await;
        eprintln!("[peers] {}: {:.0} keepalives/s through the follower", col.name, via_follower.rate);
        col.set("ka_leader", to_leader.rate);
        col.set("ka_follower", via_follower.rate);
        col.json.insert("keepalive".into(), json!({"leases": args.leases, "leader": to_leader.json(), "via_follower": via_follower.json()}));
        for (what, r) in [("to the leader", &to_leader), ("through a follower", &via_follower)] {
            if r.not_found + r.other > 0 {
                col.note(format!("keepalives {what}: {} answered 404 (lease gone), {} other errors", r.not_found, r.other));
            }
        }
        let ids: Vec<i64> = set.ids.read().unwrap().iter().map(|&i| i as i64).collect();
        ours_revoke(&targets[leader], ids, args).await?;
    }
    let expired = expiries(admin_http.clone(), urls.clone()).await?.saturating_sub(expired_before);
    if expired > 0 {
        col.note(format!("{expired} leases expired while renewed (registry_lease_expiries_total); must be 0"));
    }
    col.json.insert("expired_while_renewed".into(), json!(expired));

    // 2. Durable registrations, then grants alone.
    for row in [OursRow::GrantPut, OursRow::Register, OursRow::Grant] {
        eprintln!("[peers] {}: {} with {} in flight (at most {} writes, {:?})", col.name, row.what(), args.write_conns, args.writes, args.write_window);
        let (r, leases, missing) = ours_row(args, &targets[leader], row).await;
        if missing {
            col.na(row.key(), "route missing");
            col.na(row.p50(), "route missing");
            col.na(row.p99(), "route missing");
            col.note(format!("{}: the route answered 404/405 (this build has no POST /v1/register)", row.what()));
        } else {
            eprintln!("[peers] {}: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms", col.name, r.rate(), r.lat.p50, r.lat.p99);
            col.row(row.key(), row.p50(), row.p99(), &r);
        }
        ours_revoke(&targets[leader], leases, args).await?;
    }

    // 3. Register-to-visible.
    if args.visible_samples > 0 {
        eprintln!("[peers] {}: {} writes to node {} (leader), each until node {}'s watch shows it", col.name, args.visible_samples, leader + 1, follower + 1);
        let mut conn = Conn::new(&targets[leader]);
        let deadline = Instant::now() + args.setup_limit;
        let v = write_retry(&mut conn, "POST", "/v1/leases", format!(r#"{{"ttl_ms":{VISIBLE_TTL_MS}}}"#).as_bytes(), None, deadline).await?;
        let lease = v["lease_id"].as_u64().ok_or_else(|| anyhow!("grant answer without lease_id: {v}"))?;
        let since = v["revision"].as_u64().unwrap_or(lease);
        let mut vis = Visible::default();
        let (ctx, crx) = oneshot::channel();
        let url = format!("{}/v1/watch?service=peers-visible&since={since}", urls[follower]);
        let watch = tokio::spawn(watcher(admin_http.clone(), url, vis.pending.clone(), ctx, Arc::new(AtomicU64::new(0))));
        let res = async {
            tokio::time::timeout(Duration::from_secs(10), crx).await.map_err(|_| anyhow!("the watch on node {} did not open", follower + 1))??;
            // Sample 0 warms the path up and is not counted.
            for i in 0..=args.visible_samples {
                if Instant::now() >= deadline {
                    break;
                }
                let name = format!("v{i}");
                let sent = vis.expect(&name);
                let body = serde_json::to_vec(&json!({"address": "10.0.0.5", "port": 10000 + i % 50000, "lease_id": lease}))?;
                match conn.request("PUT", &format!("/v1/services/peers-visible/instances/{name}"), &body).await {
                    Ok(r) if r.status == 200 => vis.acked(&name, Instant::now(), sent, i > 0).await,
                    Ok(r) => vis.failed(&name, format!("{}: {}", r.status, r.text())),
                    Err(e) => vis.failed(&name, format!("{e:#}")),
                }
            }
            Ok::<(), anyhow::Error>(())
        }
        .await;
        watch.abort();
        res?;
        vis.report(col);
        let _ = write_retry(&mut conn, "DELETE", &format!("/v1/leases/{lease}"), b"", None, Instant::now() + Duration::from_secs(10)).await;
    }

    // 4. Memory.
    col.rss = rss_of(cluster.nodes.iter().map(|n| n.pid()));

    // 5. Failover.
    if args.kills > 0 {
        eprintln!("[peers] {}: {} leader kills", col.name, args.kills);
        let kills = failover::kills(&mut failover::Registry::new(cluster), &plan(args)).await?;
        failover_into(col, &kills);
    }
    Ok(())
}

#[derive(Clone, Copy, Debug)]
enum OursRow {
    GrantPut,
    Register,
    Grant,
}

impl OursRow {
    fn what(self) -> &'static str {
        match self {
            OursRow::GrantPut => "registrations: POST /v1/leases + PUT instance",
            OursRow::Register => "registrations: POST /v1/register",
            OursRow::Grant => "lease grants: POST /v1/leases",
        }
    }
    fn key(self) -> &'static str {
        match self {
            OursRow::GrantPut => "reg",
            OursRow::Register => "reg1",
            OursRow::Grant => "grant",
        }
    }
    fn p50(self) -> &'static str {
        match self {
            OursRow::GrantPut => "reg_p50",
            OursRow::Register => "reg1_p50",
            OursRow::Grant => "grant_p50",
        }
    }
    fn p99(self) -> &'static str {
        match self {
            OursRow::GrantPut => "reg_p99",
            OursRow::Register => "reg1_p99",
            OursRow::Grant => "grant_p99",
        }
    }
}

/// One write row against the leader; (figures, leases to revoke, whether the route is missing).
async fn ours_row(args: &Args, leader: &Target, row: OursRow) -> (RowResult, Vec<i64>, bool) {
    let quota = Quota::new(args.writes, args.write_window);
    let missing = Arc::new(AtomicBool::new(false));
    let ttl = args.ttl_ms;
    let start = Instant::now();
    let tasks: Vec<JoinHandle<WorkerOut>> = (0..args.write_conns)
        .map(|_| {
            let (quota, missing, leader) = (quota.clone(), missing.clone(), leader.clone());
            tokio::spawn(async move {
                let mut out = WorkerOut::default();
                let mut conn = Conn::new(&leader);
                let grant_body = format!(r#"{{"ttl_ms":{ttl}}}"#).into_bytes();
                while let Some(i) = quota.claim() {
                    let name = format!("10.{}.{}.{}:8080", (i >> 16) & 255, (i >> 8) & 255, i & 255);
                    let address = name.trim_end_matches(":8080").to_string();
                    let t0 = Instant::now();
                    let result: Result<Option<i64>> = async {
                        match row {
                            OursRow::Grant | OursRow::GrantPut => {
                                let r = conn.request("POST", "/v1/leases", &grant_body).await?;
                                ensure!(r.status == 200, "grant: {}: {}", r.status, r.text());
                                let lease = r.json()?["lease_id"].as_i64().ok_or_else(|| anyhow!("grant answer without lease_id"))?;
                                if let OursRow::GrantPut = row {
                                    let body = serde_json::to_vec(&json!({"address": address, "port": 8080, "lease_id": lease}))?;
                                    let r = conn.request("PUT", &format!("/v1/services/peers-reg/instances/{name}"), &body).await;
                                    match r {
                                        Ok(r) if r.status == 200 => {}
                                        Ok(r) => {
                                            out.leases.push(lease);
                                            bail!("put: {}: {}", r.status, r.text())
                                        }
                                        Err(e) => {
                                            out.leases.push(lease);
                                            return Err(e);
                                        }
                                    }
                                }
                                Ok(Some(lease))
                            }
                            OursRow::Register => {
                                let body = serde_json::to_vec(&json!({
                                    "ttl_ms": ttl,
                                    "instances": [{"service": "peers-reg1", "instance": name, "address": address, "port": 8080}],
                                }))?;
                                let r = conn.request("POST", "/v1/register", &body).await?;
                                if r.status == 404 || r.status == 405 {
                                    missing.store(true, Ordering::Relaxed);
                                    quota.abort.store(true, Ordering::Relaxed);
                                    return Ok(None);
                                }
                                ensure!(r.status == 200, "register: {}: {}", r.status, r.text());
                                Ok(Some(r.json()?["lease_id"].as_i64().ok_or_else(|| anyhow!("register answer without lease_id"))?))
                            }
                        }
                    }
                    .await;
                    match result {
                        Ok(Some(lease)) => {
                            out.last_answer = Some(Instant::now());
                            out.lat_ns.push(nanos(t0.elapsed()));
                            out.leases.push(lease);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            out.fail(format!("{e:#}"));
                            // A failing node: do not spin.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                out
            })
        })
        .collect();
    let (r, leases) = collect(start, tasks).await;
    (r, leases, missing.load(Ordering::Relaxed))
}

/// Revokes `leases` through the leader, `--write-conns` at a time (untimed cleanup).
async fn ours_revoke(leader: &Target, leases: Vec<i64>, args: &Args) -> Result<()> {
    let n = leases.len();
    let started = Instant::now();
    let deadline = started + args.setup_limit;
    let leases = Arc::new(leases);
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<JoinHandle<Result<()>>> = (0..args.write_conns.min(n))
        .map(|_| {
            let (leases, next, leader) = (leases.clone(), next.clone(), leader.clone());
            tokio::spawn(async move {
                let mut conn = Conn::new(&leader);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(id) = leases.get(i) else { return Ok(()) };
                    match write_retry(&mut conn, "DELETE", &format!("/v1/leases/{id}"), b"", None, deadline).await {
                        Ok(_) => {}
                        // Gone already (expired, or never attached): nothing to clean up.
                        Err(e) if format!("{e:#}").contains(": 404:") => {}
                        Err(e) => return Err(e),
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    eprintln!("[peers] revoked {n} leases in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// etcd, through its own gRPC client.

async fn etcd_client(url: &str) -> Result<etcd_client::Client> {
    tokio::time::timeout(CALL_TIMEOUT, etcd_client::Client::connect([url], None))
        .await
        .map_err(|_| anyhow!("connecting to etcd at {url}: timed out"))?
        .with_context(|| format!("connecting to etcd at {url}"))
}

async fn etcd_clients(url: &str, n: usize) -> Result<Vec<etcd_client::Client>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(etcd_client(url).await?);
    }
    Ok(out)
}

/// A bounded etcd call.
async fn bounded<T, F>(f: F) -> Result<T>
where
    F: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => bail!("no answer within {CALL_TIMEOUT:?}"),
    }
}

fn etcd_ttl_secs(ttl_ms: u64) -> i64 {
    ttl_ms.div_ceil(1000) as i64
}

async fn etcd(args: &Args, col: &mut Column) -> Result<()> {
    let mut cluster = EtcdCluster::start(&args.etcd, 3, args.data_root.as_deref())?;
    let result = async {
        let leader = cluster.wait_settled(args.setup_limit).await?;
        col.setup = format!("{} (its defaults: plain HTTP, no auth)", e2e::etcd::version(&args.etcd).unwrap_or_else(|| args.etcd.display().to_string()));
        etcd_phases(args, &mut cluster, leader, col).await
    }
    .await;
    if result.is_err() {
        for n in &cluster.nodes {
            n.print_log_tail(20);
        }
    }
    if args.keep_data {
        col.note(format!("data and logs kept in {}", cluster.keep_data().display()));
    }
    result
}

async fn etcd_phases(args: &Args, cluster: &mut EtcdCluster, leader: usize, col: &mut Column) -> Result<()> {
    let follower = (leader + 1) % 3;
    let (leader_url, follower_url) = (cluster.client_urls[leader].clone(), cluster.client_urls[follower].clone());
    let writers = etcd_clients(&leader_url, args.write_conns).await?;
    let ttl = etcd_ttl_secs(args.ttl_ms);

    // 1. Keepalives.
    if args.leases > 0 {
        eprintln!("[peers] etcd: granting {} leases, renewing them over {} connections to node {} (leader)", args.leases, args.keepalive_conns, leader + 1);
        let set = Arc::new(LeaseSet::with_capacity(args.leases));
        let renewer = EtcdKeepaliveLoad::start(etcd_clients(&leader_url, args.keepalive_conns).await?, set.clone());
        if let Err(e) = etcd_grant(&writers, &set, args.leases, ttl, args.setup_limit).await {
            renewer.stop().await;
            return Err(e.context("granting the keepalive leases"));
        }
        let (stats, recording) = (renewer.stats.clone(), renewer.recording.clone());
        let to_leader = ka_window(&stats, &recording, args.warmup, args.keepalive_window, || renewer.stop()).await;
        eprintln!("[peers] etcd: {:.0} keepalives/s to the leader; now through node {} (a follower)", to_leader.rate, follower + 1);
        let renewer = EtcdKeepaliveLoad::start(etcd_clients(&follower_url, args.keepalive_conns).await?, set.clone());
        let (stats, recording) = (renewer.stats.clone(), renewer.recording.clone());
        let via_follower = ka_window(&stats, &recording, args.warmup, args.keepalive_window, || renewer.stop()).await;
        eprintln!("[peers] etcd: {:.0} keepalives/s through the follower", via_follower.rate);
        col.set("ka_leader", to_leader.rate);
        col.set("ka_follower", via_follower.rate);
        col.json.insert("keepalive".into(), json!({"leases": args.leases, "leader": to_leader.json(), "via_follower": via_follower.json()}));
        for (what, r) in [("to the leader", &to_leader), ("through a follower", &via_follower)] {
            if r.not_found + r.other > 0 {
                col.note(format!("keepalives {what}: {} answered TTL 0 (lease gone), {} other errors", r.not_found, r.other));
            }
        }
        let ids: Vec<i64> = set.ids.read().unwrap().iter().map(|&i| i as i64).collect();
        etcd_revoke(&writers, ids, args.setup_limit).await?;
    }

    // 2. Registrations (LeaseGrant + Put with the lease), then grants alone.
    for with_put in [true, false] {
        let what = if with_put { "registrations: LeaseGrant + Put with the lease" } else { "lease grants: LeaseGrant" };
        eprintln!("[peers] etcd: {what} with {} in flight (at most {} writes, {:?})", args.write_conns, args.writes, args.write_window);
        let quota = Quota::new(args.writes, args.write_window);
        let start = Instant::now();
        let tasks: Vec<JoinHandle<WorkerOut>> = writers
            .iter()
            .map(|c| {
                let (mut c, quota) = (c.clone(), quota.clone());
                tokio::spawn(async move {
                    let mut out = WorkerOut::default();
                    while let Some(i) = quota.claim() {
                        let name = format!("10.{}.{}.{}:8080", (i >> 16) & 255, (i >> 8) & 255, i & 255);
                        let t0 = Instant::now();
                        let result: Result<i64> = async {
                            let lease = bounded(c.lease_grant(ttl, None)).await.context("LeaseGrant")?.id();
                            if with_put {
                                let value = serde_json::to_vec(&json!({"address": name.trim_end_matches(":8080"), "port": 8080}))?;
                                let put = bounded(c.put(format!("/peers/reg/{name}"), value, Some(etcd_client::PutOptions::new().with_lease(lease)))).await;
                                if let Err(e) = put {
                                    out.leases.push(lease);
                                    return Err(e.context("Put"));
                                }
                            }
                            Ok(lease)
                        }
                        .await;
                        match result {
                            Ok(lease) => {
                                out.last_answer = Some(Instant::now());
                                out.lat_ns.push(nanos(t0.elapsed()));
                                out.leases.push(lease);
                            }
                            Err(e) => {
                                out.fail(format!("{e:#}"));
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                    }
                    out
                })
            })
            .collect();
        let (r, leases) = collect(start, tasks).await;
        eprintln!("[peers] etcd: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms", r.rate(), r.lat.p50, r.lat.p99);
        match with_put {
            true => col.row("reg", "reg_p50", "reg_p99", &r),
            false => col.row("grant", "grant_p50", "grant_p99", &r),
        }
        etcd_revoke(&writers, leases, args.setup_limit).await?;
    }
    // etcd's registration is always two calls.
    for (from, to) in [("reg", "reg1"), ("reg_p50", "reg1_p50"), ("reg_p99", "reg1_p99")] {
        if let Some(c) = col.cells.get(from).cloned() {
            col.cells.insert(to, c);
        }
    }

    // 3. Register-to-visible: Put to the leader, Watch on a follower.
    if args.visible_samples > 0 {
        eprintln!("[peers] etcd: {} puts to node {} (leader), each until node {}'s watch shows it", args.visible_samples, leader + 1, follower + 1);
        let mut w = writers[0].clone();
        let lease = bounded(w.lease_grant(etcd_ttl_secs(VISIBLE_TTL_MS), None)).await?.id();
        let mut watch_client = etcd_client(&follower_url).await?;
        let mut stream = bounded(watch_client.watch("/peers/visible/", Some(etcd_client::WatchOptions::new().with_prefix()))).await?;
        let mut vis = Visible::default();
        let pending = vis.pending.clone();
        let watch = tokio::spawn(async move {
            while let Ok(Some(resp)) = stream.message().await {
                let seen = Instant::now();
                for ev in resp.events() {
                    if ev.event_type() != etcd_client::EventType::Put {
                        continue;
                    }
                    let Some(kv) = ev.kv() else { continue };
                    let name = kv.key_str().unwrap_or("").trim_start_matches("/peers/visible/").to_string();
                    if let Some(tx) = pending.lock().unwrap().remove(&name) {
                        let _ = tx.send((seen, kv.mod_revision() as u64));
                    }
                }
            }
        });
        let deadline = Instant::now() + args.setup_limit;
        for i in 0..=args.visible_samples {
            if Instant::now() >= deadline {
                break;
            }
            let name = format!("v{i}");
            let sent = vis.expect(&name);
            let value = serde_json::to_vec(&json!({"address": "10.0.0.5", "port": 10000 + i % 50000}))?;
            match bounded(w.put(format!("/peers/visible/{name}"), value, Some(etcd_client::PutOptions::new().with_lease(lease)))).await {
                Ok(_) => vis.acked(&name, Instant::now(), sent, i > 0).await,
                Err(e) => vis.failed(&name, format!("{e:#}")),
            }
        }
        watch.abort();
        vis.report(col);
        let _ = bounded(w.lease_revoke(lease)).await;
    }

    // 4. Memory.
    col.rss = rss_of(cluster.nodes.iter().map(|n| n.pid()));
    drop(writers);

    // 5. Failover (writes through the JSON gateway, as failover_bench).
    if args.kills > 0 {
        eprintln!("[peers] etcd: {} leader kills", args.kills);
        let kills = failover::kills(cluster, &plan(args)).await?;
        failover_into(col, &kills);
    }
    Ok(())
}

/// Grants `n` leases with every client in `clients` one request in flight, pushing each into
/// `set` as it comes.
async fn etcd_grant(clients: &[etcd_client::Client], set: &Arc<LeaseSet>, n: usize, ttl: i64, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<JoinHandle<Result<()>>> = clients
        .iter()
        .map(|c| {
            let (mut c, next, set) = (c.clone(), next.clone(), set.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let mut attempt = 0;
                    let id = loop {
                        match bounded(c.lease_grant(ttl, None)).await {
                            Ok(r) => break r.id(),
                            Err(e) if Instant::now() >= deadline || attempt >= 10 => return Err(e.context("LeaseGrant")),
                            Err(_) => {
                                attempt += 1;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    };
                    set.push(id as u64);
                }
                Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Revokes `leases` (untimed cleanup); a lease already gone is fine.
async fn etcd_revoke(clients: &[etcd_client::Client], leases: Vec<i64>, limit: Duration) -> Result<()> {
    let n = leases.len();
    let started = Instant::now();
    let deadline = started + limit;
    let leases = Arc::new(leases);
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<JoinHandle<Result<()>>> = clients
        .iter()
        .map(|c| {
            let (mut c, next, leases) = (c.clone(), next.clone(), leases.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&id) = leases.get(i) else { return Ok(()) };
                    loop {
                        match bounded(c.lease_revoke(id)).await {
                            Ok(_) => break,
                            Err(e) if format!("{e:#}").contains("not found") => break,
                            Err(e) if Instant::now() >= deadline => return Err(e.context("LeaseRevoke")),
                            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    eprintln!("[peers] etcd: revoked {n} leases in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// etcd's keepalives: one `LeaseKeepAlive` stream per client (connection), each renewing the
/// leases of `set` round-robin with one request in flight, as `load::KeepaliveLoad` does for ours.
struct EtcdKeepaliveLoad {
    stats: Arc<RenewStats>,
    stop: Arc<AtomicBool>,
    recording: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<Vec<u64>>>,
}

impl EtcdKeepaliveLoad {
    fn start(clients: Vec<etcd_client::Client>, set: Arc<LeaseSet>) -> EtcdKeepaliveLoad {
        let stats = Arc::new(RenewStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let recording = Arc::new(AtomicBool::new(false));
        let tasks = clients
            .into_iter()
            .map(|mut client| {
                let (set, stats, stop, recording) = (set.clone(), stats.clone(), stop.clone(), recording.clone());
                tokio::spawn(async move {
                    let mut samples = Vec::new();
                    let mut stream: Option<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)> = None;
                    while !stop.load(Ordering::Relaxed) {
                        let Some((_, id)) = set.take() else {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                            continue;
                        };
                        let t0 = Instant::now();
                        // The stream opens with its first lease; every later request names its own.
                        let answer: Result<i64> = async {
                            match stream.as_mut() {
                                None => {
                                    let (keeper, s) = bounded(client.lease_keep_alive(id as i64)).await?;
                                    stream = Some((keeper, s));
                                    Ok(1)
                                }
                                Some((keeper, s)) => {
                                    keeper.id = id as i64;
                                    bounded(keeper.keep_alive()).await?;
                                    match bounded(s.message()).await? {
                                        Some(resp) => Ok(resp.ttl()),
                                        None => bail!("the keepalive stream ended"),
                                    }
                                }
                            }
                        }
                        .await;
                        match answer {
                            Ok(ttl) if ttl > 0 => {
                                stats.ok.fetch_add(1, Ordering::Relaxed);
                                if recording.load(Ordering::Relaxed) && samples.len() < 2_000_000 {
                                    samples.push(nanos(t0.elapsed()));
                                }
                            }
                            Ok(_) => {
                                stats.not_found.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                // "lease not found" when opening the stream on a lease that is gone.
                                match format!("{e:#}").contains("not found") {
                                    true => stats.not_found.fetch_add(1, Ordering::Relaxed),
                                    false => stats.io_errors.fetch_add(1, Ordering::Relaxed),
                                };
                                stream = None;
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                    }
                    samples
                })
            })
            .collect();
        EtcdKeepaliveLoad { stats, stop, recording, tasks }
    }

    async fn stop(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            if let Ok(Ok(s)) = tokio::time::timeout(CALL_TIMEOUT * 2 + Duration::from_secs(1), t).await {
                all.extend(s);
            }
        }
        all
    }
}

// ---------------------------------------------------------------------------------------------
// ZooKeeper.

/// Session timeout the load generator asks for (the servers allow 4 to 40 s by default).
const ZK_SESSION: Duration = Duration::from_secs(10);

async fn zookeeper(args: &Args, col: &mut Column) -> Result<()> {
    let mut ensemble = Ensemble::start(3, args.data_root.as_deref(), args.setup_limit).await?;
    let result = async {
        col.setup = format!(
            "ZooKeeper {} (Debian package defaults: tickTime 2000, initLimit 10, syncLimit 5, forceSync yes, default JVM heap)",
            ensemble.version().await.unwrap_or_else(|| "?".into())
        );
        zk_phases(args, &mut ensemble, col).await
    }
    .await;
    if result.is_err() {
        for n in &ensemble.nodes {
            n.print_log_tail(20);
        }
    }
    if args.keep_data {
        col.note(format!("data and logs kept in {}", ensemble.keep_data().display()));
    }
    result
}

async fn zk_connect(ensemble: &Ensemble, connect: &str) -> Result<zk::Client> {
    ensemble.connect(connect, ZK_SESSION).await.with_context(|| format!("a ZooKeeper session through {connect}"))
}

async fn zk_mkdir(c: &zk::Client, path: &str) -> Result<()> {
    match c.create(path, b"", &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())).await {
        Ok(_) | Err(zk::Error::NodeExists) => Ok(()),
        Err(e) => Err(anyhow!("creating {path}: {e}")),
    }
}

async fn zk_phases(args: &Args, ensemble: &mut Ensemble, col: &mut Column) -> Result<()> {
    let leader = until(args.setup_limit, "a ZooKeeper leader", || ensemble.leader()).await?;
    let follower = (leader + 1) % 3;
    for key in ["ka_leader", "ka_follower"] {
        col.na(key, "no leases");
    }
    for key in ["grant", "grant_p50", "grant_p99"] {
        col.na(key, "no leases");
    }
    let admin = zk_connect(ensemble, &ensemble.connect_string()).await?;
    zk_mkdir(&admin, "/peers-reg").await?;
    zk_mkdir(&admin, "/peers-visible").await?;

    // 2. Registrations: create EPHEMERAL, sessions spread over the servers.
    eprintln!(
        "[peers] ZooKeeper: create EPHEMERAL with {} sessions in flight, spread over the 3 servers (at most {} writes, {:?})",
        args.write_conns, args.writes, args.write_window
    );
    let mut sessions = Vec::with_capacity(args.write_conns);
    for k in 0..args.write_conns {
        sessions.push(zk_connect(ensemble, &ensemble.addr(k % 3)).await?);
    }
    let quota = Quota::new(args.writes, args.write_window);
    let start = Instant::now();
    let tasks: Vec<JoinHandle<WorkerOut>> = sessions
        .iter()
        .map(|c| {
            let (c, quota) = (c.clone(), quota.clone());
            tokio::spawn(async move {
                let mut out = WorkerOut::default();
                let options = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
                while let Some(i) = quota.claim() {
                    let name = format!("10.{}.{}.{}:8080", (i >> 16) & 255, (i >> 8) & 255, i & 255);
                    let data = serde_json::to_vec(&json!({"host": name.trim_end_matches(":8080"), "port": 8080})).unwrap_or_default();
                    let t0 = Instant::now();
                    match tokio::time::timeout(CALL_TIMEOUT, c.create(&format!("/peers-reg/{name}"), &data, &options)).await {
                        Ok(Ok(_)) => {
                            out.last_answer = Some(Instant::now());
                            out.lat_ns.push(nanos(t0.elapsed()));
                        }
                        Ok(Err(e)) => {
                            out.fail(e);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        Err(_) => out.fail(format!("no answer within {CALL_TIMEOUT:?}")),
                    }
                }
                out
            })
        })
        .collect();
    let (r, _) = collect(start, tasks).await;
    eprintln!("[peers] ZooKeeper: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms", r.rate(), r.lat.p50, r.lat.p99);
    col.row("reg", "reg_p50", "reg_p99", &r);
    for (from, to) in [("reg", "reg1"), ("reg_p50", "reg1_p50"), ("reg_p99", "reg1_p99")] {
        if let Some(c) = col.cells.get(from).cloned() {
            col.cells.insert(to, c);
        }
    }
    // Cleanup: closing the sessions removes their ephemeral nodes.
    let closing = Instant::now();
    drop(sessions);
    until(args.setup_limit, "the closed sessions' ephemeral nodes to go", || async {
        admin.get_children("/peers-reg").await.ok().filter(|(c, _)| c.is_empty()).map(|_| ())
    })
    .await?;
    eprintln!("[peers] ZooKeeper: sessions closed and their nodes gone in {:.1} s", closing.elapsed().as_secs_f64());

    // 3. Register-to-visible: create on the leader's session, a getChildren watch on a
    // follower's, set again after each fire.
    if args.visible_samples > 0 {
        eprintln!(
            "[peers] ZooKeeper: {} creates through server {} (leader), each until a watch on server {} shows it",
            args.visible_samples,
            leader + 1,
            follower + 1
        );
        let writer = zk_connect(ensemble, &ensemble.addr(leader)).await?;
        let watcher_session = zk_connect(ensemble, &ensemble.addr(follower)).await?;
        let mut vis = Visible::default();
        let pending = vis.pending.clone();
        let (ready_tx, ready_rx) = oneshot::channel();
        let watch = tokio::spawn(async move {
            let mut known: HashSet<String> = HashSet::new();
            let mut fired: Option<Instant> = None;
            let mut ready = Some(ready_tx);
            loop {
                let Ok((children, w)) = watcher_session.list_and_watch_children("/peers-visible").await else { return };
                // A child listed here became visible when the watch fired (or now, if it was
                // already there when the watch was set).
                let seen = fired.take().unwrap_or_else(Instant::now);
                for c in children {
                    if known.insert(c.clone()) {
                        if let Some(tx) = pending.lock().unwrap().remove(&c) {
                            let _ = tx.send((seen, 0));
                        }
                    }
                }
                if let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
                let ev = w.changed().await;
                fired = Some(Instant::now());
                if ev.event_type != zk::EventType::NodeChildrenChanged {
                    return;
                }
            }
        });
        let res = async {
            tokio::time::timeout(Duration::from_secs(10), ready_rx).await.map_err(|_| anyhow!("the watch on server {} was not set", follower + 1))??;
            let options = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
            let deadline = Instant::now() + args.setup_limit;
            for i in 0..=args.visible_samples {
                if Instant::now() >= deadline {
                    break;
                }
                let name = format!("v{i}");
                let sent = vis.expect(&name);
                let data = serde_json::to_vec(&json!({"host": "10.0.0.5", "port": 10000 + i % 50000}))?;
                match tokio::time::timeout(CALL_TIMEOUT, writer.create(&format!("/peers-visible/{name}"), &data, &options)).await {
                    Ok(Ok(_)) => vis.acked(&name, Instant::now(), sent, i > 0).await,
                    Ok(Err(e)) => vis.failed(&name, e),
                    Err(_) => vis.failed(&name, "no answer"),
                }
            }
            Ok::<(), anyhow::Error>(())
        }
        .await;
        watch.abort();
        res?;
        vis.report(col);
        drop(writer);
    }
    drop(admin);

    // 4. Memory.
    col.rss = rss_of(ensemble.nodes.iter().map(|n| n.pid()));

    // 5. Failover: creates through one session that knows every server.
    if args.kills > 0 {
        eprintln!("[peers] ZooKeeper: {} leader kills", args.kills);
        let kills = failover::kills(&mut failover::Zookeeper::new(ensemble).await?, &plan(args)).await?;
        failover_into(col, &kills);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The report.

struct RowSpec {
    key: &'static str,
    label: String,
    /// Decimals to print.
    decimals: usize,
}

fn table(args: &Args, columns: &[Column]) -> String {
    let rows = [
        RowSpec { key: "ka_leader", label: format!("keepalives/s, {} leases, to the leader", args.leases), decimals: 0 },
        RowSpec { key: "ka_follower", label: "keepalives/s, through a follower".into(), decimals: 0 },
        RowSpec { key: "reg", label: "registrations/s, grant + put [1]".into(), decimals: 0 },
        RowSpec { key: "reg_p50", label: "  p50 ms".into(), decimals: 2 },
        RowSpec { key: "reg_p99", label: "  p99 ms".into(), decimals: 2 },
        RowSpec { key: "reg1", label: "registrations/s, one call [2]".into(), decimals: 0 },
        RowSpec { key: "reg1_p50", label: "  p50 ms".into(), decimals: 2 },
        RowSpec { key: "reg1_p99", label: "  p99 ms".into(), decimals: 2 },
        RowSpec { key: "grant", label: "lease grants/s".into(), decimals: 0 },
        RowSpec { key: "grant_p50", label: "  p50 ms".into(), decimals: 2 },
        RowSpec { key: "grant_p99", label: "  p99 ms".into(), decimals: 2 },
        RowSpec { key: "visible_p50", label: "register-to-visible p50 ms [3]".into(), decimals: 2 },
        RowSpec { key: "visible_p99", label: "register-to-visible p99 ms".into(), decimals: 2 },
        RowSpec { key: "sent_visible_p50", label: "  from the send, p50 ms".into(), decimals: 2 },
        RowSpec { key: "sent_visible_p99", label: "  from the send, p99 ms".into(), decimals: 2 },
        RowSpec { key: "failover_p50", label: format!("failover p50 ms ({} kills) [4]", args.kills), decimals: 0 },
        RowSpec { key: "failover_max", label: "failover max ms".into(), decimals: 0 },
    ];
    let ours = columns.iter().find(|c| c.kind == SystemKind::Registry && c.error.is_none()).or_else(|| columns.iter().find(|c| c.kind == SystemKind::Registry));
    let etcd = columns.iter().find(|c| c.kind == SystemKind::Etcd);
    let zk = columns.iter().find(|c| c.kind == SystemKind::Zookeeper);
    let mut ratio_cols: Vec<(&str, &Column)> = Vec::new();
    if let (Some(_), Some(e)) = (ours, etcd) {
        ratio_cols.push(("ours/etcd", e));
    }
    if let (Some(_), Some(z)) = (ours, zk) {
        ratio_cols.push(("ours/ZK", z));
    }
    const LABEL: usize = 42;
    const W: usize = 20;
    let mut t = String::new();
    let _ = writeln!(t, "\n=== peers: the registry, etcd and ZooKeeper side by side, 3 nodes each on 127.0.0.1 ===");
    let _ = writeln!(
        t,
        "All systems and the load generator share this machine's {} cores and its disk (one system runs at a time; \
other work on the machine may have shared them too). fsync is on in all three: etcd and ZooKeeper fsync by default \
(etcd its WAL, ZooKeeper its transaction log, forceSync=yes), and so does the registry (its WAL, group commit).",
        cores()
    );
    for c in columns {
        let _ = writeln!(t, "  {:<16} {}", c.name, c.setup);
    }
    let _ = writeln!(
        t,
        "Load: one process; {} connections with one write in flight each (rows run {:?} or {} writes); {} connections renewing {} leases (TTL {} ms), {:?} per window.\n",
        args.write_conns, args.write_window, args.writes, args.keepalive_conns, args.leases, args.ttl_ms, args.keepalive_window
    );
    let _ = write!(t, "{:<LABEL$}", "");
    for c in columns {
        let _ = write!(t, "{:>W$}", c.name);
    }
    for (name, _) in &ratio_cols {
        let _ = write!(t, "{:>11}", name);
    }
    let _ = writeln!(t);
    for row in &rows {
        let _ = write!(t, "{:<LABEL$}", row.label);
        for c in columns {
            let text = match (c.cells.get(row.key), &c.error) {
                (Some(Cell::Val(v)), _) => format!("{v:.*}", row.decimals),
                (Some(Cell::Na(why)), _) if why.len() + 6 <= W => format!("n/a ({why})"),
                (Some(Cell::Na(_)), _) => "n/a".into(),
                (None, Some(_)) => "error".into(),
                (None, None) => "-".into(),
            };
            let _ = write!(t, "{text:>W$}");
        }
        for (_, other) in &ratio_cols {
            let ratio = match (ours.and_then(|o| o.cells.get(row.key)), other.cells.get(row.key)) {
                (Some(Cell::Val(a)), Some(Cell::Val(b))) if *b > 0.0 => format!("{:.2}", a / b),
                _ => String::new(),
            };
            let _ = write!(t, "{ratio:>11}");
        }
        let _ = writeln!(t);
    }
    // Memory: per node, then the ratio of the sums.
    let _ = write!(t, "{:<LABEL$}", "RSS MiB per node, after the phases [5]");
    for c in columns {
        let text = match c.rss.is_empty() {
            true => "-".into(),
            false => c.rss.iter().map(|m| format!("{:.0}", m.rss_kb as f64 / 1024.0)).collect::<Vec<_>>().join("/"),
        };
        let _ = write!(t, "{text:>W$}");
    }
    for (_, other) in &ratio_cols {
        let sum = |c: &Column| c.rss.iter().map(|m| m.rss_kb).sum::<u64>() as f64;
        let ratio = match ours {
            Some(o) if sum(other) > 0.0 && sum(o) > 0.0 => format!("{:.2}", sum(o) / sum(other)),
            _ => String::new(),
        };
        let _ = write!(t, "{ratio:>11}");
    }
    let _ = writeln!(t);
    let _ = writeln!(
        t,
        "\nRatios divide the {} column by the other: above 1 is better for rates (/s), below 1 for milliseconds and memory.",
        ours.map(|o| o.name.as_str()).unwrap_or("registry")
    );
    let _ = writeln!(
        t,
        "[1] ours: POST /v1/leases, then PUT /v1/services/S/instances/I with the lease; etcd: LeaseGrant, then Put with the lease; \
ZooKeeper: create EPHEMERAL (one call; its sessions spread over the 3 servers, which forward writes to the leader: its default limit \
is 60 connections per client address and server). Each acknowledged only once durable on a quorum."
    );
    let _ =
        writeln!(t, "[2] ours: POST /v1/register (a lease and its instance in one log entry); etcd and ZooKeeper have no such call, so their row repeats [1].");
    let _ = writeln!(
        t,
        "[3] one writer to the leader (ours: PUT under a lease; etcd: Put with a lease; ZooKeeper: create EPHEMERAL), each write acknowledged, \
until a watcher on a follower sees it (ours /v1/watch, etcd Watch, ZooKeeper getChildren watch set again after each fire); {} samples. \
An event can reach the follower's watcher before the acknowledgement reaches the writer (0 ms); \"from the send\" times the whole write too.",
        args.visible_samples
    );
    let _ = writeln!(
        t,
        "[4] leader SIGKILL to the first acknowledged write issued after it (a write every {:?} through a client of every node; e2e::failover).",
        args.write_every
    );
    let _ = writeln!(
        t,
        "[5] VmRSS of each node after the keepalive, write and visibility phases (before failover); ZooKeeper is a JVM with its default heap sizing."
    );
    let notes: Vec<(&str, &String)> = columns.iter().flat_map(|c| c.notes.iter().map(move |n| (c.name.as_str(), n))).collect();
    let errors: Vec<(&str, &String)> = columns.iter().filter_map(|c| c.error.as_ref().map(|e| (c.name.as_str(), e))).collect();
    if !notes.is_empty() || !errors.is_empty() {
        let _ = writeln!(t, "\nNotes:");
        for (name, n) in notes {
            let _ = writeln!(t, "  {name}: {n}");
        }
        for (name, e) in errors {
            let _ = writeln!(t, "  {name}: FAILED: {e}");
        }
    }
    t
}
