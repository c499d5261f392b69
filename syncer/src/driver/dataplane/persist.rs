//! The configuration half of the Data Plane API driver: every batch of ops the runtime took is
//! written to the configuration server endpoints inside ONE transaction, so it survives a
//! reload or restart of HAProxy. What the runtime took but the configuration did not (a failed
//! commit) is remembered per backend and persisted again before the next read or batch of that
//! backend.
//!
//! Conflicts: a stale configuration version (409) re-reads the version and starts over; a commit
//! of an outdated transaction (406) starts over; both a bounded number of times.

use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::DataplaneApi;
use crate::driver::DriverError;
use crate::model::{AdminState, DesiredServer, Op};

/// How many times one batch's transaction is started over after a 409 or a 406.
const MAX_TX_ATTEMPTS: usize = 5;

/// One configuration server to write in a transaction.
#[derive(Debug, Clone, PartialEq)]
struct ConfigWrite {
    /// The server's name.
    name: String,
    /// The entry the server should have; `None` deletes it.
    target: Option<Value>,
    /// Whether the configuration has the entry already (replaced, not created).
    exists: bool,
}

impl ConfigWrite {
    fn method(&self) -> Method {
        match (&self.target, self.exists) {
            (Some(_), false) => Method::POST,
            (Some(_), true) => Method::PUT,
            (None, _) => Method::DELETE,
        }
    }
}

/// Why one transaction attempt ended without a commit.
enum TxEnd {
    /// 409 or 406 (or a configuration that changed under us): refresh and start over.
    Retry(String),
    Fail(DriverError),
}

impl DataplaneApi {
    /// The configuration `server` object for a desired server.
    fn config_server(&self, d: &DesiredServer) -> Value {
        let mut body = self.options.server(&d.name, &d.address, d.port, d.weight);
        body.insert("maintenance".into(), json!(maintenance(d.state)));
        Value::Object(body)
    }

    /// What the configuration of each touched server should be after `ops` (`None`: absent).
    fn config_targets(&self, backend: &str, base: &BTreeMap<String, Value>, ops: &[Op]) -> BTreeMap<String, Option<Value>> {
        let mut targets: BTreeMap<String, Option<Value>> = BTreeMap::new();
        for op in ops {
            let name = op.server().to_string();
            let current = || -> Option<Value> {
                targets.get(&name).cloned().flatten().or_else(|| base.get(&name).cloned()).or_else(|| {
                    let a = self.runtime.get(backend)?.get(&name)?;
                    Some(self.config_server(&DesiredServer {
                        name: a.name.clone(),
                        address: a.address.clone(),
                        port: a.port,
                        weight: a.weight,
                        state: a.state,
                    }))
                })
            };
            let next = match op {
                Op::Add(d) => {
                    // Keep fields someone else set on an existing entry; ours win.
                    let mut v = base.get(&name).cloned().unwrap_or_else(|| json!({}));
                    merge(&mut v, &self.config_server(d));
                    Some(v)
                }
                Op::SetWeight { weight, .. } => current().map(|mut v| {
                    v["weight"] = json!(weight);
                    v
                }),
                Op::SetState { state, .. } => current().map(|mut v| {
                    v["maintenance"] = json!(maintenance(*state));
                    v
                }),
                Op::Remove { .. } => None,
            };
            if next.is_none() && !matches!(op, Op::Remove { .. }) {
                tracing::warn!(backend, server = %name, "server unknown to the configuration and the runtime; not persisted");
                continue;
            }
            targets.insert(name, next);
        }
        targets
    }

    /// Reads the configuration version and remembers it.
    async fn read_version(&mut self) -> Result<i64, DriverError> {
        let v = self.api.read_version().await?;
        self.config_version = Some(v);
        Ok(v)
    }

    /// Persists `ops` in the configuration in one transaction (started over on 409 and 406).
    pub(super) async fn persist(&mut self, backend: &str, ops: &[Op]) -> Result<(), DriverError> {
        let mut fresh = false;
        let mut last_reason = String::new();
        for attempt in 0..MAX_TX_ATTEMPTS {
            if fresh || !self.config.contains_key(backend) || self.config_version.is_none() {
                self.read_version().await?;
                let (servers, v) = self.api.read_config(backend, None).await?;
                self.config.insert(backend.to_string(), servers);
                if let Some(v) = v {
                    self.config_version = Some(v);
                }
            }
            let base = self.config.get(backend).cloned().unwrap_or_default();
            let writes = config_writes(&base, self.config_targets(backend, &base, ops));
            if writes.is_empty() {
                return Ok(());
            }
            let version = match self.config_version {
                Some(v) => v,
                None => self.read_version().await?,
            };
            match self.transaction(backend, version, &writes).await {
                Ok(()) => {
                    let cfg = self.config.entry(backend.to_string()).or_default();
                    for w in writes {
                        match w.target {
                            Some(t) => cfg.insert(w.name, t),
                            None => cfg.remove(&w.name),
                        };
                    }
                    return Ok(());
                }
                Err(TxEnd::Retry(reason)) => {
                    tracing::info!(backend, attempt, reason = %reason, "configuration transaction starts over");
                    last_reason = reason;
                    fresh = true;
                    self.config_version = None;
                }
                Err(TxEnd::Fail(e)) => return Err(e),
            }
        }
        Err(DriverError::Refused(format!("configuration of {backend} not persisted after {MAX_TX_ATTEMPTS} attempts: {last_reason}")))
    }

    /// One attempt: start a transaction at `version`, write, commit.
    async fn transaction(&mut self, backend: &str, version: i64, writes: &[ConfigWrite]) -> Result<(), TxEnd> {
        let a = self.api.call(Method::POST, &["services", "haproxy", "transactions"], &[("version", version.to_string())], None).await.map_err(TxEnd::Fail)?;
        match a.status {
            StatusCode::CREATED | StatusCode::OK => {}
            StatusCode::CONFLICT => {
                self.stats.version_conflicts += 1;
                return Err(TxEnd::Retry(format!("starting a transaction at version {version}: 409 {}", a.message())));
            }
            _ => return Err(TxEnd::Fail(a.error("starting a transaction"))),
        }
        self.stats.transactions_started += 1;
        let tx = a
            .json()
            .map_err(TxEnd::Fail)?
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| TxEnd::Fail(DriverError::Protocol(format!("transaction without an id: {}", a.text()))))?;
        let result = self.write_and_commit(backend, &tx, writes).await;
        if result.is_err() {
            // Best effort: do not leave open transactions behind (the API limits them).
            let _ = self.api.call(Method::DELETE, &["services", "haproxy", "transactions", &tx], &[], None).await;
        }
        result
    }

    async fn write_and_commit(&mut self, backend: &str, tx: &str, writes: &[ConfigWrite]) -> Result<(), TxEnd> {
        for w in writes {
            let method = w.method();
            // A new entry is created on the collection; the others are addressed by name.
            let (path, mut query) = self.api.config_path(backend, if method == Method::POST { None } else { Some(&w.name) });
            query.push(("transaction_id", tx.to_string()));
            let a = self.api.call(method.clone(), &path, &query, w.target.as_ref()).await.map_err(TxEnd::Fail)?;
            let name = &w.name;
            match a.status {
                s if s.is_success() => {}
                StatusCode::CONFLICT => {
                    self.stats.version_conflicts += 1;
                    return Err(TxEnd::Retry(format!("{method} configuration server {backend}/{name}: 409 {}", a.message())));
                }
                // Our copy of the configuration was stale: read it again and start over.
                StatusCode::NOT_FOUND => return Err(TxEnd::Retry(format!("{method} configuration server {backend}/{name}: 404 {}", a.message()))),
                _ => return Err(TxEnd::Fail(a.error(&format!("{method} configuration server {backend}/{name}")))),
            }
        }
        let a = self.api.call(Method::PUT, &["services", "haproxy", "transactions", tx], &[], None).await.map_err(TxEnd::Fail)?;
        match a.status {
            StatusCode::OK | StatusCode::ACCEPTED => {
                self.stats.transactions_committed += 1;
                self.config_version = a.config_version().or_else(|| a.json().ok().and_then(|v| v.get("_version").and_then(Value::as_i64)).map(|v| v + 1));
                if a.status == StatusCode::ACCEPTED {
                    self.stats.reloads_requested += 1;
                    if let Some(id) = a.header("Reload-ID") {
                        tracing::info!(backend, reload_id = %id, "configuration committed; reload requested");
                        self.last_reload_id = Some(id);
                    }
                }
                Ok(())
            }
            StatusCode::NOT_ACCEPTABLE => {
                self.stats.outdated_commits += 1;
                Err(TxEnd::Retry(format!("committing transaction {tx}: 406 {}", a.message())))
            }
            StatusCode::CONFLICT => {
                self.stats.version_conflicts += 1;
                Err(TxEnd::Retry(format!("committing transaction {tx}: 409 {}", a.message())))
            }
            _ => Err(TxEnd::Fail(a.error(&format!("committing transaction {tx}")))),
        }
    }

    /// Persists what an earlier batch left unpersisted (best effort; kept on failure).
    pub(super) async fn flush_unpersisted(&mut self, backend: &str) -> Result<(), DriverError> {
        let Some(ops) = self.unpersisted.remove(backend) else {
            return Ok(());
        };
        if let Err(e) = self.persist(backend, &ops).await {
            self.unpersisted.insert(backend.to_string(), ops);
            return Err(e);
        }
        Ok(())
    }
}

/// The writes that take the configuration from `base` to `targets`: entries already right, and
/// deletions of absent entries, are left out.
fn config_writes(base: &BTreeMap<String, Value>, targets: BTreeMap<String, Option<Value>>) -> Vec<ConfigWrite> {
    targets
        .into_iter()
        .filter_map(|(name, target)| {
            let exists = base.contains_key(&name);
            match (&target, base.get(&name)) {
                (None, None) => None,
                (Some(t), Some(c)) if same_server(t, c) => None,
                _ => Some(ConfigWrite { name, target, exists }),
            }
        })
        .collect()
}

fn maintenance(state: AdminState) -> &'static str {
    // The configuration has no "drain" keyword: drain is a runtime-only state.
    if state == AdminState::Maint {
        "enabled"
    } else {
        "disabled"
    }
}

/// Sets every field of `from` on `into` (both objects).
fn merge(into: &mut Value, from: &Value) {
    if let (Some(i), Some(f)) = (into.as_object_mut(), from.as_object()) {
        for (k, v) in f {
            i.insert(k.clone(), v.clone());
        }
    }
}

/// Whether the configuration entry `have` already carries every field of `want`.
fn same_server(want: &Value, have: &Value) -> bool {
    match want.as_object() {
        Some(w) => w.iter().all(|(k, v)| have.get(k) == Some(v) || (k == "maintenance" && v == "disabled" && have.get(k).is_none())),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_create_replace_or_delete_only_what_differs() {
        let base: BTreeMap<String, Value> = [
            ("kept".to_string(), json!({"name": "kept", "port": 80, "extra": 1})),
            ("changed".to_string(), json!({"name": "changed", "port": 80})),
            ("gone".to_string(), json!({"name": "gone", "port": 80})),
        ]
        .into();
        let targets: BTreeMap<String, Option<Value>> = [
            ("kept".to_string(), Some(json!({"name": "kept", "port": 80, "maintenance": "disabled"}))),
            ("changed".to_string(), Some(json!({"name": "changed", "port": 81}))),
            ("gone".to_string(), None),
            ("never-there".to_string(), None),
            ("new".to_string(), Some(json!({"name": "new", "port": 80}))),
        ]
        .into();
        let writes = config_writes(&base, targets);
        let summary: Vec<(&str, Method)> = writes.iter().map(|w| (w.name.as_str(), w.method())).collect();
        assert_eq!(summary, [("changed", Method::PUT), ("gone", Method::DELETE), ("new", Method::POST)]);
    }
}
