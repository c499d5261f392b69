//! Prometheus metrics of the announcer.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    pub service: String,
    pub instance: String,
}

pub struct Metrics {
    pub published: Gauge,
    pub healthy: Family<InstanceLabels, Gauge>,
    pub checks_failed: Family<InstanceLabels, Counter>,
    pub tick_failures: Counter,
    pub sync_failures: Counter,
    pub lost: Counter,
    pub maint: Gauge,
    /// 1 while an instance is in maintenance (its own or the host's).
    pub instance_maint: Family<InstanceLabels, Gauge>,
    /// How long each health check took, pass or fail.
    pub check_seconds: Family<InstanceLabels, Histogram, fn() -> Histogram>,
    /// How long a keepalive (ZooKeeper: a session check) took.
    pub keepalive_seconds: Histogram,
    /// How long publishing the desired state took.
    pub sync_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            published: Gauge::default(),
            healthy: Family::default(),
            checks_failed: Family::default(),
            tick_failures: Counter::default(),
            sync_failures: Counter::default(),
            lost: Counter::default(),
            maint: Gauge::default(),
            instance_maint: Family::default(),
            check_seconds: Family::new_with_constructor(runtime::metrics::latency),
            keepalive_seconds: runtime::metrics::latency(),
            sync_seconds: runtime::metrics::latency(),
        }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        runtime::metrics::render("announcer", |r| {
            r.register("published_instances", "Instances the backend holds for this announcer", self.published.clone());
            r.register("instance_healthy", "1 if the instance passes its health check (rise/fall applied)", self.healthy.clone());
            r.register("checks_failed", "Failed health checks", self.checks_failed.clone());
            r.register("keepalive_failures", "Keepalives (ZooKeeper: session checks) that failed", self.tick_failures.clone());
            r.register("sync_failures", "Attempts to publish the desired state that failed", self.sync_failures.clone());
            r.register("lease_lost", "Times the lease or session was found gone and re-created", self.lost.clone());
            r.register("maintenance", "1 while the host is in maintenance", self.maint.clone());
            r.register("instance_maintenance", "1 while the instance is in maintenance (its own or the host's)", self.instance_maint.clone());
            r.register("check_duration_seconds", "How long each health check took, pass or fail", self.check_seconds.clone());
            r.register("keepalive_duration_seconds", "How long a keepalive (ZooKeeper: a session check) took, answered or not", self.keepalive_seconds.clone());
            r.register("sync_duration_seconds", "How long publishing the desired state to the backend took, done or not", self.sync_seconds.clone());
        })
    }
}

#[cfg(test)]
mod documented {
    /// Every `announcer_*` metric the docs name (alerts, dashboards, tables) is one this binary
    /// serves: a rename shows up here, not in an operator's silent alert.
    #[test]
    fn every_metric_the_docs_name_is_served() {
        let docs = [("monitoring.md", include_str!("../../docs/monitoring.md")), ("announcer.md", include_str!("../../docs/announcer.md"))];
        runtime::metrics::check_docs(&super::Metrics::default().render(), "announcer", &docs).unwrap();
    }
}
