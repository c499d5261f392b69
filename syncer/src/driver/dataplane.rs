//! The HAProxy Data Plane API driver (v3 and v2), the other way to change HAProxy without reloads (docs/syncer.md).
//!
//! Every change is made twice, on purpose:
//! - through the runtime server endpoints, so it takes effect at once without a reload;
//! - through the configuration server endpoints, all of one `apply` batch inside ONE transaction,
//!   so it survives a reload or restart of HAProxy.
//!
//! The runtime side is what `servers()` reads and what the planner compares with; the
//! configuration side is kept equal to it. Changes the runtime took but the configuration did
//! not (a failed commit) are remembered per backend and persisted again before the next read or
//! batch of that backend.
//!
//! Conflicts: a stale configuration version (409) re-reads the version and starts over; a commit
//! of an outdated transaction (406) starts over; both a bounded number of times.
//!
//! Spec operations used (base path `/v3`, or `/v2` with `?backend=B` instead of the path segment):
//! `getAllRuntimeServer`/`getRuntimeServers`, `addRuntimeServer`, `replaceRuntimeServer`,
//! `deleteRuntimeServer`, `getAllServerBackend`/`getServers`, `createServerBackend`/`createServer`,
//! `replaceServerBackend`/`replaceServer`, `deleteServerBackend`/`deleteServer`,
//! `getConfigurationVersion`, `startTransaction`, `commitTransaction`, `deleteTransaction`,
//! `getReload`, `getHaproxyProcessInfo`, `getStats`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde_json::{json, Map, Value};

use crate::config::DataplaneVersion;
use crate::model::{ActualServer, AdminState, DesiredServer, Driver, DriverError, Generation, Op};

/// How many times one batch's transaction is started over after a 409 or a 406.
const MAX_TX_ATTEMPTS: usize = 5;
/// Timeout of one HTTP request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

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

/// The server options of `--server-options` that the Data Plane API models can carry, both in
/// `runtime_add_server` and in the configuration `server` (`server_params`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ServerOptions {
    fields: Map<String, Value>,
}

impl ServerOptions {
    /// Parses HAProxy server keywords (`check inter 1s fall 2 rise 1`) into model fields.
    fn parse(text: &str) -> anyhow::Result<ServerOptions> {
        let mut fields = Map::new();
        let mut words = text.split_whitespace();
        while let Some(w) = words.next() {
            let mut value = |what: &str| words.next().ok_or_else(|| anyhow::anyhow!("server option `{w}` needs {what}"));
            match w {
                "check" => {
                    fields.insert("check".into(), json!("enabled"));
                }
                "no-check" => {
                    fields.insert("check".into(), json!("disabled"));
                }
                "inter" | "fastinter" | "downinter" => {
                    let v = value("a duration")?;
                    fields.insert(w.into(), json!(parse_ms(v)?));
                }
                "fall" | "rise" | "maxconn" | "maxqueue" | "minconn" => {
                    let v = value("a number")?;
                    let n: i64 = v.parse().map_err(|_| anyhow::anyhow!("server option `{w}`: `{v}` is not a number"))?;
                    fields.insert(w.into(), json!(n));
                }
                other => anyhow::bail!(
                    "server option `{other}` is not supported with the Data Plane API driver (supported: check, no-check, inter, fastinter, downinter, fall, rise, maxconn, maxqueue, minconn)"
                ),
            }
        }
        Ok(ServerOptions { fields })
    }
}

/// `1s`, `500ms`, `2m`, `1h`, or a bare number of milliseconds (HAProxy's default unit).
fn parse_ms(text: &str) -> anyhow::Result<u64> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: u64 = num.parse().map_err(|_| anyhow::anyhow!("`{text}` is not a duration"))?;
    let factor = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => anyhow::bail!("`{text}` is not a duration (use ms, s, m, h or d)"),
    };
    Ok(n * factor)
}

/// One HTTP answer.
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Result<Value, DriverError> {
        serde_json::from_slice(&self.body).map_err(|e| DriverError::Protocol(format!("answer is not JSON ({e}): {}", self.text())))
    }

    fn text(&self) -> String {
        let t = String::from_utf8_lossy(&self.body);
        t.chars().take(300).collect()
    }

    /// The error body's message, or the raw text.
    fn message(&self) -> String {
        match serde_json::from_slice::<Value>(&self.body) {
            Ok(v) => v.get("message").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| self.text()),
            Err(_) => self.text(),
        }
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
    }

    fn config_version(&self) -> Option<i64> {
        self.header("Configuration-Version").and_then(|v| v.trim().parse().ok())
    }

    /// The usual mapping of a failed answer: 5xx is the API's trouble (try later), 4xx a refusal.
    fn error(&self, what: &str) -> DriverError {
        let msg = format!("{what}: {} {}", self.status.as_u16(), self.message());
        if self.status.is_server_error() {
            DriverError::Unreachable(msg)
        } else {
            DriverError::Refused(msg)
        }
    }
}

/// Why one transaction attempt ended without a commit.
enum TxEnd {
    /// 409 or 406 (or a configuration that changed under us): refresh and start over.
    Retry(String),
    Fail(DriverError),
}

/// Watches `runtime/info` for a new process (pid) or the same pid with a smaller uptime.
#[derive(Debug, Default)]
struct GenerationTracker {
    last: Option<(i64, Option<i64>)>,
    epoch: u64,
}

impl GenerationTracker {
    fn observe(&mut self, pid: i64, uptime: Option<i64>) -> Generation {
        if let Some((last_pid, last_uptime)) = self.last {
            let restarted_same_pid = last_pid == pid && matches!((last_uptime, uptime), (Some(a), Some(b)) if b < a);
            if restarted_same_pid {
                self.epoch += 1;
            }
        }
        self.last = Some((pid, uptime));
        Generation(format!("pid={pid};epoch={}", self.epoch))
    }
}

/// Drives HAProxy through its Data Plane API (v3 or v2).
pub struct DataplaneApi {
    http: reqwest::Client,
    /// Base URL including `/v3` or `/v2`.
    base: Url,
    version: DataplaneVersion,
    user: Option<String>,
    password: Option<String>,
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
    pub fn new(url: &str, version: DataplaneVersion, user: Option<String>, password: Option<String>, server_options: String) -> anyhow::Result<DataplaneApi> {
        let options = ServerOptions::parse(&server_options)?;
        let mut trimmed = url.trim().trim_end_matches('/').to_string();
        for suffix in ["/v3", "/v2"] {
            if let Some(s) = trimmed.strip_suffix(suffix) {
                trimmed = s.to_string();
            }
        }
        let prefix = match version {
            DataplaneVersion::V3 => "v3",
            DataplaneVersion::V2 => "v2",
        };
        let base = Url::parse(&format!("{trimmed}/{prefix}")).map_err(|e| anyhow::anyhow!("--dataplane-url {url}: {e}"))?;
        if !matches!(base.scheme(), "http" | "https") {
            anyhow::bail!("--dataplane-url {url}: use http:// or https://");
        }
        let http = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build()?;
        Ok(DataplaneApi {
            http,
            base,
            version,
            user,
            password,
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
        let v = self.get_json(&["services", "haproxy", "reloads", id], &[], "reading reload").await?;
        match v.get("status").and_then(Value::as_str) {
            Some("in_progress") => Ok(ReloadStatus::InProgress),
            Some("succeeded") => Ok(ReloadStatus::Succeeded),
            Some("failed") => Ok(ReloadStatus::Failed(v.get("response").and_then(Value::as_str).unwrap_or("").to_string())),
            other => Err(DriverError::Protocol(format!("reload status {other:?}"))),
        }
    }

    // ----- HTTP -----

    /// GET that must answer 200 with JSON; anything else is an error saying `what` failed.
    async fn get_json(&self, segments: &[&str], query: &[(&str, String)], what: &str) -> Result<Value, DriverError> {
        let a = self.call(Method::GET, segments, query, None).await?;
        if a.status != StatusCode::OK {
            return Err(a.error(what));
        }
        a.json()
    }

    async fn call(&self, method: Method, segments: &[&str], query: &[(&str, String)], body: Option<&Value>) -> Result<Answer, DriverError> {
        let mut url = self.base.clone();
        url.path_segments_mut().map_err(|_| DriverError::Protocol("base URL cannot take a path".into()))?.extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        let mut req = self.http.request(method.clone(), url.clone());
        if let Some(user) = &self.user {
            req = req.basic_auth(user, self.password.as_ref());
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| DriverError::Unreachable(format!("{method} {}: {e}", url.path())))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(|e| DriverError::Unreachable(format!("{method} {}: {e}", url.path())))?.to_vec();
        tracing::debug!(%method, path = url.path(), status = status.as_u16(), "data plane API");
        Ok(Answer { status, headers, body })
    }

    fn v3(&self) -> bool {
        self.version == DataplaneVersion::V3
    }

    /// Path and query of the runtime servers of `backend` (optionally one of them).
    fn runtime_path<'a>(&self, backend: &'a str, name: Option<&'a str>) -> (Vec<&'a str>, Vec<(&'static str, String)>) {
        if self.v3() {
            let mut p = vec!["services", "haproxy", "runtime", "backends", backend, "servers"];
            p.extend(name);
            (p, vec![])
        } else {
            let mut p = vec!["services", "haproxy", "runtime", "servers"];
            p.extend(name);
            (p, vec![("backend", backend.to_string())])
        }
    }

    /// Path and query of the configuration servers of `backend` (optionally one of them).
    fn config_path<'a>(&self, backend: &'a str, name: Option<&'a str>) -> (Vec<&'a str>, Vec<(&'static str, String)>) {
        if self.v3() {
            let mut p = vec!["services", "haproxy", "configuration", "backends", backend, "servers"];
            p.extend(name);
            (p, vec![])
        } else {
            let mut p = vec!["services", "haproxy", "configuration", "servers"];
            p.extend(name);
            (p, vec![("backend", backend.to_string())])
        }
    }

    // ----- reading -----

    async fn read_runtime(&self, backend: &str) -> Result<Vec<Value>, DriverError> {
        let (path, query) = self.runtime_path(backend, None);
        match self.get_json(&path, &query, &format!("reading runtime servers of {backend}")).await? {
            Value::Array(items) => Ok(items),
            Value::Null => Ok(vec![]),
            other => Err(DriverError::Protocol(format!("runtime servers: expected an array, got {other}"))),
        }
    }

    /// Configuration servers of `backend` (in `tx` if given), and the version the answer carries.
    async fn read_config(&self, backend: &str, tx: Option<&str>) -> Result<(BTreeMap<String, Value>, Option<i64>), DriverError> {
        let (path, mut query) = self.config_path(backend, None);
        if let Some(t) = tx {
            query.push(("transaction_id", t.to_string()));
        }
        let a = self.call(Method::GET, &path, &query, None).await?;
        if a.status != StatusCode::OK {
            return Err(a.error(&format!("reading configuration servers of {backend}")));
        }
        let v = a.json()?;
        let mut version = a.config_version();
        let items = if self.v3() {
            v
        } else {
            version = version.or_else(|| v.get("_version").and_then(Value::as_i64));
            v.get("data").cloned().unwrap_or(Value::Null)
        };
        let items = match items {
            Value::Array(items) => items,
            Value::Null => vec![],
            other => return Err(DriverError::Protocol(format!("configuration servers: expected an array, got {other}"))),
        };
        let mut out = BTreeMap::new();
        for s in items {
            let name = s.get("name").and_then(Value::as_str).ok_or_else(|| DriverError::Protocol(format!("configuration server without a name: {s}")))?;
            out.insert(name.to_string(), s);
        }
        Ok((out, version))
    }

    /// Current sessions and weight of each server of `backend`, from the native stats.
    async fn read_stats(&self, backend: &str) -> Result<HashMap<String, (u64, Option<u32>)>, DriverError> {
        let query = [("type", "server".to_string()), ("parent", backend.to_string())];
        let v = self.get_json(&["services", "haproxy", "stats", "native"], &query, &format!("reading stats of {backend}")).await?;
        // v3: one `native_stats` object; v2: an array of them, one per runtime API.
        let collections = match v {
            Value::Array(items) => items,
            other => vec![other],
        };
        let mut out = HashMap::new();
        for c in collections {
            let Some(stats) = c.get("stats").and_then(Value::as_array) else {
                continue;
            };
            for s in stats {
                if s.get("type").and_then(Value::as_str) != Some("server") {
                    continue;
                }
                if s.get("backend_name").and_then(Value::as_str).is_some_and(|b| b != backend) {
                    continue;
                }
                let Some(name) = s.get("name").and_then(Value::as_str) else {
                    continue;
                };
                let st = s.get("stats");
                let scur = st.and_then(|x| x.get("scur")).and_then(Value::as_u64).unwrap_or(0);
                let weight = st.and_then(|x| x.get("weight")).and_then(Value::as_u64).map(|w| w as u32);
                let e = out.entry(name.to_string()).or_insert((0, weight));
                e.0 += scur;
            }
        }
        Ok(out)
    }

    async fn read_version(&mut self) -> Result<i64, DriverError> {
        // Not `get_json`: the version may come in the header rather than the body.
        let a = self.call(Method::GET, &["services", "haproxy", "configuration", "version"], &[], None).await?;
        if a.status != StatusCode::OK {
            return Err(a.error("reading the configuration version"));
        }
        let v = a.json()?.as_i64().or(a.config_version()).ok_or_else(|| DriverError::Protocol(format!("configuration version: {}", a.text())))?;
        self.config_version = Some(v);
        Ok(v)
    }

    fn to_actual(&self, backend: &str, s: &Value, stats: &HashMap<String, (u64, Option<u32>)>) -> Result<ActualServer, DriverError> {
        let name = s.get("name").and_then(Value::as_str).ok_or_else(|| DriverError::Protocol(format!("runtime server without a name: {s}")))?.to_string();
        let addr = s.get("address").and_then(Value::as_str).unwrap_or("").to_string();
        let port = s.get("port").and_then(Value::as_u64).unwrap_or(0) as u16;
        let state = match s.get("admin_state").and_then(Value::as_str) {
            Some("ready") => AdminState::Ready,
            Some("drain") => AdminState::Drain,
            Some("maint") => AdminState::Maint,
            other => return Err(DriverError::Protocol(format!("server {name}: admin_state {other:?}"))),
        };
        let (sessions, stats_weight) = stats.get(&name).copied().unwrap_or((0, None));
        // v3 reports the user weight (`uweight`, or `weight`); v2's runtime model has none, so
        // take the configured weight, then the stats' weight.
        let runtime_weight = s.get("uweight").and_then(Value::as_u64).or_else(|| s.get("weight").and_then(Value::as_u64)).map(|w| w as u32);
        let config_weight = self.config.get(backend).and_then(|c| c.get(&name)).and_then(|c| c.get("weight")).and_then(Value::as_u64).map(|w| w as u32);
        let weight = runtime_weight.or(config_weight).or(stats_weight).unwrap_or(1);
        Ok(ActualServer { name, addr, port, weight, state, sessions })
    }

    // ----- runtime changes -----

    async fn runtime_op(&mut self, backend: &str, op: &Op) -> Result<(), DriverError> {
        match op {
            Op::Add(d) => {
                let mut body = self.options.fields.clone();
                body.insert("name".into(), json!(d.name));
                body.insert("address".into(), json!(d.addr));
                body.insert("port".into(), json!(d.port));
                body.insert("weight".into(), json!(d.weight));
                let (path, query) = self.runtime_path(backend, None);
                let a = self.call(Method::POST, &path, &query, Some(&Value::Object(body))).await?;
                if !a.status.is_success() {
                    return Err(a.error(&format!("adding runtime server {backend}/{}", d.name)));
                }
                // A dynamic server starts in maintenance: bring it to its state.
                self.runtime_put(backend, &d.name, json!({ "admin_state": d.state.as_str() })).await?;
                let a = ActualServer { name: d.name.clone(), addr: d.addr.clone(), port: d.port, weight: d.weight, state: d.state, sessions: 0 };
                self.runtime.entry(backend.to_string()).or_default().insert(d.name.clone(), a);
            }
            Op::SetWeight { name, weight } => {
                // Only v3's runtime model has a weight; with v2 the weight goes to the
                // configuration only and takes effect at the reload its commit asks for.
                if self.v3() {
                    self.runtime_put(backend, name, json!({ "weight": weight })).await?;
                }
                if let Some(s) = self.runtime.get_mut(backend).and_then(|m| m.get_mut(name)) {
                    s.weight = *weight;
                }
            }
            Op::SetState { name, state } => {
                self.runtime_put(backend, name, json!({ "admin_state": state.as_str() })).await?;
                if let Some(s) = self.runtime.get_mut(backend).and_then(|m| m.get_mut(name)) {
                    s.state = *state;
                }
            }
            Op::Remove { name } => {
                let (path, query) = self.runtime_path(backend, Some(name));
                let a = self.call(Method::DELETE, &path, &query, None).await?;
                // 404: already gone, which is what was wanted. Anything else (typically the
                // server still has connections; the API forced it into maintenance) is a refusal.
                if !(a.status.is_success() || a.status == StatusCode::NOT_FOUND) {
                    return Err(DriverError::Refused(format!("deleting runtime server {backend}/{name}: {} {}", a.status.as_u16(), a.message())));
                }
                if let Some(m) = self.runtime.get_mut(backend) {
                    m.remove(name);
                }
            }
        }
        Ok(())
    }

    async fn runtime_put(&self, backend: &str, name: &str, body: Value) -> Result<(), DriverError> {
        let (path, query) = self.runtime_path(backend, Some(name));
        let a = self.call(Method::PUT, &path, &query, Some(&body)).await?;
        if !a.status.is_success() {
            return Err(a.error(&format!("changing runtime server {backend}/{name}")));
        }
        Ok(())
    }

    // ----- configuration (persistence) -----

    /// The configuration `server` object for a desired server.
    fn config_server(&self, d: &DesiredServer) -> Value {
        let mut body = self.options.fields.clone();
        body.insert("name".into(), json!(d.name));
        body.insert("address".into(), json!(d.addr));
        body.insert("port".into(), json!(d.port));
        body.insert("weight".into(), json!(d.weight));
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
                    Some(self.config_server(&DesiredServer { name: a.name.clone(), addr: a.addr.clone(), port: a.port, weight: a.weight, state: a.state }))
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

    /// Persists `ops` in the configuration in one transaction (started over on 409 and 406).
    async fn persist(&mut self, backend: &str, ops: &[Op]) -> Result<(), DriverError> {
        let mut fresh = false;
        let mut last_reason = String::new();
        for attempt in 0..MAX_TX_ATTEMPTS {
            if fresh || !self.config.contains_key(backend) || self.config_version.is_none() {
                self.read_version().await?;
                let (servers, v) = self.read_config(backend, None).await?;
                self.config.insert(backend.to_string(), servers);
                if let Some(v) = v {
                    self.config_version = Some(v);
                }
            }
            let base = self.config.get(backend).cloned().unwrap_or_default();
            let targets = self.config_targets(backend, &base, ops);
            let writes: Vec<(String, Option<Value>, bool)> = targets
                .into_iter()
                .filter_map(|(name, target)| {
                    let exists = base.contains_key(&name);
                    match (&target, base.get(&name)) {
                        (None, None) => None,
                        (Some(t), Some(c)) if same_server(t, c) => None,
                        _ => Some((name, target, exists)),
                    }
                })
                .collect();
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
                    for (name, target, _) in writes {
                        match target {
                            Some(t) => cfg.insert(name, t),
                            None => cfg.remove(&name),
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
    async fn transaction(&mut self, backend: &str, version: i64, writes: &[(String, Option<Value>, bool)]) -> Result<(), TxEnd> {
        let a = self.call(Method::POST, &["services", "haproxy", "transactions"], &[("version", version.to_string())], None).await.map_err(TxEnd::Fail)?;
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
            let _ = self.call(Method::DELETE, &["services", "haproxy", "transactions", &tx], &[], None).await;
        }
        result
    }

    async fn write_and_commit(&mut self, backend: &str, tx: &str, writes: &[(String, Option<Value>, bool)]) -> Result<(), TxEnd> {
        for (name, target, exists) in writes {
            let (method, path, mut query) = match (target, exists) {
                (Some(_), false) => {
                    let (p, q) = self.config_path(backend, None);
                    (Method::POST, p, q)
                }
                (Some(_), true) => {
                    let (p, q) = self.config_path(backend, Some(name));
                    (Method::PUT, p, q)
                }
                (None, _) => {
                    let (p, q) = self.config_path(backend, Some(name));
                    (Method::DELETE, p, q)
                }
            };
            query.push(("transaction_id", tx.to_string()));
            let a = self.call(method.clone(), &path, &query, target.as_ref()).await.map_err(TxEnd::Fail)?;
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
        let a = self.call(Method::PUT, &["services", "haproxy", "transactions", tx], &[], None).await.map_err(TxEnd::Fail)?;
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
    async fn flush_unpersisted(&mut self, backend: &str) -> Result<(), DriverError> {
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

impl Driver for DataplaneApi {
    async fn generation(&mut self) -> Result<Generation, DriverError> {
        let v = self.get_json(&["services", "haproxy", "runtime", "info"], &[], "reading process info").await?;
        // v3: one `process_info`; v2: an array of them (one per runtime API).
        let first = match &v {
            Value::Array(items) => items.first().cloned().unwrap_or(Value::Null),
            other => other.clone(),
        };
        if let Some(err) = first.get("error").and_then(Value::as_str).filter(|e| !e.is_empty()) {
            return Err(DriverError::Unreachable(format!("process info: {err}")));
        }
        let info = first.get("info").ok_or_else(|| DriverError::Protocol(format!("process info without `info`: {v}")))?;
        let pid = info.get("pid").and_then(Value::as_i64).ok_or_else(|| DriverError::Protocol(format!("process info without a pid: {v}")))?;
        let uptime = info.get("uptime").and_then(Value::as_i64);
        Ok(self.generation.observe(pid, uptime))
    }

    async fn servers(&mut self, backend: &str) -> Result<Vec<ActualServer>, DriverError> {
        if let Err(e) = self.flush_unpersisted(backend).await {
            tracing::warn!(backend, error = %e, "earlier changes are still not persisted in the configuration");
        }
        let (config, version) = self.read_config(backend, None).await?;
        self.config.insert(backend.to_string(), config);
        if version.is_some() {
            self.config_version = version;
        }
        let runtime = self.read_runtime(backend).await?;
        let stats = self.read_stats(backend).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_options_map_to_model_fields() {
        let o = ServerOptions::parse("check inter 1s fall 2 rise 1").unwrap();
        assert_eq!(Value::Object(o.fields), json!({"check": "enabled", "inter": 1000, "fall": 2, "rise": 1}));
        assert!(ServerOptions::parse("check ssl verify none").is_err());
        assert!(ServerOptions::parse("inter").is_err());
        assert_eq!(parse_ms("250ms").unwrap(), 250);
        assert_eq!(parse_ms("2m").unwrap(), 120_000);
        assert_eq!(parse_ms("100").unwrap(), 100);
    }

    #[test]
    fn base_url_gets_the_version_path() {
        let d = DataplaneApi::new("http://127.0.0.1:5555/v3/", DataplaneVersion::V3, None, None, String::new()).unwrap();
        assert_eq!(d.base.as_str(), "http://127.0.0.1:5555/v3");
        let d = DataplaneApi::new("http://127.0.0.1:5555", DataplaneVersion::V2, None, None, String::new()).unwrap();
        assert_eq!(d.base.as_str(), "http://127.0.0.1:5555/v2");
    }

    #[test]
    fn generation_changes_on_new_pid_or_uptime_going_back() {
        let mut g = GenerationTracker::default();
        let a = g.observe(10, Some(100));
        assert_eq!(g.observe(10, Some(101)), a);
        let b = g.observe(11, Some(0));
        assert_ne!(a, b);
        let c = g.observe(11, Some(5));
        assert_eq!(b, c);
        assert_ne!(g.observe(11, Some(1)), c, "same pid but uptime went back: a restart");
    }
}
