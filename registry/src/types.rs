//! The openraft type configuration: which types travel in the log and between nodes.

use std::io::Cursor;

use crate::command::{Proposal, Resp};

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Type configuration of the registry's Raft group.
    pub TypeConfig:
        D = Proposal,
        R = Resp,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type LogState = openraft::LogState<TypeConfig>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, openraft::BasicNode>;
