//! `syncer_bench`: a benchmark (not a test) of the syncer against real HAProxy: a backend going
//! from 0 to N (default 1,000) servers and back, target at most 1 s each way with zero reloads.
//!
//! It starts a real 3-node registry cluster (`e2e::RegistryCluster`), a real HAProxy with the
//! backend `web-servers` (`e2e::haproxy::Haproxy`) and the real `syncer` binary on the Runtime
//! API socket, with `--max-remove-fraction 1 --min-servers 0` so the breaker does not hold the
//! mass removal (the breaker is a safety feature; this benchmark measures raw convergence).
//! Then, for each removal mode (`revoke`: one lease revocation, one log entry removes every
//! instance; `delete`: one DELETE per instance) and each round:
//!
//! 1. registers N instances of `web-servers` (127.0.0.1, distinct ports, no web servers behind
//!    them) through the registry API with `--concurrency` requests in flight, under
//!    `--leases` leases the benchmark renews, and measures until `show servers state
//!    web-servers` lists all N managed (`sd-`) servers, (a) from the first PUT sent and (b) from
//!    the last PUT acknowledged;
//! 2. removes them all (revoke or delete) and measures until the backend has no managed server,
//!    (a) from the first request sent and (b) from the last one acknowledged.
//!
//! HAProxy's reload counter (master CLI) is read before and after (must not move), and the
//! syncer's `/metrics` (`syncer_ops_total` by kind, passes, held removals, errors) is scraped
//! around every phase. The syncer logs in JSON; its `applied` lines give, per phase, when the
//! first and last HAProxy operation was applied, which splits the time into "getting to the
//! first operation" (watch, batching window, reading HAProxy) and "applying them".
//!
//! Every loop is bounded in count and time, everything talks to 127.0.0.1 only, and every
//! process is killed when the run ends, fails or is interrupted (`e2e::Proc` kills on drop).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::Parser;
use e2e::bench::write_json;
use e2e::haproxy::{managed_servers, Haproxy};
use e2e::lease::Renewer;
use e2e::metrics::{self, Samples};
use e2e::process::try_binary;
use e2e::{free_port, until, Proc, RegistryCluster};
use futures::StreamExt;
use serde_json::{json, Value};
use syncer::model::AdminState;

const BACKEND: &str = "web-servers";
const SERVICE: &str = "web-servers";

#[derive(Parser, Debug)]
#[command(
    name = "syncer_bench",
    about = "Benchmark the syncer: a backend going from 0 to N servers and back on real HAProxy (target <= 1 s each way, 0 reloads)"
)]
struct Args {
    /// Instances registered (and servers expected in HAProxy) per round.
    #[arg(long, default_value_t = 1000)]
    instances: usize,
    /// Rounds per removal mode (each round: register N, wait; remove N, wait).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Removal modes, comma-separated: `revoke` (revoke the lease(s): one entry removes all)
    /// and/or `delete` (DELETE every instance).
    #[arg(long, value_delimiter = ',', default_value = "revoke,delete")]
    modes: Vec<String>,
    /// Registry requests in flight while registering or deleting.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Leases the instances of a round are spread over (renewed by the benchmark).
    #[arg(long, default_value_t = 1)]
    leases: usize,
    /// TTL of those leases, in milliseconds (renewed every TTL/3).
    #[arg(long, default_value_t = 30000)]
    lease_ttl_ms: u64,
    /// How often HAProxy is polled (`show servers state`), in milliseconds.
    #[arg(long, default_value_t = 10)]
    poll_ms: u64,
    /// Give up on one direction of one round after this many seconds.
    #[arg(long, default_value_t = 60)]
    phase_timeout_secs: u64,
    /// Target per direction, in milliseconds (the report says PASS/MISS against it).
    #[arg(long, default_value_t = 1000)]
    target_ms: u64,
    /// Pause between phases (lets the syncer finish its pass), in milliseconds.
    #[arg(long, default_value_t = 500)]
    settle_ms: u64,
    /// The syncer's --drain-timeout.
    #[arg(long, default_value = "1s")]
    drain_timeout: String,
    /// Extra argument for the syncer (repeat), e.g. `--syncer-arg=--batch=10ms`.
    #[arg(long = "syncer-arg", allow_hyphen_values = true)]
    syncer_args: Vec<String>,
    /// RUST_LOG of the syncer (the registry nodes use E2E_RUST_LOG or `info,openraft=warn`).
    #[arg(long, default_value = "info")]
    syncer_log: String,
    /// Keep the syncer's log (and the registry's data and logs) after the run and print where.
    #[arg(long)]
    keep_logs: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Run even though this benchmark was built without optimizations (it would then also pick
    /// the debug binaries of the registry and the syncer).
    #[arg(long)]
    allow_debug: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    e2e::run_bench("syncer_bench", run(&args))
}

// ---------------------------------------------------------------------------------------------
// HAProxy observation.

/// What the poller saw during one phase.
#[derive(Debug, Default, Clone)]
struct Seen {
    /// First answer whose managed count differed from the count at the start.
    first_change: Option<Instant>,
    /// First answer with exactly `target` managed servers listed.
    reached: Option<Instant>,
    /// First answer with `target` listed and all of them ready (adds only).
    all_ready: Option<Instant>,
    polls: u64,
    /// Slowest `show servers state` answer.
    slowest_poll: Duration,
    last_listed: usize,
    errors: u64,
}

/// Polls every `every` until the backend lists `target` managed servers (and, if `want_ready`,
/// all ready), `stop` is set, or `limit` passes.
async fn poll_backend(sock: PathBuf, target: usize, want_ready: bool, every: Duration, limit: Duration, stop: Arc<AtomicBool>) -> Seen {
    let start = Instant::now();
    let mut seen = Seen::default();
    let mut initial: Option<usize> = None;
    while start.elapsed() < limit && !stop.load(Ordering::Relaxed) {
        let asked = Instant::now();
        match managed_servers(&sock, BACKEND).await {
            Ok(servers) => {
                let at = Instant::now();
                let listed = servers.len();
                seen.polls += 1;
                seen.slowest_poll = seen.slowest_poll.max(at - asked);
                seen.last_listed = listed;
                let init = *initial.get_or_insert(listed);
                if seen.first_change.is_none() && listed != init {
                    seen.first_change = Some(at);
                }
                if listed == target {
                    seen.reached.get_or_insert(at);
                    if servers.iter().all(|s| s.state == AdminState::Ready) {
                        seen.all_ready.get_or_insert(at);
                    }
                    if !want_ready || seen.all_ready.is_some() {
                        break;
                    }
                }
            }
            Err(_) => seen.errors += 1,
        }
        tokio::time::sleep_until((asked + every).into()).await;
    }
    seen
}

// ---------------------------------------------------------------------------------------------
// The syncer's metrics and log.

fn delta(before: &Samples, after: &Samples, prefix: &str) -> Samples {
    after
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d != 0.0)
        .collect()
}

fn ops_by_kind(m: &Samples) -> BTreeMap<String, u64> {
    m.iter()
        .filter_map(|(k, v)| {
            let kind = k.strip_prefix("syncer_ops_total{kind=\"")?.strip_suffix("\"}")?;
            Some((kind.to_string(), *v as u64))
        })
        .collect()
}

/// `name` summed over its label sets, 0 when the syncer has none.
fn metric(m: &Samples, name: &str) -> f64 {
    metrics::sum(m, name).unwrap_or(0.0)
}

/// Seconds since the Unix epoch of an RFC 3339 UTC timestamp (`2025-01-02T03:04:05.678901Z`),
/// as tracing-subscriber's JSON format writes it.
fn parse_ts(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, mi, sec) = (t.next()?.parse::<i64>().ok()?, t.next()?.parse::<i64>().ok()?, t.next()?.parse::<f64>().ok()?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some((days * 86400 + h * 3600 + mi * 60) as f64 + sec)
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The syncer's `applied` log lines between two wall-clock times: count by kind, first and last.
#[derive(Debug, Default)]
struct Applied {
    by_kind: BTreeMap<String, u64>,
    first: Option<f64>,
    last: Option<f64>,
    held_warnings: u64,
    sync_errors: u64,
}

fn applied_between(log: &Path, from: f64, to: f64) -> Applied {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut a = Applied::default();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        let Some(ts) = v["timestamp"].as_str().and_then(parse_ts) else { continue };
        if ts < from || ts > to {
            continue;
        }
        let msg = v["fields"]["message"].as_str().unwrap_or("");
        match msg {
            "applied" => {
                let op = v["fields"]["op"].as_str().unwrap_or("?");
                let kind = op.split(['(', ' ', '{']).next().unwrap_or("?").to_string();
                *a.by_kind.entry(kind).or_default() += 1;
                a.first = Some(a.first.map_or(ts, |f: f64| f.min(ts)));
                a.last = Some(a.last.map_or(ts, |l: f64| l.max(ts)));
            }
            // These warnings are rate-limited: a line stands for itself and the `repeated`
            // ones left out before it.
            "breaker: holding removals" => a.held_warnings += 1 + v["fields"]["repeated"].as_u64().unwrap_or(0),
            "could not sync backend; will retry" => a.sync_errors += 1 + v["fields"]["repeated"].as_u64().unwrap_or(0),
            _ => {}
        }
    }
    a
}

// ---------------------------------------------------------------------------------------------
// Registry traffic.

/// When a batch of requests started and ended.
struct Burst {
    first_sent: Instant,
    last_ack: Instant,
    retries: u64,
}

/// Runs `count` requests with `concurrency` in flight; each retried (bounded) on retriable errors.
async fn burst<F, Fut>(count: usize, concurrency: usize, deadline: Instant, f: F) -> Result<Burst>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), client::Error>>,
{
    let retries = AtomicU64::new(0);
    let first_sent = Instant::now();
    let results: Vec<Result<Instant>> = futures::stream::iter(0..count)
        .map(|i| {
            let (f, retries) = (&f, &retries);
            async move {
                let mut attempt = 0;
                loop {
                    match f(i).await {
                        Ok(()) => return Ok(Instant::now()),
                        Err(e) if e.is_retriable() && attempt < 5 && Instant::now() < deadline => {
                            attempt += 1;
                            retries.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => return Err(anyhow!("request {i}: {e}")),
                    }
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut last_ack = first_sent;
    for r in results {
        last_ack = last_ack.max(r?);
    }
    Ok(Burst { first_sent, last_ack, retries: retries.into_inner() })
}

/// Keepalives that did not renew, whatever the reason.
fn failures(r: e2e::lease::Renewals) -> u64 {
    r.not_found + r.failed
}

fn instance_name(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

// ---------------------------------------------------------------------------------------------
// One phase (one direction of one round).

#[derive(Debug, Clone)]
struct Phase {
    mode: String,
    round: usize,
    direction: &'static str,
    /// Time the registry took: first request sent -> last acknowledged.
    requests_ms: f64,
    retries: u64,
    /// First request sent -> HAProxy lists the target count.
    from_first_ms: Option<f64>,
    /// Last request acknowledged -> HAProxy lists the target count.
    from_last_ms: Option<f64>,
    /// First request sent -> first change visible in HAProxy.
    first_change_ms: Option<f64>,
    /// First request sent -> all ready (adds).
    all_ready_ms: Option<f64>,
    polls: u64,
    slowest_poll_ms: f64,
    poll_errors: u64,
    last_listed: usize,
    ops: BTreeMap<String, u64>,
    passes: u64,
    held: u64,
    errors: u64,
    /// From the syncer's log: first and last `applied` op after the first request, in ms.
    log_first_op_ms: Option<f64>,
    log_last_op_ms: Option<f64>,
    log_ops: BTreeMap<String, u64>,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn since_ms(t: Option<Instant>, from: Instant) -> Option<f64> {
    t.map(|t| ms(t.saturating_duration_since(from)))
}

struct Env<'a> {
    args: &'a Args,
    client: Arc<client::Client>,
    http: reqwest::Client,
    sock: PathBuf,
    /// The syncer's `/metrics`.
    metrics_url: String,
    syncer_log: PathBuf,
}

impl Env<'_> {
    /// Runs `action` while polling HAProxy until it lists `target` managed servers.
    async fn phase<A, AF>(&self, mode: &str, round: usize, direction: &'static str, target: usize, action: A) -> Result<Phase>
    where
        A: FnOnce() -> AF,
        AF: std::future::Future<Output = Result<Burst>>,
    {
        let before = metrics::scrape(&self.http, &self.metrics_url).await?;
        let wall_start = unix_now();
        let limit = Duration::from_secs(self.args.phase_timeout_secs);
        let stop = Arc::new(AtomicBool::new(false));
        let poller = tokio::spawn(poll_backend(self.sock.clone(), target, direction == "add", Duration::from_millis(self.args.poll_ms), limit, stop.clone()));
        let burst = action().await;
        let burst = match burst {
            Ok(b) => b,
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                let _ = poller.await;
                return Err(e);
            }
        };
        let seen = poller.await?;
        // Let the syncer finish the pass (and log it) before reading its counters.
        tokio::time::sleep(Duration::from_millis(self.args.settle_ms)).await;
        let after = metrics::scrape(&self.http, &self.metrics_url).await?;
        let wall_first_sent = wall_start; // within a few microseconds of `burst.first_sent`
        let log = applied_between(&self.syncer_log, wall_start, unix_now());
        let d = delta(&before, &after, "syncer_");
        Ok(Phase {
            mode: mode.to_string(),
            round,
            direction,
            requests_ms: ms(burst.last_ack - burst.first_sent),
            retries: burst.retries,
            from_first_ms: since_ms(seen.reached, burst.first_sent),
            from_last_ms: seen.reached.map(|r| if r >= burst.last_ack { ms(r - burst.last_ack) } else { -ms(burst.last_ack - r) }),
            first_change_ms: since_ms(seen.first_change, burst.first_sent),
            all_ready_ms: since_ms(seen.all_ready, burst.first_sent),
            polls: seen.polls,
            slowest_poll_ms: ms(seen.slowest_poll),
            poll_errors: seen.errors,
            last_listed: seen.last_listed,
            ops: ops_by_kind(&d),
            passes: metric(&d, "syncer_passes_total") as u64,
            held: metric(&d, "syncer_held_removals_total") as u64,
            errors: metric(&d, "syncer_errors_total") as u64,
            log_first_op_ms: log.first.map(|t| ((t - wall_first_sent) * 1e6).round() / 1e3),
            log_last_op_ms: log.last.map(|t| ((t - wall_first_sent) * 1e6).round() / 1e3),
            log_ops: log.by_kind,
        })
    }
}

/// One round: register N, wait; remove N (`mode`), wait.
async fn round(env: &Env<'_>, mode: &str, round_no: usize, base_port: u16) -> Result<(Phase, Phase, u64)> {
    let a = env.args;
    let n = a.instances;
    let deadline = Instant::now() + Duration::from_secs(a.phase_timeout_secs * 3);
    // Start clean.
    let listed = managed_servers(&env.sock, BACKEND).await?.len();
    ensure!(listed == 0, "round {mode}/{round_no}: the backend still has {listed} managed servers");

    let mut leases = Vec::new();
    for _ in 0..a.leases.max(1) {
        leases.push(env.client.grant(Duration::from_millis(a.lease_ttl_ms)).await.context("granting a lease")?.lease_id);
    }
    let renewer = Renewer::start(env.client.clone(), leases.clone(), Duration::from_millis(a.lease_ttl_ms / 3));
    let ports: Vec<u16> = (0..n).map(|i| base_port + i as u16).collect();

    let add = env
        .phase(mode, round_no, "add", n, || {
            let (client, ports, leases) = (env.client.clone(), ports.clone(), leases.clone());
            async move {
                burst(n, a.concurrency, deadline, |i| {
                    let client = client.clone();
                    let spec = proto::InstanceSpec {
                        address: "127.0.0.1".into(),
                        port: ports[i] as u64,
                        lease_id: Some(leases[i % leases.len()]),
                        weight: 100,
                        state: proto::InstanceState::Up,
                        meta: Default::default(),
                    };
                    let name = instance_name(ports[i]);
                    async move { client.put_instance(SERVICE, &name, &spec).await.map(|_| ()) }
                })
                .await
            }
        })
        .await;
    let add = match add {
        Ok(p) => p,
        Err(e) => {
            renewer.stop().await;
            return Err(e);
        }
    };
    // The right servers, not just the right number.
    let mut got: Vec<u16> = managed_servers(&env.sock, BACKEND).await?.iter().map(|s| s.port).collect();
    got.sort_unstable();
    if add.from_first_ms.is_some() && got != ports {
        renewer.stop().await;
        bail!("round {mode}/{round_no}: HAProxy lists {} managed servers but not the registered ports", got.len());
    }

    // Revoking ends the lease(s): stop renewing first (a keepalive would then answer 404).
    // DELETE leaves them alive, so they are renewed until the instances are gone.
    let mut renewer = Some(renewer);
    let mut renew_failures = 0;
    if mode == "revoke" {
        renew_failures += failures(renewer.take().expect("running").stop().await);
    }
    let remove = env
        .phase(mode, round_no, "remove", 0, || {
            let (client, ports, leases) = (env.client.clone(), ports.clone(), leases.clone());
            async move {
                match mode {
                    "revoke" => {
                        burst(leases.len(), a.concurrency, deadline, |i| {
                            let client = client.clone();
                            let l = leases[i];
                            async move { client.revoke(l).await.map(|_| ()) }
                        })
                        .await
                    }
                    _ => {
                        burst(n, a.concurrency, deadline, |i| {
                            let client = client.clone();
                            let name = instance_name(ports[i]);
                            async move {
                                match client.delete_instance(SERVICE, &name).await {
                                    Err(e) if e.is_not_found() => Ok(()),
                                    r => r.map(|_| ()),
                                }
                            }
                        })
                        .await
                    }
                }
            }
        })
        .await;
    if let Some(r) = renewer {
        renew_failures += failures(r.stop().await);
    }
    if mode != "revoke" {
        for l in &leases {
            let _ = env.client.revoke(*l).await;
        }
    }
    let remove = remove?;
    Ok((add, remove, renew_failures))
}

// ---------------------------------------------------------------------------------------------
// The run.

async fn run(args: &Args) -> Result<()> {
    ensure!(args.instances >= 1 && args.instances <= 20_000, "--instances must be in 1..=20000");
    ensure!(args.rounds >= 1 && args.rounds <= 100, "--rounds must be in 1..=100");
    ensure!(args.concurrency >= 1 && args.concurrency <= 1024, "--concurrency must be in 1..=1024");
    ensure!(args.leases >= 1 && args.leases <= 1000, "--leases must be in 1..=1000");
    ensure!(args.lease_ttl_ms >= 3000, "--lease-ttl-ms must be at least 3000");
    ensure!(args.poll_ms >= 1, "--poll-ms must be at least 1");
    ensure!(args.phase_timeout_secs >= 1 && args.phase_timeout_secs <= 3600, "--phase-timeout-secs must be in 1..=3600");
    for m in &args.modes {
        ensure!(m == "revoke" || m == "delete", "unknown mode {m:?} (revoke, delete)");
    }
    if cfg!(debug_assertions) && !args.allow_debug {
        bail!("syncer_bench was built without optimizations, and e2e::binary() would then run target/debug/{{registry,syncer}}; build with `cargo build --release -p registry -p syncer -p e2e` (or use scripts/bench syncer), or pass --allow-debug");
    }
    // `binary()` resolves E2E_BIN_DIR, else $CARGO_TARGET_DIR (or the workspace's target/) plus
    // debug/release by this benchmark's own profile; it panics if the file is missing, so check.
    let bins: Vec<(&str, PathBuf)> = ["registry", "syncer"]
        .into_iter()
        .map(|n| {
            try_binary(n).map(|p| (n, p)).map_err(|_| anyhow!("{n} binary missing: run `cargo build --release -p registry -p syncer` (or set E2E_BIN_DIR)"))
        })
        .collect::<Result<_>>()?;
    let syncer_bin = bins[1].1.clone();
    let base_ports = 20000u32 + args.instances as u32 * (args.rounds * args.modes.len()) as u32;
    ensure!(base_ports <= 65000, "too many instances x rounds for distinct ports");

    let t0 = Instant::now();
    eprintln!("starting a 3-node registry cluster ({})...", bins[0].1.display());
    let cluster = RegistryCluster::start(3).await;
    eprintln!("starting HAProxy with backend {BACKEND}...");
    let haproxy = Haproxy::start(&[BACKEND]).await;
    let version = haproxy.show("show info").await.lines().find_map(|l| l.strip_prefix("Version:").map(|v| v.trim().to_string())).unwrap_or_default();
    let reloads_before = haproxy.reloads().await;
    let loads_before = haproxy.loads();

    let syncer_dir = tempfile::Builder::new().prefix("syncer-bench-").tempdir()?;
    let admin = format!("127.0.0.1:{}", free_port());
    let mut sargs: Vec<String> = vec![
        format!("--registry={}", cluster.urls().join(",")),
        format!("--haproxy-socket={}", haproxy.socket_path().display()),
        format!("--backend={BACKEND}"),
        "--max-remove-fraction=1".into(),
        "--min-servers=0".into(),
        format!("--drain-timeout={}", args.drain_timeout),
        format!("--admin={admin}"),
        "--id=syncer-bench".into(),
        "--log-format=json".into(),
    ];
    // The cluster is secured (RegistryCluster's default): the syncer reads with a token of its
    // own and reports its progress under `_syncers`, as on a balancer.
    sargs.extend(cluster.access_args("syncer", &["read", "announce:_syncers"]).await);
    sargs.extend(args.syncer_args.iter().cloned());
    let shown_args = sargs.join(" ");
    let mut syncer = Proc::new("syncer", &syncer_bin, &sargs, syncer_dir.path()).env("RUST_LOG", &args.syncer_log);
    syncer.start();
    let syncer_log = syncer.log.clone();

    let http = reqwest::Client::builder().no_proxy().build()?;
    let metrics_url = format!("http://{admin}/metrics");
    // Ready: the admin endpoint answers, the source is up and a pass has run.
    let ready = until(Duration::from_secs(30), "the syncer to be ready", || async {
        if syncer.has_exited() {
            return Some(Err(anyhow!("the syncer exited at start:\n{}", syncer.log_text())));
        }
        let m = metrics::scrape(&http, &metrics_url).await.ok()?;
        (metric(&m, "syncer_source_up") == 1.0 && metric(&m, "syncer_passes_total") >= 1.0).then_some(Ok(()))
    })
    .await;
    match ready {
        Ok(ready) => ready?,
        Err(_) => bail!("the syncer did not become ready within 30 s; log:\n{}", syncer.log_text()),
    }
    let metrics_start = metrics::scrape(&http, &metrics_url).await?;
    eprintln!("ready after {:.1} s; running {} round(s) x {:?} with {} instances...", t0.elapsed().as_secs_f64(), args.rounds, args.modes, args.instances);

    let env = Env { args, client: Arc::new(cluster.client()), http: http.clone(), sock: haproxy.socket_path(), metrics_url: metrics_url.clone(), syncer_log };
    let mut phases: Vec<Phase> = Vec::new();
    let mut renew_failures = 0;
    let mut k = 0u32;
    let mut failure: Option<anyhow::Error> = None;
    'outer: for mode in &args.modes {
        for r in 1..=args.rounds {
            let base = 20000 + (k * args.instances as u32) as u16;
            k += 1;
            match round(&env, mode, r, base).await {
                Ok((add, rem, f)) => {
                    eprintln!(
                        "{mode} round {r}: add {} ms from first PUT ({} ms after last ack); remove {} ms from first request ({} ms after last ack)",
                        fmt_opt(add.from_first_ms),
                        fmt_opt(add.from_last_ms),
                        fmt_opt(rem.from_first_ms),
                        fmt_opt(rem.from_last_ms)
                    );
                    let missed = add.from_first_ms.is_none() || rem.from_first_ms.is_none();
                    phases.push(add);
                    phases.push(rem);
                    renew_failures += f;
                    if missed {
                        failure = Some(anyhow!("{mode} round {r}: HAProxy did not reach the target within {} s", args.phase_timeout_secs));
                        break 'outer;
                    }
                }
                Err(e) => {
                    failure = Some(e.context(format!("{mode} round {r}")));
                    break 'outer;
                }
            }
            if syncer.has_exited() {
                failure = Some(anyhow!("the syncer exited during the run"));
                break 'outer;
            }
        }
    }
    let metrics_end = metrics::scrape(&http, &metrics_url).await.unwrap_or_default();
    let reloads_after = haproxy.reloads().await;
    let loads_after = haproxy.loads();
    let total = delta(&metrics_start, &metrics_end, "syncer_");
    let restarts = metric(&metrics_end, "syncer_haproxy_restarts_total") as u64;

    let ctx = Ctx {
        version,
        registry_bin: bins[0].1.clone(),
        syncer_bin,
        shown_args,
        reloads: (reloads_before, reloads_after),
        loads: (loads_before, loads_after),
        total_ops: ops_by_kind(&total),
        passes: metric(&total, "syncer_passes_total") as u64,
        errors: metric(&total, "syncer_errors_total") as u64,
        held: metric(&total, "syncer_held_removals_total") as u64,
        restarts,
        renew_failures,
    };
    let (text, json) = report(args, &ctx, &phases);
    println!("{text}");
    if let Some(path) = &args.json_out {
        write_json(path, &json)?;
        println!("JSON results written to {}", path.display());
    }
    if args.keep_logs {
        let kept = syncer_dir.keep();
        println!("syncer log kept: {}", kept.join("syncer.log").display());
        drop(syncer);
        drop(haproxy);
        let mut cluster = cluster;
        let kept = cluster.keep_data();
        drop(cluster);
        println!("registry logs and data kept under {}", kept.display());
    }
    match failure {
        Some(e) => Err(e),
        None if ctx.reloads.1 != ctx.reloads.0 => Err(anyhow!("HAProxy reloaded {} time(s) during the run", ctx.reloads.1 - ctx.reloads.0)),
        None => Ok(()),
    }
}

struct Ctx {
    version: String,
    registry_bin: PathBuf,
    syncer_bin: PathBuf,
    shown_args: String,
    reloads: (u64, u64),
    loads: (usize, usize),
    total_ops: BTreeMap<String, u64>,
    passes: u64,
    errors: u64,
    held: u64,
    restarts: u64,
    renew_failures: u64,
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "timeout".into())
}

/// min / median / max of the samples (None = a timed-out sample, counted as missing).
fn stats(samples: &[Option<f64>]) -> Value {
    let mut v: Vec<f64> = samples.iter().flatten().copied().collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let missing = samples.len() - v.len();
    if v.is_empty() {
        return json!({"n": 0, "missing": missing});
    }
    let median = if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 };
    json!({"n": v.len(), "missing": missing, "min_ms": v[0], "median_ms": (median * 1000.0).round() / 1000.0, "max_ms": v[v.len() - 1]})
}

fn stats_line(s: &Value) -> String {
    if s["n"] == 0 {
        return format!("no samples ({} timed out)", s["missing"]);
    }
    let mut l = format!(
        "min {:>8.1}  median {:>8.1}  max {:>8.1} ms  (n={})",
        s["min_ms"].as_f64().unwrap_or(0.0),
        s["median_ms"].as_f64().unwrap_or(0.0),
        s["max_ms"].as_f64().unwrap_or(0.0),
        s["n"]
    );
    if s["missing"].as_u64().unwrap_or(0) > 0 {
        let _ = write!(l, ", {} timed out", s["missing"]);
    }
    l
}

fn verdict(s: &Value, target: f64) -> &'static str {
    match (s["n"].as_u64(), s["missing"].as_u64(), s["max_ms"].as_f64()) {
        (Some(n), Some(0), Some(max)) if n > 0 && max <= target => "PASS",
        _ => "MISS",
    }
}

fn report(args: &Args, ctx: &Ctx, phases: &[Phase]) -> (String, Value) {
    let n = args.instances;
    let target = args.target_ms as f64;
    let mut t = String::new();
    let _ = writeln!(t, "=== syncer benchmark: backend {BACKEND} 0 -> {n} -> 0 servers on real HAProxy ===");
    let _ = writeln!(
        t,
        "HAProxy {} (Runtime API, unix socket); 3-node loopback registry; {} cores",
        ctx.version,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    let _ = writeln!(t, "registry: {}", ctx.registry_bin.display());
    let _ = writeln!(t, "syncer:   {} {}", ctx.syncer_bin.display(), ctx.shown_args);
    let _ = writeln!(t, "          (--max-remove-fraction 1 --min-servers 0: the breaker must not hold the mass removal)");
    let _ = writeln!(
        t,
        "registration: {n} instances (127.0.0.1, distinct ports), {} PUTs in flight, under {} lease(s) renewed by the benchmark; HAProxy polled every {} ms (`show servers state {BACKEND}`)",
        args.concurrency, args.leases, args.poll_ms
    );
    let _ = writeln!(t, "target: <= {} ms each way, 0 reloads", args.target_ms);

    let _ = writeln!(t, "\n--- per round (ms; 'first' = from the first request sent, 'last' = from the last request acknowledged) ---");
    let _ = writeln!(
        t,
        "{:<7} {:>2} {:<7} {:>9} {:>9} {:>9} {:>11} {:>11} {:>12} {:>6} {:>6}  ops (metrics)",
        "mode", "#", "dir", "requests", "first", "last", "1st change", "log ops", "slowest poll", "passes", "held"
    );
    for p in phases {
        let log_ops = match (p.log_first_op_ms, p.log_last_op_ms) {
            (Some(a), Some(b)) => format!("{a:.0}-{b:.0}"),
            _ => "-".into(),
        };
        let _ = writeln!(
            t,
            "{:<7} {:>2} {:<7} {:>9.1} {:>9} {:>9} {:>11} {:>11} {:>12.1} {:>6} {:>6}  {:?}{}",
            p.mode,
            p.round,
            p.direction,
            p.requests_ms,
            fmt_opt(p.from_first_ms),
            fmt_opt(p.from_last_ms),
            fmt_opt(p.first_change_ms),
            log_ops,
            p.slowest_poll_ms,
            p.passes,
            p.held,
            p.ops,
            if p.from_first_ms.is_none() { format!("  (stuck at {} managed)", p.last_listed) } else { String::new() }
        );
    }

    let pick = |dir: &str, mode: Option<&str>, f: fn(&Phase) -> Option<f64>| -> Vec<Option<f64>> {
        phases.iter().filter(|p| p.direction == dir && mode.is_none_or(|m| p.mode == m)).map(f).collect()
    };
    let mut summary = json!({});
    let _ = writeln!(t, "\n--- summary (min / median / max) ---");
    let add_first = stats(&pick("add", None, |p| p.from_first_ms));
    let add_last = stats(&pick("add", None, |p| p.from_last_ms));
    let _ = writeln!(t, "0 -> {n}   from first PUT sent:        {}   [{}]", stats_line(&add_first), verdict(&add_first, target));
    let _ = writeln!(t, "0 -> {n}   from last PUT acknowledged: {}   [{}]", stats_line(&add_last), verdict(&add_last, target));
    let add_req = stats(&pick("add", None, |p| Some(p.requests_ms)));
    let _ = writeln!(t, "          (registering: first PUT -> last ack {})", stats_line(&add_req));
    summary["add"] = json!({"from_first_request": add_first, "from_last_ack": add_last, "requests": add_req});
    for mode in &args.modes {
        let what = if mode == "revoke" { format!("revoke {} lease(s)", args.leases) } else { format!("DELETE x{n}") };
        let first = stats(&pick("remove", Some(mode), |p| p.from_first_ms));
        let last = stats(&pick("remove", Some(mode), |p| p.from_last_ms));
        let req = stats(&pick("remove", Some(mode), |p| Some(p.requests_ms)));
        let _ = writeln!(t, "{n} -> 0   {what:<18} from first sent:  {}   [{}]", stats_line(&first), verdict(&first, target));
        let _ = writeln!(t, "{n} -> 0   {what:<18} from last ack:    {}   [{}]", stats_line(&last), verdict(&last, target));
        let _ = writeln!(t, "          (requests: first sent -> last ack {})", stats_line(&req));
        summary[format!("remove_{mode}")] = json!({"from_first_request": first, "from_last_ack": last, "requests": req});
    }
    let reloads = ctx.reloads.1 - ctx.reloads.0;
    let _ = writeln!(
        t,
        "\nHAProxy reloads during the run: {reloads} (master counter {} -> {}; 'Loading success.' lines {} -> {}) [{}]",
        ctx.reloads.0,
        ctx.reloads.1,
        ctx.loads.0,
        ctx.loads.1,
        if reloads == 0 { "PASS" } else { "FAIL" }
    );
    let _ = writeln!(
        t,
        "syncer over the run: syncer_ops_total {:?}; passes {}; errors {}; held removals {}; HAProxy restarts seen {}",
        ctx.total_ops, ctx.passes, ctx.errors, ctx.held, ctx.restarts
    );
    if ctx.renew_failures > 0 {
        let _ = writeln!(t, "lease keepalive failures: {}", ctx.renew_failures);
    }

    let json = json!({
        "benchmark": "syncer_bench",
        "instances": n,
        "rounds": args.rounds,
        "modes": args.modes,
        "concurrency": args.concurrency,
        "leases": args.leases,
        "poll_ms": args.poll_ms,
        "target_ms": args.target_ms,
        "haproxy_version": ctx.version,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "registry_bin": ctx.registry_bin,
        "syncer_bin": ctx.syncer_bin,
        "syncer_args": ctx.shown_args,
        "summary": summary,
        "reloads": {"before": ctx.reloads.0, "after": ctx.reloads.1, "during": reloads, "loads_before": ctx.loads.0, "loads_after": ctx.loads.1},
        "syncer_totals": {"ops": ctx.total_ops, "passes": ctx.passes, "errors": ctx.errors, "held_removals": ctx.held, "haproxy_restarts": ctx.restarts},
        "phases": phases.iter().map(|p| json!({
            "mode": p.mode, "round": p.round, "direction": p.direction,
            "requests_ms": p.requests_ms, "retries": p.retries,
            "from_first_request_ms": p.from_first_ms, "from_last_ack_ms": p.from_last_ms,
            "first_change_ms": p.first_change_ms, "all_ready_ms": p.all_ready_ms,
            "polls": p.polls, "slowest_poll_ms": p.slowest_poll_ms, "poll_errors": p.poll_errors, "last_listed": p.last_listed,
            "ops": p.ops, "passes": p.passes, "held_removals": p.held, "errors": p.errors,
            "log_first_op_ms": p.log_first_op_ms, "log_last_op_ms": p.log_last_op_ms, "log_ops": p.log_ops,
        })).collect::<Vec<_>>(),
        "lease_keepalive_failures": ctx.renew_failures,
    });
    (t, json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse() {
        assert_eq!(parse_ts("1970-01-01T00:00:00Z"), Some(0.0));
        let t = parse_ts("2024-03-01T12:00:01.5Z").unwrap();
        assert!((t - 1709294401.5).abs() < 1e-6, "{t}");
    }
}
