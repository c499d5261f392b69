//! What the syncer's `/healthz` says, and the one rule behind it. Healthy means the balancer is
//! being kept right:
//!
//! - `haproxy_unreachable` (503): the last pass could not reach HAProxy's API. The balancer
//!   keeps serving what it has, but nothing follows the registry.
//! - `not_converged` (503): a backend has not reflected the source for longer than the deadline
//!   (the drain timeout plus 30 s): removals held by the breaker, operations HAProxy refuses, or
//!   no source yet and no saved state to apply since start.
//! - `ok` (200): otherwise. A source that is down is not unhealthy by itself: by design the
//!   syncer then keeps HAProxy exactly as it is (`syncer_source_up` shows it).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// Kept by the reconciler, read by the admin endpoint.
#[derive(Debug, Default)]
pub struct HealthState {
    started: Option<Instant>,
    backends: Vec<String>,
    deadline: Duration,
    /// Since when HAProxy has been unreachable, and why (None: the last pass reached it).
    unreachable: Option<(Instant, String)>,
    /// Backends that do not reflect the source yet, since when.
    pending: BTreeMap<String, Instant>,
    /// Backends that did at their last pass.
    converged: std::collections::BTreeSet<String>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Verdict {
    pub state: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl HealthState {
    /// The reconciler starts, for `backends`, with `drain_timeout` (the deadline is 30 s more).
    pub fn start(&mut self, now: Instant, backends: Vec<String>, drain_timeout: Duration) {
        self.started.get_or_insert(now);
        self.backends = backends;
        self.set_drain_timeout(drain_timeout);
    }

    /// A reload changed the drain timeout.
    pub fn set_drain_timeout(&mut self, drain_timeout: Duration) {
        self.deadline = drain_timeout + Duration::from_secs(30);
    }

    pub fn haproxy_reached(&mut self) {
        self.unreachable = None;
    }

    pub fn haproxy_unreachable(&mut self, now: Instant, why: String) {
        let since = self.unreachable.as_ref().map_or(now, |(t, _)| *t);
        self.unreachable = Some((since, why));
    }

    /// A pass over `backend` ended; `done`: it reflects the source fully.
    pub fn backend_pass(&mut self, backend: &str, done: bool, now: Instant) {
        if done {
            self.pending.remove(backend);
            self.converged.insert(backend.to_string());
        } else {
            self.pending.entry(backend.to_string()).or_insert(now);
            self.converged.remove(backend);
        }
    }

    /// The verdict at `now`.
    pub fn verdict(&self, now: Instant) -> Verdict {
        let deadline = self.deadline;
        if let Some((since, why)) = &self.unreachable {
            return Verdict { state: "haproxy_unreachable", detail: format!("for {:.1}s: {why}", now.saturating_duration_since(*since).as_secs_f64()) };
        }
        let started = self.started.unwrap_or(now);
        let late: Vec<String> = self
            .backends
            .iter()
            .filter(|b| !self.converged.contains(*b))
            .filter_map(|b| {
                let since = self.pending.get(b).copied().unwrap_or(started);
                let behind = now.saturating_duration_since(since);
                (behind > deadline).then(|| format!("{b} behind for {:.0}s", behind.as_secs_f64()))
            })
            .collect();
        if late.is_empty() {
            Verdict { state: "ok", detail: String::new() }
        } else {
            Verdict { state: "not_converged", detail: late.join(", ") }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_haproxy_and_late_backends_are_unhealthy() {
        let t0 = Instant::now();
        let mut h = HealthState::default();
        // A 30 s drain timeout: a 60 s deadline.
        h.start(t0, vec!["web".to_string(), "api".to_string()], Duration::from_secs(30));
        assert_eq!(h.verdict(t0 + Duration::from_secs(10)).state, "ok", "starting, within the deadline");
        assert_eq!(h.verdict(t0 + Duration::from_secs(61)).state, "not_converged", "never applied anything");
        h.backend_pass("web", true, t0 + Duration::from_secs(1));
        h.backend_pass("api", true, t0 + Duration::from_secs(1));
        assert_eq!(h.verdict(t0 + Duration::from_secs(100)).state, "ok");
        h.backend_pass("api", false, t0 + Duration::from_secs(100));
        assert_eq!(h.verdict(t0 + Duration::from_secs(150)).state, "ok", "behind, within the deadline");
        let v = h.verdict(t0 + Duration::from_secs(161));
        assert_eq!((v.state, v.detail.starts_with("api behind")), ("not_converged", true), "{v:?}");
        h.haproxy_unreachable(t0 + Duration::from_secs(162), "connection refused".into());
        assert_eq!(h.verdict(t0 + Duration::from_secs(163)).state, "haproxy_unreachable");
        h.haproxy_reached();
        h.backend_pass("api", true, t0 + Duration::from_secs(164));
        assert_eq!(h.verdict(t0 + Duration::from_secs(164)).state, "ok");
    }
}
