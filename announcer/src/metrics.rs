//! Prometheus metrics of the announcer.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    pub service: String,
    pub instance: String,
}

#[derive(Default)]
pub struct Metrics {
    pub published: Gauge,
    pub healthy: Family<InstanceLabels, Gauge>,
    pub checks_failed: Family<InstanceLabels, Counter>,
    pub tick_failures: Counter,
    pub sync_failures: Counter,
    pub lost: Counter,
    pub maint: Gauge,
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut r = Registry::with_prefix("announcer");
        runtime::metrics::register_build_info(&mut r);
        r.register("published_instances", "Instances the backend holds for this announcer", self.published.clone());
        r.register("instance_healthy", "1 if the instance passes its health check (rise/fall applied)", self.healthy.clone());
        r.register("checks_failed", "Failed health checks", self.checks_failed.clone());
        r.register("keepalive_failures", "Keepalives (ZooKeeper: session checks) that failed", self.tick_failures.clone());
        r.register("sync_failures", "Attempts to publish the desired state that failed", self.sync_failures.clone());
        r.register("lease_lost", "Times the lease or session was found gone and re-created", self.lost.clone());
        r.register("maintenance", "1 while in maintenance", self.maint.clone());
        let mut out = String::new();
        encode(&mut out, &r).expect("writing to a String cannot fail");
        out
    }
}
