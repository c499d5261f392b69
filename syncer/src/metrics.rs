//! Prometheus metrics of the syncer.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub kind: String,
}

#[derive(Default)]
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
    /// What `/healthz` says (`health.rs`), kept by the reconciler.
    pub health: std::sync::Mutex<crate::health::HealthState>,
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut r = Registry::with_prefix("syncer");
        runtime::metrics::register_build_info(&mut r);
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
        let mut out = String::new();
        encode(&mut out, &r).expect("writing to a String cannot fail");
        out
    }
}
