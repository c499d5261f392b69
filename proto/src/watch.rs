use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{Instance, RemovalCause, Revision};

/// One line of the `GET /v1/watch` stream (newline-delimited JSON).
///
/// Events come in revision order; several events may share a revision when one log entry made
/// several changes (a lease expiry removing its instances).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WatchEvent {
    /// An instance was created or changed. Shared: the registry's store and its watch history
    /// hold the same instance, and the JSON is the instance's own.
    Put { revision: Revision, instance: Arc<Instance> },
    /// An instance was removed, and why (absent from registries that predate causes).
    Delete {
        revision: Revision,
        service: String,
        instance: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cause: Option<RemovalCause>,
    },
    /// `since` is older than the retained history; the stream ends. Re-list, then watch from the
    /// `revision` of the re-list answer. `revision` here is the answering node's latest.
    Compacted { revision: Revision, compact_revision: Revision },
    /// Nothing happened up to `revision`; sent periodically so a client can tell a quiet
    /// stream from a dead one and can advance its resume point.
    Progress { revision: Revision },
}

impl WatchEvent {
    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put { revision, .. }
            | WatchEvent::Delete { revision, .. }
            | WatchEvent::Compacted { revision, .. }
            | WatchEvent::Progress { revision } => *revision,
        }
    }

    /// The service this event is about, if it is about one.
    pub fn service(&self) -> Option<&str> {
        match self {
            WatchEvent::Put { instance, .. } => Some(&instance.service),
            WatchEvent::Delete { service, .. } => Some(service),
            _ => None,
        }
    }
}
