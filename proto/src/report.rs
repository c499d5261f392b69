//! A syncer's convergence report: one instance of `SYNCER_SERVICE` per syncer, under its own
//! lease, whose meta says which service each HAProxy backend follows and which registry
//! revision it has applied. `registry status` reads it to show which balancer is behind.

use std::collections::BTreeMap;

/// Meta key prefix: `map.<backend>` = the service the backend follows.
const MAP: &str = "map.";
/// Meta key prefix: `rev.<backend>` = the revision the backend has applied.
const REV: &str = "rev.";

/// One backend in a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendReport {
    pub service: String,
    /// `None` until the backend has applied a state from the registry.
    pub applied: Option<u64>,
}

/// Every backend a syncer manages, by HAProxy backend name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncerReport {
    pub backends: BTreeMap<String, BackendReport>,
}

impl SyncerReport {
    /// The instance meta that carries the report.
    pub fn to_meta(&self) -> BTreeMap<String, String> {
        let mut meta = BTreeMap::new();
        for (backend, b) in &self.backends {
            meta.insert(format!("{MAP}{backend}"), b.service.clone());
            if let Some(rev) = b.applied {
                meta.insert(format!("{REV}{backend}"), rev.to_string());
            }
        }
        meta
    }

    /// Reads a report back from instance meta; other keys are ignored, and an unreadable
    /// revision counts as none.
    pub fn from_meta(meta: &crate::Meta) -> SyncerReport {
        let backends = meta
            .iter()
            .filter_map(|(k, service)| {
                let backend = k.strip_prefix(MAP)?;
                let applied = meta.get(&format!("{REV}{backend}")).and_then(|v| v.parse().ok());
                Some((backend.to_string(), BackendReport { service: service.clone(), applied }))
            })
            .collect();
        SyncerReport { backends }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_round_trips_through_meta() {
        let mut r = SyncerReport::default();
        r.backends.insert("web".into(), BackendReport { service: "web-servers".into(), applied: Some(42) });
        r.backends.insert("api".into(), BackendReport { service: "api-servers".into(), applied: None });
        let meta = r.to_meta();
        assert_eq!(meta.get("map.web").map(String::as_str), Some("web-servers"));
        assert_eq!(meta.get("rev.web").map(String::as_str), Some("42"));
        assert!(!meta.contains_key("rev.api"));
        assert_eq!(SyncerReport::from_meta(&meta.clone().into()), r);
    }
}
