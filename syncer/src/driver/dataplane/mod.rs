//! The HAProxy Data Plane API driver (v3 and v2), the other way to change HAProxy without reloads (docs/syncer.md).
//!
//! Every change is made twice, on purpose:
//! - through the runtime server endpoints (`runtime`), so it takes effect at once without a
//!   reload;
//! - through the configuration server endpoints (`persist`), all of one `apply` batch inside ONE
//!   transaction, so it survives a reload or restart of HAProxy.
//!
//! The runtime side is what `servers()` reads and what the planner compares with; the
//! configuration side is kept equal to it. Changes the runtime took but the configuration did
//! not (a failed commit) are remembered per backend and persisted again before the next read or
//! batch of that backend.
//!
//! The other modules: `client` (HTTP, paths, parsed reads), `options` (`--server-options` as
//! model fields), `generation` (the process identity).
//!
//! Spec operations used (base path `/v3`, or `/v2` with `?backend=B` instead of the path segment):
//! `getAllRuntimeServer`/`getRuntimeServers`, `addRuntimeServer`, `replaceRuntimeServer`,
//! `deleteRuntimeServer`, `getAllServerBackend`/`getServers`, `createServerBackend`/`createServer`,
//! `replaceServerBackend`/`replaceServer`, `deleteServerBackend`/`deleteServer`,
//! `getConfigurationVersion`, `startTransaction`, `commitTransaction`, `deleteTransaction`,
//! `getReload`, `getHaproxyProcessInfo`, `getStats`.

mod client;
mod generation;
mod options;
mod persist;
mod runtime;

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use self::client::ApiClient;
use self::generation::GenerationTracker;
use self::options::ServerOptions;
use crate::config::DataplaneVersion;
use crate::driver::{Driver, DriverError, Generation};
use crate::model::{ActualServer, Op};

/// Counters of what the driver did with the configuration, for logs and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataplaneStats {
    /// Transactions started.
    pub transactions_started: u64,
    /// Transactions committed (200 or 202).
    pub transactions_committed: u64,
    /// 409 answers (stale version, or a server that already exists) that made a batch start over.
    pub version_conflicts: u64,
    /// 406 answers to a commit (outdated transaction) that made a batch start over.
    pub outdated_commits: u64,
    /// Commits that asked for a reload (202).
    pub reloads_requested: u64,
}

/// State of a reload as `GET /services/haproxy/reloads/{id}` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadStatus {
    InProgress,
    Succeeded,
    Failed(String),
}

/// Drives HAProxy through its Data Plane API (v3 or v2).
pub struct DataplaneApi {
    api: ApiClient,
    options: ServerOptions,
    /// Last configuration version seen (header or body); `None` means read it before use.
    config_version: Option<i64>,
    /// Configuration servers per backend, as last read or committed.
    config: HashMap<String, BTreeMap<String, Value>>,
    /// Runtime servers per backend, as last read and changed since.
    runtime: HashMap<String, BTreeMap<String, ActualServer>>,
    /// Ops done at runtime whose persistence failed; persisted before the next read or batch.
    unpersisted: HashMap<String, Vec<Op>>,
    last_reload_id: Option<String>,
    stats: DataplaneStats,
    generation: GenerationTracker,
}

impl DataplaneApi {
    /// `url` is the API's address (`http://HOST:PORT`, with or without the `/v3` or `/v2` base
    /// path); `server_options` are HAProxy server keywords mapped onto the models' fields.
    pub fn new(url: &str, version: DataplaneVersion, auth: crate::config::DataplaneAuth, server_options: String) -> anyhow::Result<DataplaneApi> {
        let options = ServerOptions::parse(&server_options)?;
        let api = ApiClient::new(url, version, auth)?;
        Ok(DataplaneApi {
            api,
            options,
            config_version: None,
            config: HashMap::new(),
            runtime: HashMap::new(),
            unpersisted: HashMap::new(),
            last_reload_id: None,
            stats: DataplaneStats::default(),
            generation: GenerationTracker::default(),
        })
    }

    /// The `Reload-ID` of the last commit that asked for a reload.
    pub fn last_reload_id(&self) -> Option<&str> {
        self.last_reload_id.as_deref()
    }

    pub fn stats(&self) -> &DataplaneStats {
        &self.stats
    }

    /// Configuration servers of `backend` as the driver last knew them (read or committed).
    pub fn config_servers(&self, backend: &str) -> Vec<String> {
        self.config.get(backend).map(|m| m.keys().cloned().collect()).unwrap_or_default()
    }

    /// Ops applied at runtime but not yet persisted in the configuration, for `backend`.
    pub fn unpersisted(&self, backend: &str) -> usize {
        self.unpersisted.get(backend).map_or(0, Vec::len)
    }

    /// Asks the API how a reload is going (`GET /services/haproxy/reloads/{id}`).
    pub async fn reload_status(&self, id: &str) -> Result<ReloadStatus, DriverError> {
        let v = self.api.get_json(&["services", "haproxy", "reloads", id], &[], "reading reload").await?;
        match v.get("status").and_then(Value::as_str) {
            Some("in_progress") => Ok(ReloadStatus::InProgress),
            Some("succeeded") => Ok(ReloadStatus::Succeeded),
            Some("failed") => Ok(ReloadStatus::Failed(v.get("response").and_then(Value::as_str).unwrap_or("").to_string())),
            other => Err(DriverError::Protocol(format!("reload status {other:?}"))),
        }
    }
}

impl Driver for DataplaneApi {
    async fn generation(&mut self) -> Result<Generation, DriverError> {
        let v = self.api.get_json(&["services", "haproxy", "runtime", "info"], &[], "reading process info").await?;
        let (pid, uptime) = generation::process_identity(&v)?;
        Ok(self.generation.observe(pid, uptime))
    }

    async fn servers(&mut self, backend: &str) -> Result<Vec<ActualServer>, DriverError> {
        if let Err(e) = self.flush_unpersisted(backend).await {
            tracing::warn!(backend, error = %e, "earlier changes are still not persisted in the configuration");
        }
        let (config, version) = self.api.read_config(backend, None).await?;
        self.config.insert(backend.to_string(), config);
        if version.is_some() {
            self.config_version = version;
        }
        let runtime = self.api.read_runtime(backend).await?;
        let stats = self.api.read_stats(backend).await?;
        let servers = runtime.iter().map(|s| self.to_actual(backend, s, &stats)).collect::<Result<Vec<_>, _>>()?;
        self.runtime.insert(backend.to_string(), servers.iter().map(|s| (s.name.clone(), s.clone())).collect());
        Ok(servers)
    }

    async fn apply(&mut self, backend: &str, ops: &[Op]) -> Result<(), (usize, DriverError)> {
        let mut done = 0;
        let mut failure = None;
        for op in ops {
            match self.runtime_op(backend, op).await {
                Ok(()) => done += 1,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let mut to_persist = self.unpersisted.remove(backend).unwrap_or_default();
        to_persist.extend_from_slice(&ops[..done]);
        if !to_persist.is_empty() {
            if let Err(e) = self.persist(backend, &to_persist).await {
                tracing::warn!(backend, error = %e, "changes applied at runtime but not persisted; will retry");
                self.unpersisted.insert(backend.to_string(), to_persist);
                failure.get_or_insert(e);
            }
        }
        match failure {
            None => Ok(()),
            Some(e) => Err((done, e)),
        }
    }
}
