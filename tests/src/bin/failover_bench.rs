//! Failover benchmark: how long writes stop when the leader of a 3-node loopback cluster is
//! SIGKILLed, for the registry with its defaults and, in the same run, for etcd with its own.
//!
//! A new write is issued every `--write-every` (10 ms) through a client that knows all three
//! nodes, whatever happens to earlier ones. For each kill the figure is the time from the
//! SIGKILL to the first acknowledgement of a write issued after it; beside it, when a survivor
//! first called itself leader. The killed node is restarted and the cluster left to settle
//! before the next kill.
//!
//! Then a rolling restart, as an operator upgrading the cluster does it: each node in turn gets
//! SIGTERM, is started again once it has exited, and the cluster settles before the next. The
//! figure is the longest stretch without an acknowledged write, with writes issued every
//! `--write-every` throughout; one node of the three is the leader when its turn comes, and
//! both systems hand leadership off on SIGTERM. Run through `scripts/bench failover`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use clap::Parser;
use e2e::bench::{percentile, write_json};
use e2e::{free_port, until, Proc, RegistryCluster};
use serde_json::{json, Value};
use tokio::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Leader SIGKILL to first acknowledged write, registry (defaults) and etcd (defaults)")]
struct Args {
    /// Leader kills per system.
    #[arg(long, default_value_t = 10)]
    kills: usize,
    /// A new write is issued this often.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    write_every: Duration,
    /// Steady writes before each kill, after the cluster has settled.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    steady: Duration,
    /// Measure only the registry (by default etcd too, if its `etcd` binary is installed).
    #[arg(long)]
    no_etcd: bool,
    /// Path of the etcd binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// Rolling restarts (each node in turn) per system.
    #[arg(long, default_value_t = 3)]
    rolls: usize,
    /// Extra `registry serve` flags (e.g. `--node-arg=--heartbeat=50ms`); none: the defaults.
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    node_args: Vec<String>,
    /// Write the figures here as JSON.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

/// One kill: milliseconds from the SIGKILL.
#[derive(Debug, Clone, Copy)]
struct Kill {
    /// A surviving node first said it leads.
    elected_ms: Option<f64>,
    /// The first write issued after the kill was acknowledged.
    resumed_ms: f64,
}

/// Acknowledged writes as (issued, acknowledged).
type Acks = Arc<Mutex<Vec<(Instant, Instant)>>>;

/// Starts write number `seq`, recording its acknowledgement in `acks`.
type Writer = Arc<dyn Fn(u64, Acks) + Send + Sync>;

/// One rolling restart: the longest stretch without an acknowledged write while each node was
/// stopped, restarted and caught up, in milliseconds; `leader` is the index of the one that led.
#[derive(Debug, Clone)]
struct Roll {
    gaps_ms: Vec<f64>,
    leader: usize,
}

/// The system under test, as the benchmark drives it.
trait System {
    fn name(&self) -> &'static str;
    /// Index of the node that leads now, once all running nodes agree.
    async fn leader(&self) -> Option<usize>;
    /// Whether node `i` (a survivor) says it leads.
    async fn leads(&self, i: usize) -> bool;
    /// Starts a write; its acknowledgement, if any, is recorded in `acks`.
    fn spawn_write(&self, seq: u64, acks: Acks) {
        (self.writer())(seq, acks)
    }
    /// What `spawn_write` does, detached from `self`, for a writer task of its own.
    fn writer(&self) -> Writer;
    fn kill(&mut self, i: usize);
    /// SIGTERM, as its operator would stop it, and wait for the exit; whether it exited.
    async fn terminate(&mut self, i: usize) -> bool;
    fn restart(&mut self, i: usize);
    /// Every node is up and current: the restarted one has caught up with the leader.
    async fn settled(&self) -> bool;
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    e2e::run_bench("failover_bench", run(args))
}

async fn run(args: Args) -> Result<()> {
    let mut report = Vec::new();
    let mut registry = Registry::start(&args.node_args).await?;
    let kills = measure(&mut registry, &args).await?;
    let rolls = roll(&mut registry, &args).await?;
    drop(registry);
    report.push(("registry", kills, rolls));
    if !args.no_etcd {
        if args.etcd.exists() {
            let mut etcd = Etcd::start(&args.etcd).await?;
            let kills = measure(&mut etcd, &args).await?;
            let rolls = roll(&mut etcd, &args).await?;
            report.push(("etcd", kills, rolls));
        } else {
            eprintln!("failover_bench: {} is missing; etcd not measured (install etcd-server)", args.etcd.display());
        }
    }
    let mut json = serde_json::Map::new();
    println!("leader SIGKILL -> first acknowledged write issued after it, {} kills each, 3 loopback nodes, fsync on", args.kills);
    for (name, kills, _) in &report {
        let resumed: Vec<f64> = kills.iter().map(|k| k.resumed_ms).collect();
        let elected: Vec<f64> = kills.iter().filter_map(|k| k.elected_ms).collect();
        println!(
            "{name:>9}: writes resume p50 {:>6.0} ms  max {:>6.0} ms  min {:>6.0} ms | a survivor leads after p50 {:>6.0} ms | each: {}",
            pct(&resumed, 50.0),
            pct(&resumed, 100.0),
            pct(&resumed, 0.0),
            pct(&elected, 50.0),
            resumed.iter().map(|m| format!("{m:.0}")).collect::<Vec<_>>().join(" ")
        );
        json.insert(
            name.to_string(),
            json!({
                "kills": kills.len(),
                "resumed_ms": resumed,
                "elected_ms": elected,
                "resumed_p50_ms": pct(&resumed, 50.0),
                "resumed_max_ms": pct(&resumed, 100.0),
            }),
        );
    }
    println!(
        "rolling restart (SIGTERM each node in turn, start it again, let it catch up), {} rolls each: longest stretch without an acknowledged write",
        args.rolls
    );
    for (name, _, rolls) in &report {
        let leader_gaps: Vec<f64> = rolls.iter().map(|r| r.gaps_ms[r.leader]).collect();
        let follower_gaps: Vec<f64> = rolls.iter().flat_map(|r| r.gaps_ms.iter().enumerate().filter(|(i, _)| *i != r.leader).map(|(_, g)| *g)).collect();
        println!(
            "{name:>9}: the leader's turn max {:>6.0} ms (each: {}) | a follower's turn max {:>6.0} ms",
            pct(&leader_gaps, 100.0),
            leader_gaps.iter().map(|m| format!("{m:.0}")).collect::<Vec<_>>().join(" "),
            pct(&follower_gaps, 100.0),
        );
        if let Some(Value::Object(o)) = json.get_mut(*name) {
            o.insert(
                "rolling_restart".into(),
                json!({ "rolls": rolls.len(), "leader_turn_gap_ms": leader_gaps, "follower_turn_gap_max_ms": pct(&follower_gaps, 100.0) }),
            );
        }
    }
    println!("(writes every {:?}; the systems share this machine's cores with the benchmark)", args.write_every);
    if let Some(path) = &args.json_out {
        write_json(path, &Value::Object(json))?;
    }
    Ok(())
}

/// The `p`th percentile (`e2e::bench::percentile`, nearest rank) of `xs`; NaN when empty.
fn pct(xs: &[f64], p: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    percentile(&v, p / 100.0).unwrap_or(f64::NAN)
}

async fn measure<S: System>(sys: &mut S, args: &Args) -> Result<Vec<Kill>> {
    let acks: Acks = Arc::default();
    let mut seq = 0u64;
    let mut kills = Vec::new();
    // Writes are paced by a ticker, not slept between: one is issued every tick, however long
    // the checks between ticks take.
    let mut pace = tokio::time::interval(args.write_every);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    for round in 0..args.kills {
        until(Duration::from_secs(30), "the cluster to settle", || async { sys.settled().await.then_some(()) }).await?;
        let leader = until(Duration::from_secs(30), "a leader", || sys.leader()).await?;
        // Steady writes, ending at a random point of the heartbeat cycle.
        let steady_until = Instant::now() + args.steady + Duration::from_millis(rand::random::<u64>() % 100);
        while Instant::now() < steady_until {
            pace.tick().await;
            seq += 1;
            sys.spawn_write(seq, acks.clone());
        }
        let killed_at = Instant::now();
        sys.kill(leader);
        let mut elected = None;
        let resumed = loop {
            pace.tick().await;
            seq += 1;
            sys.spawn_write(seq, acks.clone());
            if elected.is_none() {
                for i in 0..3 {
                    if i != leader && sys.leads(i).await {
                        elected = Some(killed_at.elapsed());
                    }
                }
            }
            let first = acks.lock().unwrap().iter().filter(|(issued, _)| *issued >= killed_at).map(|(_, acked)| *acked).min();
            if let Some(acked) = first {
                break acked - killed_at;
            }
            if killed_at.elapsed() > Duration::from_secs(20) {
                bail!("{}: no write acknowledged within 20 s of killing node {}", sys.name(), leader + 1);
            }
        };
        let k = Kill { elected_ms: elected.map(|d| d.as_secs_f64() * 1e3), resumed_ms: resumed.as_secs_f64() * 1e3 };
        eprintln!(
            "{} kill {}: node {} killed; writes resumed after {:.0} ms (a survivor led after {:?} ms)",
            sys.name(),
            round + 1,
            leader + 1,
            k.resumed_ms,
            k.elected_ms.map(|m| m.round())
        );
        kills.push(k);
        sys.restart(leader);
        acks.lock().unwrap().clear();
    }
    Ok(kills)
}

/// Rolling restarts: each node in turn is stopped with SIGTERM, started again once it has
/// exited, and the cluster left to settle; a writer task issues a write every tick throughout.
async fn roll<S: System>(sys: &mut S, args: &Args) -> Result<Vec<Roll>> {
    let acks: Acks = Arc::default();
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (write, acks, writing, every) = (sys.writer(), acks.clone(), writing.clone(), args.write_every);
        tokio::spawn(async move {
            let mut pace = tokio::time::interval(every);
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut seq = 1_000_000u64;
            while writing.load(std::sync::atomic::Ordering::SeqCst) {
                pace.tick().await;
                seq += 1;
                write(seq, acks.clone());
            }
        })
    };
    let mut rolls = Vec::new();
    for round in 0..args.rolls {
        let mut gaps = Vec::new();
        let mut leader_at_turn = None;
        for i in 0..3 {
            until(Duration::from_secs(30), "the cluster to settle", || async { sys.settled().await.then_some(()) }).await?;
            let leader = until(Duration::from_secs(30), "a leader", || sys.leader()).await?;
            if leader == i {
                leader_at_turn = Some(i);
            }
            tokio::time::sleep(args.steady).await;
            let from = Instant::now();
            if !sys.terminate(i).await {
                bail!("{}: node {} did not exit within 20 s of SIGTERM", sys.name(), i + 1);
            }
            sys.restart(i);
            until(Duration::from_secs(30), "the cluster to settle", || async { sys.settled().await.then_some(()) }).await?;
            tokio::time::sleep(args.steady).await;
            gaps.push(longest_gap(&acks.lock().unwrap(), from, Instant::now()).as_secs_f64() * 1e3);
        }
        let leader = leader_at_turn.context("no node led when its turn came")?;
        eprintln!(
            "{} roll {}: longest write gap per node {:?} ms (node {} led)",
            sys.name(),
            round + 1,
            gaps.iter().map(|g| g.round()).collect::<Vec<_>>(),
            leader + 1
        );
        rolls.push(Roll { gaps_ms: gaps, leader });
    }
    writing.store(false, std::sync::atomic::Ordering::SeqCst);
    writer.await?;
    Ok(rolls)
}

/// The longest stretch in [from, to] without an acknowledgement.
fn longest_gap(acks: &[(Instant, Instant)], from: Instant, to: Instant) -> Duration {
    let mut times: Vec<Instant> = acks.iter().map(|(_, acked)| *acked).filter(|t| *t >= from && *t <= to).collect();
    times.sort();
    let mut last = from;
    let mut longest = Duration::ZERO;
    for t in times.into_iter().chain([to]) {
        longest = longest.max(t - last);
        last = t;
    }
    longest
}

// ---------------------------------------------------------------------------------------------

struct Registry {
    cluster: RegistryCluster,
    client: client::Client,
}

impl Registry {
    async fn start(node_args: &[String]) -> Result<Registry> {
        let extra: Vec<&str> = node_args.iter().map(String::as_str).collect();
        let cluster = RegistryCluster::start_with(3, &extra).await;
        let client = cluster.client();
        Ok(Registry { cluster, client })
    }

    async fn info(&self, i: usize) -> Option<proto::ClusterInfo> {
        tokio::time::timeout(Duration::from_millis(200), self.client.cluster_at(&self.cluster.addrs[i])).await.ok()?.ok()
    }
}

impl System for Registry {
    fn name(&self) -> &'static str {
        "registry"
    }

    async fn leader(&self) -> Option<usize> {
        self.cluster.leader().await
    }

    async fn leads(&self, i: usize) -> bool {
        self.info(i).await.is_some_and(|info| info.role == proto::NodeRole::Leader)
    }

    fn writer(&self) -> Writer {
        let client = self.client.clone();
        Arc::new(move |seq, acks: Acks| {
            let client = client.clone();
            tokio::spawn(async move {
                let issued = Instant::now();
                let spec = proto::InstanceSpec {
                    address: "10.0.0.1".into(),
                    port: 80,
                    lease_id: None,
                    weight: 100,
                    state: Default::default(),
                    meta: Default::default(),
                };
                if client.put_instance("failover", &format!("w{}", seq % 64), &spec).await.is_ok() {
                    acks.lock().unwrap().push((issued, Instant::now()));
                }
            });
        })
    }

    fn kill(&mut self, i: usize) {
        self.cluster.nodes[i].kill();
    }

    async fn terminate(&mut self, i: usize) -> bool {
        self.cluster.nodes[i].terminate(Duration::from_secs(20)).await.is_some()
    }

    fn restart(&mut self, i: usize) {
        self.cluster.nodes[i].start();
    }

    async fn settled(&self) -> bool {
        let mut leaders = Vec::new();
        for i in 0..3 {
            match self.info(i).await {
                Some(info) if info.applied_index + 10 >= info.commit_index => leaders.push(info.leader),
                _ => return false,
            }
        }
        leaders[0].is_some() && leaders.iter().all(|l| *l == leaders[0])
    }
}

// ---------------------------------------------------------------------------------------------

struct Etcd {
    nodes: Vec<Proc>,
    clients: Vec<String>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Etcd {
    async fn start(bin: &std::path::Path) -> Result<Etcd> {
        let dir = tempfile::tempdir()?;
        let peer: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let client: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let initial = (0..3).map(|i| format!("n{}=http://127.0.0.1:{}", i + 1, peer[i])).collect::<Vec<_>>().join(",");
        let nodes = (0..3)
            .map(|i| {
                let args: Vec<String> = vec![
                    format!("--name=n{}", i + 1),
                    format!("--data-dir={}", dir.path().join(format!("n{}", i + 1)).display()),
                    format!("--listen-client-urls=http://127.0.0.1:{}", client[i]),
                    format!("--advertise-client-urls=http://127.0.0.1:{}", client[i]),
                    format!("--listen-peer-urls=http://127.0.0.1:{}", peer[i]),
                    format!("--initial-advertise-peer-urls=http://127.0.0.1:{}", peer[i]),
                    format!("--initial-cluster={initial}"),
                    "--initial-cluster-state=new".into(),
                    "--initial-cluster-token=failover-bench".into(),
                    "--log-level=warn".into(),
                ];
                Proc::spawn(&format!("etcd-{}", i + 1), bin, &args, dir.path())
            })
            .collect();
        let http = reqwest::Client::builder().connect_timeout(Duration::from_millis(500)).timeout(Duration::from_secs(10)).no_proxy().build()?;
        let clients = client.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
        Ok(Etcd { nodes, clients, http, _dir: dir })
    }

    /// (this member's id, the leader's id) from `/v3/maintenance/status`.
    async fn status(&self, i: usize) -> Option<(String, String)> {
        let resp =
            self.http.post(format!("{}/v3/maintenance/status", self.clients[i])).json(&json!({})).timeout(Duration::from_millis(200)).send().await.ok()?;
        let v: Value = resp.json().await.ok()?;
        Some((v["header"]["member_id"].as_str()?.to_string(), v["leader"].as_str()?.to_string()))
    }
}

impl System for Etcd {
    fn name(&self) -> &'static str {
        "etcd"
    }

    async fn leader(&self) -> Option<usize> {
        for i in 0..3 {
            if let Some((me, leader)) = self.status(i).await {
                if me == leader {
                    return Some(i);
                }
            }
        }
        None
    }

    async fn leads(&self, i: usize) -> bool {
        self.status(i).await.is_some_and(|(me, leader)| me == leader)
    }

    /// Like etcd's own client: the endpoints in turn until one acknowledges.
    fn writer(&self) -> Writer {
        let http = self.http.clone();
        let urls = self.clients.clone();
        Arc::new(move |seq, acks: Acks| {
            let (http, urls) = (http.clone(), urls.clone());
            tokio::spawn(async move {
                let issued = Instant::now();
                let b64 = base64::engine::general_purpose::STANDARD;
                let body = json!({"key": b64.encode(format!("failover/w{}", seq % 64)), "value": b64.encode("10.0.0.1:80")});
                for k in 0..urls.len() {
                    let url = &urls[(seq as usize + k) % urls.len()];
                    if let Ok(r) = http.post(format!("{url}/v3/kv/put")).json(&body).send().await {
                        if r.status().is_success() {
                            acks.lock().unwrap().push((issued, Instant::now()));
                            return;
                        }
                    }
                }
            });
        })
    }

    fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    async fn terminate(&mut self, i: usize) -> bool {
        self.nodes[i].terminate(Duration::from_secs(20)).await.is_some()
    }

    fn restart(&mut self, i: usize) {
        self.nodes[i].start();
    }

    async fn settled(&self) -> bool {
        let mut leaders = Vec::new();
        for i in 0..3 {
            match self.status(i).await {
                Some((_, l)) if l != "0" => leaders.push(l),
                _ => return false,
            }
        }
        leaders.iter().all(|l| *l == leaders[0])
    }
}
