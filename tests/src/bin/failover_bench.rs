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
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use e2e::bench::{percentile, write_json};
use e2e::etcd::EtcdCluster;
use e2e::failover::{self, Plan};
use e2e::RegistryCluster;
use serde_json::{json, Value};

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
    #[arg(long, default_value = e2e::etcd::DEFAULT_BIN)]
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

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    e2e::run_bench("failover_bench", run(args))
}

async fn run(args: Args) -> Result<()> {
    let plan = Plan { kills: args.kills, rolls: args.rolls, write_every: args.write_every, steady: args.steady };
    let mut report = Vec::new();
    let extra: Vec<&str> = args.node_args.iter().map(String::as_str).collect();
    let mut cluster = RegistryCluster::start_with(3, &extra).await;
    let mut registry = failover::Registry::new(&mut cluster);
    let kills = failover::kills(&mut registry, &plan).await?;
    let rolls = failover::rolls(&mut registry, &plan).await?;
    drop(cluster);
    report.push(("registry", kills, rolls));
    if !args.no_etcd {
        if args.etcd.exists() {
            let mut etcd = EtcdCluster::start(&args.etcd, 3, None)?;
            let kills = failover::kills(&mut etcd, &plan).await?;
            let rolls = failover::rolls(&mut etcd, &plan).await?;
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
