//! Why an instance left the registry: in each `delete` watch event and in the recent-removals
//! list (`GET /v1/removals`), so an operator can tell "it died" from "the registry dropped it".

use serde::{Deserialize, Serialize};

use crate::{LeaseId, Revision};

/// The cause of one removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RemovalCause {
    /// Its lease ran out: the leader of `term` saw no renewal for a TTL.
    Expired { lease_id: LeaseId, term: u64 },
    /// Its lease was revoked by a client (an announcer shutting down, an operator).
    Revoked { lease_id: LeaseId },
    /// A client deleted it (`DELETE /v1/services/{service}/instances/{instance}`).
    Deregistered,
    /// A new registration under the same name moved it to another address or port; the
    /// `address` and `port` of the removal are the old ones, these the new.
    Replaced { address: String, port: u16 },
}

impl RemovalCause {
    /// A short word for tables.
    pub fn kind(&self) -> &'static str {
        match self {
            RemovalCause::Expired { .. } => "expired",
            RemovalCause::Revoked { .. } => "revoked",
            RemovalCause::Deregistered => "deregistered",
            RemovalCause::Replaced { .. } => "replaced",
        }
    }
}

impl std::fmt::Display for RemovalCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RemovalCause::Expired { lease_id, term } => write!(f, "expired (lease {lease_id}, term {term})"),
            RemovalCause::Revoked { lease_id } => write!(f, "revoked (lease {lease_id})"),
            RemovalCause::Deregistered => f.write_str("deregistered"),
            RemovalCause::Replaced { address, port } => write!(f, "replaced (now {address}:{port})"),
        }
    }
}

/// One entry of the recent-removals list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    /// Revision of the entry that removed it.
    pub revision: Revision,
    pub service: String,
    pub instance: String,
    pub address: String,
    pub port: u16,
    pub cause: RemovalCause,
    /// When the leader proposed the change, in milliseconds since the Unix epoch by the
    /// leader's wall clock; absent for entries written by earlier builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<u64>,
}

/// `GET /v1/removals`: the most recent removals, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovalList {
    /// Revision of the state this answer was read from.
    pub revision: Revision,
    pub removals: Vec<Removal>,
}
