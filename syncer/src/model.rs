//! The syncer's vocabulary: desired and actual servers of one HAProxy backend, and the
//! operations that move one towards the other. Pure data; what applies the operations is in
//! `driver`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Administrative state of a server, as HAProxy's Runtime API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    Ready,
    Drain,
    Maint,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }
}

impl From<proto::InstanceState> for AdminState {
    fn from(s: proto::InstanceState) -> AdminState {
        match s {
            proto::InstanceState::Up => AdminState::Ready,
            proto::InstanceState::Drain => AdminState::Drain,
            proto::InstanceState::Maint => AdminState::Maint,
        }
    }
}

/// A server the syncer wants in a backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredServer {
    /// HAProxy server name (see `server_name`).
    pub name: String,
    /// IP address or host name.
    pub address: String,
    pub port: u16,
    pub weight: u32,
    pub state: AdminState,
}

/// The desired servers of one backend, by server name.
pub type DesiredSet = BTreeMap<String, DesiredServer>;

/// A server as HAProxy reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActualServer {
    pub name: String,
    pub address: String,
    pub port: u16,
    /// The user-set weight.
    pub weight: u32,
    pub state: AdminState,
    /// Current sessions (connections) on the server; a drained server is deleted at 0.
    pub sessions: u64,
}

/// One change to one server of one backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Op {
    /// Add a server and bring it to its desired state and weight.
    Add(DesiredServer),
    SetWeight {
        name: String,
        weight: u32,
    },
    SetState {
        name: String,
        state: AdminState,
    },
    /// Take the server out: drain, wait for its connections to end (bounded), maint, delete.
    Remove {
        name: String,
    },
}

impl Op {
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Add(_) => "add",
            Op::SetWeight { .. } => "set_weight",
            Op::SetState { .. } => "set_state",
            Op::Remove { .. } => "remove",
        }
    }

    pub fn server(&self) -> &str {
        match self {
            Op::Add(d) => &d.name,
            Op::SetWeight { name, .. } | Op::SetState { name, .. } | Op::Remove { name } => name,
        }
    }
}

/// Prefix of the servers the syncer adds. Servers without it were declared in haproxy.cfg (or
/// by someone else) and are left alone.
pub const MANAGED_PREFIX: &str = "sd-";

/// HAProxy server name of an instance: the prefix plus the instance id, with characters
/// HAProxy does not accept in names replaced by `_`.
pub fn server_name(instance: &str) -> String {
    let clean: String = instance.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':') { c } else { '_' }).collect();
    format!("{MANAGED_PREFIX}{clean}")
}

pub fn is_managed(name: &str) -> bool {
    name.starts_with(MANAGED_PREFIX)
}
