use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{LeaseId, Meta, Revision};

/// What a balancer should do with an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Takes traffic.
    #[default]
    Up,
    /// Finishes the connections it has, takes no new ones.
    Drain,
    /// Out of rotation (operator maintenance).
    Maint,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Up => "up",
            InstanceState::Drain => "drain",
            InstanceState::Maint => "maint",
        }
    }
}

impl std::fmt::Display for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for InstanceState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "up" => Ok(InstanceState::Up),
            "drain" => Ok(InstanceState::Drain),
            "maint" => Ok(InstanceState::Maint),
            other => Err(format!("unknown state {other:?} (expected up, drain or maint)")),
        }
    }
}

/// Instance meta key the announcer sets, on an instance in `maint`, to the operator's reason
/// (`announcer maint on --reason TEXT`); `registry ls` shows it. Reserved: the announcer drops
/// a configured meta entry of that name.
pub const MAINT_REASON_META: &str = "maint.reason";

/// Body of `PUT /v1/services/{service}/instances/{instance}`.
///
/// `port` is taken as a wide integer so an out-of-range port gets a clear validation message
/// rather than a generic JSON error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    pub address: String,
    pub port: u64,
    /// The lease the instance lives under; without one the instance stays until deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<LeaseId>,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub state: InstanceState,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
}

pub fn default_weight() -> u32 {
    100
}

/// A registration that passed `validate::instance_spec`: the typed value the registry
/// replicates (it is the payload of a put in the Raft log, and so also a snapshot format).
///
/// Sealed: the fields are private, so outside this crate a `Registration` comes only from
/// `validate::instance_spec` or from decoding a log entry that an earlier validation produced.
/// A bad port or weight therefore never reaches the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub(crate) address: String,
    pub(crate) port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) lease_id: Option<LeaseId>,
    pub(crate) weight: u32,
    #[serde(default)]
    pub(crate) state: InstanceState,
    #[serde(default)]
    pub(crate) meta: Meta,
}

impl Registration {
    pub fn address(&self) -> &str {
        &self.address
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn lease_id(&self) -> Option<LeaseId> {
        self.lease_id
    }
    pub fn weight(&self) -> u32 {
        self.weight
    }
    pub fn state(&self) -> InstanceState {
        self.state
    }
    pub fn meta(&self) -> &Meta {
        &self.meta
    }
    /// The same registration under `lease_id`: a lease is not validated, only named (the
    /// store checks it exists).
    pub fn under_lease(mut self, lease_id: LeaseId) -> Registration {
        self.lease_id = Some(lease_id);
        self
    }
}

/// An instance as stored and returned by the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub service: String,
    pub instance: String,
    pub address: String,
    pub port: u16,
    pub weight: u32,
    pub state: InstanceState,
    #[serde(default)]
    pub meta: Meta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<LeaseId>,
    /// Revision of the entry that first created the instance.
    pub create_revision: Revision,
    /// Revision of the entry that last changed it.
    pub mod_revision: Revision,
    /// Lease timing as the leader sees it; absent on stale reads served by a follower.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseInfo>,
}

/// The leader's view of a lease: only the leader tracks deadlines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub lease_id: LeaseId,
    pub ttl_ms: u64,
    /// Time left before the lease expires.
    pub remaining_ms: u64,
    /// Time since the last keepalive (or since this leader started the lease's clock).
    pub since_renewal_ms: u64,
}

/// `GET /v1/services/{service}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInstances {
    pub service: String,
    /// Revision of the state this answer was read from.
    pub revision: Revision,
    /// Revision of the last change to this service (the value for `?index=`).
    pub index: Revision,
    pub instances: Vec<Instance>,
}

/// `GET /v1/services`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceList {
    pub revision: Revision,
    /// Revision of the last change to any service (the value for `?index=`).
    #[serde(default)]
    pub index: Revision,
    pub services: Vec<ServiceSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSummary {
    pub service: String,
    pub instances: usize,
    pub index: Revision,
}

/// Answer to a write (PUT/DELETE of an instance, lease revoke).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResult {
    pub revision: Revision,
}
