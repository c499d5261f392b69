//! The Raft log payload: one closed enum, each variant one kind of change.

use serde::{Deserialize, Serialize};

use proto::{LeaseId, Registration, Revision};

use crate::acl::{Scope, TokenHash, TokenId};

/// A replicated command. Applying one is deterministic: it reads no clock and no local state
/// beyond the store and the entry's own log id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Cmd {
    /// Grant a lease; its id is this entry's index, or the next id not yet given if a batch
    /// before it took that one (`Store::grant`). `owner` is the client's address as
    /// the receiving node saw it, for the per-client lease limit.
    GrantLease {
        ttl_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
        /// The ACL token that granted it: only that token (or an admin) may keep it alive or
        /// revoke it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<TokenId>,
    },
    /// Grant a lease (as `GrantLease`) and put these instances under it, in one entry: a
    /// registration is one durable write, and all of it applies or none (`POST /v1/register`).
    Register {
        ttl_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<TokenId>,
        instances: Vec<Named>,
        /// An admin (or ACLs off): may take over an instance that hangs off another token's
        /// lease. Without it, such an instance refuses the whole registration when it applies,
        /// whatever the check before proposing saw.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        takeover: bool,
    },
    /// Revoke a lease on a client's request, removing every instance attached to it.
    RevokeLease { lease_id: LeaseId },
    /// Expire leases whose deadline passed on the leader of `term`. Applies only if `term` is the
    /// term of the entry carrying it: a decision taken under one leadership never lands under
    /// another (docs/api.md, "Leases").
    ExpireLeases { term: u64, lease_ids: Vec<LeaseId> },
    /// Create or replace an instance. Only a validated `Registration` can be proposed; its log
    /// field keeps the name `spec` that earlier logs used.
    PutInstance {
        service: String,
        instance: String,
        #[serde(rename = "spec")]
        registration: Registration,
    },
    /// Remove an instance.
    DeleteInstance { service: String, instance: String },
    /// A put or delete by a token bound to lease ownership (ACLs on, not an admin). `write`
    /// applies only if, when it applies, `token` is still live and the instance does not hang
    /// off another token's lease: the check before proposing reads an older state, so two
    /// writers could both pass it and the later one take the other's instance.
    ///
    /// A variant of its own rather than a field of the write: a node of an earlier version,
    /// which would apply the write without the check and so hold another store, cannot read
    /// it, and stops following instead (docs/operations.md, "Upgrading a cluster").
    Bound { token: TokenId, write: Box<Cmd> },
    /// Name the cluster; proposed once, by its first leader. Later ones are no-ops.
    InitCluster { cluster_id: String },
    /// Record that these members have taken part (acknowledged the log), so one that comes
    /// back with an empty data directory is recognised and refused (Raft amnesia).
    MembersStarted { ids: Vec<u64> },
    /// Turn ACLs on with a first `admin` token (`--acl-bootstrap-token-file`). Only the first
    /// applies; ACLs are never turned off.
    AclBootstrap { hash: TokenHash },
    /// Create a token; its id is the index of this entry.
    CreateToken { hash: TokenHash, scopes: Vec<Scope>, description: String },
    /// Revoke a token: from the moment a node applies this, it refuses it.
    RevokeToken { id: TokenId },
    /// Client writes committed together (`node::batch`): each applies as it would alone, in
    /// order, with its own idempotency key and answer, all at this entry's revision.
    Batch { proposals: Vec<Proposal> },
}

impl Cmd {
    /// Whether this command may share an entry with others: it takes no id from the entry's
    /// index (a lease's id is allocated past those already given, a token's is the index).
    pub fn batchable(&self) -> bool {
        match self {
            Cmd::Bound { write, .. } => write.batchable(),
            _ => matches!(self, Cmd::GrantLease { .. } | Cmd::Register { .. } | Cmd::RevokeLease { .. } | Cmd::PutInstance { .. } | Cmd::DeleteInstance { .. }),
        }
    }
}

/// An instance of a `Register`: the lease it goes under is the one the entry grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Named {
    pub service: String,
    pub instance: String,
    #[serde(rename = "spec")]
    pub registration: Registration,
}

/// One log entry's payload: a command and, when the client sent one, the idempotency key that
/// makes a retried write apply once (`Store` remembers the answer of recent keys, with a
/// fingerprint of the command, so a key reused for another command is refused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    #[serde(flatten)]
    pub cmd: Cmd,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
    /// The proposing leader's wall clock (ms since the Unix epoch), for the record of
    /// removals only: `apply` copies it, it never compares it with anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<u64>,
}

/// A client's idempotency key for one write (`Idempotency-Key`), the same on every retry.
pub type RequestId = String;

impl From<Cmd> for Proposal {
    fn from(cmd: Cmd) -> Proposal {
        Proposal { cmd, request_id: None, at_ms: None }
    }
}

impl Proposal {
    pub fn new(cmd: Cmd, request_id: Option<RequestId>) -> Proposal {
        Proposal { cmd, request_id, at_ms: None }
    }

    /// A stable 64-bit fingerprint of the command (FNV-1a over its JSON), the same on every
    /// node and every build, to tell a retry from another command under the same key.
    /// What the client sent decides; the owner (the address a node saw) does not, since a
    /// retry through another node can come from another address, nor whether a put or delete
    /// is `Bound` (who writes, not what): a retry that reaches a leader of another version, or
    /// comes after ACLs were turned on, is still the same write.
    pub fn fingerprint(&self) -> u64 {
        let unbound = match &self.cmd {
            Cmd::Bound { write, .. } => write.as_ref(),
            other => other,
        };
        let cmd = match unbound {
            Cmd::GrantLease { ttl_ms, token, .. } => Cmd::GrantLease { ttl_ms: *ttl_ms, owner: None, token: *token },
            Cmd::Register { ttl_ms, token, instances, takeover, .. } => {
                Cmd::Register { ttl_ms: *ttl_ms, owner: None, token: *token, instances: instances.clone(), takeover: *takeover }
            }
            other => other.clone(),
        };
        let bytes = serde_json::to_vec(&cmd).expect("commands serialize");
        bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
    }
}

/// The result of applying a command, returned to the proposer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Resp {
    /// The change was made (or was a no-op) at `revision`.
    Ok { revision: Revision },
    /// A lease was granted.
    Granted { lease_id: LeaseId, ttl_ms: u64, revision: Revision },
    /// The command named a lease that does not exist (never granted, revoked or expired).
    LeaseNotFound { lease_id: LeaseId },
    /// The command named an instance that does not exist.
    InstanceNotFound(Box<InstanceName>),
    /// A stale expiry was ignored.
    StaleTerm { term: u64, entry_term: u64 },
    /// The idempotency key was used before for a different command; nothing was applied.
    KeyReused { request_id: RequestId },
    /// A token was created.
    TokenCreated { id: TokenId, revision: Revision },
    /// The command named a token that does not exist.
    TokenNotFound { id: TokenId },
    /// A token with the same secret exists already.
    TokenExists { id: TokenId },
    /// Token commands need ACLs on (`AclBootstrap` first).
    AclOff,
    /// Revoking the last `admin` token would leave nobody able to manage tokens.
    LastAdmin { id: TokenId },
    /// A registration, put or delete named an instance hanging off another token's lease;
    /// nothing applied.
    InstanceTaken(Box<Taken>),
    /// The token of a `Bound` write was revoked before it applied; nothing applied.
    TokenRevoked { id: TokenId },
    /// The answers to a `Batch`, one per write, in order.
    Batch { resps: Vec<Resp> },
}

/// The instance an `InstanceNotFound` names.
///
/// The variants that name an instance are boxed: every answer in the idempotency window is a
/// `Resp`, and two inline strings would double it to 64 bytes. The JSON is the same as with the
/// fields inline (a struct in an internally tagged variant is flattened beside the tag).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceName {
    pub service: String,
    pub instance: String,
}

/// What an `InstanceTaken` names: the instance, and the other token's lease it hangs off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Taken {
    pub service: String,
    pub instance: String,
    pub lease_id: LeaseId,
}

impl Resp {
    pub fn instance_not_found(service: &str, instance: &str) -> Resp {
        Resp::InstanceNotFound(Box::new(InstanceName { service: service.to_string(), instance: instance.to_string() }))
    }

    pub fn instance_taken(service: &str, instance: &str, lease_id: LeaseId) -> Resp {
        Resp::InstanceTaken(Box::new(Taken { service: service.to_string(), instance: instance.to_string(), lease_id }))
    }
}

impl Default for Resp {
    fn default() -> Self {
        Resp::Ok { revision: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log is a stability boundary: an entry written by an earlier build (port as a plain
    /// number under `spec`) must still decode, and decode to the same fingerprint.
    /// Answers are kept in snapshots (the idempotency window): boxing the variants that name an
    /// instance must not change their JSON, and must keep every answer at 32 bytes.
    #[test]
    fn answers_naming_an_instance_keep_their_json_and_answers_stay_small() {
        let taken = r#"{"result":"instance_taken","service":"web","instance":"a","lease_id":9}"#;
        assert_eq!(serde_json::to_string(&Resp::instance_taken("web", "a", 9)).unwrap(), taken);
        assert_eq!(serde_json::from_str::<Resp>(taken).unwrap(), Resp::instance_taken("web", "a", 9));
        let missing = r#"{"result":"instance_not_found","service":"web","instance":"a"}"#;
        assert_eq!(serde_json::to_string(&Resp::instance_not_found("web", "a")).unwrap(), missing);
        assert_eq!(serde_json::from_str::<Resp>(missing).unwrap(), Resp::instance_not_found("web", "a"));
        let batch = Resp::Batch { resps: vec![Resp::instance_taken("web", "a", 9), Resp::Ok { revision: 3 }] };
        assert_eq!(serde_json::from_str::<Resp>(&serde_json::to_string(&batch).unwrap()).unwrap(), batch);
        assert_eq!(std::mem::size_of::<Resp>(), 32);
    }

    #[test]
    fn a_put_from_an_earlier_log_still_decodes() {
        let old = r#"{"cmd":"put_instance","service":"web","instance":"a","spec":{"address":"10.0.0.5","port":8080,"weight":100,"state":"up","meta":{}},"request_id":"k1"}"#;
        let p: Proposal = serde_json::from_str(old).unwrap();
        let Cmd::PutInstance { registration, .. } = &p.cmd else { panic!("decoded as {:?}", p.cmd) };
        assert_eq!((registration.address(), registration.port(), registration.weight()), ("10.0.0.5", 8080, 100));
        assert_eq!(serde_json::to_string(&p).unwrap(), old, "written exactly as earlier builds wrote it, so fingerprints match too");
    }

    /// A put retried under the same key may reach a leader that binds it to the caller's token
    /// (or one that does not, during an upgrade): it is the same write, not a reused key.
    #[test]
    fn binding_a_write_to_a_token_keeps_its_fingerprint() {
        let old = r#"{"cmd":"delete_instance","service":"web","instance":"a","request_id":"k1"}"#;
        let plain: Proposal = serde_json::from_str(old).unwrap();
        let bound = Proposal::new(Cmd::Bound { token: 7, write: Box::new(plain.cmd.clone()) }, Some("k1".into()));
        assert_eq!(bound.fingerprint(), plain.fingerprint());
        let json = serde_json::to_string(&bound).unwrap();
        assert!(json.starts_with(r#"{"cmd":"bound","token":7,"write":{"cmd":"delete_instance""#), "{json}");
        assert_eq!(serde_json::from_str::<Proposal>(&json).unwrap(), bound);
        let other =
            Proposal::new(Cmd::Bound { token: 7, write: Box::new(Cmd::DeleteInstance { service: "web".into(), instance: "b".into() }) }, Some("k1".into()));
        assert_ne!(other.fingerprint(), plain.fingerprint());
    }

    #[test]
    fn a_port_out_of_range_does_not_decode() {
        let bad = r#"{"cmd":"put_instance","service":"web","instance":"a","spec":{"address":"10.0.0.5","port":70000,"weight":100}}"#;
        assert!(serde_json::from_str::<Proposal>(bad).is_err());
    }
}
