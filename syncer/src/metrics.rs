//! Prometheus metrics of the syncer.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub kind: String,
}

pub struct Metrics {
    pub applied_revision: Family<BackendLabel, Gauge<i64, std::sync::atomic::AtomicI64>>,
    pub staleness_seconds: Gauge<f64, AtomicU64>,
    pub source_up: Gauge,
    pub ops: Family<OpLabel, Counter>,
    pub errors: Counter,
    pub held_removals: Family<BackendLabel, Counter>,
    pub held_now: Family<BackendLabel, Gauge>,
    pub haproxy_restarts: Counter,
    pub passes: Counter,
    pub relist_corrections: Counter,
    /// How long applying one pass's operations to a backend took.
    pub apply_seconds: Family<BackendLabel, Histogram, fn() -> Histogram>,
    /// How long reading a backend's servers from HAProxy took.
    pub read_seconds: Family<BackendLabel, Histogram, fn() -> Histogram>,
    /// What `/healthz` says (`health.rs`), kept by the reconciler.
    pub health: std::sync::Mutex<crate::health::HealthState>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            applied_revision: Family::default(),
            staleness_seconds: Gauge::default(),
            source_up: Gauge::default(),
            ops: Family::default(),
            errors: Counter::default(),
            held_removals: Family::default(),
            held_now: Family::default(),
            haproxy_restarts: Counter::default(),
            passes: Counter::default(),
            relist_corrections: Counter::default(),
            apply_seconds: Family::new_with_constructor(runtime::metrics::latency),
            read_seconds: Family::new_with_constructor(runtime::metrics::latency),
            health: Default::default(),
        }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        runtime::metrics::render("syncer", |r| {
            r.register("applied_revision", "Source revision each backend reflects (fully applied, nothing held)", self.applied_revision.clone());
            r.register("staleness_seconds", "Seconds since the source was last known current", self.staleness_seconds.clone());
            r.register("source_up", "1 while the source is connected and current", self.source_up.clone());
            r.register("ops", "HAProxy operations applied, by kind", self.ops.clone());
            r.register("errors", "Failed reads or operations on HAProxy", self.errors.clone());
            r.register("held_removals", "Removals held back by the breaker", self.held_removals.clone());
            r.register("held_removals_pending", "Removals held back in the last pass", self.held_now.clone());
            r.register("haproxy_restarts", "HAProxy restarts or reloads detected (state re-applied)", self.haproxy_restarts.clone());
            r.register("passes", "Reconcile passes", self.passes.clone());
            r.register(
                "relist_corrections",
                "Endpoints a periodic re-list of the registry found wrong (the watch missed them); should stay 0",
                self.relist_corrections.clone(),
            );
            r.register("apply_duration_seconds", "How long applying one pass's operations to a backend took", self.apply_seconds.clone());
            r.register("read_duration_seconds", "How long reading a backend's servers from HAProxy took", self.read_seconds.clone());
        })
    }
}

#[cfg(test)]
mod documented {
    /// Every `syncer_*` metric the docs name (alerts, dashboards, tables) is one this binary
    /// serves: a rename shows up here, not in an operator's silent alert.
    #[test]
    fn every_metric_the_docs_name_is_served() {
        let docs = [
            ("monitoring.md", include_str!("../../docs/monitoring.md")),
            ("grafana-dashboard.json", include_str!("../../docs/grafana-dashboard.json")),
            ("syncer.md", include_str!("../../docs/syncer.md")),
            ("security.md", include_str!("../../docs/security.md")),
        ];
        runtime::metrics::check_docs(&super::Metrics::default().render(), "syncer", &docs).unwrap();
    }
}
