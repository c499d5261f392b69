use serde::{Deserialize, Serialize};

use crate::LeaseId;

/// `POST /v1/leases`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseGrantRequest {
    pub ttl_ms: u64,
}

/// Answer to a grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrant {
    pub lease_id: LeaseId,
    pub ttl_ms: u64,
    /// Revision of the entry that granted the lease.
    #[serde(default)]
    pub revision: u64,
}

/// Answer to `POST /v1/leases/{id}/keepalive`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepaliveResponse {
    pub lease_id: LeaseId,
    pub ttl_ms: u64,
}
