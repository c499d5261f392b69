//! How long writes stop when a cluster's leader goes, for any replicated system the benchmarks
//! drive (`System`): the registry, etcd, ZooKeeper. Used by `failover_bench` and `peers_bench`.
//!
//! A new write is issued every `Plan::write_every` through a client that knows every node,
//! whatever happens to earlier ones. For each SIGKILL of the leader the figure is the time from
//! the kill to the first acknowledgement of a write issued after it; beside it, when a survivor
//! first called itself leader. The killed node is restarted and the cluster left to settle
//! before the next kill. A rolling restart (`rolls`) SIGTERMs each node in turn, as an operator
//! upgrading the cluster does; its figure is the longest stretch without an acknowledged write.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use base64::Engine as _;
use serde_json::json;
use tokio::time::Instant;

use crate::etcd::EtcdCluster;
use crate::zookeeper::Ensemble;
use crate::{until, RegistryCluster};

/// How a failover measurement runs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Leader kills.
    pub kills: usize,
    /// Rolling restarts (each node in turn).
    pub rolls: usize,
    /// A new write is issued this often.
    pub write_every: Duration,
    /// Steady writes before each kill (and around each restart of a roll), after the cluster
    /// has settled.
    pub steady: Duration,
}

/// One kill: milliseconds from the SIGKILL.
#[derive(Debug, Clone, Copy)]
pub struct Kill {
    /// A surviving node first said it leads.
    pub elected_ms: Option<f64>,
    /// The first write issued after the kill was acknowledged.
    pub resumed_ms: f64,
}

/// One rolling restart: the longest stretch without an acknowledged write while each node was
/// stopped, restarted and caught up, in milliseconds; `leader` is the index of the one that led.
#[derive(Debug, Clone)]
pub struct Roll {
    pub gaps_ms: Vec<f64>,
    pub leader: usize,
}

/// Acknowledged writes as (issued, acknowledged).
pub type Acks = Arc<Mutex<Vec<(Instant, Instant)>>>;

/// Starts write number `seq`, recording its acknowledgement in `acks`.
pub type Writer = Arc<dyn Fn(u64, Acks) + Send + Sync>;

/// The system under test, as the measurement drives it.
#[allow(async_fn_in_trait)]
pub trait System {
    fn name(&self) -> &'static str;
    /// Number of nodes.
    fn size(&self) -> usize;
    /// Index of the node that leads now, once all running nodes agree.
    async fn leader(&self) -> Option<usize>;
    /// Whether node `i` (a survivor) says it leads.
    async fn leads(&self, i: usize) -> bool;
    /// What starts a write, detached from `self`, for a writer task of its own.
    fn writer(&self) -> Writer;
    fn kill(&mut self, i: usize);
    /// SIGTERM, as its operator would stop it, and wait for the exit; whether it exited.
    async fn terminate(&mut self, i: usize) -> bool;
    fn restart(&mut self, i: usize);
    /// Every node is up and current: a restarted one has caught up with the leader.
    async fn settled(&self) -> bool;
}

/// `plan.kills` leader SIGKILLs, each followed by a restart of the killed node.
pub async fn kills<S: System>(sys: &mut S, plan: &Plan) -> Result<Vec<Kill>> {
    let acks: Acks = Arc::default();
    let write = sys.writer();
    let mut seq = 0u64;
    let mut kills = Vec::new();
    // Writes are paced by a ticker, not slept between: one is issued every tick, however long
    // the checks between ticks take.
    let mut pace = tokio::time::interval(plan.write_every);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    for round in 0..plan.kills {
        until(Duration::from_secs(60), &format!("{} to settle", sys.name()), || async { sys.settled().await.then_some(()) }).await?;
        let leader = until(Duration::from_secs(30), &format!("a {} leader", sys.name()), || sys.leader()).await?;
        // Steady writes, ending at a random point of the heartbeat cycle.
        let steady_until = Instant::now() + plan.steady + Duration::from_millis(rand::random::<u64>() % 100);
        while Instant::now() < steady_until {
            pace.tick().await;
            seq += 1;
            write(seq, acks.clone());
        }
        let killed_at = Instant::now();
        sys.kill(leader);
        let mut elected = None;
        let resumed = loop {
            pace.tick().await;
            seq += 1;
            write(seq, acks.clone());
            if elected.is_none() {
                for i in (0..sys.size()).filter(|i| *i != leader) {
                    if sys.leads(i).await {
                        elected = Some(killed_at.elapsed());
                    }
                }
            }
            let first = acks.lock().unwrap().iter().filter(|(issued, _)| *issued >= killed_at).map(|(_, acked)| *acked).min();
            if let Some(acked) = first {
                break acked - killed_at;
            }
            if killed_at.elapsed() > Duration::from_secs(30) {
                bail!("{}: no write acknowledged within 30 s of killing node {}", sys.name(), leader + 1);
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
    until(Duration::from_secs(60), &format!("{} to settle", sys.name()), || async { sys.settled().await.then_some(()) }).await?;
    Ok(kills)
}

/// `plan.rolls` rolling restarts: each node in turn is stopped with SIGTERM, started again once
/// it has exited, and the cluster left to settle; a writer task issues a write every tick
/// throughout.
pub async fn rolls<S: System>(sys: &mut S, plan: &Plan) -> Result<Vec<Roll>> {
    let acks: Acks = Arc::default();
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (write, acks, writing, every) = (sys.writer(), acks.clone(), writing.clone(), plan.write_every);
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
    for round in 0..plan.rolls {
        let mut gaps = Vec::new();
        let mut leader_at_turn = None;
        for i in 0..sys.size() {
            until(Duration::from_secs(30), "the cluster to settle", || async { sys.settled().await.then_some(()) }).await?;
            let leader = until(Duration::from_secs(30), "a leader", || sys.leader()).await?;
            if leader == i {
                leader_at_turn = Some(i);
            }
            tokio::time::sleep(plan.steady).await;
            let from = Instant::now();
            if !sys.terminate(i).await {
                bail!("{}: node {} did not exit within 20 s of SIGTERM", sys.name(), i + 1);
            }
            sys.restart(i);
            until(Duration::from_secs(30), "the cluster to settle", || async { sys.settled().await.then_some(()) }).await?;
            tokio::time::sleep(plan.steady).await;
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

/// The registry: writes are instance PUTs (no lease) through a client of every node.
pub struct Registry<'a> {
    pub cluster: &'a mut RegistryCluster,
    client: client::Client,
}

impl<'a> Registry<'a> {
    pub fn new(cluster: &'a mut RegistryCluster) -> Registry<'a> {
        let client = cluster.client();
        Registry { cluster, client }
    }

    async fn info(&self, i: usize) -> Option<proto::ClusterInfo> {
        tokio::time::timeout(Duration::from_millis(200), self.client.cluster_at(&self.cluster.addrs[i])).await.ok()?.ok()
    }
}

impl System for Registry<'_> {
    fn name(&self) -> &'static str {
        "registry"
    }

    fn size(&self) -> usize {
        self.cluster.nodes.len()
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
        for i in 0..self.size() {
            match self.info(i).await {
                Some(info) if info.applied_index + 10 >= info.commit_index => leaders.push(info.leader),
                _ => return false,
            }
        }
        leaders[0].is_some() && leaders.iter().all(|l| *l == leaders[0])
    }
}

// ---------------------------------------------------------------------------------------------

/// etcd: writes are puts through its JSON gateway, trying the endpoints in turn until one
/// acknowledges, as etcd's own client does.
impl System for EtcdCluster {
    fn name(&self) -> &'static str {
        "etcd"
    }

    fn size(&self) -> usize {
        self.nodes.len()
    }

    async fn leader(&self) -> Option<usize> {
        EtcdCluster::leader(self).await
    }

    async fn leads(&self, i: usize) -> bool {
        EtcdCluster::leads(self, i).await
    }

    fn writer(&self) -> Writer {
        let http = self.http().clone();
        let urls = self.client_urls.clone();
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
        EtcdCluster::settled(self).await
    }
}

// ---------------------------------------------------------------------------------------------

/// ZooKeeper: writes are ephemeral creates through one session that knows every server (its
/// client moves the session to another server when its own goes).
pub struct Zookeeper<'a> {
    pub ensemble: &'a mut Ensemble,
    client: zookeeper_client::Client,
}

impl<'a> Zookeeper<'a> {
    /// Opens the writers' session and makes the parent node.
    pub async fn new(ensemble: &'a mut Ensemble) -> Result<Zookeeper<'a>> {
        use zookeeper_client as zk;
        let client = ensemble.connect(&ensemble.connect_string(), Duration::from_secs(10)).await.context("a ZooKeeper session for the failover writes")?;
        match client.create("/failover", b"", &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())).await {
            Ok(_) | Err(zk::Error::NodeExists) => {}
            Err(e) => bail!("creating /failover: {e}"),
        }
        Ok(Zookeeper { ensemble, client })
    }
}

impl System for Zookeeper<'_> {
    fn name(&self) -> &'static str {
        "zookeeper"
    }

    fn size(&self) -> usize {
        self.ensemble.nodes.len()
    }

    async fn leader(&self) -> Option<usize> {
        self.ensemble.leader().await
    }

    async fn leads(&self, i: usize) -> bool {
        self.ensemble.mode(i).await.as_deref() == Some("leader")
    }

    fn writer(&self) -> Writer {
        use zookeeper_client as zk;
        let client = self.client.clone();
        Arc::new(move |seq, acks: Acks| {
            let client = client.clone();
            tokio::spawn(async move {
                let issued = Instant::now();
                let options = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
                let created = tokio::time::timeout(Duration::from_secs(30), client.create(&format!("/failover/w{seq}"), b"10.0.0.1:80", &options)).await;
                if matches!(created, Ok(Ok(_))) {
                    acks.lock().unwrap().push((issued, Instant::now()));
                }
            });
        })
    }

    fn kill(&mut self, i: usize) {
        self.ensemble.nodes[i].kill();
    }

    async fn terminate(&mut self, i: usize) -> bool {
        self.ensemble.nodes[i].terminate(Duration::from_secs(20)).await.is_some()
    }

    fn restart(&mut self, i: usize) {
        self.ensemble.nodes[i].start();
    }

    async fn settled(&self) -> bool {
        self.ensemble.settled().await
    }
}
