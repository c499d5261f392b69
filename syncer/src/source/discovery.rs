//! What a source says, and the one fold of it into the current state (linkerd2-proxy's
//! discovery model: sources emit resets, inserts and removes; one consumer folds them).

use super::{Endpoint, Snapshot};

/// One thing a source learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// The complete state of every watched service at the snapshot's revision (a registry
    /// listing, a full ZooKeeper read): replaces everything known, revision included.
    Reset(Snapshot),
    /// Instance `id` of `service` is now `endpoint` (added or changed).
    Put { service: String, id: String, endpoint: Endpoint, revision: u64 },
    /// Instance `id` of `service` is gone.
    Delete { service: String, id: String, revision: u64 },
}

impl Snapshot {
    /// Folds one update in. A reset is the truth at its revision; a put or a delete only moves
    /// the revision forward. A service emptied by deletes stays, with no endpoints.
    pub fn fold(&mut self, update: Discovery) {
        match update {
            Discovery::Reset(snapshot) => *self = snapshot,
            Discovery::Put { service, id, endpoint, revision } => {
                self.revision = self.revision.max(revision);
                self.services.entry(service).or_default().insert(id, endpoint);
            }
            Discovery::Delete { service, id, revision } => {
                self.revision = self.revision.max(revision);
                if let Some(m) = self.services.get_mut(&service) {
                    m.remove(&id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(port: u16) -> Endpoint {
        Endpoint { address: "10.0.0.1".into(), port, weight: 100, state: Default::default() }
    }

    fn put(service: &str, id: &str, port: u16, revision: u64) -> Discovery {
        Discovery::Put { service: service.into(), id: id.into(), endpoint: endpoint(port), revision }
    }

    fn delete(service: &str, id: &str, revision: u64) -> Discovery {
        Discovery::Delete { service: service.into(), id: id.into(), revision }
    }

    fn ports(snap: &Snapshot, service: &str) -> Vec<(String, u16)> {
        snap.services[service].iter().map(|(id, e)| (id.clone(), e.port)).collect()
    }

    #[test]
    fn reset_replaces_everything() {
        let mut snap = Snapshot::default();
        snap.fold(put("web", "a", 80, 7));
        snap.fold(put("api", "b", 81, 8));
        let mut listed = Snapshot { revision: 5, ..Default::default() };
        listed.services.entry("web".into()).or_default().insert("c".into(), endpoint(82));
        snap.fold(Discovery::Reset(listed.clone()));
        assert_eq!(snap, listed, "services, endpoints and revision all come from the reset");
    }

    #[test]
    fn put_inserts_and_overwrites() {
        let mut snap = Snapshot::default();
        snap.fold(put("web", "a", 80, 1));
        snap.fold(put("web", "b", 81, 2));
        assert_eq!(ports(&snap, "web"), [("a".to_string(), 80), ("b".to_string(), 81)]);
        snap.fold(put("web", "a", 90, 3));
        assert_eq!(ports(&snap, "web"), [("a".to_string(), 90), ("b".to_string(), 81)]);
    }

    #[test]
    fn delete_removes_and_an_emptied_service_stays_empty() {
        let mut snap = Snapshot::default();
        snap.fold(put("web", "a", 80, 1));
        snap.fold(put("web", "b", 81, 1));
        snap.fold(delete("web", "a", 2));
        assert_eq!(ports(&snap, "web"), [("b".to_string(), 81)]);
        snap.fold(delete("web", "b", 3));
        assert!(snap.services["web"].is_empty(), "the service is known, with no endpoints");
        snap.fold(delete("web", "b", 4));
        snap.fold(delete("api", "x", 5));
        assert!(!snap.services.contains_key("api"), "deleting from an unknown service creates nothing");
        assert_eq!(snap.revision, 5);
    }

    #[test]
    fn puts_and_deletes_move_the_revision_forward_only() {
        let mut snap = Snapshot::default();
        snap.fold(put("web", "a", 80, 10));
        assert_eq!(snap.revision, 10);
        snap.fold(put("web", "b", 81, 4));
        assert_eq!(snap.revision, 10, "an older put does not move it back");
        snap.fold(delete("web", "b", 6));
        assert_eq!(snap.revision, 10, "nor an older delete");
        snap.fold(delete("web", "a", 12));
        assert_eq!(snap.revision, 12);
    }
}
