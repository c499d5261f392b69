//! `/v1/services` and `/v1/removals`: reads (linearizable, stale, blocking) and instance writes.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::{Extension, Json};
use proto::{InstanceSpec, RemovalList, ServiceInstances, ServiceList, WriteResult};
use serde::Deserialize;

use super::extract::{JsonBody, QueryOf, RequestIdHeader};
use crate::error::ApiError;
use crate::node::{Node, ReadOptions, Staleness};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    /// Serve from this node's replica without confirming it is current.
    #[serde(default)]
    stale: bool,
    /// Blocking query: wait until the index passes this value.
    index: Option<u64>,
    /// How long a blocking query may wait (e.g. `30s`).
    wait: Option<String>,
}

impl ReadQuery {
    fn options(&self) -> Result<ReadOptions, ApiError> {
        let wait: Option<Duration> =
            self.wait.as_deref().map(humantime::parse_duration).transpose().map_err(|e| ApiError::InvalidArgument(format!("bad wait: {e}")))?;
        Ok(ReadOptions { stale: self.stale, index: self.index, wait })
    }
}

/// Says how current a read is, on every read answer.
fn staleness_headers(s: Staleness) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(proto::KNOWN_LEADER_HEADER, if s.known_leader { "true" } else { "false" }.parse().expect("valid"));
    if let Some(ms) = s.last_contact_ms {
        h.insert(proto::LAST_CONTACT_HEADER, ms.to_string().parse().expect("valid"));
    }
    h
}

pub async fn list(State(node): State<Arc<Node>>, QueryOf(q): QueryOf<ReadQuery>) -> Result<(HeaderMap, Json<ServiceList>), ApiError> {
    let (list, s) = node.services(q.options()?).await?;
    Ok((staleness_headers(s), Json(list)))
}

pub async fn removals(State(node): State<Arc<Node>>, QueryOf(q): QueryOf<ReadQuery>) -> Result<(HeaderMap, Json<RemovalList>), ApiError> {
    let (list, s) = node.removals(q.options()?).await?;
    Ok((staleness_headers(s), Json(list)))
}

pub async fn get(
    State(node): State<Arc<Node>>,
    Path(service): Path<String>,
    QueryOf(q): QueryOf<ReadQuery>,
) -> Result<(HeaderMap, Json<ServiceInstances>), ApiError> {
    let (answer, s) = node.service(&service, q.options()?).await?;
    Ok((staleness_headers(s), Json(answer)))
}

pub async fn put_instance(
    State(node): State<Arc<Node>>,
    Path((service, instance)): Path<(String, String)>,
    RequestIdHeader(rid): RequestIdHeader,
    Extension(caller): Extension<crate::acl::Caller>,
    body: Result<JsonBody<InstanceSpec>, ApiError>,
) -> Result<Json<WriteResult>, ApiError> {
    // Bad names are reported before a bad body, as they always were.
    crate::node::check_names(&service, &instance)?;
    let JsonBody(spec) = body?;
    node.put_instance(rid, service, instance, spec, caller).await.map(Json)
}

pub async fn delete_instance(
    State(node): State<Arc<Node>>,
    Path((service, instance)): Path<(String, String)>,
    RequestIdHeader(rid): RequestIdHeader,
    Extension(caller): Extension<crate::acl::Caller>,
) -> Result<Json<WriteResult>, ApiError> {
    node.delete_instance(rid, service, instance, caller).await.map(Json)
}
