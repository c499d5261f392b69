//! Prometheus metrics of one registry node.

use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

/// The label of `registry_auth_denied_total` and `registry_tls_handshake_failures_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// The label of `registry_leader_transfers_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

pub struct Metrics {
    /// Requests refused for missing or wrong credentials, by reason.
    pub auth_denied: Family<ReasonLabels, Counter>,
    /// TLS connections dropped before a request: plain HTTP, an unknown CA, a silent client.
    pub tls_handshake_failures: Family<ReasonLabels, Counter>,
    pub keepalives: Counter,
    /// Audit log lines dropped because its writer fell behind.
    pub audit_dropped: Counter,
    pub lease_expiries: Counter,
    pub expiry_refused: Counter,
    pub leader_changes: Counter,
    /// Leadership hand-offs on a graceful stop, by result (done, failed).
    pub leader_transfers: Family<ResultLabels, Counter>,
    pub forwarded: Counter,
    /// Client writes that shared a log entry with others (`node::batch`).
    pub batched_writes: Counter,
    /// Relayed keepalive batches this node sent to the leader (`http::relay`).
    pub relayed_batches: Counter,
    pub watch_clients: Gauge,
    pub applied_entries: Counter<u64, AtomicU64>,
    pub applied_index: Gauge<i64, AtomicI64>,
    pub commit_index: Gauge<i64, AtomicI64>,
    pub last_log_index: Gauge<i64, AtomicI64>,
    pub term: Gauge<i64, AtomicI64>,
    pub is_leader: Gauge<i64, AtomicI64>,
    pub leases_live: Gauge<i64, AtomicI64>,
    pub instances: Gauge<i64, AtomicI64>,
    /// From proposing a log entry to its answer (committed and applied, or failed).
    pub write_seconds: Histogram,
    /// From relaying a request to the leader to its answer.
    pub forward_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            auth_denied: Family::default(),
            tls_handshake_failures: Family::default(),
            keepalives: Counter::default(),
            audit_dropped: Counter::default(),
            lease_expiries: Counter::default(),
            expiry_refused: Counter::default(),
            leader_changes: Counter::default(),
            leader_transfers: Family::default(),
            forwarded: Counter::default(),
            batched_writes: Counter::default(),
            relayed_batches: Counter::default(),
            watch_clients: Gauge::default(),
            applied_entries: Counter::default(),
            applied_index: Gauge::default(),
            commit_index: Gauge::default(),
            last_log_index: Gauge::default(),
            term: Gauge::default(),
            is_leader: Gauge::default(),
            leases_live: Gauge::default(),
            instances: Gauge::default(),
            write_seconds: runtime::metrics::latency(),
            forward_seconds: runtime::metrics::latency(),
        }
    }
}

impl Metrics {
    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        runtime::metrics::render("registry", |r| {
            r.register("auth_denied", "Requests refused for missing or wrong credentials, by reason", self.auth_denied.clone());
            r.register("tls_handshake_failures", "TLS connections dropped during the handshake, by reason", self.tls_handshake_failures.clone());
            r.register("audit_dropped", "Audit log lines dropped because the writer fell behind the requests", self.audit_dropped.clone());
            r.register("keepalives", "Lease keepalives accepted by this node as leader", self.keepalives.clone());
            r.register("lease_expiries", "Leases expired by this node as leader", self.lease_expiries.clone());
            r.register(
                "lease_expiry_refused",
                "Expiry attempts abandoned because leadership could not be confirmed with a quorum",
                self.expiry_refused.clone(),
            );
            r.register("leader_changes", "Changes of the known leader seen by this node", self.leader_changes.clone());
            r.register("leader_transfers", "Leadership hand-offs started by this node on a graceful stop, by result", self.leader_transfers.clone());
            r.register("forwarded_requests", "Requests this node forwarded to the leader", self.forwarded.clone());
            r.register(
                "relayed_keepalive_batches",
                "Requests that carried keepalives relayed to the leader, each holding every keepalive that arrived while the previous one was out",
                self.relayed_batches.clone(),
            );
            r.register("batched_writes", "Client writes committed in a log entry shared with other writes (group commit)", self.batched_writes.clone());
            r.register("watch_clients", "Open watch streams on this node", self.watch_clients.clone());
            r.register("applied_entries", "Log entries applied (commits) since start", self.applied_entries.clone());
            r.register("applied_index", "Index of the last applied log entry", self.applied_index.clone());
            r.register("commit_index", "Index of the last committed log entry as known here", self.commit_index.clone());
            r.register("last_log_index", "Index of the last log entry", self.last_log_index.clone());
            r.register("term", "Current Raft term", self.term.clone());
            r.register("is_leader", "1 if this node is the leader", self.is_leader.clone());
            r.register("leases_live", "Leases in the store", self.leases_live.clone());
            r.register("instances", "Instances in the store", self.instances.clone());
            r.register(
                "write_duration_seconds",
                "From proposing a log entry to its answer (committed and applied, or failed), on the leader",
                self.write_seconds.clone(),
            );
            r.register("forward_duration_seconds", "From relaying a request to the leader to its answer", self.forward_seconds.clone());
        })
    }
}

#[cfg(test)]
mod documented {
    /// Every `registry_*` metric the docs name (alerts, dashboards, tables) is one this binary
    /// serves: a rename shows up here, not in an operator's silent alert.
    #[test]
    fn every_metric_the_docs_name_is_served() {
        let docs = [
            ("monitoring.md", include_str!("../../docs/monitoring.md")),
            ("grafana-dashboard.json", include_str!("../../docs/grafana-dashboard.json")),
            ("operations.md", include_str!("../../docs/operations.md")),
            ("security.md", include_str!("../../docs/security.md")),
            ("api.md", include_str!("../../docs/api.md")),
        ];
        runtime::metrics::check_docs(&super::Metrics::default().render(), "registry", &docs).unwrap();
    }
}
