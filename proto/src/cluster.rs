use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
    /// The node did not answer.
    Unreachable,
}

/// One member as seen by the answering node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: u64,
    pub addr: String,
    /// `true` for voters, `false` for learners.
    pub voter: bool,
    /// Replication progress as known by the leader (`matched` log index); absent elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_index: Option<u64>,
    /// Whether this member has ever taken part in the cluster (acknowledged its log). A node
    /// with an empty data directory whose id is `started` lost its disk: it must rejoin with
    /// `--join`, not bootstrap again.
    #[serde(default)]
    pub started: bool,
}

/// `GET /v1/cluster`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub node_id: u64,
    pub role: NodeRole,
    pub leader: Option<u64>,
    pub leader_addr: Option<String>,
    pub term: u64,
    pub last_log_index: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub members: Vec<Member>,
    /// Chosen by the cluster's first leader and replicated; `None` until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
}

/// `POST /v1/cluster/members` (add) body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberChange {
    pub id: u64,
    /// `HOST:PORT` of the node's API and peer address; needed to add, ignored to remove.
    #[serde(default)]
    pub addr: Option<String>,
}
