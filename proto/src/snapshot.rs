//! `GET /v1/snapshot`: a backup of the registry's replicated state, as `registry snapshot save`
//! writes it to a file and `restore` and `inspect` read it back.

use serde::{Deserialize, Serialize};

use crate::Revision;

/// What `format` says in every snapshot this version writes.
pub const SNAPSHOT_FORMAT: &str = "registry-snapshot";
/// The layout of `store` this version writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;

/// A point-in-time copy of the store: services, instances, leases, tokens (their hashes) and
/// the recent removals, as of `revision`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotDocument {
    pub format: String,
    pub version: u32,
    /// The cluster it was taken from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// The revision the store reflects: every change up to it and none after.
    pub revision: Revision,
    /// When the leader took it, in milliseconds since the Unix epoch.
    pub taken_at_ms: u64,
    pub counts: SnapshotCounts,
    /// SHA-256 (hex) of `store` as the registry encodes it: `inspect` and `restore` check it.
    pub sha256: String,
    /// The store, in the registry's own layout (`version`).
    pub store: serde_json::Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCounts {
    pub services: usize,
    pub instances: usize,
    pub leases: usize,
    pub tokens: usize,
}
