//! The announcer's loop: folds health results, maintenance and shutdown into the desired set,
//! and keeps the backend equal to it (level-triggered: after any failure it simply syncs the
//! whole set again, with jittered backoff). On a stop it drains: until every balancer has
//! applied the drain (as the publisher can tell) or the drain time is up, whichever is first.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::InstanceState;
use rand::Rng;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::Config;
use crate::health::{Checker, RiseFall};
use crate::maint::{self, MaintState};
use crate::metrics::{InstanceLabels, Metrics};
use crate::publish::{Announcement, Desired, DrainProgress, Key, PublishError, Publisher};

/// Inputs of the loop.
#[derive(Debug)]
pub enum Event {
    /// One health check result for service number `idx` of config generation `gen` (a reload
    /// starts a new generation; results of the old checks are dropped).
    Health { gen: u64, idx: usize, result: Result<(), String>, took: Duration },
    /// SIGHUP: a config resolved anew (`reload::merge` decides what of it applies).
    Reload(Box<Config>),
    /// A maintenance switch (`announcer maint`), and where to answer: the state after it,
    /// saved, or why not.
    Maint(maint::Change, oneshot::Sender<Result<MaintState, MaintError>>),
    /// SIGTERM or SIGINT.
    Stop,
}

/// Why a maintenance switch did not (entirely) work.
#[derive(Debug)]
pub enum MaintError {
    /// Not applied.
    Refused(maint::ChangeError),
    /// Applied, but the file could not be written: it will not survive a restart.
    NotSaved { state: MaintState, error: String },
}

/// What the admin endpoint shows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    /// Host-wide maintenance.
    pub maint: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maint_reason: Option<String>,
    pub draining: bool,
    /// While draining: what is known of the balancers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainProgress>,
    /// Whether the backend holds the desired set right now.
    pub in_sync: bool,
    pub instances: Vec<InstanceStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstanceStatus {
    pub service: String,
    pub instance: String,
    pub healthy: bool,
    /// In maintenance, its own or the host's.
    pub maint: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maint_reason: Option<String>,
    /// The state announced, or `None` when not announced.
    pub announced: Option<InstanceState>,
}

pub struct Shared {
    pub metrics: Metrics,
    pub status: Mutex<Status>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Drained, deregistered, lease released.
    Graceful,
    /// A second signal cut the drain short.
    Forced,
}

/// Exponential backoff with jitter, so announcers that lost the registry together do not come
/// back in lockstep.
struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { next: min, min, max }
    }
    fn reset(&mut self) {
        self.next = self.min;
    }
    fn step(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(rand::thread_rng().gen_range(0.5..1.5))
    }
}

/// The running health checks, and the sender they report to; dropping them stops them.
struct Checks {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    sender: mpsc::Sender<Event>,
}

impl Drop for Checks {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts one task per configured health check, reporting into `events` as generation `gen`.
fn spawn_checks(config: &Config, gen: u64, events: &mpsc::Sender<Event>) -> Checks {
    let mut tasks = Vec::new();
    for (idx, s) in config.services.iter().enumerate() {
        let Some(c) = s.check.clone() else { continue };
        if let crate::health::Check::Http { url, tls: crate::health::HttpTls::SkipVerify, .. } = &c.check {
            tracing::warn!(service = %s.service, instance = %s.instance, %url, "tls_skip_verify: this check does not verify the server's certificate");
        }
        let events = events.clone();
        tasks.push(tokio::spawn(async move {
            let checker = Checker::new(c.check, c.timeout);
            let mut every = tokio::time::interval(c.interval);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let started = Instant::now();
                let result = checker.run().await;
                if events.send(Event::Health { gen, idx, result, took: started.elapsed() }).await.is_err() {
                    return;
                }
            }
        }));
    }
    Checks { tasks, sender: events.clone() }
}

struct State {
    health: Vec<Option<RiseFall>>,
    maint: MaintState,
    draining: bool,
    /// The balancers' progress with the drain, as last reported.
    drain: Option<DrainProgress>,
}

impl State {
    /// Rise/fall counters for `config`'s services; those of `old` (under `old_config`) carry
    /// over to an instance whose check did not change, so a reload does not flap it.
    fn health_for(config: &Config, old: Option<(&Config, &[Option<RiseFall>])>) -> Vec<Option<RiseFall>> {
        config
            .services
            .iter()
            .map(|s| {
                let kept = old.and_then(|(oc, oh)| {
                    let i = oc.services.iter().position(|o| o.service == s.service && o.instance == s.instance && o.check == s.check)?;
                    oh[i].clone()
                });
                kept.or_else(|| s.check.as_ref().map(|c| RiseFall::new(c.rise, c.fall)))
            })
            .collect()
    }

    fn healthy(&self, idx: usize) -> bool {
        self.health[idx].as_ref().is_none_or(RiseFall::healthy)
    }

    /// Unhealthy: not announced (the lease stays). Draining wins over maintenance, which wins
    /// over up. An instance in maintenance carries its reason in meta (`maint.reason`); the
    /// key is reserved, so a configured entry of that name is dropped.
    fn desired(&self, config: &Config) -> Desired {
        config
            .services
            .iter()
            .enumerate()
            .filter(|(i, _)| self.healthy(*i))
            .map(|(_, s)| {
                let key: Key = (s.service.clone(), s.instance.clone());
                let mut meta = s.meta.clone();
                meta.remove(proto::MAINT_REASON_META);
                let state = match self.maint.effective(&key) {
                    _ if self.draining => InstanceState::Drain,
                    Some(m) => {
                        if let Some(r) = &m.reason {
                            meta.insert(proto::MAINT_REASON_META.to_string(), r.clone());
                        }
                        InstanceState::Maint
                    }
                    None => InstanceState::Up,
                };
                let a = Announcement { address: s.address.clone(), port: s.port, weight: s.weight, state, meta };
                (key, a)
            })
            .collect()
    }
}

/// The task following the balancers through a drain; stopped when dropped.
struct Follower(tokio::task::JoinHandle<()>);

impl Drop for Follower {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The next message of `rx`, or never if there is none.
async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs until drained or stopped. `tx` is the sender of `events`, for the health checks it
/// starts (again on each reload). `maint` is the saved maintenance (`store`'s), where it
/// starts.
pub async fn run<P: Publisher>(
    mut publisher: P,
    mut config: Config,
    tx: mpsc::Sender<Event>,
    mut events: mpsc::Receiver<Event>,
    shared: Arc<Shared>,
    store: maint::Store,
    maint: MaintState,
) -> Outcome {
    let mut gen = 0u64;
    let mut checks = spawn_checks(&config, gen, &tx);
    runtime::notify::ready(&format!("announcing {} instances", config.services.len()));
    if maint.host.is_some() || !maint.instances.is_empty() {
        tracing::info!(host = ?maint.host, instances = ?maint.instances.keys().collect::<Vec<_>>(), file = %store.path().display(), "starting in maintenance, as saved");
    }
    let mut st = State { health: State::health_for(&config, None), maint, draining: false, drain: None };
    // While draining: the task following the balancers, and its findings.
    let mut follower: Option<Follower> = None;
    let mut progress: Option<mpsc::Receiver<DrainProgress>> = None;
    let config = &mut config;
    let tick_every = publisher.tick_interval();
    let mut backoff = Backoff::new(Duration::from_millis(100), tick_every.clamp(Duration::from_millis(200), Duration::from_secs(2)));
    let mut dirty = true;
    let mut retry_at = Instant::now();
    let mut next_tick = Instant::now() + tick_every;
    let mut drain_until: Option<Instant> = None;
    loop {
        let desired = st.desired(config);
        if dirty && Instant::now() >= retry_at {
            let started = Instant::now();
            let synced = publisher.sync(&desired).await;
            shared.metrics.sync_seconds.observe(started.elapsed().as_secs_f64());
            match synced {
                Ok(()) => {
                    dirty = false;
                    backoff.reset();
                    // The drain is published (again, if the set changed meanwhile): follow the
                    // balancers from these revisions.
                    if st.draining && drain_until.is_some() {
                        let (ptx, prx) = mpsc::channel(16);
                        follower = Some(Follower(tokio::spawn(publisher.follow_drain(ptx))));
                        progress = Some(prx);
                    }
                }
                Err(e) => {
                    shared.metrics.sync_failures.inc();
                    if matches!(e, PublishError::Lost(_)) {
                        shared.metrics.lost.inc();
                    }
                    let wait = backoff.step();
                    tracing::warn!(error = %e, retry_in = ?wait, "could not publish; will retry");
                    retry_at = Instant::now() + wait;
                }
            }
        }
        publish_status(&shared, config, &st, &desired, !dirty);
        let far = Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            _ = tokio::time::sleep_until(next_tick) => {
                let started = Instant::now();
                let ticked = publisher.tick().await;
                shared.metrics.keepalive_seconds.observe(started.elapsed().as_secs_f64());
                match ticked {
                    Ok(()) => next_tick = Instant::now() + tick_every,
                    Err(e) => {
                        shared.metrics.tick_failures.inc();
                        if matches!(e, PublishError::Lost(_)) {
                            shared.metrics.lost.inc();
                            dirty = true;
                            retry_at = Instant::now();
                        }
                        // Retry well within the TTL rather than a whole interval later.
                        let wait = backoff.step().min(tick_every);
                        tracing::warn!(error = %e, retry_in = ?wait, "keepalive failed");
                        next_tick = Instant::now() + wait;
                    }
                }
            }
            _ = tokio::time::sleep_until(retry_at), if dirty => {}
            _ = tokio::time::sleep_until(drain_until.unwrap_or(far)), if drain_until.is_some() => {
                match &st.drain {
                    Some(DrainProgress::Waiting { late }) => {
                        let late: Vec<String> = late.iter().map(ToString::to_string).collect();
                        tracing::warn!(drain = ?config.drain, ?late, "the drain time is up before these balancers applied the drain; deregistering anyway");
                    }
                    Some(DrainProgress::Unknown { .. } | DrainProgress::Unfollowed { .. }) => tracing::info!(drain = ?config.drain, "drain time over"),
                    _ if config.drain.is_zero() => {}
                    _ => tracing::warn!(drain = ?config.drain, "the drain time is up before the drain could be published or the balancers read; deregistering anyway"),
                }
                drop(follower);
                return finish(&mut publisher, &shared).await;
            }
            p = recv_opt(&mut progress), if progress.is_some() => match p {
                None => progress = None,
                Some(p) => {
                    match &p {
                        DrainProgress::Applied { balancers } => {
                            tracing::info!(?balancers, "every balancer has applied the drain; deregistering");
                            st.drain = Some(p);
                            publish_status(&shared, config, &st, &desired, !dirty);
                            drop(follower);
                            return finish(&mut publisher, &shared).await;
                        }
                        DrainProgress::Unknown { why } => tracing::info!(%why, drain = ?config.drain, "cannot tell when the balancers have drained; waiting the drain time"),
                        // Something else may balance them: the fixed time is all there is.
                        DrainProgress::Unfollowed { services } => {
                            tracing::info!(?services, drain = ?config.drain, "no balancer reports following these services; waiting the drain time")
                        }
                        DrainProgress::Waiting { late } => {
                            let late: Vec<String> = late.iter().map(ToString::to_string).collect();
                            tracing::info!(?late, "waiting for balancers to apply the drain");
                        }
                    }
                    st.drain = Some(p);
                }
            },
            ev = events.recv() => match ev {
                None => return finish(&mut publisher, &shared).await,
                Some(Event::Health { gen: g, .. }) if g != gen => {}
                Some(Event::Reload(new)) => {
                    let r = crate::reload::merge(config, *new);
                    if !r.needs_restart.is_empty() {
                        tracing::warn!(settings = ?r.needs_restart, "reload: these changed but need a restart; keeping the running values");
                    }
                    if r.applied.is_empty() {
                        tracing::info!("reload: no change to apply");
                    } else {
                        tracing::info!(changes = ?r.applied, "reload: applied");
                        gen += 1;
                        // The new checks report under the new generation; the old ones stop.
                        let tx = checks.sender.clone();
                        checks = spawn_checks(&r.config, gen, &tx);
                        st.health = State::health_for(&r.config, Some((config, &st.health)));
                        *config = r.config;
                        dirty = true;
                        retry_at = Instant::now();
                    }
                }
                Some(Event::Health { idx, result, took, .. }) => {
                    let s = &config.services[idx];
                    let labels = InstanceLabels { service: s.service.clone(), instance: s.instance.clone() };
                    shared.metrics.check_seconds.get_or_create(&labels).observe(took.as_secs_f64());
                    if let Err(why) = &result {
                        shared.metrics.checks_failed.get_or_create(&labels).inc();
                        tracing::debug!(service = %s.service, instance = %s.instance, %why, "check failed");
                    }
                    if let Some(rf) = st.health[idx].as_mut() {
                        if let Some(now_healthy) = rf.observe(result.is_ok()) {
                            tracing::info!(service = %s.service, instance = %s.instance, healthy = now_healthy, last = ?result.err(), "health changed");
                            dirty = true;
                        }
                    }
                }
                Some(Event::Maint(change, reply)) => {
                    let configured: Vec<Key> = config.services.iter().map(|s| (s.service.clone(), s.instance.clone())).collect();
                    let mut next = st.maint.clone();
                    let answer = match next.apply(&change, &configured, maint::now_ms()) {
                        Err(e) => {
                            tracing::warn!(?change, error = %e, "maintenance change refused");
                            Err(MaintError::Refused(e))
                        }
                        Ok(changed) => {
                            if changed {
                                tracing::info!(on = change.on, target = ?change.target, reason = ?change.reason, "maintenance changed");
                                st.maint = next.clone();
                                dirty = true;
                                retry_at = Instant::now();
                            }
                            // Saved even when unchanged: it repairs a file an earlier save missed.
                            let (store, state) = (store.clone(), next.clone());
                            let saved = tokio::task::spawn_blocking(move || store.save(&state)).await.unwrap_or_else(|e| Err(e.to_string()));
                            match saved {
                                Ok(()) => Ok(next),
                                Err(error) => {
                                    tracing::error!(%error, "could not save the maintenance state; it will not survive a restart");
                                    Err(MaintError::NotSaved { state: next, error })
                                }
                            }
                        }
                    };
                    let _ = reply.send(answer);
                }
                Some(Event::Stop) => {
                    if st.draining {
                        tracing::warn!("second signal: exiting without finishing the drain");
                        return Outcome::Forced;
                    }
                    tracing::info!(drain = ?config.drain, "signal: draining until the balancers have applied it (at most the drain time), then deregistering");
                    st.draining = true;
                    dirty = true;
                    retry_at = Instant::now();
                    drain_until = Some(Instant::now() + config.drain);
                }
            },
        }
    }
}

async fn finish<P: Publisher>(publisher: &mut P, shared: &Shared) -> Outcome {
    match tokio::time::timeout(Duration::from_secs(10), publisher.shutdown()).await {
        Ok(Ok(())) => tracing::info!("deregistered"),
        Ok(Err(e)) => tracing::warn!(error = %e, "could not deregister cleanly; the lease or session will expire"),
        Err(_) => tracing::warn!("deregistering timed out; the lease or session will expire"),
    }
    shared.metrics.published.set(0);
    Outcome::Graceful
}

fn publish_status(shared: &Shared, config: &Config, st: &State, desired: &Desired, in_sync: bool) {
    let instances = config
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let key = (s.service.clone(), s.instance.clone());
            let healthy = st.healthy(i);
            let labels = InstanceLabels { service: s.service.clone(), instance: s.instance.clone() };
            shared.metrics.healthy.get_or_create(&labels).set(healthy as i64);
            let m = st.maint.effective(&key);
            shared.metrics.instance_maint.get_or_create(&labels).set(m.is_some() as i64);
            InstanceStatus {
                service: s.service.clone(),
                instance: s.instance.clone(),
                healthy,
                maint: m.is_some(),
                maint_reason: m.and_then(|m| m.reason.clone()),
                announced: desired.get(&key).map(|a| a.state),
            }
        })
        .collect();
    if in_sync {
        shared.metrics.published.set(desired.len() as i64);
    }
    shared.metrics.maint.set(st.maint.host.is_some() as i64);
    *shared.status.lock().unwrap() = Status {
        maint: st.maint.host.is_some(),
        maint_reason: st.maint.host.as_ref().and_then(|m| m.reason.clone()),
        draining: st.draining,
        drain: st.drain.clone(),
        in_sync,
        instances,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let steps: Vec<Duration> = (0..6).map(|_| b.step()).collect();
        assert!(steps[0] >= Duration::from_millis(50) && steps[0] <= Duration::from_millis(150));
        assert!(steps[5] >= Duration::from_millis(400) && steps[5] <= Duration::from_millis(1200));
        b.reset();
        assert!(b.step() <= Duration::from_millis(150));
    }
}
