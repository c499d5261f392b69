//! Load against a registry cluster, shared by the benchmarks: a pool of connections renewing a
//! set of leases round-robin (flat out or paced), granting leases with many requests in flight,
//! and a `/v1/watch` follower that timestamps each `put` event for the writer waiting on it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use futures::StreamExt;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::bench::nanos;
use crate::http1::{write_retry, Conn, Target, REQUEST_TIMEOUT};

/// Monotonic origin for the nanosecond timestamps kept in atomics.
static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the first call (the origin is set then).
pub fn epoch_ns(t: Instant) -> u64 {
    t.saturating_duration_since(*EPOCH.get_or_init(Instant::now)).as_nanos() as u64
}

/// The leases a `KeepaliveLoad` renews, in the order they were granted; it may grow while
/// renewal runs.
pub struct LeaseSet {
    pub ids: RwLock<Vec<u64>>,
    /// Per lease (same index as `ids`): when it was last granted or renewed, in `epoch_ns`.
    pub last_ns: Vec<AtomicU64>,
    next: AtomicUsize,
}

impl LeaseSet {
    pub fn with_capacity(n: usize) -> LeaseSet {
        LeaseSet { ids: RwLock::new(Vec::with_capacity(n)), last_ns: (0..n).map(|_| AtomicU64::new(0)).collect(), next: AtomicUsize::new(0) }
    }
    pub fn push(&self, id: u64) {
        let mut ids = self.ids.write().unwrap();
        if ids.len() < self.last_ns.len() {
            self.last_ns[ids.len()].store(epoch_ns(Instant::now()), Ordering::Relaxed);
            ids.push(id);
        }
    }
    pub fn len(&self) -> usize {
        self.ids.read().unwrap().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The next lease in round-robin order: (index, id).
    pub fn take(&self) -> Option<(usize, u64)> {
        let ids = self.ids.read().unwrap();
        if ids.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % ids.len();
        Some((i, ids[i]))
    }
}

/// What the renewals met, counted across the pool.
#[derive(Default)]
pub struct RenewStats {
    pub ok: AtomicU64,
    pub not_found: AtomicU64,
    pub other_status: AtomicU64,
    pub io_errors: AtomicU64,
    /// Largest time between two renewals (or grant and first renewal) of one lease.
    pub max_gap_ns: AtomicU64,
    /// The same, for renewals inside the measurement window.
    pub max_gap_window_ns: AtomicU64,
}

/// A pool of connections renewing the leases of a `LeaseSet` round-robin, one keepalive in
/// flight per connection; `recording` turns latency sampling on (the measurement window).
pub struct KeepaliveLoad {
    pub stats: Arc<RenewStats>,
    stop: Arc<AtomicBool>,
    pub recording: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<Vec<u64>>>,
}

/// Latency samples kept per worker at most (bounds memory on long runs).
const MAX_SAMPLES_PER_WORKER: usize = 2_000_000;

impl KeepaliveLoad {
    /// `rate`: total keepalives per second across the pool, or `None` for as fast as possible.
    /// `hard_limit` bounds the workers' life whatever happens.
    pub fn start(leader: Target, set: Arc<LeaseSet>, conns: usize, rate: Option<f64>, hard_limit: Duration) -> KeepaliveLoad {
        let stats = Arc::new(RenewStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let recording = Arc::new(AtomicBool::new(false));
        let until = Instant::now() + hard_limit;
        let tasks = (0..conns)
            .map(|_| {
                let (set, stats, stop, recording, leader) = (set.clone(), stats.clone(), stop.clone(), recording.clone(), leader.clone());
                // Paced: every 100 ms, this worker renews its share of rate/10.
                let per_tick = rate.map(|r| ((r / 10.0 / conns as f64).ceil() as usize).max(1));
                tokio::spawn(async move {
                    let mut conn = Conn::new(&leader);
                    let mut samples = Vec::new();
                    let mut path = String::with_capacity(64);
                    let mut tick = tokio::time::interval(Duration::from_millis(100));
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    'outer: while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                        let batch = match per_tick {
                            Some(n) => {
                                tick.tick().await;
                                n
                            }
                            None => 64,
                        };
                        for _ in 0..batch {
                            if stop.load(Ordering::Relaxed) {
                                break 'outer;
                            }
                            let Some((i, id)) = set.take() else {
                                tokio::time::sleep(Duration::from_millis(2)).await;
                                continue 'outer;
                            };
                            path.clear();
                            let _ = write!(path, "/v1/leases/{id}/keepalive");
                            let t0 = Instant::now();
                            match conn.request("POST", &path, b"").await {
                                Ok(r) if r.status == 200 => {
                                    let now = Instant::now();
                                    let now_ns = epoch_ns(now);
                                    let prev = set.last_ns[i].swap(now_ns, Ordering::Relaxed);
                                    let gap = now_ns.saturating_sub(prev);
                                    stats.max_gap_ns.fetch_max(gap, Ordering::Relaxed);
                                    stats.ok.fetch_add(1, Ordering::Relaxed);
                                    if recording.load(Ordering::Relaxed) {
                                        stats.max_gap_window_ns.fetch_max(gap, Ordering::Relaxed);
                                        if samples.len() < MAX_SAMPLES_PER_WORKER {
                                            samples.push(nanos(now - t0));
                                        }
                                    }
                                }
                                Ok(r) if r.status == 404 => {
                                    stats.not_found.fetch_add(1, Ordering::Relaxed);
                                }
                                Ok(_) => {
                                    stats.other_status.fetch_add(1, Ordering::Relaxed);
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                }
                                Err(_) => {
                                    stats.io_errors.fetch_add(1, Ordering::Relaxed);
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                }
                            }
                        }
                    }
                    samples
                })
            })
            .collect();
        KeepaliveLoad { stats, stop, recording, tasks }
    }

    /// Stops the pool; the latency samples (ns) taken while recording.
    pub async fn stop(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            if let Ok(Ok(s)) = tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(1), t).await {
                all.extend(s);
            }
        }
        all
    }
}

/// Grants `n` leases with `conc` requests in flight, pushing each into `set` as it comes.
/// Returns the elapsed time.
pub async fn grant_leases(leader: &Target, set: &Arc<LeaseSet>, n: usize, ttl_ms: u64, conc: usize, limit: Duration) -> Result<Duration> {
    let start = Instant::now();
    let deadline = start + limit;
    let todo = Arc::new(AtomicUsize::new(0));
    let body = Arc::new(serde_json::to_vec(&json!({ "ttl_ms": ttl_ms }))?);
    let tasks: Vec<JoinHandle<Result<()>>> = (0..conc.min(n).max(1))
        .map(|_| {
            let (todo, set, body, leader) = (todo.clone(), set.clone(), body.clone(), leader.clone());
            tokio::spawn(async move {
                let mut conn = Conn::new(&leader);
                while todo.fetch_add(1, Ordering::Relaxed) < n {
                    let v = write_retry(&mut conn, "POST", "/v1/leases", &body, None, deadline).await?;
                    set.push(v["lease_id"].as_u64().ok_or_else(|| anyhow!("grant answer without lease_id: {v}"))?);
                }
                Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(start.elapsed())
}

/// Writers waiting for their event, by instance name.
pub type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<(Instant, u64)>>>>;

/// Streams `/v1/watch` from `url`, timestamps each `put` event as its bytes arrive and hands it
/// to the waiting writer.
pub async fn watcher(http: reqwest::Client, url: String, pending: Pending, connected: oneshot::Sender<()>, events: Arc<AtomicU64>) -> Result<()> {
    let resp = http.get(&url).send().await.with_context(|| format!("GET {url}"))?;
    ensure!(resp.status().is_success(), "GET {url}: {}", resp.status());
    let _ = connected.send(());
    let mut stream = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let seen = Instant::now();
        buf.extend_from_slice(&chunk?);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let ev: proto::WatchEvent = serde_json::from_slice(&line).with_context(|| format!("bad watch line {}", String::from_utf8_lossy(&line)))?;
            match ev {
                proto::WatchEvent::Put { revision, instance } => {
                    events.fetch_add(1, Ordering::Relaxed);
                    if let Some(tx) = pending.lock().unwrap().remove(&instance.instance) {
                        let _ = tx.send((seen, revision));
                    }
                }
                proto::WatchEvent::Compacted { .. } => bail!("watch answered compacted"),
                _ => {}
            }
        }
        ensure!(buf.len() <= 16 * 1024 * 1024, "watch line too long");
    }
    bail!("watch stream ended")
}
