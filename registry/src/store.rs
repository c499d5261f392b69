//! The replicated data: services, instances and leases, and the pure `apply` that changes them.
//!
//! Architecture Invariant: `apply` never reads a clock or anything outside `Store` and the entry.
//! Two nodes that apply the same log hold the same `Store`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use imbl::{OrdMap, Vector};
use serde::{Deserialize, Serialize};

use proto::{Instance, LeaseId, Registration, Removal, RemovalCause, Revision, WatchEvent};

use crate::acl::{Acl, Token, TokenId};
use crate::command::{Cmd, Proposal, Resp};

/// A lease as replicated: its TTL and what hangs off it. Deadlines are not here: they live on
/// the leader only (see `lease`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: LeaseId,
    pub ttl_ms: u64,
    /// `(service, instance)` pairs attached to this lease.
    pub instances: Members,
    /// The client that asked for it, if known (`GrantLease::owner`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The ACL token that granted it (`GrantLease::token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<crate::acl::TokenId>,
}

impl Lease {
    fn attach(&mut self, service: &str, instance: &str) {
        self.instances.insert((service.to_string(), instance.to_string()));
    }

    fn detach(&mut self, service: &str, instance: &str) {
        self.instances.remove(&(service.to_string(), instance.to_string()));
    }
}

/// The `(service, instance)` pairs attached to a lease, in order, each once. On the wire (a
/// snapshot) a JSON array of pairs, as the `BTreeSet` it replaced.
///
/// Most leases hold one instance, and a set's first node is about ten times that size, so up
/// to `Members::FEW` are kept in a vector; past that, in a set, so that a lease with many
/// instances still changes in O(log n).
#[derive(Debug, Clone)]
pub enum Members {
    Few(Vec<(String, String)>),
    Many(BTreeSet<(String, String)>),
}

impl Default for Members {
    fn default() -> Members {
        Members::Few(Vec::new())
    }
}

impl Members {
    pub const FEW: usize = 16;

    fn insert(&mut self, key: (String, String)) {
        match self {
            Members::Few(v) => match v.binary_search(&key) {
                Ok(_) => {}
                Err(_) if v.len() >= Members::FEW => *self = Members::Many(std::mem::take(v).into_iter().chain([key]).collect()),
                Err(at) => {
                    v.reserve_exact(1);
                    v.insert(at, key);
                }
            },
            Members::Many(set) => {
                set.insert(key);
            }
        }
    }

    fn remove(&mut self, key: &(String, String)) {
        match self {
            Members::Few(v) => {
                if let Ok(at) = v.binary_search(key) {
                    v.remove(at);
                }
            }
            Members::Many(set) => {
                set.remove(key);
            }
        }
    }

    pub fn iter(&self) -> Box<dyn Iterator<Item = &(String, String)> + '_> {
        match self {
            Members::Few(v) => Box::new(v.iter()),
            Members::Many(set) => Box::new(set.iter()),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Members::Few(v) => v.len(),
            Members::Many(set) => set.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Equal when they hold the same pairs, whichever form: a node restored from a snapshot may
/// hold in a vector what one that saw the lease shrink holds in a set.
impl PartialEq for Members {
    fn eq(&self, other: &Members) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Members {}

impl FromIterator<(String, String)> for Members {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Members {
        let set: BTreeSet<(String, String)> = iter.into_iter().collect();
        match set.len() {
            n if n > Members::FEW => Members::Many(set),
            _ => Members::Few(set.into_iter().collect()),
        }
    }
}

impl Serialize for Members {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Members, D::Error> {
        Vec::<(String, String)>::deserialize(d).map(Members::from_iter)
    }
}

/// The instances of one service, by name. Each instance is shared with the watch history's
/// events (`WatchEvent::Put`), so 100k instances are not held twice.
pub type InstanceMap = OrdMap<String, Arc<Instance>>;

/// Every lease, by id. Shared like instances, so a snapshot's copy of a lease is copied only
/// when the lease changes.
pub type Leases = OrdMap<LeaseId, Arc<Lease>>;

/// The replicated state.
///
/// The large collections are persistent maps (`imbl`): a clone shares every node with the
/// original and costs O(1), so a snapshot build copies the store under the read lock in
/// microseconds and encodes the copy while `apply` goes on; a later change copies only the
/// nodes on its path. The JSON is the same as a `BTreeMap`'s.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Store {
    /// Index of the last applied entry; every change is stamped with the index of its entry.
    revision: Revision,
    /// Highest term seen in an applied entry.
    term: u64,
    services: OrdMap<String, InstanceMap>,
    /// Revision of the last change per service, kept after the last instance is gone so that a
    /// blocking query on an emptied service still wakes up.
    service_index: BTreeMap<String, Revision>,
    leases: Leases,
    /// Answers of the last writes that carried a request id, so a retry applies once.
    #[serde(default)]
    requests: Requests,
    /// The cluster's name, set once by its first leader.
    #[serde(default)]
    cluster_id: Option<String>,
    /// Members that have acknowledged the log at least once.
    #[serde(default)]
    started: BTreeSet<u64>,
    /// Live leases per owner, for the per-client limit.
    #[serde(default)]
    leases_by_owner: OrdMap<String, u64>,
    /// The last `RECENT_REMOVALS` instance removals, with their causes, oldest first.
    #[serde(default)]
    removals: VecDeque<Removal>,
    /// Tokens and whether ACLs are on (`acl`).
    #[serde(default)]
    acl: Acl,
    /// The lowest lease id not yet handed out. A lease's id is its granting entry's index, or,
    /// when one entry grants several (`Cmd::Batch`), the next one past those: never one given
    /// before, even to a lease long gone.
    #[serde(default)]
    next_lease: LeaseId,
}

/// How many removals the store remembers for `GET /v1/removals`.
pub const RECENT_REMOVALS: usize = 1000;

/// How many request ids the store remembers. Group commit lets a 3-node cluster take about
/// 10,000 writes a second on the benchmark machine, so at that peak this is about 13 s: longer
/// than a client waits for a write (5 s) before it retries. At the rate a fleet of announcers
/// writes (a few per second), it is hours. About 200 bytes each.
pub const REQUEST_WINDOW: usize = 131_072;

/// The idempotency window: the answer to each of the last `REQUEST_WINDOW` request ids, oldest
/// forgotten first. Part of the replicated state, so every node answers a retry alike.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requests {
    /// Key -> (fingerprint of the command, answer). The key is shared with `order`.
    answers: OrdMap<Arc<str>, (u64, Resp)>,
    order: Vector<Arc<str>>,
}

impl Requests {
    /// The answer to give `p` without applying it: the first answer if its key was seen with
    /// the same command, `KeyReused` if with another; `None` if the key is new (or has none).
    pub fn replay(&self, p: &Proposal) -> Option<Resp> {
        let id = p.request_id.as_deref()?;
        let (fingerprint, resp) = self.answers.get(id)?;
        Some(if *fingerprint == p.fingerprint() { resp.clone() } else { Resp::KeyReused { request_id: id.to_string() } })
    }

    fn record(&mut self, id: &str, fingerprint: u64, resp: &Resp) {
        let key: Arc<str> = Arc::from(id);
        if self.answers.insert(key.clone(), (fingerprint, resp.clone())).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > REQUEST_WINDOW {
            let old = self.order.pop_front().expect("len > window");
            self.answers.remove(&old);
        }
    }

    pub fn len(&self) -> usize {
        self.answers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }
}

impl Store {
    /// Applies one proposal at log position (`index`, `term`). Returns the answer for the
    /// proposer and the watch events the change produced. A request id seen before changes
    /// nothing and answers what the first one did.
    pub fn apply(&mut self, index: u64, term: u64, proposal: &Proposal) -> (Resp, Vec<WatchEvent>) {
        self.advance(index, term);
        let Cmd::Batch { proposals } = &proposal.cmd else { return self.apply_one(index, term, proposal) };
        let mut resps = Vec::with_capacity(proposals.len());
        let mut events = Vec::new();
        for p in proposals {
            let (resp, mut more) = self.apply_one(index, term, p);
            resps.push(resp);
            events.append(&mut more);
        }
        (Resp::Batch { resps }, events)
    }

    fn apply_one(&mut self, index: u64, term: u64, proposal: &Proposal) -> (Resp, Vec<WatchEvent>) {
        if let Some(done) = self.requests.replay(proposal) {
            return (done, Vec::new());
        }
        let (resp, events) = self.apply_cmd(index, term, &proposal.cmd, proposal.at_ms);
        if let Some(id) = &proposal.request_id {
            self.requests.record(id, proposal.fingerprint(), &resp);
        }
        (resp, events)
    }

    fn apply_cmd(&mut self, index: u64, term: u64, cmd: &Cmd, at_ms: Option<u64>) -> (Resp, Vec<WatchEvent>) {
        let mut events = Vec::new();
        let resp = match cmd {
            Cmd::GrantLease { ttl_ms, owner, token } => {
                let lease_id = self.grant(index, *ttl_ms, owner, *token);
                Resp::Granted { lease_id, ttl_ms: *ttl_ms, revision: index }
            }
            Cmd::Register { ttl_ms, owner, token, instances, takeover } => {
                let taken = |n: &crate::command::Named| {
                    let held = self.instance(&n.service, &n.instance)?.lease_id?;
                    (self.lease(held)?.token != *token).then_some(held)
                };
                // A token revoked after the check before proposing (as for a bound put): its
                // lease and instances would live on, renewable by no one but an admin.
                if let Some(t) = token.filter(|t| !takeover && self.acl.by_id(*t).is_none()) {
                    return (Resp::TokenRevoked { id: t }, events);
                }
                if let Some((n, lease_id)) = instances.iter().filter(|_| !takeover).find_map(|n| taken(n).map(|l| (n, l))) {
                    return (Resp::instance_taken(&n.service, &n.instance, lease_id), events);
                }
                let lease_id = self.grant(index, *ttl_ms, owner, *token);
                for n in instances {
                    // Cannot fail: the lease exists, granted just above.
                    self.put(&n.service, &n.instance, &n.registration.clone().under_lease(lease_id), at_ms, &mut events);
                }
                Resp::Granted { lease_id, ttl_ms: *ttl_ms, revision: index }
            }
            // Never proposed inside another batch (`node::batch` makes only the outer one).
            Cmd::Batch { .. } => Resp::Batch { resps: Vec::new() },
            Cmd::RevokeLease { lease_id } => match self.remove_lease(*lease_id, RemovalCause::Revoked { lease_id: *lease_id }, at_ms, &mut events) {
                true => Resp::Ok { revision: index },
                false => Resp::LeaseNotFound { lease_id: *lease_id },
            },
            Cmd::ExpireLeases { term: decided_in, lease_ids } => {
                if *decided_in != term {
                    Resp::StaleTerm { term: *decided_in, entry_term: term }
                } else {
                    for id in lease_ids {
                        self.remove_lease(*id, RemovalCause::Expired { lease_id: *id, term }, at_ms, &mut events);
                    }
                    Resp::Ok { revision: index }
                }
            }
            Cmd::Bound { token, write } => match write.as_ref() {
                Cmd::PutInstance { service, instance, .. } | Cmd::DeleteInstance { service, instance } => match self.refuse_bound(*token, service, instance) {
                    Some(refused) => refused,
                    None => return self.apply_cmd(index, term, write, at_ms),
                },
                // Only puts and deletes are bound (`node::writes`); anything else applies as is.
                _ => return self.apply_cmd(index, term, write, at_ms),
            },
            Cmd::PutInstance { service, instance, registration } => self.put(service, instance, registration, at_ms, &mut events),
            Cmd::DeleteInstance { service, instance } => match self.remove_instance(service, instance, RemovalCause::Deregistered, at_ms, &mut events) {
                true => Resp::Ok { revision: index },
                false => Resp::instance_not_found(service, instance),
            },
            Cmd::InitCluster { cluster_id } => {
                self.cluster_id.get_or_insert_with(|| cluster_id.clone());
                Resp::Ok { revision: index }
            }
            Cmd::MembersStarted { ids } => {
                self.started.extend(ids.iter().copied());
                Resp::Ok { revision: index }
            }
            Cmd::AclBootstrap { hash } => {
                if !self.acl.enabled {
                    self.acl.enabled = true;
                    // Tokens made while the cluster was open are anyone's: none survives.
                    self.acl.tokens.clear();
                    let token = Token { id: index, scopes: vec![crate::acl::Scope::Admin], description: "bootstrap".into(), created_ms: at_ms };
                    self.acl.tokens.insert(*hash, token);
                }
                Resp::Ok { revision: index }
            }
            Cmd::CreateToken { .. } | Cmd::RevokeToken { .. } if !self.acl.enabled => Resp::AclOff,
            Cmd::CreateToken { hash, scopes, description } => match self.acl.tokens.get(hash) {
                Some(t) => Resp::TokenExists { id: t.id },
                None => {
                    self.acl.tokens.insert(*hash, Token { id: index, scopes: scopes.clone(), description: description.clone(), created_ms: at_ms });
                    Resp::TokenCreated { id: index, revision: index }
                }
            },
            Cmd::RevokeToken { id } => match self.acl.by_id(*id).map(|(h, t)| (*h, t.is_admin())) {
                // Nothing could make another: the bootstrap applies once.
                Some((_, true)) if self.acl.tokens.values().filter(|t| t.is_admin()).count() == 1 => Resp::LastAdmin { id: *id },
                Some((h, _)) => {
                    self.acl.tokens.remove(&h);
                    Resp::Ok { revision: index }
                }
                None => Resp::TokenNotFound { id: *id },
            },
        };
        (resp, events)
    }

    /// Why a put or delete bound to `token` may not change `service/instance` now, if it may
    /// not: the token was revoked, or the instance hangs off another token's lease. (The lease
    /// a put names needs no second look: a lease's token never changes and its id is never
    /// reused, so it is still the one checked, or gone.)
    fn refuse_bound(&self, token: TokenId, service: &str, instance: &str) -> Option<Resp> {
        if self.acl.by_id(token).is_none() {
            return Some(Resp::TokenRevoked { id: token });
        }
        let held = self.instance(service, instance)?.lease_id?;
        (self.lease(held)?.token != Some(token)).then(|| Resp::instance_taken(service, instance, held))
    }

    /// Records that an entry without data (blank, membership) was applied.
    pub(crate) fn advance(&mut self, index: u64, term: u64) {
        debug_assert!(index > self.revision || self.revision == 0, "apply out of order: {index} after {}", self.revision);
        self.revision = index;
        self.term = self.term.max(term);
    }

    /// Grants a lease in the entry at `index`; returns its id.
    fn grant(&mut self, index: u64, ttl_ms: u64, owner: &Option<String>, token: Option<TokenId>) -> LeaseId {
        let id = index.max(self.next_lease);
        self.next_lease = id + 1;
        if let Some(o) = owner {
            *self.leases_by_owner.entry(o.clone()).or_default() += 1;
        }
        self.leases.insert(id, Arc::new(Lease { id, ttl_ms, instances: Members::default(), owner: owner.clone(), token }));
        id
    }

    fn put(&mut self, service: &str, name: &str, spec: &Registration, at_ms: Option<u64>, events: &mut Vec<WatchEvent>) -> Resp {
        let rev = self.revision;
        if let Some(id) = spec.lease_id() {
            if !self.leases.contains_key(&id) {
                return Resp::LeaseNotFound { lease_id: id };
            }
        }
        let previous = self.services.get(service).and_then(|m| m.get(name)).cloned();
        if let Some(old_lease) = previous.as_ref().and_then(|p| p.lease_id) {
            if Some(old_lease) != spec.lease_id() {
                if let Some(l) = self.leases.get_mut(&old_lease) {
                    Arc::make_mut(l).detach(service, name);
                }
            }
        }
        if let Some(id) = spec.lease_id() {
            Arc::make_mut(self.leases.get_mut(&id).expect("checked above")).attach(service, name);
        }
        let instance = Arc::new(Instance {
            service: service.to_string(),
            instance: name.to_string(),
            address: spec.address().to_string(),
            port: spec.port(),
            weight: spec.weight(),
            state: spec.state(),
            meta: spec.meta().clone(),
            lease_id: spec.lease_id(),
            create_revision: previous.as_ref().map(|p| p.create_revision).unwrap_or(rev),
            mod_revision: rev,
            lease: None,
        });
        if let Some(old) = previous.as_ref().filter(|p| (p.address.as_str(), p.port) != (spec.address(), spec.port())) {
            let cause = RemovalCause::Replaced { address: spec.address().to_string(), port: spec.port() };
            self.record_removal(old, cause, at_ms);
        }
        self.services.entry(service.to_string()).or_default().insert(name.to_string(), instance.clone());
        self.service_index.insert(service.to_string(), rev);
        events.push(WatchEvent::Put { revision: rev, instance });
        Resp::Ok { revision: rev }
    }

    fn record_removal(&mut self, gone: &Instance, cause: RemovalCause, at_ms: Option<u64>) {
        self.removals.push_back(Removal {
            revision: self.revision,
            service: gone.service.clone(),
            instance: gone.instance.clone(),
            address: gone.address.clone(),
            port: gone.port,
            cause,
            at_ms,
        });
        while self.removals.len() > RECENT_REMOVALS {
            self.removals.pop_front();
        }
    }

    fn remove_instance(&mut self, service: &str, name: &str, cause: RemovalCause, at_ms: Option<u64>, events: &mut Vec<WatchEvent>) -> bool {
        let Some(instances) = self.services.get_mut(service) else { return false };
        let Some(removed) = instances.remove(name) else { return false };
        if instances.is_empty() {
            self.services.remove(service);
        }
        if let Some(l) = removed.lease_id.and_then(|id| self.leases.get_mut(&id)) {
            Arc::make_mut(l).detach(service, name);
        }
        self.service_index.insert(service.to_string(), self.revision);
        self.record_removal(&removed, cause.clone(), at_ms);
        events.push(WatchEvent::Delete { revision: self.revision, service: service.to_string(), instance: name.to_string(), cause: Some(cause) });
        true
    }

    fn remove_lease(&mut self, id: LeaseId, cause: RemovalCause, at_ms: Option<u64>, events: &mut Vec<WatchEvent>) -> bool {
        let Some(lease) = self.leases.remove(&id) else { return false };
        if let Some(o) = &lease.owner {
            if let Some(n) = self.leases_by_owner.get_mut(o) {
                *n -= 1;
                if *n == 0 {
                    self.leases_by_owner.remove(o);
                }
            }
        }
        for (service, instance) in lease.instances.iter() {
            self.remove_instance(service, instance, cause.clone(), at_ms, events);
        }
        true
    }

    /// The most recent removals, oldest first.
    pub fn removals(&self) -> &VecDeque<Removal> {
        &self.removals
    }

    /// Index of the last applied entry.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// Every instance, by service then name.
    pub fn services(&self) -> &OrdMap<String, InstanceMap> {
        &self.services
    }

    pub fn instance(&self, service: &str, name: &str) -> Option<&Instance> {
        self.services.get(service)?.get(name).map(|i| &**i)
    }

    pub fn leases(&self) -> &Leases {
        &self.leases
    }

    pub fn lease(&self, id: LeaseId) -> Option<&Lease> {
        self.leases.get(&id).map(|l| &**l)
    }

    /// The idempotency window of recent request ids.
    pub fn requests(&self) -> &Requests {
        &self.requests
    }

    pub fn cluster_id(&self) -> Option<&str> {
        self.cluster_id.as_deref()
    }

    /// This store as the seed of a new cluster (`backup::restore`), at `bump` revisions past
    /// the backup's: the old cluster's own records (its id, which members had started, the
    /// request-replay window) are dropped; services, instances, leases, tokens and the recent
    /// removals stay.
    pub fn restored(mut self, bump: u64) -> Store {
        // Every revision, lease id and token id the old cluster may have handed out after the
        // backup is below the new cluster's first: none is handed out twice.
        self.revision += bump;
        self.next_lease += bump;
        self.cluster_id = None;
        self.started.clear();
        self.requests = Requests::default();
        self.term = 0;
        self
    }

    /// Members that have acknowledged the log at least once.
    pub fn started(&self) -> &BTreeSet<u64> {
        &self.started
    }

    pub fn instances(&self, service: &str) -> Vec<Instance> {
        self.services.get(service).map(|m| m.values().map(|i| Instance::clone(i)).collect()).unwrap_or_default()
    }

    pub fn index_of(&self, service: &str) -> Revision {
        self.service_index.get(service).copied().unwrap_or(0)
    }

    /// Revision of the last change to any service.
    pub fn last_change(&self) -> Revision {
        self.service_index.values().copied().max().unwrap_or(0)
    }

    /// Live leases granted to `owner`.
    pub fn leases_of(&self, owner: &str) -> u64 {
        self.leases_by_owner.get(owner).copied().unwrap_or(0)
    }

    pub fn acl(&self) -> &Acl {
        &self.acl
    }

    pub fn instance_count(&self) -> usize {
        self.services.values().map(|m| m.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(lease: Option<u64>) -> Registration {
        let body =
            proto::InstanceSpec { address: "10.0.0.5".into(), port: 8080, lease_id: lease, weight: 100, state: Default::default(), meta: Default::default() };
        proto::validate::instance_spec(&body).expect("a valid registration")
    }

    fn apply(s: &mut Store, index: u64, term: u64, cmd: Cmd) -> (Resp, Vec<WatchEvent>) {
        s.apply(index, term, &cmd.into())
    }

    fn put(service: &str, instance: &str, lease: Option<u64>) -> Cmd {
        Cmd::PutInstance { service: service.into(), instance: instance.into(), registration: spec(lease) }
    }

    /// A lease's members are a vector while few, a set past `Members::FEW`; either way the
    /// same pairs, in order, with the JSON of the `BTreeSet` earlier versions wrote.
    #[test]
    fn lease_members_keep_the_sets_order_and_json_in_either_form() {
        let pair = |k: usize| (format!("svc-{}", k % 3), format!("i{k:03}"));
        let mut m = Members::default();
        let mut set = BTreeSet::new();
        for k in (0..40).rev().chain(0..5) {
            m.insert(pair(k));
            set.insert(pair(k));
            assert_eq!(m.iter().cloned().collect::<BTreeSet<_>>(), set);
            assert!(m.iter().zip(m.iter().skip(1)).all(|(a, b)| a < b), "in order, each once");
            assert_eq!(serde_json::to_string(&m).unwrap(), serde_json::to_string(&set).unwrap());
        }
        assert!(matches!(m, Members::Many(_)));
        for k in 0..38 {
            m.remove(&pair(k));
            set.remove(&pair(k));
        }
        m.remove(&pair(999));
        let back: Members = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert!(matches!((&m, &back), (Members::Many(_), Members::Few(_))));
        assert_eq!(back, m, "equal across forms");
        assert_eq!((back.len(), back.iter().cloned().collect::<BTreeSet<_>>()), (2, set));
        let unsorted: Members = serde_json::from_str(r#"[["b","1"],["a","2"],["b","1"]]"#).unwrap();
        assert_eq!(serde_json::to_string(&unsorted).unwrap(), r#"[["a","2"],["b","1"]]"#);
    }

    #[test]
    fn lease_id_is_the_grant_index() {
        let mut s = Store::default();
        let (r, _) = apply(&mut s, 7, 1, Cmd::GrantLease { ttl_ms: 3000, owner: None, token: None });
        assert_eq!(r, Resp::Granted { lease_id: 7, ttl_ms: 3000, revision: 7 });
        assert!(s.leases.contains_key(&7));
    }

    #[test]
    fn a_batch_applies_each_write_as_alone_and_never_reuses_a_lease_id() {
        let mut s = Store::default();
        let grant = |key: &str| Proposal::new(Cmd::GrantLease { ttl_ms: 3000, owner: None, token: None }, Some(key.into()));
        let put = Proposal::new(put("web", "a", Some(11)), None);
        let bad = Proposal::new(put_cmd_under(999), None);
        let batch = Cmd::Batch { proposals: vec![grant("k1"), grant("k2"), put, bad, grant("k1")] };
        let (r, events) = apply(&mut s, 10, 1, batch);
        let Resp::Batch { resps } = r else { panic!("{r:?}") };
        assert_eq!(resps[0], Resp::Granted { lease_id: 10, ttl_ms: 3000, revision: 10 });
        assert_eq!(resps[1], Resp::Granted { lease_id: 11, ttl_ms: 3000, revision: 10 }, "the second grant of the entry gets the next id");
        assert_eq!(resps[2], Resp::Ok { revision: 10 }, "a later write of the batch sees the earlier ones");
        assert_eq!(resps[3], Resp::LeaseNotFound { lease_id: 999 }, "one failed write fails alone");
        assert_eq!(resps[4], resps[0], "a retry in the same batch replays");
        assert_eq!(events.len(), 1);
        assert_eq!(s.leases().len(), 2);
        // The next entry's index (11) is an id already given: it gets the one after.
        apply(&mut s, 11, 1, Cmd::RevokeLease { lease_id: 11 });
        let (r, _) = apply(&mut s, 12, 1, Cmd::GrantLease { ttl_ms: 3000, owner: None, token: None });
        assert_eq!(r, Resp::Granted { lease_id: 12, ttl_ms: 3000, revision: 12 });
        let (r, _) = apply(&mut s, 13, 1, Cmd::Batch { proposals: vec![grant("k3"), grant("k4")] });
        let Resp::Batch { resps } = r else { panic!("{r:?}") };
        assert_eq!(
            (&resps[0], &resps[1]),
            (&Resp::Granted { lease_id: 13, ttl_ms: 3000, revision: 13 }, &Resp::Granted { lease_id: 14, ttl_ms: 3000, revision: 13 })
        );
        let (r, _) = apply(&mut s, 14, 1, Cmd::GrantLease { ttl_ms: 3000, owner: None, token: None });
        assert_eq!(r, Resp::Granted { lease_id: 15, ttl_ms: 3000, revision: 14 }, "id 14 went to the batch");
        // The counter survives a snapshot.
        let mut back: Store = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        let (r, _) = apply(&mut back, 15, 1, Cmd::GrantLease { ttl_ms: 3000, owner: None, token: None });
        assert_eq!(r, Resp::Granted { lease_id: 16, ttl_ms: 3000, revision: 15 });
    }

    fn put_cmd_under(lease: u64) -> Cmd {
        put("web", "b", Some(lease))
    }

    #[test]
    fn a_registration_grants_and_puts_in_one_entry() {
        use crate::acl::{Scope, TokenHash};
        let mut s = Store::default();
        // Tokens 4 and 5 (a token's id is its entry's index).
        s.apply(3, 1, &Proposal::from(Cmd::AclBootstrap { hash: TokenHash::of(&"b".repeat(40)) }));
        for (i, c) in [(4, 'x'), (5, 'y')] {
            let cmd =
                Cmd::CreateToken { hash: TokenHash::of(&c.to_string().repeat(40)), scopes: vec![Scope::Announce("*".into())], description: String::new() };
            s.apply(i, 1, &Proposal::from(cmd));
        }
        let named = |service: &str, instance: &str| crate::command::Named { service: service.into(), instance: instance.into(), registration: spec(None) };
        let cmd = Cmd::Register {
            ttl_ms: 3000,
            owner: Some("10.0.0.1".into()),
            token: Some(4),
            instances: vec![named("web", "a"), named("api", "b")],
            takeover: false,
        };
        let (r, events) = apply(&mut s, 9, 1, cmd);
        assert_eq!(r, Resp::Granted { lease_id: 9, ttl_ms: 3000, revision: 9 });
        assert_eq!(events.len(), 2, "one put event per instance, both at the entry's revision");
        let lease = s.lease(9).unwrap();
        assert_eq!((lease.instances.len(), lease.token, s.leases_of("10.0.0.1")), (2, Some(4), 1));
        assert_eq!(s.instance("web", "a").unwrap().lease_id, Some(9));
        assert_eq!(s.instance("api", "b").unwrap().mod_revision, 9);
        // Another token's registration of one of them is refused whole, when it applies
        // (two registrations checked before either applied); an admin's takes it over.
        let other = |takeover| Cmd::Register { ttl_ms: 3000, owner: None, token: Some(5), instances: vec![named("web", "c"), named("web", "a")], takeover };
        let (r, events) = apply(&mut s, 10, 1, other(false));
        assert_eq!(r, Resp::instance_taken("web", "a", 9));
        assert!(events.is_empty() && s.instance("web", "c").is_none() && s.leases().len() == 1, "nothing of it applied");
        let (r, _) = apply(&mut s, 11, 1, other(true));
        assert_eq!(r, Resp::Granted { lease_id: 11, ttl_ms: 3000, revision: 11 });
        assert_eq!(s.instance("web", "a").unwrap().lease_id, Some(11));
        // A lease owns its instances: its revoke removes them.
        apply(&mut s, 12, 1, Cmd::RevokeLease { lease_id: 9 });
        apply(&mut s, 13, 1, Cmd::RevokeLease { lease_id: 11 });
        assert_eq!(s.instance_count(), 0);
        // A token revoked between the check before proposing and the apply: nothing applies.
        s.apply(14, 1, &Proposal::from(Cmd::RevokeToken { id: 5 }));
        let (r, events) = apply(&mut s, 15, 1, other(false));
        assert_eq!(r, Resp::TokenRevoked { id: 5 });
        assert!(events.is_empty() && s.leases().is_empty() && s.instance_count() == 0, "no lease, no instance");
    }

    #[test]
    fn put_stamps_revisions_and_keeps_create_revision() {
        let mut s = Store::default();
        apply(&mut s, 1, 1, put("web", "a", None));
        let (r, ev) = apply(&mut s, 2, 1, put("web", "a", None));
        assert_eq!(r, Resp::Ok { revision: 2 });
        let i = &s.services["web"]["a"];
        assert_eq!((i.create_revision, i.mod_revision), (1, 2));
        assert_eq!(ev.len(), 1);
        assert_eq!(s.index_of("web"), 2);
    }

    #[test]
    fn put_under_unknown_lease_changes_nothing() {
        let mut s = Store::default();
        let (r, ev) = apply(&mut s, 1, 1, put("web", "a", Some(99)));
        assert_eq!(r, Resp::LeaseNotFound { lease_id: 99 });
        assert!(ev.is_empty());
        assert!(s.services.is_empty());
    }

    #[test]
    fn revoke_removes_attached_instances_in_the_same_entry() {
        let mut s = Store::default();
        apply(&mut s, 1, 1, Cmd::GrantLease { ttl_ms: 3000, owner: None, token: None });
        apply(&mut s, 2, 1, put("web", "a", Some(1)));
        apply(&mut s, 3, 1, put("api", "b", Some(1)));
        apply(&mut s, 4, 1, put("web", "c", None));
        let (r, ev) = apply(&mut s, 5, 1, Cmd::RevokeLease { lease_id: 1 });
        assert_eq!(r, Resp::Ok { revision: 5 });
        assert_eq!(ev.len(), 2);
        assert!(ev.iter().all(|e| e.revision() == 5));
        assert_eq!(s.instance_count(), 1);
        assert!(s.leases.is_empty());
        assert_eq!(s.index_of("api"), 5, "an emptied service keeps its index");
    }

    #[test]
    fn expiry_from_another_term_is_a_no_op() {
        let mut s = Store::default();
        apply(&mut s, 1, 1, Cmd::GrantLease { ttl_ms: 3000, owner: None, token: None });
        apply(&mut s, 2, 1, put("web", "a", Some(1)));
        let (r, ev) = apply(&mut s, 3, 2, Cmd::ExpireLeases { term: 1, lease_ids: vec![1] });
        assert_eq!(r, Resp::StaleTerm { term: 1, entry_term: 2 });
        assert!(ev.is_empty());
        assert_eq!(s.instance_count(), 1);
        let (_, ev) = apply(&mut s, 4, 2, Cmd::ExpireLeases { term: 2, lease_ids: vec![1] });
        assert_eq!(ev.len(), 1);
        assert_eq!(s.instance_count(), 0);
    }

    #[test]
    fn moving_an_instance_to_another_lease_detaches_it_from_the_old_one() {
        let mut s = Store::default();
        apply(&mut s, 1, 1, Cmd::GrantLease { ttl_ms: 3000, owner: None, token: None });
        apply(&mut s, 2, 1, Cmd::GrantLease { ttl_ms: 3000, owner: None, token: None });
        apply(&mut s, 3, 1, put("web", "a", Some(1)));
        apply(&mut s, 4, 1, put("web", "a", Some(2)));
        apply(&mut s, 5, 1, Cmd::RevokeLease { lease_id: 1 });
        assert_eq!(s.instance_count(), 1, "revoking the old lease must not remove the moved instance");
    }

    #[test]
    fn delete_unknown_instance_is_not_found() {
        let mut s = Store::default();
        let (r, _) = apply(&mut s, 1, 1, Cmd::DeleteInstance { service: "web".into(), instance: "x".into() });
        assert!(matches!(r, Resp::InstanceNotFound { .. }));
    }

    #[test]
    fn the_cluster_id_is_set_once_and_started_members_accumulate() {
        let mut s = Store::default();
        apply(&mut s, 1, 1, Cmd::InitCluster { cluster_id: "a".into() });
        apply(&mut s, 2, 2, Cmd::InitCluster { cluster_id: "b".into() });
        assert_eq!(s.cluster_id.as_deref(), Some("a"));
        apply(&mut s, 3, 2, Cmd::MembersStarted { ids: vec![1, 2] });
        apply(&mut s, 4, 2, Cmd::MembersStarted { ids: vec![3] });
        assert_eq!(s.started, [1, 2, 3].into());
    }

    #[test]
    fn leases_are_counted_per_owner() {
        let mut s = Store::default();
        let grant = |o: &str| Cmd::GrantLease { ttl_ms: 1000, owner: Some(o.into()), token: None };
        apply(&mut s, 1, 1, grant("10.0.0.1"));
        apply(&mut s, 2, 1, grant("10.0.0.1"));
        apply(&mut s, 3, 1, grant("10.0.0.2"));
        assert_eq!((s.leases_of("10.0.0.1"), s.leases_of("10.0.0.2")), (2, 1));
        apply(&mut s, 4, 1, Cmd::RevokeLease { lease_id: 1 });
        apply(&mut s, 5, 1, Cmd::ExpireLeases { term: 1, lease_ids: vec![3] });
        assert_eq!((s.leases_of("10.0.0.1"), s.leases_of("10.0.0.2")), (1, 0));
        assert!(!s.leases_by_owner.contains_key("10.0.0.2"));
    }

    #[test]
    fn same_log_same_store() {
        let log = [
            Cmd::GrantLease { ttl_ms: 1000, owner: None, token: None },
            put("web", "a", Some(1)),
            put("web", "b", None),
            Cmd::ExpireLeases { term: 1, lease_ids: vec![1] },
        ];
        let run = || {
            let mut s = Store::default();
            for (i, c) in log.iter().enumerate() {
                s.apply(i as u64 + 1, 1, &c.clone().into());
            }
            serde_json::to_string(&s).unwrap()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn every_removal_records_its_cause_in_the_event_and_the_recent_list() {
        let mut s = Store::default();
        let at = |cmd: Cmd, ms: u64| Proposal { at_ms: Some(ms), ..Proposal::new(cmd, None) };
        s.apply(1, 1, &Cmd::GrantLease { ttl_ms: 3000, owner: None, token: None }.into());
        s.apply(2, 1, &Cmd::GrantLease { ttl_ms: 3000, owner: None, token: None }.into());
        apply(&mut s, 3, 1, put("web", "a", Some(1)));
        apply(&mut s, 4, 1, put("web", "b", Some(2)));
        apply(&mut s, 5, 1, put("web", "c", None));
        let cause = |events: &[WatchEvent]| match events {
            [WatchEvent::Delete { cause, .. }] => cause.clone(),
            other => panic!("expected one delete, got {other:?}"),
        };
        let (_, ev) = s.apply(6, 2, &at(Cmd::ExpireLeases { term: 2, lease_ids: vec![1] }, 1000));
        assert_eq!(cause(&ev), Some(RemovalCause::Expired { lease_id: 1, term: 2 }));
        let (_, ev) = s.apply(7, 2, &at(Cmd::RevokeLease { lease_id: 2 }, 2000));
        assert_eq!(cause(&ev), Some(RemovalCause::Revoked { lease_id: 2 }));
        let (_, ev) = s.apply(8, 2, &at(Cmd::DeleteInstance { service: "web".into(), instance: "c".into() }, 3000));
        assert_eq!(cause(&ev), Some(RemovalCause::Deregistered));
        // Re-registering "c" elsewhere replaces the old address; the same address does not.
        apply(&mut s, 9, 2, put("web", "c", None));
        let body =
            proto::InstanceSpec { address: "10.0.0.6".into(), port: 9090, lease_id: None, weight: 100, state: Default::default(), meta: Default::default() };
        let moved = Cmd::PutInstance { service: "web".into(), instance: "c".into(), registration: proto::validate::instance_spec(&body).unwrap() };
        let (_, ev) = s.apply(10, 2, &at(moved, 4000));
        assert!(matches!(ev.as_slice(), [WatchEvent::Put { .. }]), "a replacement is a put to watchers");
        apply(&mut s, 11, 2, put("web", "d", None));
        apply(&mut s, 12, 2, put("web", "d", None));
        let got: Vec<(u64, &str, &str, Option<u64>)> = s.removals().iter().map(|r| (r.revision, r.instance.as_str(), r.cause.kind(), r.at_ms)).collect();
        assert_eq!(
            got,
            vec![(6, "a", "expired", Some(1000)), (7, "b", "revoked", Some(2000)), (8, "c", "deregistered", Some(3000)), (10, "c", "replaced", Some(4000))]
        );
        let replaced = s.removals().back().unwrap();
        assert_eq!((replaced.address.as_str(), replaced.port), ("10.0.0.5", 8080), "the removal names the old address");
        assert_eq!(replaced.cause, RemovalCause::Replaced { address: "10.0.0.6".into(), port: 9090 });
    }

    #[test]
    fn the_recent_removals_are_bounded() {
        let mut s = Store::default();
        let mut index = 0;
        for i in 0..(RECENT_REMOVALS + 5) {
            index += 1;
            apply(&mut s, index, 1, put("web", &format!("i{i}"), None));
            index += 1;
            apply(&mut s, index, 1, Cmd::DeleteInstance { service: "web".into(), instance: format!("i{i}") });
        }
        assert_eq!(s.removals().len(), RECENT_REMOVALS);
        assert_eq!(s.removals().front().unwrap().instance, "i5", "the oldest go first");
    }
}

#[cfg(test)]
mod request_tests {
    use super::*;

    fn grant(id: Option<&str>) -> Proposal {
        Proposal::new(Cmd::GrantLease { ttl_ms: 3000, owner: None, token: None }, id.map(str::to_string))
    }

    #[test]
    fn a_retried_write_applies_once_and_answers_as_the_first_did() {
        let mut s = Store::default();
        let (first, _) = s.apply(1, 1, &grant(Some("c1:1")));
        let (again, ev) = s.apply(2, 1, &grant(Some("c1:1")));
        assert_eq!(again, first);
        assert!(ev.is_empty());
        assert_eq!(s.leases.len(), 1, "the retry granted nothing");
        assert_eq!(s.revision, 2, "the retry's entry still advances the revision");
        s.apply(3, 1, &grant(Some("c1:2")));
        s.apply(4, 1, &grant(None));
        assert_eq!(s.leases.len(), 3);
    }

    #[test]
    fn a_retried_revoke_answers_ok_not_lease_not_found() {
        let mut s = Store::default();
        s.apply(1, 1, &grant(None));
        let revoke = Proposal::new(Cmd::RevokeLease { lease_id: 1 }, Some("c1:7".into()));
        assert_eq!(s.apply(2, 1, &revoke).0, Resp::Ok { revision: 2 });
        assert_eq!(s.apply(3, 1, &revoke).0, Resp::Ok { revision: 2 });
    }

    #[test]
    fn the_window_forgets_the_oldest_ids() {
        let mut s = Store::default();
        for i in 0..REQUEST_WINDOW as u64 + 10 {
            s.apply(i + 1, 1, &Proposal::new(Cmd::DeleteInstance { service: "w".into(), instance: "x".into() }, Some(format!("c:{i}"))));
        }
        assert_eq!(s.requests.len(), REQUEST_WINDOW);
        let key = |i: usize| Proposal::new(Cmd::DeleteInstance { service: "w".into(), instance: "x".into() }, Some(format!("c:{i}")));
        assert!(s.requests.replay(&key(0)).is_none());
        assert!(s.requests.replay(&key(REQUEST_WINDOW + 9)).is_some());
    }

    /// `Idempotency-Key` names one write; the same key on another command is a client bug,
    /// answered as such rather than with the first command's result.
    #[test]
    fn a_retry_through_another_node_is_a_retry_whatever_address_that_node_saw() {
        let mut s = Store::default();
        let from = |owner: &str| Proposal::new(Cmd::GrantLease { ttl_ms: 3000, owner: Some(owner.into()), token: None }, Some("k".into()));
        let (first, _) = s.apply(1, 1, &from("10.0.0.7"));
        assert_eq!(s.apply(2, 1, &from("127.0.0.1")).0, first);
        assert_eq!(s.leases.len(), 1);
    }

    #[test]
    fn a_key_reused_for_another_command_applies_nothing() {
        let mut s = Store::default();
        s.apply(1, 1, &grant(Some("k")));
        let other = Proposal::new(Cmd::GrantLease { ttl_ms: 9000, owner: None, token: None }, Some("k".into()));
        assert_eq!(s.apply(2, 1, &other).0, Resp::KeyReused { request_id: "k".into() });
        assert_eq!(s.leases.len(), 1);
    }

    #[test]
    fn acl_bootstrap_applies_once_and_tokens_are_kept_by_hash_only() {
        use crate::acl::{Scope, TokenHash};
        let mut s = Store::default();
        // Made while the cluster is open: refused, so no token predates the bootstrap.
        let early = TokenHash::of(&"e".repeat(40));
        let mut open = Store::default();
        assert_eq!(open.apply(1, 1, &Proposal::from(Cmd::CreateToken { hash: early, scopes: vec![Scope::Admin], description: String::new() })).0, Resp::AclOff);
        let boot = TokenHash::of(&"b".repeat(40));
        s.apply(1, 1, &Proposal::from(Cmd::AclBootstrap { hash: boot }));
        assert!(s.acl().enabled);
        assert!(s.acl().by_hash(&boot).unwrap().is_admin());
        // A second bootstrap (another node's flag, a restart) changes nothing.
        s.apply(2, 1, &Proposal::from(Cmd::AclBootstrap { hash: TokenHash::of(&"c".repeat(40)) }));
        assert_eq!(s.acl().tokens.len(), 1);
        let web = TokenHash::of(&"w".repeat(40));
        let (r, _) = s.apply(3, 1, &Proposal::from(Cmd::CreateToken { hash: web, scopes: vec![Scope::Announce("web-*".into())], description: "web".into() }));
        assert_eq!(r, Resp::TokenCreated { id: 3, revision: 3 });
        let (r, _) = s.apply(4, 1, &Proposal::from(Cmd::CreateToken { hash: web, scopes: vec![Scope::Read], description: "again".into() }));
        assert_eq!(r, Resp::TokenExists { id: 3 });
        assert!(!serde_json::to_string(&s).unwrap().contains(&"w".repeat(40)), "the token itself is never stored");
        s.apply(5, 1, &Proposal::from(Cmd::GrantLease { ttl_ms: 3000, owner: None, token: Some(3) }));
        assert_eq!(s.lease(5).unwrap().token, Some(3));
        let (r, _) = s.apply(6, 1, &Proposal::from(Cmd::RevokeToken { id: 3 }));
        assert_eq!(r, Resp::Ok { revision: 6 });
        assert!(s.acl().by_hash(&web).is_none());
        let (r, _) = s.apply(7, 1, &Proposal::from(Cmd::RevokeToken { id: 3 }));
        assert_eq!(r, Resp::TokenNotFound { id: 3 });
        let (r, _) = s.apply(8, 1, &Proposal::from(Cmd::RevokeToken { id: 1 }));
        assert_eq!(r, Resp::LastAdmin { id: 1 }, "the last admin token stays");
    }

    /// The check before proposing reads an older state than the one the write applies to: two
    /// tokens could both pass it for one instance. Applying checks again, for writes bound to
    /// a token (`Cmd::Bound`); an admin's write and an entry of an earlier version apply as
    /// they always did.
    #[test]
    fn a_bound_put_or_delete_takes_no_other_tokens_instance_and_needs_a_live_token() {
        use crate::acl::{Scope, TokenHash};
        let apply = |s: &mut Store, index: u64, term: u64, cmd: Cmd| s.apply(index, term, &cmd.into());
        let spec = |lease: Option<u64>| {
            let body = proto::InstanceSpec {
                address: "10.0.0.5".into(),
                port: 8080,
                lease_id: lease,
                weight: 100,
                state: Default::default(),
                meta: Default::default(),
            };
            proto::validate::instance_spec(&body).unwrap()
        };
        let mut s = Store::default();
        s.apply(1, 1, &Proposal::from(Cmd::AclBootstrap { hash: TokenHash::of(&"b".repeat(40)) }));
        for (i, c) in [(2, 'x'), (3, 'y')] {
            s.apply(
                i,
                1,
                &Proposal::from(Cmd::CreateToken {
                    hash: TokenHash::of(&c.to_string().repeat(40)),
                    scopes: vec![Scope::Announce("*".into())],
                    description: String::new(),
                }),
            );
        }
        let (x, y) = (Some(2), Some(3));
        apply(&mut s, 4, 1, Cmd::GrantLease { ttl_ms: 3000, owner: None, token: x });
        apply(&mut s, 5, 1, Cmd::GrantLease { ttl_ms: 3000, owner: None, token: y });
        let bound = |token: Option<u64>, write: Cmd| match token {
            Some(token) => Cmd::Bound { token, write: Box::new(write) },
            None => write,
        };
        let bound_put =
            |lease: Option<u64>, token: Option<u64>| bound(token, Cmd::PutInstance { service: "web".into(), instance: "a".into(), registration: spec(lease) });
        let bound_delete = |token: Option<u64>| bound(token, Cmd::DeleteInstance { service: "web".into(), instance: "a".into() });
        assert_eq!(apply(&mut s, 6, 1, bound_put(Some(4), x)).0, Resp::Ok { revision: 6 });
        let taken = Resp::instance_taken("web", "a", 4);
        assert_eq!(apply(&mut s, 7, 1, bound_put(Some(5), y)), (taken.clone(), vec![]), "y may not move x's instance onto its lease");
        assert_eq!(apply(&mut s, 8, 1, bound_put(None, y)).0, taken, "nor make it lease-less");
        assert_eq!(apply(&mut s, 9, 1, bound_delete(y)), (taken, vec![]), "nor delete it");
        assert_eq!(s.instance("web", "a").unwrap().mod_revision, 6, "nothing applied");
        assert_eq!(s.lease(4).unwrap().instances.iter().collect::<Vec<_>>(), [&("web".to_string(), "a".to_string())]);
        assert_eq!(apply(&mut s, 10, 1, bound_put(Some(4), x)).0, Resp::Ok { revision: 10 }, "x changes its own");
        s.apply(11, 1, &Proposal::from(Cmd::RevokeToken { id: 2 }));
        assert_eq!(apply(&mut s, 12, 1, bound_put(Some(4), x)).0, Resp::TokenRevoked { id: 2 }, "a token revoked before the write applied");
        assert_eq!(apply(&mut s, 13, 1, bound_delete(x)).0, Resp::TokenRevoked { id: 2 });
        assert_eq!(apply(&mut s, 14, 1, bound_put(Some(5), None)).0, Resp::Ok { revision: 14 }, "an admin's write (or an old entry) is not bound");
        assert_eq!(s.lease(5).unwrap().instances.len(), 1);
        assert!(s.lease(4).unwrap().instances.is_empty());
        assert_eq!(apply(&mut s, 15, 1, bound_delete(y)).0, Resp::Ok { revision: 15 }, "y deletes what now hangs off its lease");
    }
}
