//! Wire types shared by every part of the suite.
//!
//! Architecture Invariant: this crate does no I/O and depends on serde only. Every
//! request type denies unknown fields, so a typo in a client is an error, not a silent default.

pub mod admin;
pub mod cluster;
pub mod error;
pub mod instance;
pub mod lease;
pub mod meta;
pub mod removal;
pub mod report;
pub mod snapshot;
pub mod token;
pub mod validate;
pub mod watch;
pub mod znode;

pub use cluster::{ClusterInfo, Member, MemberChange, NodeRole};
pub use error::{ErrorBody, ErrorCode};
pub use instance::{
    Instance, InstanceSpec, InstanceState, LeaseInfo, Registration, ServiceInstances, ServiceList, ServiceSummary, WriteResult, MAINT_REASON_META,
};
pub use lease::{KeepaliveResponse, LeaseGrant, LeaseGrantRequest, RegisterInstance, RegisterRequest};
pub use meta::Meta;
pub use removal::{Removal, RemovalCause, RemovalList};
pub use report::{BackendReport, SyncerReport};
pub use snapshot::{SnapshotCounts, SnapshotDocument, SNAPSHOT_FORMAT, SNAPSHOT_VERSION};
pub use token::{TokenCreateRequest, TokenCreated, TokenInfo, TokenList};
pub use watch::WatchEvent;
pub use znode::{ZkDigest, ZnodeData};

/// A lease identifier: the Raft log index of the entry that granted the lease or, when one entry
/// granted several (concurrent grants committed together), the next id past those already
/// given. Unique across the cluster's life, the same on every node, and at least the grant's
/// revision.
pub type LeaseId = u64;

/// A revision is the Raft log index of the entry that made a change.
pub type Revision = u64;

/// HTTP header a registry node puts on its answers to name the leader's base URL, so a client
/// can send its next write or keepalive there directly.
pub const LEADER_HEADER: &str = "x-registry-leader";

/// HTTP header carrying a client's idempotency key for one write (the IETF httpapi draft's
/// `Idempotency-Key`). Every retry of that write sends the same value; the registry applies it
/// once and answers retries as it answered the first, within a window of recent writes. The
/// same key on a different request is refused (422). At most 128 visible ASCII characters.
/// Not `x-request-id`: proxies and tracing set that one and pass it along a call chain.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// On reads: `true` if the answering node knows a current leader (or is one), else `false`.
pub const KNOWN_LEADER_HEADER: &str = "x-registry-known-leader";

/// On reads: milliseconds since the answering node last heard from its leader (0 on a leader
/// with a recent quorum). Absent if it never has. Tells how stale a `?stale=true` read may be.
pub const LAST_CONTACT_HEADER: &str = "x-registry-last-contact-ms";

/// HTTP header in which a registry node, or an operator changing the membership, proves it
/// holds the cluster's shared secret (`--cluster-secret-file`). Peer RPC (`/raft/*`) and
/// membership changes are refused without it; see docs/security.md.
pub const CLUSTER_SECRET_HEADER: &str = "x-registry-cluster-secret";

/// Reserved service under which every syncer reports, as an instance under its own lease,
/// which registry revision each HAProxy backend it manages reflects (`SyncerReport`).
pub const SYNCER_SERVICE: &str = "_syncers";
