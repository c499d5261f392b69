//! Keeping leases alive from a test or a benchmark, as an announcer does: `Renewer` through
//! the client library, a few leases at a time; `RenewPool` through a pool of lean keep-alive
//! connections (`http1`), for the benchmarks' thousands of leases, flat out or paced.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{anyhow, Result};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::bench::{epoch_ns, nanos};
use crate::http1::{write_retry, Conn, Target, REQUEST_TIMEOUT};

/// Renews a fixed set of leases, round after round, until stopped or dropped.
pub struct Renewer {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    not_found: AtomicU64,
    failed: AtomicU64,
}

/// What the keepalives of a `Renewer` met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewals {
    /// Answered 404: the lease had expired (or was revoked).
    pub not_found: u64,
    /// Any other failure (no leader, node down, timeout).
    pub failed: u64,
}

impl Renewer {
    /// Renews every lease in `leases` through `client` now and then every `every` (from the
    /// start of one round to the start of the next), the way the announcer renews at TTL/3.
    pub fn start(client: Arc<client::Client>, leases: Vec<u64>, every: Duration) -> Renewer {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let counts = Arc::new(Counts::default());
        let task = {
            let counts = counts.clone();
            tokio::spawn(async move {
                loop {
                    let round = Instant::now();
                    for l in &leases {
                        if *stopped.borrow() {
                            return;
                        }
                        match client.keepalive(*l).await {
                            Ok(_) => {}
                            Err(e) if e.is_not_found() => {
                                counts.not_found.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(_) => {
                                counts.failed.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep_until(round + every) => {}
                        _ = stopped.changed() => return,
                    }
                }
            })
        };
        Renewer { stop, task, counts }
    }

    /// What the keepalives so far met.
    pub fn renewals(&self) -> Renewals {
        Renewals { not_found: self.counts.not_found.load(Ordering::SeqCst), failed: self.counts.failed.load(Ordering::SeqCst) }
    }

    /// Stops renewing (the keepalive in flight, if any, is finished first) and says what the
    /// keepalives met.
    pub async fn stop(mut self) -> Renewals {
        let _ = self.stop.send(true);
        let _ = (&mut self.task).await;
        self.renewals()
    }
}

impl Drop for Renewer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The leases a `RenewPool` renews, growing as they are granted, taken round-robin.
pub struct LeaseSet {
    pub ids: RwLock<Vec<u64>>,
    /// Per lease (same index as `ids`): when it was last granted or renewed, in `epoch_ns`.
    pub last_ns: Vec<AtomicU64>,
    next: AtomicUsize,
}

impl LeaseSet {
    /// Room for `n` leases; `push` ignores any beyond.
    pub fn with_capacity(n: usize) -> LeaseSet {
        LeaseSet { ids: RwLock::new(Vec::with_capacity(n)), last_ns: (0..n).map(|_| AtomicU64::new(0)).collect(), next: AtomicUsize::new(0) }
    }

    /// Adds a lease just granted; returns its index, or None when the set is full.
    pub fn push(&self, id: u64) -> Option<usize> {
        let mut ids = self.ids.write().unwrap();
        let i = ids.len();
        (i < self.last_ns.len()).then(|| {
            self.last_ns[i].store(epoch_ns(std::time::Instant::now()), Ordering::Relaxed);
            ids.push(id);
            i
        })
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

/// What the keepalives of a `RenewPool` met.
#[derive(Default)]
pub struct RenewStats {
    pub ok: AtomicU64,
    pub not_found: AtomicU64,
    pub other_status: AtomicU64,
    pub io_errors: AtomicU64,
    /// Largest time between two renewals (or grant and first renewal) of one lease.
    pub max_gap_ns: AtomicU64,
    /// The same, for renewals inside the measurement window (`recording`).
    pub max_gap_window_ns: AtomicU64,
}

/// A pool of keep-alive connections renewing a `LeaseSet` round-robin, each lease in turn.
/// Stopped by `stop`, or by dropping it (then the keepalives in flight finish alone).
pub struct RenewPool {
    pub stats: Arc<RenewStats>,
    stop: Arc<AtomicBool>,
    /// While set, keepalive latencies are kept and gaps count as in the window.
    pub recording: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<Vec<u64>>>,
}

/// Latency samples kept per worker at most (bounds memory on long runs).
const MAX_SAMPLES_PER_WORKER: usize = 2_000_000;

impl RenewPool {
    /// `conns` connections to `leader`; `rate`: total keepalives per second across the pool,
    /// or `None` for as fast as possible. `hard_limit` bounds the workers' life whatever happens.
    pub fn start(leader: Target, set: Arc<LeaseSet>, conns: usize, rate: Option<f64>, hard_limit: Duration) -> RenewPool {
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
                            let t0 = std::time::Instant::now();
                            match conn.request("POST", &path, b"").await {
                                Ok(r) if r.status == 200 => {
                                    let now = std::time::Instant::now();
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
        RenewPool { stats, stop, recording, tasks }
    }

    /// Stops renewing, waits for the workers (a keepalive in flight is finished first), and
    /// returns the latencies (ns) recorded.
    pub async fn stop(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in std::mem::take(&mut self.tasks) {
            if let Ok(Ok(s)) = tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(1), t).await {
                all.extend(s);
            }
        }
        all
    }
}

impl Drop for RenewPool {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Grants `n` leases of `ttl_ms` through `leader` with `conc` requests in flight, pushing each
/// into `set` as it comes. Returns the elapsed time.
pub async fn grant_leases(leader: &Target, set: &Arc<LeaseSet>, n: usize, ttl_ms: u64, conc: usize, limit: Duration) -> Result<Duration> {
    let start = Instant::now();
    let deadline = std::time::Instant::now() + limit;
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
