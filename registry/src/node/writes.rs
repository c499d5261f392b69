//! Every write a client can make, with its checks, on the leader.
//!
//! Each write first waits for this node to be a ready leader (fresh quorum, own term applied),
//! then answers a retried request id from the store's window without proposing again, then
//! runs its pre-check (which keeps a request that would fail out of the log), then proposes.
//! The pre-checks are repeated, authoritatively, by `Store::apply`.

use proto::{InstanceSpec, KeepaliveResponse, LeaseGrant, LeaseId, WriteResult};
use tokio::time::Instant;

use super::Node;
use crate::acl::Caller;
use crate::command::{Cmd, Named, Proposal, RequestId, Resp};
use crate::error::ApiError;

fn written(resp: Resp) -> Result<WriteResult, ApiError> {
    match resp {
        Resp::Ok { revision } => Ok(WriteResult { revision }),
        Resp::LeaseNotFound { lease_id } => Err(ApiError::LeaseNotFound(lease_id)),
        Resp::InstanceNotFound(n) => Err(ApiError::NotFound(format!("instance {:?} of service {:?}", n.instance, n.service))),
        Resp::KeyReused { request_id } => Err(key_reused(request_id)),
        Resp::InstanceTaken(t) => Err(taken(&t.service, &t.instance, t.lease_id)),
        Resp::TokenRevoked { .. } => Err(ApiError::Unauthenticated("unknown or revoked token".into())),
        other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    }
}

fn taken(service: &str, instance: &str, lease_id: LeaseId) -> ApiError {
    ApiError::Forbidden(format!("instance {instance:?} of {service:?} hangs off lease {lease_id}, granted with another token"))
}

/// A put or delete as `caller` proposes it: checked again when it applies (`Cmd::Bound`) if
/// the caller is bound to lease ownership. An admin (or anyone while ACLs are off) is not.
fn bound(caller: &Caller, write: Cmd) -> Cmd {
    match caller.token.filter(|_| !caller.admin) {
        Some(token) => Cmd::Bound { token, write: Box::new(write) },
        None => write,
    }
}

fn acl_off() -> ApiError {
    ApiError::InvalidArgument("ACLs are off in this cluster: start its nodes with --acl-bootstrap-token-file first".into())
}

/// Whether `caller` may replace or delete the instance `service/instance` as it stands: one
/// hanging off another token's lease is that token's.
fn may_change(s: &crate::store::Store, caller: &Caller, service: &str, instance: &str) -> Result<(), ApiError> {
    let owner = s.instance(service, instance).and_then(|i| i.lease_id).and_then(|id| s.lease(id).map(|l| (id, l.token)));
    match owner {
        Some((id, token)) if !caller.may_use_lease(token) => Err(taken(service, instance, id)),
        _ => Ok(()),
    }
}

/// Whether `caller`'s token may announce `service` (the check the door makes for a PUT, made
/// here for each service of a registration, whose services are in its body).
fn may_announce(s: &crate::store::Store, caller: &Caller, service: &str) -> Result<(), ApiError> {
    if caller.admin {
        return Ok(());
    }
    let need = crate::acl::Need::Service(service.to_string());
    match caller.hash.as_ref().and_then(|h| s.acl().by_hash(h)) {
        Some(t) if t.allows(&need) => Ok(()),
        Some(t) => Err(ApiError::Forbidden(format!("token {} does not allow this: it needs announce: matching {service:?}", t.id))),
        None => Err(ApiError::Unauthenticated("unknown or revoked token".into())),
    }
}

fn not_yours(lease_id: LeaseId) -> ApiError {
    ApiError::Forbidden(format!("lease {lease_id} was granted with another token"))
}

fn key_reused(key: RequestId) -> ApiError {
    ApiError::KeyReused(format!("{} {key:?} was already used for a different request", proto::IDEMPOTENCY_KEY_HEADER))
}

/// Checks a service and an instance name together, reporting both problems at once.
pub fn check_names(service: &str, instance: &str) -> Result<(), ApiError> {
    let errors: Vec<String> = [proto::validate::service_name(service), proto::validate::instance_name(instance)].into_iter().filter_map(Result::err).collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::InvalidArgument(errors.join("; ")))
    }
}

impl Node {
    /// Ready leader, then the replayed answer or `pre_check` and the proposal. The replay and
    /// the pre-check read one state: a retry whose first attempt applies in between must not
    /// fail the pre-check (a 404 for its own successful revoke).
    async fn write(
        &self,
        request_id: Option<RequestId>,
        cmd: Cmd,
        pre_check: impl FnOnce(&crate::store::Store) -> Result<(), ApiError>,
    ) -> Result<Resp, ApiError> {
        let term = self.ready().await?;
        let proposal = Proposal::new(cmd, request_id);
        {
            let d = self.shared.read();
            if let Some(done) = d.store.requests().replay(&proposal) {
                return Ok(done);
            }
            pre_check(&d.store)?;
        }
        if proposal.cmd.batchable() {
            self.propose_batched(proposal, term).await
        } else {
            self.propose(proposal).await
        }
    }

    /// Grants a lease. `owner` is the client's address; one owner holds at most
    /// `limits.max_leases_per_client` live leases.
    pub async fn grant(&self, request_id: Option<RequestId>, ttl_ms: u64, owner: Option<String>, caller: Caller) -> Result<LeaseGrant, ApiError> {
        self.check_ttl(ttl_ms)?;
        let check = |s: &crate::store::Store| self.check_owner(s, &owner);
        let cmd = Cmd::GrantLease { ttl_ms, owner: owner.clone(), token: caller.token };
        let resp = self.write(request_id, cmd, check).await?;
        self.granted(resp)
    }

    /// Grants a lease and puts `req.instances` under it, in one log entry: all of it applies or
    /// none. Each instance's service must be one the caller may announce, and an instance
    /// that hangs off another token's lease is not taken over.
    pub async fn register(
        &self,
        request_id: Option<RequestId>,
        req: proto::RegisterRequest,
        owner: Option<String>,
        caller: Caller,
    ) -> Result<LeaseGrant, ApiError> {
        self.check_ttl(req.ttl_ms)?;
        let named = proto::validate::register(&req).map_err(|errors| ApiError::InvalidArgument(errors.join("; ")))?;
        let check = |s: &crate::store::Store| {
            for (service, instance, _) in &named {
                may_announce(s, &caller, service)?;
                may_change(s, &caller, service, instance)?;
            }
            self.check_owner(s, &owner)
        };
        let instances = named.iter().map(|(service, instance, registration)| Named {
            service: service.clone(),
            instance: instance.clone(),
            registration: registration.clone(),
        });
        let cmd = Cmd::Register { ttl_ms: req.ttl_ms, owner: owner.clone(), token: caller.token, instances: instances.collect(), takeover: caller.admin };
        let resp = self.write(request_id, cmd, check).await?;
        self.granted(resp)
    }

    fn check_ttl(&self, ttl_ms: u64) -> Result<(), ApiError> {
        let (min, max) = (self.config.min_ttl.as_millis() as u64, self.config.max_ttl.as_millis() as u64);
        if ttl_ms < min || ttl_ms > max {
            return Err(ApiError::InvalidArgument(format!("ttl_ms {ttl_ms} is outside the allowed range {min}..={max}")));
        }
        Ok(())
    }

    /// One owner (client address) holds at most `limits.max_leases_per_client` live leases.
    fn check_owner(&self, s: &crate::store::Store, owner: &Option<String>) -> Result<(), ApiError> {
        let limit = self.config.limits.max_leases_per_client;
        match owner {
            Some(o) if s.leases_of(o) >= limit => {
                Err(ApiError::TooMany(format!("client {o} already holds {limit} live leases (--max-leases-per-client); revoke or let some expire")))
            }
            _ => Ok(()),
        }
    }

    /// The answer to a grant or a registration, once its entry applied.
    fn granted(&self, resp: Resp) -> Result<LeaseGrant, ApiError> {
        match resp {
            Resp::Granted { lease_id, ttl_ms, revision } => {
                // The answer may replay a grant applied long ago, whose first answer was lost
                // (a write that timed out on a stalled leader, say): the client learns of the
                // lease only now, so its clock runs from now, as after a renewal, and a lease
                // that is gone or past its deadline is not handed out. For a new grant this
                // starts its clock, so it shows in listings at once and the expiry loop knows
                // its deadline.
                let d = self.shared.read();
                if d.store.lease(lease_id).is_none() {
                    return Err(ApiError::LeaseNotFound(lease_id));
                }
                let clock = self.keeper(|k| if k.term().is_some() { k.keepalive(lease_id, ttl_ms, Instant::now()).map(|_| ()) } else { Ok(()) });
                drop(d);
                clock.map_err(|_| ApiError::LeaseNotFound(lease_id))?;
                self.expiry_wake.notify_one();
                Ok(LeaseGrant { lease_id, ttl_ms, revision })
            }
            Resp::KeyReused { request_id } => Err(key_reused(request_id)),
            Resp::InstanceTaken(t) => Err(taken(&t.service, &t.instance, t.lease_id)),
            Resp::TokenRevoked { .. } => Err(ApiError::Unauthenticated("unknown or revoked token".into())),
            other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
        }
    }

    /// Renews a lease: moves its deadline on the leader, no log entry.
    pub async fn keepalive(&self, lease_id: LeaseId, caller: Caller) -> Result<KeepaliveResponse, ApiError> {
        let term = self.ready().await?;
        // The data guard is held until the clock has moved: a revoke or expiry applied between
        // the look and the renewal would otherwise find its clock gone, and the renewal would
        // start a new one and answer 200 for a lease that no longer exists.
        let d = self.shared.read();
        let lease = d.store.lease(lease_id).ok_or(ApiError::LeaseNotFound(lease_id))?;
        if !caller.may_use_lease(lease.token) {
            return Err(not_yours(lease_id));
        }
        let ttl_ms = lease.ttl_ms;
        let (ttl, new_clock) = self.keeper(|k| {
            if k.term() != Some(term) {
                return Err(ApiError::Unavailable("leadership changed during the keepalive; retry".into()));
            }
            let new_clock = !k.has_clock(lease_id);
            // Past its deadline the lease is dead and its expiry due or under way.
            k.keepalive(lease_id, ttl_ms, Instant::now()).map(|ttl| (ttl, new_clock)).map_err(|_| ApiError::LeaseNotFound(lease_id))
        })?;
        drop(d);
        if new_clock {
            // A deadline the expiry loop does not know yet.
            self.expiry_wake.notify_one();
        }
        // A hand-off began after `ready`: its renewal share may have been built before this
        // renewal, so the successor may not know of it. Not acknowledged; the client retries.
        if *self.transferring.borrow() {
            return Err(ApiError::Unavailable("leadership is being handed off; retry".into()));
        }
        // Still a fresh leader of the same term as the renewal is acknowledged: this task may
        // have been held up since `ready` (a stopped or starved process), and a renewal this
        // node acknowledges while another leads is one the new leader may not know of.
        if self.leadership.ready_term(Instant::now()) != Ok(term) {
            return Err(ApiError::Unavailable("leadership changed during the keepalive; retry".into()));
        }
        self.metrics.keepalives.inc();
        Ok(KeepaliveResponse { lease_id, ttl_ms: ttl.as_millis() as u64 })
    }

    /// Where a keepalive sent here goes instead, without running `keepalive`: on a follower
    /// that heard from its leader recently, that leader, which is what `keepalive` would
    /// answer (`ApiError::NotLeader`). `None` wherever `keepalive` might answer anything else
    /// or wait: run it then. The steps are `ready`'s, in its order, without its waits.
    pub fn keepalive_elsewhere(&self) -> Option<(crate::types::NodeId, String)> {
        // `ready` first waits for a hand-off to settle, then refuses on a stopping node.
        if *self.transferring.borrow() || *self.stop.borrow() {
            return None;
        }
        match self.leadership.ready_term(Instant::now()) {
            Err(why @ super::leadership::NotFresh::NotLeader) => match self.not_fresh(why) {
                ApiError::NotLeader(to) => to,
                _ => None,
            },
            _ => None,
        }
    }

    pub async fn revoke(&self, request_id: Option<RequestId>, lease_id: LeaseId, caller: Caller) -> Result<WriteResult, ApiError> {
        let resp = self
            .write(request_id, Cmd::RevokeLease { lease_id }, |s| match s.lease(lease_id) {
                None => Err(ApiError::LeaseNotFound(lease_id)),
                Some(l) if !caller.may_use_lease(l.token) => Err(not_yours(lease_id)),
                Some(_) => Ok(()),
            })
            .await?;
        // Only a lease the store no longer holds loses its clock: a refused revoke (a reused
        // key, say) leaves a live lease, and a lease without a clock is not expired on time.
        // Under the data guard, so no keepalive starts a clock between the look and the forget.
        {
            let d = self.shared.read();
            if d.store.lease(lease_id).is_none() {
                self.keeper(|k| k.forget(lease_id));
            }
        }
        written(resp)
    }

    pub async fn put_instance(
        &self,
        request_id: Option<RequestId>,
        service: String,
        instance: String,
        spec: InstanceSpec,
        caller: Caller,
    ) -> Result<WriteResult, ApiError> {
        check_names(&service, &instance)?;
        let registration = proto::validate::instance_spec(&spec).map_err(|errors| ApiError::InvalidArgument(errors.join("; ")))?;
        let lease = registration.lease_id();
        let (svc, name) = (service.clone(), instance.clone());
        let cmd = bound(&caller, Cmd::PutInstance { service, instance, registration });
        written(
            self.write(request_id, cmd, |s| {
                may_change(s, &caller, &svc, &name)?;
                match lease.map(|id| (id, s.lease(id))) {
                    Some((id, None)) => Err(ApiError::LeaseNotFound(id)),
                    // An instance hangs off a lease only by that lease's token.
                    Some((id, Some(l))) if !caller.may_use_lease(l.token) => Err(not_yours(id)),
                    _ => Ok(()),
                }
            })
            .await?,
        )
    }

    pub async fn delete_instance(&self, request_id: Option<RequestId>, service: String, instance: String, caller: Caller) -> Result<WriteResult, ApiError> {
        check_names(&service, &instance)?;
        let not_found = ApiError::NotFound(format!("instance {instance:?} of service {service:?}"));
        let exists = |s: &crate::store::Store| s.instance(&service, &instance).is_some();
        let cmd = bound(&caller, Cmd::DeleteInstance { service: service.clone(), instance: instance.clone() });
        written(
            self.write(request_id, cmd, |s| {
                if !exists(s) {
                    return Err(not_found);
                }
                may_change(s, &caller, &service, &instance)
            })
            .await?,
        )
    }
}

impl Node {
    /// Creates a token from its hash (the client made the token and keeps it).
    pub async fn create_token(
        &self,
        request_id: Option<RequestId>,
        token: &str,
        scopes: Vec<crate::acl::Scope>,
        description: String,
    ) -> Result<proto::TokenCreated, ApiError> {
        crate::acl::check_token(token).map_err(ApiError::InvalidArgument)?;
        if scopes.is_empty() {
            return Err(ApiError::InvalidArgument("scopes: give at least one (read, admin, announce:GLOB)".into()));
        }
        self.bootstrap_acl_first().await?;
        let cmd = Cmd::CreateToken { hash: crate::acl::TokenHash::of(token), scopes, description };
        match self.write(request_id, cmd, |_| Ok(())).await? {
            Resp::TokenCreated { id, revision } => Ok(proto::TokenCreated { id, revision }),
            Resp::TokenExists { id } => Err(ApiError::Conflict(format!("that token exists already, as token {id}"))),
            Resp::AclOff => Err(acl_off()),
            Resp::KeyReused { request_id } => Err(key_reused(request_id)),
            other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
        }
    }

    /// A token write that reaches a leader told to turn ACLs on before its periodic record has
    /// done it: turn them on now, so the write does not fail for a race with that record.
    async fn bootstrap_acl_first(&self) -> Result<(), ApiError> {
        if let (false, Some(hash)) = (self.read_store(|s| s.acl().enabled), &self.config.acl_bootstrap) {
            self.write(None, Cmd::AclBootstrap { hash: *hash }, |_| Ok(())).await?;
        }
        Ok(())
    }

    pub async fn revoke_token(&self, request_id: Option<RequestId>, id: crate::acl::TokenId) -> Result<WriteResult, ApiError> {
        self.bootstrap_acl_first().await?;
        let not_found = || ApiError::NotFound(format!("token {id}"));
        match self.write(request_id, Cmd::RevokeToken { id }, |s| s.acl().by_id(id).map(|_| ()).ok_or_else(not_found)).await? {
            Resp::TokenNotFound { .. } => Err(not_found()),
            Resp::AclOff => Err(acl_off()),
            Resp::LastAdmin { id } => Err(ApiError::InvalidArgument(format!("token {id} is the last admin token; create another admin first"))),
            other => written(other),
        }
    }
}
