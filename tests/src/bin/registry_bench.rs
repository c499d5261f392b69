//! `registry_bench`: a benchmark (not a test) of a 3-node loopback registry cluster with fsync on.
//!
//! It starts three real `registry serve` processes on free loopback ports, waits for a leader,
//! then measures:
//!
//! 1. **keepalives/s** with each requested number of live leases (default 1,000 and 10,000):
//!    a pool of HTTP/1.1 keep-alive connections to the leader renews the leases round-robin for
//!    `--duration-secs`; leases expired while being renewed are counted from every node's
//!    `registry_lease_expiries_total` (must be 0), from keepalive 404s, and by the largest gap
//!    the client saw between two renewals of one lease (must stay below the TTL);
//! 2. **register-to-visible latency**: a PUT acknowledged by the leader until the matching `put`
//!    event reaches a watcher connected to a *follower*'s `/v1/watch`, with one writer and with
//!    several concurrent writers;
//! 3. **resident memory** (VmRSS) of every node with 10,000 instances registered, each under its
//!    own lease (renewed slowly so nothing expires while measuring).
//!
//! Every loop is bounded in count and time; the benchmark talks to 127.0.0.1 only; the processes
//! are killed when the run ends, fails or is interrupted (a drop guard, plus `PR_SET_PDEATHSIG`
//! should the benchmark itself be killed).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::Parser;
use e2e::bench::{nanos, r1, r3, write_json, Summary};
use e2e::bench_cluster::BenchCluster as Cluster;
use e2e::http1::{write_retry, Conn, Target};
use e2e::load::{grant_leases, watcher, KeepaliveLoad, LeaseSet, Pending};
use e2e::procstat::Mem;
use e2e::{until, ClusterOptions};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

#[derive(Parser, Debug)]
#[command(name = "registry_bench", about = "Benchmark a 3-node loopback registry cluster (keepalives/s, register-to-visible latency, RSS)")]
struct Args {
    /// The `registry` binary to run [default: `registry` in $E2E_BIN_DIR, else in the target
    /// directory's `release/`].
    #[arg(long)]
    registry_bin: Option<PathBuf>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Live lease counts to measure keepalive throughput with, comma-separated (0 skips the phase).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    leases: Vec<usize>,
    /// TTL of the leases of the keepalive phase, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    ttl_ms: u64,
    /// Length of each keepalive measurement window, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Concurrent HTTP/1.1 keep-alive connections renewing leases.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Warm-up after the last lease is granted, before the window opens, in seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
    /// Sequential registrations for the register-to-visible latency (0 skips the phase).
    #[arg(long, default_value_t = 1000)]
    latency_samples: usize,
    /// Concurrent writers for the second latency run (0 skips it); together they do
    /// --latency-samples registrations.
    #[arg(long, default_value_t = 4)]
    latency_writers: usize,
    /// Instances (each under its own lease) to register before measuring memory (0 skips the phase).
    #[arg(long, default_value_t = 10000)]
    mem_instances: usize,
    /// TTL of the memory phase's leases, in milliseconds; they are renewed every TTL/4.
    #[arg(long, default_value_t = 60000)]
    mem_ttl_ms: u64,
    /// Requests in flight while granting leases and registering instances.
    #[arg(long, default_value_t = 32)]
    setup_concurrency: usize,
    /// Upper bound for each setup step (granting, registering, waiting for expiry), in seconds.
    #[arg(long, default_value_t = 300)]
    setup_timeout_secs: u64,
    /// Deadline for the cluster to elect a leader, in seconds.
    #[arg(long, default_value_t = 30)]
    startup_timeout_secs: u64,
    /// Directory under which the nodes' temporary data directories are created [default: the
    /// system temp dir]. It must be a real disk, not tmpfs, for fsync to mean anything.
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Keep the data directories and node logs after the run.
    #[arg(long)]
    keep_data: bool,
    /// Extra argument for every `registry serve` (repeat), e.g. `--node-arg=--heartbeat=50ms`.
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    node_args: Vec<String>,
    /// `compare`: every phase on a plain-HTTP cluster (cluster secret only), then the keepalive
    /// phase again, at the largest --leases count, on a cluster with TLS and ACL tokens on, and
    /// the ratio of the two. `plain` or `secure`: every phase on that kind of cluster only.
    #[arg(long, value_enum, default_value_t = Security::Compare)]
    security: Security,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Security {
    Compare,
    Plain,
    Secure,
}

/// The share of the plain keepalive rate a cluster with TLS and tokens must keep.
const SECURE_TARGET: f64 = 0.70;

fn main() -> ExitCode {
    let args = Args::parse();
    // The origin of the renewal timestamps (`load::epoch_ns`), before any lease is granted.
    e2e::load::epoch_ns(Instant::now());
    e2e::run_bench("registry_bench", run(&args))
}

async fn run(args: &Args) -> Result<()> {
    ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    ensure!(args.setup_concurrency >= 1, "--setup-concurrency must be at least 1");
    ensure!(args.duration_secs > 0.0 && args.duration_secs <= 3600.0, "--duration-secs must be in (0, 3600]");
    ensure!(args.leases.iter().all(|&n| n <= 1_000_000), "--leases entries must be at most 1000000");
    ensure!(args.mem_instances <= 1_000_000 && args.latency_samples <= 1_000_000, "counts are limited to 1,000,000");
    let registry_bin = args.registry_bin.clone().unwrap_or_else(|| e2e::process::bin_dir("release").join("registry"));
    let bin = std::fs::canonicalize(&registry_bin)
        .with_context(|| format!("registry binary {} not found (build it with `cargo build --release -p registry`)", registry_bin.display()))?;
    let mut cluster = start_cluster(&bin, args, args.security == Security::Secure).await?;
    let result = phases(args, &registry_bin, &cluster).await;
    if let Err(e) = &result {
        eprintln!("registry_bench: failed: {e:#}");
        cluster.procs.print_log_tails(30);
    }
    let mut report = result?;
    if args.security == Security::Compare {
        if let Some(&n) = args.leases.iter().max().filter(|&&n| n > 0) {
            // One cluster at a time: the two must not share the cores.
            let kept = cluster.dir().to_path_buf();
            drop(cluster);
            if args.keep_data {
                println!("plain cluster's data directories and node logs kept in {}", kept.display());
            }
            cluster = start_cluster(&bin, args, true).await?;
            let result = secure_comparison(args, &cluster, n, &mut report).await;
            if let Err(e) = &result {
                eprintln!("registry_bench: failed: {e:#}");
                cluster.procs.print_log_tails(30);
            }
            result?;
        }
    }
    println!("{}", report.text);
    if let Some(path) = &args.json_out {
        write_json(path, &report.json)?;
        println!("JSON results written to {}", path.display());
    }
    if args.keep_data {
        println!("data directories and node logs kept in {}", cluster.dir().display());
    }
    Ok(())
}

struct Report {
    text: String,
    json: Value,
}

// ---------------------------------------------------------------------------------------------
// The cluster: three `registry serve` processes (`e2e::RegistryCluster`: SIGTERM, then SIGKILL
// when dropped), and how the benchmark reaches them.

/// `secure`: TLS with node certificates and ACLs on, as `registry tls init` and
/// `--acl-bootstrap-token-file` make them; otherwise plain HTTP with the cluster secret.
async fn start_cluster(bin: &Path, args: &Args, secure: bool) -> Result<Cluster> {
    let opts = ClusterOptions {
        secure,
        node_args: args.node_args.clone(),
        bin: Some(bin.to_path_buf()),
        data_root: args.data_root.clone(),
        dir_prefix: "registry-bench-".into(),
        keep_data: args.keep_data,
        // The nodes log as this benchmark's RUST_LOG says, if it is set.
        log_filter: std::env::var("RUST_LOG").ok(),
        // A node under a profiler gets to write its output.
        stop_grace: Some(Duration::from_secs(5)),
        ready_limit: Duration::from_secs(args.startup_timeout_secs),
        ..Default::default()
    };
    Cluster::start(3, opts, "registry_bench").await
}

/// CPU time of every node so far, in clock ticks, in node order.
fn node_cpu_ticks(c: &Cluster) -> Vec<u64> {
    c.pids().into_iter().map(|pid| cpu_ticks(&format!("/proc/{pid}/stat")).unwrap_or(0)).collect()
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(stat_path: &str) -> Option<u64> {
    let text = std::fs::read_to_string(stat_path).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn clock_ticks_per_sec() -> f64 {
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU use of the three nodes and of this benchmark over a window, in % of one core.
struct CpuWindow {
    start: Instant,
    nodes: Vec<u64>,
    me: u64,
}

impl CpuWindow {
    fn open(c: &Cluster) -> CpuWindow {
        CpuWindow { start: Instant::now(), nodes: node_cpu_ticks(c), me: cpu_ticks("/proc/self/stat").unwrap_or(0) }
    }
    fn close(&self, c: &Cluster) -> (Vec<f64>, f64) {
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        let hz = clock_ticks_per_sec();
        let pct = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / hz / secs * 100.0;
        let nodes = node_cpu_ticks(c).iter().zip(&self.nodes).map(|(b, a)| pct(*a, *b)).collect();
        (nodes, pct(self.me, cpu_ticks("/proc/self/stat").unwrap_or(0)))
    }
}

// ---------------------------------------------------------------------------------------------
// The phases.

async fn phases(args: &Args, registry_bin: &Path, cluster: &Cluster) -> Result<Report> {
    let started = Instant::now();
    let leader_id = cluster.wait_leader(Duration::from_secs(args.startup_timeout_secs)).await?;
    // From the nodes' start, not this phase's: starting the cluster waited for a leader too.
    let elected_in = cluster.procs.started.elapsed();
    let leader_addr = cluster.node(leader_id).addr;
    let leader = cluster.target(leader_addr);
    // A first write and revoke, so the leader's log is warm and it has heard from a quorum.
    let mut probe = Conn::new(&leader);
    let v = write_retry(&mut probe, "POST", "/v1/leases", br#"{"ttl_ms":10000}"#, None, Instant::now() + Duration::from_secs(10)).await?;
    let probe_lease = v["lease_id"].as_u64().ok_or_else(|| anyhow!("grant answer without lease_id: {v}"))?;
    write_retry(&mut probe, "DELETE", &format!("/v1/leases/{probe_lease}"), b"", None, Instant::now() + Duration::from_secs(10)).await?;
    let mem_idle = cluster.rss();

    let mut text = String::new();
    let mut js = json!({
        "config": {
            "nodes": 3, "fsync": true, "loopback": true, "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "ttl_ms": args.ttl_ms, "duration_secs": args.duration_secs, "concurrency": args.concurrency,
            "latency_samples": args.latency_samples, "latency_writers": args.latency_writers,
            "mem_instances": args.mem_instances, "mem_ttl_ms": args.mem_ttl_ms, "node_args": args.node_args,
            "registry_bin": registry_bin,
            "tls_and_tokens": cluster.secure.is_some(),
        },
        "leader_elected_ms": elected_in.as_millis() as u64,
        "leader": leader_id,
    });
    let kind = if cluster.secure.is_some() { "TLS and ACL tokens on" } else { "plain HTTP, cluster secret" };
    let _ = writeln!(text, "\n=== registry benchmark: 3 nodes on 127.0.0.1, fsync on, {kind}, {} cores ===", js["config"]["cores"]);
    let _ = writeln!(text, "leader: node {leader_id} ({leader_addr}), elected {} ms after start", elected_in.as_millis());
    let _ = writeln!(text, "data: {}", cluster.dir().display());

    // 1. Keepalive throughput.
    let mut ka_results = Vec::new();
    for &n in args.leases.iter().filter(|&&n| n > 0) {
        eprintln!("[bench] keepalive phase: {n} leases, TTL {} ms, {} connections, {} s", args.ttl_ms, args.concurrency, args.duration_secs);
        let r = keepalive_phase(args, cluster, &leader, n).await.with_context(|| format!("keepalive phase with {n} leases"))?;
        let _ = writeln!(text, "\n--- keepalives: {n} live leases, TTL {} ms, {} connections to the leader ---", args.ttl_ms, args.concurrency);
        let _ = writeln!(text, "{}", r.text);
        ka_results.push(r.json);
    }
    js["keepalive"] = Value::Array(ka_results);

    // 2. Register-to-visible latency.
    if args.latency_samples > 0 {
        eprintln!("[bench] latency phase: {} sequential registrations, then {} writers", args.latency_samples, args.latency_writers);
        let (t, j) = latency_phase(args, cluster, leader_id).await.context("latency phase")?;
        let _ = writeln!(text, "{t}");
        js["latency"] = j;
    }

    // 3. Memory with N instances.
    if args.mem_instances > 0 {
        eprintln!("[bench] memory phase: {} instances under {} leases", args.mem_instances, args.mem_instances);
        let (t, j) = memory_phase(args, cluster, &leader, mem_idle).await.context("memory phase")?;
        let _ = writeln!(text, "{t}");
        js["memory"] = j;
    }

    let end_leader = cluster.current_leader().await.ok();
    let changes = cluster.metric_all("registry_leader_changes_total").await.unwrap_or_default();
    let _ = writeln!(text, "\nleader at the end: {:?} (leader changes seen per node, incl. the first election: {:?})", end_leader, changes);
    if end_leader != Some(leader_id) {
        let _ = writeln!(text, "WARNING: leadership moved during the run; figures after the move went through forwarding");
    }
    js["leader_at_end"] = json!(end_leader);
    js["leader_changes_per_node"] = json!(changes);
    js["elapsed_secs"] = json!(r1(started.elapsed().as_secs_f64()));
    Ok(Report { text, json: js })
}

struct PhaseOut {
    text: String,
    json: Value,
}

/// The keepalive phase with `n` leases again, on `cluster` (TLS and tokens on), appended to the
/// plain run's `report` with the ratio of the two rates.
async fn secure_comparison(args: &Args, cluster: &Cluster, n: usize, report: &mut Report) -> Result<()> {
    let leader_id = cluster.wait_leader(Duration::from_secs(args.startup_timeout_secs)).await?;
    let leader = cluster.target(cluster.node(leader_id).addr);
    eprintln!("[bench] keepalive phase with TLS and tokens: {n} leases, TTL {} ms, {} connections, {} s", args.ttl_ms, args.concurrency, args.duration_secs);
    let r = keepalive_phase(args, cluster, &leader, n).await.with_context(|| format!("keepalive phase with {n} leases, TLS and tokens on"))?;
    let plain = report.json["keepalive"]
        .as_array()
        .and_then(|a| a.iter().find(|k| k["leases"] == n))
        .and_then(|k| k["keepalives_per_sec"].as_f64())
        .ok_or_else(|| anyhow!("no plain keepalive figure for {n} leases"))?;
    let secured = r.json["keepalives_per_sec"].as_f64().unwrap_or(0.0);
    let ratio = if plain > 0.0 { secured / plain } else { 0.0 };
    let verdict = if ratio >= SECURE_TARGET { "met" } else { "MISSED" };
    let t = &mut report.text;
    let _ =
        writeln!(t, "\n--- keepalives with TLS and ACL tokens: {n} live leases, TTL {} ms, {} connections to the leader ---", args.ttl_ms, args.concurrency);
    let _ = writeln!(t, "(a fresh cluster with `registry tls init` certificates and ACLs on; the load generator holds an `announce:*` token, so each keepalive pays TLS, the token lookup and the lease-owner check)");
    let _ = writeln!(t, "{}", r.text);
    let _ = writeln!(
        t,
        "TLS + tokens vs plain HTTP: {secured:.0} / {plain:.0} keepalives/s = {:.0} % (target >= {:.0} %: {verdict})",
        ratio * 100.0,
        SECURE_TARGET * 100.0
    );
    report.json["keepalive_secure"] = r.json;
    report.json["secure_vs_plain"] = json!({"leases": n, "plain_per_sec": r1(plain), "secure_per_sec": r1(secured), "ratio": r3(ratio), "target": SECURE_TARGET, "met": ratio >= SECURE_TARGET});
    Ok(())
}

async fn keepalive_phase(args: &Args, cluster: &Cluster, leader: &Target, n: usize) -> Result<PhaseOut> {
    let limit = Duration::from_secs(args.setup_timeout_secs);
    let expired_before = cluster.expiries().await?;
    let leader_node = cluster.nodes.iter().find(|n| n.addr == leader.addr).expect("leader is one of the nodes");
    let ka_before_leader = cluster.keepalives(leader_node).await?;
    let set = Arc::new(LeaseSet::with_capacity(n));
    let window = Duration::from_secs_f64(args.duration_secs);
    let warmup = Duration::from_secs_f64(args.warmup_secs);
    // Renewal starts with the first grant, so early leases never go unrenewed while the rest
    // are granted.
    let renewer = KeepaliveLoad::start(leader.clone(), set.clone(), args.concurrency, None, limit + window + warmup + Duration::from_secs(30));
    let grant_time = grant_leases(leader, &set, n, args.ttl_ms, args.setup_concurrency, limit).await;
    let grant_time = match grant_time {
        Ok(t) => t,
        Err(e) => {
            renewer.stop().await;
            return Err(e);
        }
    };
    tokio::time::sleep(warmup).await;

    let cpu = CpuWindow::open(cluster);
    let ok0 = renewer.stats.ok.load(Ordering::Relaxed);
    let t0 = Instant::now();
    renewer.recording.store(true, Ordering::Relaxed);
    let ka0 = cluster.keepalives(leader_node).await?;
    let t0_server = Instant::now();
    tokio::time::sleep(window).await;
    let ok1 = renewer.stats.ok.load(Ordering::Relaxed);
    let elapsed = t0.elapsed();
    let ka1 = cluster.keepalives(leader_node).await?;
    let server_elapsed = t0_server.elapsed();
    renewer.recording.store(false, Ordering::Relaxed);
    let (cpu_nodes, cpu_me) = cpu.close(cluster);
    let stats = renewer.stats.clone();
    let mut samples = renewer.stop().await;
    let stopped = Instant::now();
    let expired_after = cluster.expiries().await?;
    let ka_after_leader = cluster.keepalives(leader_node).await?;
    let expired_while_renewed = expired_after.saturating_sub(expired_before);

    let rate = (ok1 - ok0) as f64 / elapsed.as_secs_f64();
    let server_rate = (ka1 - ka0) / server_elapsed.as_secs_f64();
    let lat = Summary::of(&mut samples);
    let max_gap_ms = stats.max_gap_ns.load(Ordering::Relaxed) as f64 / 1e6;
    let max_gap_window_ms = stats.max_gap_window_ns.load(Ordering::Relaxed) as f64 / 1e6;
    let not_found = stats.not_found.load(Ordering::Relaxed);
    let other = stats.other_status.load(Ordering::Relaxed);
    let io_err = stats.io_errors.load(Ordering::Relaxed);
    let granted = set.len();
    let rss = cluster.rss();

    // The leases are no longer renewed: wait for all of them to expire, so the next phase
    // starts clean (and to see that expiry works).
    let want = expired_before + granted as u64;
    let expiry_limit = (stopped + Duration::from_millis(args.ttl_ms) + Duration::from_secs(30)).saturating_duration_since(Instant::now());
    let expired = until(expiry_limit, "every lease to expire", || async {
        match cluster.expiries().await {
            Ok(n) => (n >= want).then(|| Ok(stopped.elapsed())),
            Err(e) => Some(Err(e)),
        }
    })
    .await;
    let all_expired_after = match expired {
        Ok(after) => Some(after?),
        Err(_) => None,
    };

    let ideal_period_ms = if rate > 0.0 { n as f64 / rate * 1000.0 } else { f64::INFINITY };
    let mut t = String::new();
    let _ = writeln!(
        t,
        "granted {granted} leases in {:.2} s ({:.0} grants/s, {} in flight; each grant is a Raft entry, fsynced)",
        grant_time.as_secs_f64(),
        granted as f64 / grant_time.as_secs_f64(),
        args.setup_concurrency
    );
    let _ = writeln!(t, "keepalives/s (client, 2xx):     {:>10.0}   over {:.1} s", rate, elapsed.as_secs_f64());
    let _ = writeln!(t, "keepalives/s (leader metric):   {:>10.0}", server_rate);
    let _ = writeln!(t, "keepalive latency:              {}", lat.line());
    let _ = writeln!(t, "each lease renewed every ~{:.0} ms on average; largest gap between two renewals of one lease: {:.0} ms in the window, {:.0} ms over its whole life incl. granting (TTL {} ms)", ideal_period_ms, max_gap_window_ms, max_gap_ms, args.ttl_ms);
    let _ = writeln!(
        t,
        "EXPIRED WHILE RENEWED:          {expired_while_renewed}   (sum of registry_lease_expiries_total over all nodes, before/after){}",
        if expired_while_renewed == 0 { "" } else { "  <-- MUST BE 0" }
    );
    let _ = writeln!(t, "keepalive answers 404 / other non-2xx / I/O errors: {not_found} / {other} / {io_err}");
    let _ = writeln!(
        t,
        "CPU during the window (% of one core): nodes {:?}, load generator {:.0}%  (machine total = {}%)",
        cpu_nodes.iter().map(|c| c.round()).collect::<Vec<_>>(),
        cpu_me,
        100 * js_cores()
    );
    let _ = writeln!(t, "RSS after the window: {}", rss_line(&rss));
    match all_expired_after {
        Some(d) => {
            let _ =
                writeln!(t, "after renewal stopped, all {granted} leases expired within {:.2} s (TTL {:.1} s)", d.as_secs_f64(), args.ttl_ms as f64 / 1000.0);
        }
        None => {
            let _ = writeln!(t, "WARNING: after renewal stopped, not all {granted} leases expired within TTL + 30 s");
        }
    }
    let json = json!({
        "leases": n,
        "granted": granted,
        "ttl_ms": args.ttl_ms,
        "connections": args.concurrency,
        "grant_secs": r3(grant_time.as_secs_f64()),
        "grants_per_sec": r1(granted as f64 / grant_time.as_secs_f64()),
        "window_secs": r3(elapsed.as_secs_f64()),
        "keepalives_per_sec": r1(rate),
        "keepalives_per_sec_leader_metric": r1(server_rate),
        "keepalives_leader_metric_total_delta": ka_after_leader - ka_before_leader,
        "latency": lat.json(),
        "max_renewal_gap_ms": r1(max_gap_ms),
        "max_renewal_gap_in_window_ms": r1(max_gap_window_ms),
        "expired_while_renewed": expired_while_renewed,
        "keepalive_404": not_found,
        "keepalive_other_non_2xx": other,
        "keepalive_io_errors": io_err,
        "cpu_percent_nodes": cpu_nodes.iter().map(|c| r1(*c)).collect::<Vec<_>>(),
        "cpu_percent_load_generator": r1(cpu_me),
        "rss_after": rss.iter().map(Mem::json).collect::<Vec<_>>(),
        "all_expired_secs_after_stop": all_expired_after.map(|d| r3(d.as_secs_f64())),
    });
    Ok(PhaseOut { text: t, json })
}

fn js_cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn rss_line(m: &[Mem]) -> String {
    m.iter()
        .enumerate()
        .map(|(i, m)| format!("node{} {:.1} MiB (peak {:.1})", i + 1, m.rss_kb as f64 / 1024.0, m.hwm_kb as f64 / 1024.0))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Default)]
struct LatencySamples {
    put_ack: Vec<u64>,
    ack_to_visible: Vec<u64>,
    send_to_visible: Vec<u64>,
    seen_before_ack: u64,
    revision_mismatch: u64,
    missing: u64,
    failed: u64,
}

impl LatencySamples {
    fn merge(&mut self, o: LatencySamples) {
        self.put_ack.extend(o.put_ack);
        self.ack_to_visible.extend(o.ack_to_visible);
        self.send_to_visible.extend(o.send_to_visible);
        self.seen_before_ack += o.seen_before_ack;
        self.revision_mismatch += o.revision_mismatch;
        self.missing += o.missing;
        self.failed += o.failed;
    }
}

/// One writer: `count` sequential registrations, each waited for on the watcher.
async fn latency_writer(leader: Target, pending: Pending, service: String, prefix: String, count: usize, lease: u64, deadline: Instant) -> LatencySamples {
    let mut s = LatencySamples::default();
    let mut conn = Conn::new(&leader);
    for i in 0..count {
        if Instant::now() >= deadline {
            s.failed += (count - i) as u64;
            break;
        }
        let name = format!("{prefix}-{i}");
        let (tx, rx) = oneshot::channel();
        pending.lock().unwrap().insert(name.clone(), tx);
        let body = serde_json::to_vec(&json!({"address": "127.0.0.1", "port": 10000 + (i % 50000), "lease_id": lease})).expect("serializes");
        let path = format!("/v1/services/{service}/instances/{name}");
        let sent = Instant::now();
        let resp = conn.request("PUT", &path, &body).await;
        let acked = Instant::now();
        let revision = match resp.as_ref().map(|r| (r.status, r.json())) {
            Ok((200, Ok(v))) => v["revision"].as_u64().unwrap_or(0),
            _ => {
                pending.lock().unwrap().remove(&name);
                s.failed += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        s.put_ack.push(nanos(acked - sent));
        match tokio::time::timeout(Duration::from_secs(5), rx).await {
            Ok(Ok((seen, rev))) => {
                if rev != revision {
                    s.revision_mismatch += 1;
                }
                if seen < acked {
                    s.seen_before_ack += 1;
                }
                s.ack_to_visible.push(nanos(seen.saturating_duration_since(acked)));
                s.send_to_visible.push(nanos(seen - sent));
            }
            _ => {
                pending.lock().unwrap().remove(&name);
                s.missing += 1;
            }
        }
    }
    s
}

async fn latency_phase(args: &Args, cluster: &Cluster, leader_id: u64) -> Result<(String, Value)> {
    let limit = Duration::from_secs(args.setup_timeout_secs);
    let leader = cluster.target(cluster.node(leader_id).addr);
    let follower = cluster.nodes.iter().find(|n| n.id != leader_id).expect("3 nodes");
    let service = "bench-latency";
    let mut conn = Conn::new(&leader);
    let grant =
        write_retry(&mut conn, "POST", "/v1/leases", &serde_json::to_vec(&json!({"ttl_ms": args.mem_ttl_ms}))?, None, Instant::now() + Duration::from_secs(10))
            .await?;
    let lease = grant["lease_id"].as_u64().ok_or_else(|| anyhow!("grant without lease_id"))?;
    let since = grant["revision"].as_u64().unwrap_or(lease);
    let set = Arc::new(LeaseSet::with_capacity(1));
    set.push(lease);
    let renewer = KeepaliveLoad::start(leader.clone(), set, 1, Some(1.0), limit * 3);

    let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
    let events = Arc::new(AtomicU64::new(0));
    let (ctx, crx) = oneshot::channel();
    let url = format!("{}/v1/watch?service={service}&since={since}", follower.url);
    let watch = tokio::spawn(watcher(cluster.http.clone(), url, pending.clone(), ctx, events.clone()));
    let res = async {
        match tokio::time::timeout(Duration::from_secs(10), crx).await {
            Ok(Ok(())) => {}
            _ => bail!("the watcher on node {} did not connect", follower.id),
        }
        let deadline = Instant::now() + limit;
        let seq = latency_writer(leader.clone(), pending.clone(), service.into(), "seq".into(), args.latency_samples, lease, deadline).await;
        let mut conc = LatencySamples::default();
        let mut conc_elapsed = Duration::ZERO;
        if args.latency_writers > 0 {
            let per = args.latency_samples.div_ceil(args.latency_writers);
            let start = Instant::now();
            let tasks: Vec<_> = (0..args.latency_writers)
                .map(|w| tokio::spawn(latency_writer(leader.clone(), pending.clone(), service.into(), format!("conc{w}"), per, lease, deadline)))
                .collect();
            for t in tasks {
                conc.merge(t.await?);
            }
            conc_elapsed = start.elapsed();
        }
        Ok((seq, conc, conc_elapsed))
    }
    .await;
    watch.abort();
    renewer.stop().await;
    let (mut seq, mut conc, conc_elapsed) = res?;
    // Clean up: revoking the lease removes every instance of this phase in one entry.
    let _ = write_retry(&mut conn, "DELETE", &format!("/v1/leases/{lease}"), b"", None, Instant::now() + Duration::from_secs(10)).await;

    let mut t = String::new();
    let mut j = json!({"watcher_node": follower.id, "leader": leader_id, "events_seen": events.load(Ordering::Relaxed)});
    let mut one = |name: &str, title: &str, s: &mut LatencySamples, elapsed: Option<Duration>| {
        let ack = Summary::of(&mut s.put_ack);
        let vis = Summary::of(&mut s.ack_to_visible);
        let e2e = Summary::of(&mut s.send_to_visible);
        let _ = writeln!(t, "\n--- register-to-visible: {title}; watcher on follower node {} ---", follower.id);
        let _ = writeln!(t, "PUT acknowledged by leader -> put event on follower watch: {}", vis.line());
        let _ = writeln!(t, "PUT sent -> put event on follower watch (end to end):     {}", e2e.line());
        let _ = writeln!(t, "PUT sent -> acknowledged by the leader (commit, fsync):   {}", ack.line());
        let mut extra = format!(
            "event seen before the ack arrived: {}; revision mismatches: {}; not seen within 5 s: {}; failed PUTs: {}",
            s.seen_before_ack, s.revision_mismatch, s.missing, s.failed
        );
        if let Some(d) = elapsed {
            let _ = write!(extra, "; throughput {:.0} registrations/s", ack.count as f64 / d.as_secs_f64());
        }
        let _ = writeln!(t, "{extra}");
        j[name] = json!({
            "ack_to_visible": vis.json(), "send_to_visible": e2e.json(), "put_ack": ack.json(),
            "seen_before_ack": s.seen_before_ack, "revision_mismatch": s.revision_mismatch, "missing": s.missing, "failed": s.failed,
            "registrations_per_sec": elapsed.map(|d| r1(ack.count as f64 / d.as_secs_f64())),
        });
    };
    one("sequential", &format!("{} sequential registrations, 1 writer", args.latency_samples), &mut seq, None);
    if args.latency_writers > 0 {
        one(
            "concurrent",
            &format!("{} writers x {} registrations", args.latency_writers, args.latency_samples.div_ceil(args.latency_writers)),
            &mut conc,
            Some(conc_elapsed),
        );
        j["concurrent"]["writers"] = json!(args.latency_writers);
    }
    Ok((t, j))
}

async fn memory_phase(args: &Args, cluster: &Cluster, leader: &Target, idle: Vec<Mem>) -> Result<(String, Value)> {
    let n = args.mem_instances;
    let limit = Duration::from_secs(args.setup_timeout_secs);
    let expired_before = cluster.expiries().await?;
    let set = Arc::new(LeaseSet::with_capacity(n));
    // Each lease renewed about every TTL/4, the way an announcer would (TTL/3), spread over
    // two connections.
    let rate = n as f64 / (args.mem_ttl_ms as f64 / 1000.0 / 4.0);
    let renewer = KeepaliveLoad::start(leader.clone(), set.clone(), 2, Some(rate), limit * 3);
    let res = async {
        let grant_time = grant_leases(leader, &set, n, args.mem_ttl_ms, args.setup_concurrency, limit).await?;
        let ids = set.ids.read().unwrap().clone();
        let start = Instant::now();
        let deadline = start + limit;
        let next = Arc::new(AtomicUsize::new(0));
        let ids = Arc::new(ids);
        let last_rev = Arc::new(AtomicU64::new(0));
        let tasks: Vec<JoinHandle<Result<()>>> = (0..args.setup_concurrency.min(n))
            .map(|_| {
                let (next, ids, last_rev, leader) = (next.clone(), ids.clone(), last_rev.clone(), leader.clone());
                tokio::spawn(async move {
                    let mut conn = Conn::new(&leader);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= ids.len() {
                            return Ok(());
                        }
                        let body = serde_json::to_vec(&json!({
                            "address": format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
                            "port": 8080, "lease_id": ids[i], "meta": {"zone": format!("z{}", i % 3)}
                        }))?;
                        let v = write_retry(&mut conn, "PUT", &format!("/v1/services/bench-mem-{}/instances/inst-{i}", i % 10), &body, None, deadline).await?;
                        last_rev.fetch_max(v["revision"].as_u64().unwrap_or(0), Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        let put_time = start.elapsed();
        let caught_up = cluster.wait_applied(last_rev.load(Ordering::Relaxed), Duration::from_secs(60)).await?;
        Ok::<_, anyhow::Error>((grant_time, put_time, caught_up))
    }
    .await;
    let (grant_time, put_time, caught_up) = match res {
        Ok(v) => v,
        Err(e) => {
            renewer.stop().await;
            return Err(e);
        }
    };
    // Let the allocator and background work (snapshots) settle a little, still renewing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mem = cluster.rss();
    let mut counts = Vec::new();
    for node in &cluster.nodes {
        let v = cluster.get_json(&format!("{}/v1/services?stale=true", node.url)).await?;
        let c: u64 = v["services"]
            .as_array()
            .map(|a| a.iter().filter(|s| s["service"].as_str().is_some_and(|s| s.starts_with("bench-mem-"))).filter_map(|s| s["instances"].as_u64()).sum())
            .unwrap_or(0);
        counts.push(c);
    }
    let expired = cluster.expiries().await?.saturating_sub(expired_before);
    let renew_404 = renewer.stats.not_found.load(Ordering::Relaxed);
    renewer.stop().await;
    let disk: Vec<u64> = (0..cluster.nodes.len()).map(|i| dir_size(&cluster.procs.data_dir(i), 0)).collect();

    let mut t = String::new();
    let _ = writeln!(t, "\n--- memory: {n} instances, each under its own lease (TTL {} ms, renewed every ~TTL/4) ---", args.mem_ttl_ms);
    let _ = writeln!(
        t,
        "granted {n} leases in {:.2} s ({:.0}/s); registered {n} instances in {:.2} s ({:.0} PUTs/s, {} in flight); all nodes applied them {} ms later",
        grant_time.as_secs_f64(),
        n as f64 / grant_time.as_secs_f64(),
        put_time.as_secs_f64(),
        n as f64 / put_time.as_secs_f64(),
        args.setup_concurrency,
        caught_up.as_millis()
    );
    let _ = writeln!(t, "instances per node (stale list): {counts:?}; leases expired meanwhile: {expired}; keepalive 404s: {renew_404}");
    let _ = writeln!(t, "RSS idle (after start):          {}", rss_line(&idle));
    let _ = writeln!(t, "RSS with {n} instances:        {}", rss_line(&mem));
    let _ = writeln!(
        t,
        "data directory size:             {}",
        disk.iter().enumerate().map(|(i, b)| format!("node{} {:.1} MiB", i + 1, *b as f64 / 1048576.0)).collect::<Vec<_>>().join(", ")
    );
    let j = json!({
        "instances": n,
        "leases": n,
        "lease_ttl_ms": args.mem_ttl_ms,
        "grants_per_sec": r1(n as f64 / grant_time.as_secs_f64()),
        "puts_per_sec": r1(n as f64 / put_time.as_secs_f64()),
        "put_concurrency": args.setup_concurrency,
        "apply_catch_up_ms": caught_up.as_millis() as u64,
        "instances_per_node": counts,
        "expired_meanwhile": expired,
        "rss_idle": idle.iter().map(Mem::json).collect::<Vec<_>>(),
        "rss_loaded": mem.iter().map(Mem::json).collect::<Vec<_>>(),
        "data_dir_bytes": disk,
    });
    Ok((t, j))
}

/// Total size of the files under `dir` (bounded depth).
fn dir_size(dir: &Path, depth: usize) -> u64 {
    if depth > 8 {
        return 0;
    }
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path(), depth + 1),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
