//! The level-triggered loop: read the desired state from the source, the actual state from
//! HAProxy, plan, pass the plan through the breaker, apply. It runs on every source change
//! (after a short batching window) and every `resync` anyway, so drift and HAProxy restarts
//! are repaired, not just avoided.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

use crate::breaker::{Breaker, Limits};
use crate::driver::{Driver, Generation};
use crate::metrics::{BackendLabel, Metrics, OpLabel};
use crate::model::{is_managed, server_name, AdminState, DesiredServer, DesiredSet, Op};
use crate::plan::{plan, Draining};
use crate::source::{Rx, Snapshot};
use crate::state::StateDir;

/// Service → HAProxy backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub service: String,
    pub backend: String,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub mappings: Vec<Mapping>,
    /// Changes arriving within this window are applied together.
    pub batch: Duration,
    /// A pass runs at least this often (restart detection, drift repair, drains).
    pub resync: Duration,
    pub drain_timeout: Duration,
    pub limits: Limits,
    /// Without a live source, wait this long at start before applying the saved state.
    pub source_wait: Duration,
}

/// What each backend reflects, for the convergence report.
pub type Applied = BTreeMap<String, u64>;

pub struct Reconciler<D: Driver> {
    driver: D,
    settings: Settings,
    metrics: Arc<Metrics>,
    state_dir: Option<StateDir>,
    breakers: BTreeMap<String, Breaker>,
    draining: BTreeMap<String, Draining>,
    generation: Option<Generation>,
    saved_revision: Option<u64>,
    applied_tx: watch::Sender<Applied>,
    /// New settings from a reload (`reload::merge`), if anyone sends them.
    updates: Option<watch::Receiver<Settings>>,
    /// Repeated warnings (HAProxy down, a backend failing, the breaker holding): the change of
    /// state, then one line per period.
    quiet: runtime::logs::Throttle,
}

/// How often a warning that keeps coming back is logged again.
const REPEAT_EVERY: Duration = Duration::from_secs(30);

/// The servers a backend should have for `service`.
pub fn desired_set(snap: &Snapshot, service: &str) -> DesiredSet {
    let Some(endpoints) = snap.services.get(service) else { return DesiredSet::new() };
    endpoints
        .iter()
        .map(|(instance, e)| {
            let name = server_name(instance);
            let server = DesiredServer {
                name: name.clone(),
                address: e.address.clone(),
                port: e.port,
                weight: e.weight.min(proto::validate::MAX_WEIGHT),
                state: AdminState::from(e.state),
            };
            (name, server)
        })
        .collect()
}

impl<D: Driver> Reconciler<D> {
    pub fn new(driver: D, settings: Settings, metrics: Arc<Metrics>, state_dir: Option<StateDir>) -> (Reconciler<D>, watch::Receiver<Applied>) {
        let (applied_tx, applied_rx) = watch::channel(Applied::new());
        let breakers = settings.mappings.iter().map(|m| (m.backend.clone(), Breaker::new(settings.limits))).collect();
        let r = Reconciler {
            driver,
            settings,
            metrics,
            state_dir,
            breakers,
            draining: BTreeMap::new(),
            generation: None,
            saved_revision: None,
            applied_tx,
            updates: None,
            quiet: runtime::logs::Throttle::new(REPEAT_EVERY),
        };
        (r, applied_rx)
    }

    /// Runs until the source channel closes.
    /// Takes new settings from `updates` from the next pass on (SIGHUP). The mappings stay.
    pub fn with_updates(mut self, updates: watch::Receiver<Settings>) -> Self {
        self.updates = Some(updates);
        self
    }

    fn apply_update(&mut self) {
        let Some(rx) = self.updates.as_mut() else { return };
        let new = rx.borrow_and_update().clone();
        for b in self.breakers.values_mut() {
            b.set_limits(new.limits);
        }
        self.metrics.health.lock().unwrap().set_drain_timeout(new.drain_timeout);
        self.settings = Settings { mappings: std::mem::take(&mut self.settings.mappings), ..new };
    }

    pub async fn run(mut self, mut source: Rx) {
        let saved = self.state_dir.as_ref().and_then(|s| match s.load() {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "saved state unreadable; ignoring it");
                None
            }
        });
        let started = Instant::now();
        self.metrics.health.lock().unwrap().start(started, self.settings.mappings.iter().map(|m| m.backend.clone()).collect(), self.settings.drain_timeout);
        loop {
            let (snapshot, healthy) = {
                let st = source.borrow_and_update();
                self.observe_source(&st);
                (st.snapshot.clone(), st.healthy)
            };
            let desired = match (snapshot, &saved) {
                (Some(s), _) => {
                    if healthy {
                        self.save(&s);
                    }
                    Some(s)
                }
                // Never heard from the source: after a grace period, the saved state is the
                // best knowledge there is.
                (None, Some(saved)) if started.elapsed() >= self.settings.source_wait => Some(saved.clone()),
                _ => None,
            };
            if let Some(snap) = desired {
                self.pass(&snap).await;
            }
            let mut updates = self.updates.clone();
            let update = async {
                match updates.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let changed = tokio::select! {
                r = source.changed() => {
                    if r.is_err() {
                        return;
                    }
                    true
                }
                _ = tokio::time::sleep(self.settings.resync) => false,
                true = update => {
                    self.apply_update();
                    false
                }
            };
            if changed {
                // Let a burst of changes land, then apply them in one pass.
                tokio::time::sleep(self.settings.batch).await;
            }
        }
    }

    fn observe_source(&self, st: &crate::source::SourceState) {
        self.metrics.source_up.set(st.healthy as i64);
        self.metrics.relist_corrections.inner().store(st.corrections, std::sync::atomic::Ordering::Relaxed);
        let stale =
            if st.healthy { 0.0 } else { st.last_ok.and_then(|t| SystemTime::now().duration_since(t).ok()).map(|d| d.as_secs_f64()).unwrap_or(f64::INFINITY) };
        self.metrics.staleness_seconds.set(stale);
    }

    fn save(&mut self, snap: &Snapshot) {
        if self.saved_revision == Some(snap.revision) {
            return;
        }
        if let Some(dir) = &self.state_dir {
            match dir.save(snap) {
                Ok(()) => self.saved_revision = Some(snap.revision),
                Err(e) => tracing::error!(error = %e, path = %dir.path().display(), "could not save the desired state"),
            }
        }
    }

    /// One pass over every backend.
    pub async fn pass(&mut self, snap: &Snapshot) {
        self.metrics.passes.inc();
        match self.driver.generation().await {
            Ok(g) => {
                if self.generation.as_ref().is_some_and(|old| *old != g) {
                    tracing::warn!(old = ?self.generation, new = ?g, "HAProxy restarted or reloaded; re-applying the desired state");
                    self.metrics.haproxy_restarts.inc();
                    self.draining.clear();
                }
                self.generation = Some(g);
                self.metrics.health.lock().unwrap().haproxy_reached();
                if self.quiet.clear("haproxy") {
                    tracing::info!("HAProxy reachable again");
                }
            }
            Err(e) => {
                self.metrics.errors.inc();
                self.metrics.health.lock().unwrap().haproxy_unreachable(Instant::now(), e.to_string());
                if let Some(left_out) = self.quiet.hit("haproxy", std::time::Instant::now()) {
                    tracing::warn!(error = %e, repeated = left_out, "HAProxy unreachable");
                }
                return;
            }
        }
        let mut applied = self.applied_tx.borrow().clone();
        for m in self.settings.mappings.clone() {
            let result = self.pass_backend(&m, snap).await;
            self.metrics.health.lock().unwrap().backend_pass(&m.backend, matches!(result, Ok(true)), Instant::now());
            if result.is_ok() && self.quiet.clear(&format!("sync:{}", m.backend)) {
                tracing::info!(backend = %m.backend, "backend syncs again");
            }
            match result {
                Ok(true) => {
                    applied.insert(m.backend.clone(), snap.revision);
                    self.metrics.applied_revision.get_or_create(&BackendLabel { backend: m.backend.clone() }).set(snap.revision as i64);
                }
                Ok(false) => {}
                Err(e) => {
                    self.metrics.errors.inc();
                    if let Some(left_out) = self.quiet.hit(&format!("sync:{}", m.backend), std::time::Instant::now()) {
                        tracing::warn!(backend = %m.backend, error = %e, repeated = left_out, "could not sync backend; will retry");
                    }
                }
            }
        }
        self.applied_tx.send_if_modified(|a| {
            let changed = *a != applied;
            *a = applied;
            changed
        });
    }

    /// Syncs one backend; `Ok(true)` when it now reflects the snapshot fully.
    async fn pass_backend(&mut self, m: &Mapping, snap: &Snapshot) -> Result<bool, String> {
        let desired = desired_set(snap, &m.service);
        let label = BackendLabel { backend: m.backend.clone() };
        let started = Instant::now();
        let actual = self.driver.servers(&m.backend).await;
        self.metrics.read_seconds.get_or_create(&label).observe(started.elapsed().as_secs_f64());
        let actual = actual.map_err(|e| e.to_string())?;
        let now = Instant::now();
        let draining = self.draining.entry(m.backend.clone()).or_default();
        draining.retain(|name, _| actual.iter().any(|a| &a.name == name) && !desired.contains_key(name));
        let ops = plan(&actual, &desired, draining, now, self.settings.drain_timeout);
        let managed: Vec<String> = actual.iter().filter(|a| is_managed(&a.name)).map(|a| a.name.clone()).collect();
        let breaker = self.breakers.get_mut(&m.backend).expect("one breaker per mapping");
        let (allowed, held) = breaker.filter(ops, &desired, &managed, now);
        self.metrics.held_now.get_or_create(&label).set(held.len() as i64);
        let key = format!("breaker:{}", m.backend);
        if !held.is_empty() {
            self.metrics.held_removals.get_or_create(&label).inc_by(held.len() as u64);
            if let Some(left_out) = self.quiet.hit(&key, std::time::Instant::now()) {
                tracing::warn!(backend = %m.backend, held = ?held.iter().map(Op::server).collect::<Vec<_>>(), repeated = left_out, "breaker: holding removals");
            }
        } else if self.quiet.clear(&key) {
            tracing::info!(backend = %m.backend, "breaker: no removal held any more");
        }
        if allowed.is_empty() {
            return Ok(held.is_empty() && draining.is_empty());
        }
        let started = Instant::now();
        let result = self.driver.apply(&m.backend, &allowed).await;
        self.metrics.apply_seconds.get_or_create(&label).observe(started.elapsed().as_secs_f64());
        let done = match &result {
            Ok(()) => allowed.len(),
            Err((n, _)) => *n,
        };
        for op in &allowed[..done] {
            self.metrics.ops.get_or_create(&OpLabel { kind: op.kind().to_string() }).inc();
            match op {
                Op::SetState { name, state: AdminState::Drain } if !desired.contains_key(name) => {
                    draining.insert(name.clone(), now);
                }
                Op::Remove { name } => {
                    draining.remove(name);
                }
                _ => {}
            }
            tracing::info!(backend = %m.backend, op = ?op, "applied");
        }
        match result {
            Ok(()) => Ok(held.is_empty() && draining.is_empty()),
            Err((_, e)) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::driver::DriverError;
    use crate::model::ActualServer;
    use crate::source::{channel, Endpoint, SourceState};

    /// An in-memory HAProxy that records every `apply` call.
    #[derive(Clone, Default)]
    struct Fake {
        servers: Arc<Mutex<BTreeMap<String, ActualServer>>>,
        calls: Arc<Mutex<Vec<Vec<Op>>>>,
        generation: Arc<Mutex<u32>>,
    }

    impl Driver for Fake {
        async fn generation(&mut self) -> Result<Generation, DriverError> {
            Ok(Generation(self.generation.lock().unwrap().to_string()))
        }
        async fn servers(&mut self, _backend: &str) -> Result<Vec<ActualServer>, DriverError> {
            Ok(self.servers.lock().unwrap().values().cloned().collect())
        }
        async fn apply(&mut self, _backend: &str, ops: &[Op]) -> Result<(), (usize, DriverError)> {
            self.calls.lock().unwrap().push(ops.to_vec());
            let mut s = self.servers.lock().unwrap();
            for op in ops {
                match op {
                    Op::Add(d) => {
                        s.insert(
                            d.name.clone(),
                            ActualServer { name: d.name.clone(), address: d.address.clone(), port: d.port, weight: d.weight, state: d.state, sessions: 0 },
                        );
                    }
                    Op::SetWeight { name, weight } => s.get_mut(name).unwrap().weight = *weight,
                    Op::SetState { name, state } => s.get_mut(name).unwrap().state = *state,
                    Op::Remove { name } => {
                        s.remove(name);
                    }
                }
            }
            Ok(())
        }
    }

    fn settings() -> Settings {
        Settings {
            mappings: vec![Mapping { service: "web".into(), backend: "be_web".into() }],
            batch: Duration::from_millis(50),
            resync: Duration::from_secs(3600),
            drain_timeout: Duration::from_secs(30),
            limits: Limits { min_servers: 1, max_fraction: 1.0, window: Duration::from_secs(10) },
            source_wait: Duration::from_secs(2),
        }
    }

    fn snap(revision: u64, n: u16) -> SourceState {
        let mut s = Snapshot { revision, ..Default::default() };
        let m = s.services.entry("web".into()).or_default();
        for i in 0..n {
            m.insert(format!("10.0.0.1:{}", 8000 + i), Endpoint { address: "10.0.0.1".into(), port: 8000 + i, weight: 100, state: Default::default() });
        }
        SourceState { snapshot: Some(s), healthy: true, last_ok: Some(SystemTime::now()), error: None, corrections: 0 }
    }

    #[tokio::test(start_paused = true)]
    async fn changes_within_the_batch_window_are_applied_together() {
        let fake = Fake::default();
        let (tx, rx) = channel();
        let (r, applied) = Reconciler::new(fake.clone(), settings(), Arc::new(Metrics::default()), None);
        tx.send_replace(snap(1, 1));
        let task = tokio::spawn(r.run(rx));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(fake.calls.lock().unwrap().len(), 1, "the first state is applied at once");
        for i in 2..=10 {
            tx.send_replace(snap(i, i as u16));
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let calls = fake.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 2, "nine updates within 30 ms make one batch: {calls:?}");
        assert_eq!(calls[1].len(), 9);
        assert_eq!(applied.borrow().get("be_web"), Some(&10));
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_haproxy_gets_everything_back_and_a_down_source_changes_nothing() {
        let fake = Fake::default();
        let (tx, rx) = channel();
        let mut s = settings();
        s.resync = Duration::from_millis(250);
        let metrics = Arc::new(Metrics::default());
        let (r, _) = Reconciler::new(fake.clone(), s, metrics.clone(), None);
        tx.send_replace(snap(1, 3));
        let task = tokio::spawn(r.run(rx));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(fake.servers.lock().unwrap().len(), 3);
        // Restart: dynamic servers gone, new process identity.
        fake.servers.lock().unwrap().clear();
        *fake.generation.lock().unwrap() += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(fake.servers.lock().unwrap().len(), 3, "re-applied within one resync");
        assert_eq!(metrics.haproxy_restarts.get(), 1);
        // The source goes down with an empty answer in hand: nothing is removed.
        tx.send_modify(|st| {
            st.healthy = false;
            st.error = Some("registry unreachable".into());
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(fake.servers.lock().unwrap().len(), 3);
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_syncer_without_a_source_applies_the_saved_state_after_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        state.save(snap(7, 2).snapshot.as_ref().unwrap()).unwrap();
        let fake = Fake::default();
        let (_tx, rx) = channel();
        let mut s = settings();
        s.resync = Duration::from_millis(250);
        let (r, applied) = Reconciler::new(fake.clone(), s, Arc::new(Metrics::default()), Some(StateDir::open(dir.path()).unwrap()));
        let task = tokio::spawn(r.run(rx));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(fake.servers.lock().unwrap().is_empty(), "waits for the source first");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(fake.servers.lock().unwrap().len(), 2);
        assert_eq!(applied.borrow().get("be_web"), Some(&7));
        task.abort();
    }
}
