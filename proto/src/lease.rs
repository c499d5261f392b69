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

/// `POST /v1/register`: grant a lease and put instances under it in one log entry, so a web
/// server registers with one durable write instead of two, and never holds a lease with
/// nothing on it (or an instance whose lease grant failed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub ttl_ms: u64,
    /// At least one, at most `validate::MAX_REGISTER_INSTANCES`, each `(service, instance)`
    /// once.
    pub instances: Vec<RegisterInstance>,
}

/// One instance of a `RegisterRequest`: an `InstanceSpec` with its names and without a lease
/// (it goes under the lease the request grants).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterInstance {
    pub service: String,
    pub instance: String,
    pub address: String,
    pub port: u64,
    #[serde(default = "crate::instance::default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub state: crate::InstanceState,
    #[serde(default)]
    pub meta: std::collections::BTreeMap<String, String>,
}

impl RegisterInstance {
    /// The PUT body this instance would be, under `lease_id`.
    pub fn spec(&self, lease_id: Option<LeaseId>) -> crate::InstanceSpec {
        crate::InstanceSpec { address: self.address.clone(), port: self.port, lease_id, weight: self.weight, state: self.state, meta: self.meta.clone() }
    }
}
