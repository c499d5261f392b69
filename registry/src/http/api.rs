//! Handlers of the `/v1` client API, health and metrics.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use openraft::{BasicNode, ChangeMembers, ServerState};
use proto::{
    ClusterInfo, InstanceSpec, KeepaliveResponse, LeaseGrant, LeaseGrantRequest, Member, MemberChange, NodeRole, ServiceInstances,
    ServiceList, ServiceSummary, WriteResult,
};
use serde::Deserialize;
use tokio::time::Instant;

use super::body::RawBody;
use super::forward::Forward;
use crate::command::{Cmd, Resp};
use crate::error::ApiError;
use crate::node::Node;

type Node_ = State<Arc<Node>>;

/// Longest `?wait=` a blocking query may ask for.
const MAX_WAIT: Duration = Duration::from_secs(300);

fn parse_id(kind: &str, raw: &str) -> Result<u64, ApiError> {
    raw.parse().map_err(|_| ApiError::InvalidArgument(format!("{kind} id {raw:?} is not a number")))
}

fn written(resp: Resp) -> Result<Json<WriteResult>, ApiError> {
    match resp {
        Resp::Ok { revision } => Ok(Json(WriteResult { revision })),
        Resp::LeaseNotFound { lease_id } => Err(ApiError::LeaseNotFound(lease_id)),
        Resp::InstanceNotFound { service, instance } => Err(ApiError::NotFound(format!("instance {instance:?} of service {service:?}"))),
        other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    }
}

/// Runs a leader-only operation here, or forwards the request to the leader.
async fn on_leader<F, Fut, T>(node: &Node, fwd: Forward, op: F) -> Response
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
    T: IntoResponse,
{
    match op().await {
        Ok(v) => v.into_response(),
        Err(e) => fwd.or_answer(node, e).await,
    }
}

pub async fn grant_lease(State(node): Node_, method: Method, uri: Uri, headers: HeaderMap, body: RawBody) -> Response {
    let req: LeaseGrantRequest = match body.json() {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let (min, max) = (node.config.min_ttl.as_millis() as u64, node.config.max_ttl.as_millis() as u64);
    if req.ttl_ms < min || req.ttl_ms > max {
        return ApiError::InvalidArgument(format!("ttl_ms {} is outside the allowed range {min}..={max}", req.ttl_ms)).into_response();
    }
    let fwd = Forward::new(method, uri, headers, body.0);
    on_leader(&node, fwd, || async {
        node.require_leader()?;
        match node.propose(Cmd::GrantLease { ttl_ms: req.ttl_ms }).await? {
            Resp::Granted { lease_id, ttl_ms, revision } => {
                node.start_clock(lease_id, ttl_ms);
                Ok(Json(LeaseGrant { lease_id, ttl_ms, revision }))
            }
            other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
        }
    })
    .await
}

pub async fn keepalive(State(node): Node_, Path(id): Path<String>, method: Method, uri: Uri, headers: HeaderMap, body: RawBody) -> Response {
    let id = match parse_id("lease", &id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let fwd = Forward::new(method, uri, headers, body.0);
    on_leader(&node, fwd, || async { node.keepalive(id).map(|ttl_ms| Json(KeepaliveResponse { lease_id: id, ttl_ms })) }).await
}

pub async fn revoke_lease(State(node): Node_, Path(id): Path<String>, method: Method, uri: Uri, headers: HeaderMap, body: RawBody) -> Response {
    let id = match parse_id("lease", &id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let fwd = Forward::new(method, uri, headers, body.0);
    on_leader(&node, fwd, || async {
        node.require_leader()?;
        if !node.shared.data.read().unwrap().store.leases.contains_key(&id) {
            return Err(ApiError::LeaseNotFound(id));
        }
        written(node.propose(Cmd::RevokeLease { lease_id: id }).await?)
    })
    .await
}

fn check_names(service: &str, instance: &str) -> Result<(), ApiError> {
    let errors: Vec<String> = [proto::validate::service_name(service), proto::validate::instance_name(instance)]
        .into_iter()
        .filter_map(Result::err)
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::InvalidArgument(errors.join("; ")))
    }
}

pub async fn put_instance(
    State(node): Node_,
    Path((service, instance)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: RawBody,
) -> Response {
    let spec = match check_names(&service, &instance).and_then(|_| body.json::<InstanceSpec>()) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    if let Err(errors) = proto::validate::instance_spec(&spec) {
        return ApiError::InvalidArgument(errors.join("; ")).into_response();
    }
    let fwd = Forward::new(method, uri, headers, body.0);
    on_leader(&node, fwd, || async {
        // Checked again, authoritatively, when the entry applies; checking here keeps a
        // request that would fail out of the log.
        node.require_leader()?;
        if let Some(id) = spec.lease_id {
            if !node.shared.data.read().unwrap().store.leases.contains_key(&id) {
                return Err(ApiError::LeaseNotFound(id));
            }
        }
        written(node.propose(Cmd::PutInstance { service, instance, spec }).await?)
    })
    .await
}

pub async fn delete_instance(
    State(node): Node_,
    Path((service, instance)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: RawBody,
) -> Response {
    if let Err(e) = check_names(&service, &instance) {
        return e.into_response();
    }
    let fwd = Forward::new(method, uri, headers, body.0);
    on_leader(&node, fwd, || async {
        node.require_leader()?;
        if node.shared.data.read().unwrap().store.services.get(&service).and_then(|m| m.get(&instance)).is_none() {
            return Err(ApiError::NotFound(format!("instance {instance:?} of service {service:?}")));
        }
        written(node.propose(Cmd::DeleteInstance { service, instance }).await?)
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    /// Serve from this node's replica without confirming it is current.
    #[serde(default)]
    stale: bool,
    /// Blocking query: wait until the service's index passes this value.
    index: Option<u64>,
    /// How long a blocking query may wait (e.g. `30s`); default 60s, at most 300s.
    wait: Option<String>,
}

fn query<T: serde::de::DeserializeOwned>(uri: &Uri) -> Result<T, ApiError> {
    Query::<T>::try_from_uri(uri).map(|q| q.0).map_err(|e| ApiError::InvalidArgument(format!("bad query string: {e}")))
}

pub async fn list_services(State(node): Node_, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let q: ReadQuery = match query(&uri) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    let wait = match wait_of(&q) {
        Ok(w) => w,
        Err(e) => return e.into_response(),
    };
    let fwd = Forward::new(method, uri, headers, Default::default());
    on_leader(&node, fwd, || async {
        if !q.stale {
            node.linearize().await?;
        }
        if let Some(index) = q.index {
            wait_for_change(&node, |s| s.last_change(), index, wait).await;
        }
        let d = node.shared.data.read().unwrap();
        let services = d
            .store
            .services
            .iter()
            .map(|(name, m)| ServiceSummary { service: name.clone(), instances: m.len(), index: d.store.index_of(name) })
            .collect();
        Ok(Json(ServiceList { revision: d.store.revision, index: d.store.last_change(), services }))
    })
    .await
}

fn wait_of(q: &ReadQuery) -> Result<Duration, ApiError> {
    match q.wait.as_deref().map(humantime::parse_duration).transpose() {
        Ok(w) => Ok(w.unwrap_or(Duration::from_secs(60)).min(MAX_WAIT)),
        Err(e) => Err(ApiError::InvalidArgument(format!("bad wait: {e}"))),
    }
}

pub async fn get_service(State(node): Node_, Path(service): Path<String>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let q: ReadQuery = match query(&uri) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = proto::validate::service_name(&service) {
        return ApiError::InvalidArgument(e).into_response();
    }
    let wait = match wait_of(&q) {
        Ok(w) => w,
        Err(e) => return e.into_response(),
    };
    let fwd = Forward::new(method, uri, headers, Default::default());
    on_leader(&node, fwd, || async {
        if !q.stale {
            node.linearize().await?;
        }
        if let Some(index) = q.index {
            wait_for_change(&node, |s| s.index_of(&service), index, wait).await;
        }
        Ok(Json(read_service(&node, &service)))
    })
    .await
}

/// Blocks until `current(store)` passes `index`, or `wait` runs out.
async fn wait_for_change(node: &Node, current: impl Fn(&crate::store::Store) -> u64, index: u64, wait: Duration) {
    let deadline = Instant::now() + wait;
    let mut rx = node.shared.hub.subscribe();
    loop {
        if current(&node.shared.data.read().unwrap().store) > index {
            return;
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep_until(deadline) => return,
        }
    }
}

fn read_service(node: &Node, service: &str) -> ServiceInstances {
    let (revision, index, mut instances) = {
        let d = node.shared.data.read().unwrap();
        (d.store.revision, d.store.index_of(service), d.store.instances(service))
    };
    let keeper = node.keeper.lock().unwrap();
    if keeper.term().is_some() {
        let now = Instant::now();
        for i in &mut instances {
            i.lease = i.lease_id.and_then(|id| keeper.info(id, now));
        }
    }
    ServiceInstances { service: service.to_string(), revision, index, instances }
}

pub async fn cluster(State(node): Node_) -> Json<ClusterInfo> {
    let m = node.raft_metrics();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let matched = |id: u64| m.replication.as_ref().and_then(|r| r.get(&id).cloned().flatten()).map(|l| l.index);
    let members = membership
        .nodes()
        .map(|(id, n)| Member {
            id: *id,
            addr: n.addr.clone(),
            voter: voters.contains(id),
            matched_index: if *id == node.id && m.state == ServerState::Leader { m.last_log_index } else { matched(*id) },
        })
        .collect::<Vec<_>>();
    let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
    let commit = commit_index(&m, &voters).unwrap_or(applied);
    Json(ClusterInfo {
        node_id: node.id,
        role: role(&m, &voters, node.id),
        leader: m.current_leader,
        leader_addr: node.leader().map(|(_, a)| a),
        term: m.current_term,
        last_log_index: m.last_log_index.unwrap_or(0),
        commit_index: commit,
        applied_index: applied,
        members,
    })
}

fn role(m: &crate::types::RaftMetrics, voters: &BTreeSet<u64>, id: u64) -> NodeRole {
    match m.state {
        ServerState::Leader => NodeRole::Leader,
        ServerState::Candidate => NodeRole::Candidate,
        ServerState::Shutdown => NodeRole::Shutdown,
        ServerState::Learner => NodeRole::Learner,
        ServerState::Follower if voters.contains(&id) => NodeRole::Follower,
        ServerState::Follower => NodeRole::Learner,
    }
}

/// On the leader: the highest index a majority of voters has; elsewhere unknown.
fn commit_index(m: &crate::types::RaftMetrics, voters: &BTreeSet<u64>) -> Option<u64> {
    let repl = m.replication.as_ref()?;
    let mut matched: Vec<u64> = voters
        .iter()
        .map(|id| if *id == m.id { m.last_log_index.unwrap_or(0) } else { repl.get(id).cloned().flatten().map(|l| l.index).unwrap_or(0) })
        .collect();
    matched.sort_unstable_by(|a, b| b.cmp(a));
    matched.get(voters.len() / 2).copied()
}

pub async fn add_member(State(node): Node_, method: Method, uri: Uri, headers: HeaderMap, body: RawBody) -> Response {
    let req: MemberChange = match body.json() {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let Some(addr) = req.addr.clone() else {
        return ApiError::InvalidArgument("adding a member needs its addr (HOST:PORT)".into()).into_response();
    };
    if let Err(e) = crate::config::check_host_port(&addr) {
        return ApiError::InvalidArgument(format!("addr: {e}")).into_response();
    }
    let fwd = Forward::new(method, uri, headers, body.0);
    on_leader(&node, fwd, || async {
        node.require_leader()?;
        tracing::info!(id = req.id, %addr, "adding a learner, then promoting it to voter");
        node.raft.add_learner(req.id, BasicNode { addr: addr.clone() }, true).await.map_err(membership_error)?;
        let r = node.raft.change_membership(ChangeMembers::AddVoterIds([req.id].into()), false).await.map_err(membership_error)?;
        Ok(Json(WriteResult { revision: r.log_id.index }))
    })
    .await
}

pub async fn remove_member(State(node): Node_, Path(id): Path<String>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let id = match parse_id("node", &id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let fwd = Forward::new(method, uri, headers, Default::default());
    on_leader(&node, fwd, || async {
        node.require_leader()?;
        let membership = node.raft_metrics().membership_config.membership().clone();
        if membership.get_node(&id).is_none() {
            return Err(ApiError::NotFound(format!("member {id}")));
        }
        let mut revision = 0;
        if membership.voter_ids().any(|v| v == id) {
            revision = node.raft.change_membership(ChangeMembers::RemoveVoters([id].into()), false).await.map_err(membership_error)?.log_id.index;
        }
        if node.raft_metrics().membership_config.membership().get_node(&id).is_some() {
            revision = node.raft.change_membership(ChangeMembers::RemoveNodes([id].into()), false).await.map_err(membership_error)?.log_id.index;
        }
        Ok(Json(WriteResult { revision }))
    })
    .await
}

fn membership_error(e: openraft::error::RaftError<u64, openraft::error::ClientWriteError<u64, BasicNode>>) -> ApiError {
    use openraft::error::{ClientWriteError, RaftError};
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => match (f.leader_id, f.leader_node) {
            (Some(id), Some(n)) => ApiError::NotLeader(Some((id, n.addr))),
            _ => ApiError::NoLeader,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => ApiError::InvalidArgument(e.to_string()),
        RaftError::Fatal(e) => ApiError::Unavailable(e.to_string()),
    }
}

pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when this node is part of a cluster with a known leader.
pub async fn readyz(State(node): Node_) -> Response {
    let m = node.raft_metrics();
    let member = m.membership_config.membership().get_node(&node.id).is_some();
    match (member, m.current_leader) {
        (true, Some(leader)) => format!("ready: leader is {leader}\n").into_response(),
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "not ready: not a member of a cluster\n").into_response(),
        (true, None) => (StatusCode::SERVICE_UNAVAILABLE, "not ready: no leader known\n").into_response(),
    }
}

pub async fn metrics(State(node): Node_) -> Response {
    let m = node.raft_metrics();
    let voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
    let x = &node.metrics;
    let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
    x.applied_index.set(applied as i64);
    x.commit_index.set(commit_index(&m, &voters).unwrap_or(applied) as i64);
    x.last_log_index.set(m.last_log_index.unwrap_or(0) as i64);
    x.term.set(m.current_term as i64);
    x.is_leader.set((m.state == ServerState::Leader) as i64);
    x.applied_entries.inner().store(node.shared.applied_entries.load(std::sync::atomic::Ordering::Relaxed), std::sync::atomic::Ordering::Relaxed);
    {
        let d = node.shared.data.read().unwrap();
        x.leases_live.set(d.store.leases.len() as i64);
        x.instances.set(d.store.instance_count() as i64);
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], x.render()).into_response()
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let body = proto::ErrorBody { code: "method_not_allowed".into(), message: format!("{method} is not allowed on {}", uri.path()) };
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("route {}", uri.path()))
}
