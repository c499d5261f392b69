//! A test double of the HAProxy Data Plane API (v2 and v3) that checks every request against the
//! real specs (`spec`), for testing the syncer's Data Plane API driver without `dataplaneapi`.
//!
//! It serves one API version on `127.0.0.1:0` and keeps in memory what the real program keeps in
//! HAProxy and in haproxy.cfg: the configuration version, open transactions, configuration
//! servers and runtime servers per backend, and reloads. Semantics follow
//! `shared/reference/README.md`:
//! - a configuration write takes `version` or `transaction_id`, never both (400) and not neither
//!   (400); a stale `version` gives 409 with a `Configuration-Version` header;
//! - `POST /services/haproxy/transactions?version=N` (201; 409 if stale; 429 past 20 open);
//!   writes inside a transaction answer 202 without a reload; commit answers 202 with
//!   `Reload-ID`, or 406 if another change was committed since the transaction started;
//! - a dynamic (runtime-added) server starts in maintenance, like HAProxy's `add server`;
//!   runtime DELETE forces maintenance and fails (400) while the server has connections;
//! - reloads stay `in_progress` until `complete_reloads()`, which also does what a reload does:
//!   the runtime servers become the configuration's and the worker pid changes.
//!
//! Every request that breaks the spec is answered 400 and recorded (`violations()`); every
//! answer the double itself sends is checked against the spec too (`response_violations()`).
//! Fault injection: `fail_next_config_writes(n)` (409), `fail_next_commits(n)` (406).

pub mod spec;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State as AxState};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

pub use spec::{spec_dir, ApiVersion, Spec};

pub const USER: &str = "admin";
pub const PASSWORD: &str = "adminpwd";
const MAX_OPEN_TRANSACTIONS: usize = 20;

/// A request that broke the spec.
#[derive(Debug, Clone)]
pub struct Violation {
    pub method: String,
    pub uri: String,
    pub errors: Vec<String>,
}

/// One request as the double saw it.
#[derive(Debug, Clone)]
pub struct Record {
    pub method: String,
    pub uri: String,
    /// The spec's operationId (empty if the path matched none).
    pub operation: String,
    pub status: u16,
}

/// A server as HAProxy runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeServer {
    pub name: String,
    pub id: u64,
    pub address: String,
    pub port: Option<u16>,
    pub weight: u32,
    /// `ready`, `drain` or `maint`.
    pub admin_state: String,
    pub connections: u64,
}

#[derive(Debug, Clone)]
struct Transaction {
    version: i64,
    status: &'static str,
    /// The whole configuration as the transaction sees it: backend -> server name -> server.
    config: BTreeMap<String, BTreeMap<String, Value>>,
}

#[derive(Debug, Clone)]
pub struct Reload {
    pub id: String,
    pub status: String,
    pub timestamp: i64,
}

struct State {
    api: ApiVersion,
    version: i64,
    config: BTreeMap<String, BTreeMap<String, Value>>,
    runtime: BTreeMap<String, BTreeMap<String, RuntimeServer>>,
    transactions: BTreeMap<String, Transaction>,
    tx_seq: u64,
    reloads: Vec<Reload>,
    pid: i64,
    started: Instant,
    next_server_id: u64,
    fail_config_writes: u32,
    fail_commits: u32,
    violations: Vec<Violation>,
    response_violations: Vec<String>,
    log: Vec<Record>,
}

/// The running double; stops when dropped.
pub struct DataplaneDouble {
    pub addr: SocketAddr,
    pub api: ApiVersion,
    /// `https` when started with `start_tls`.
    scheme: &'static str,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DataplaneDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Shared = (Arc<Mutex<State>>, Arc<Spec>);

/// Connections that finished a TLS handshake, for `axum::serve`: each is handshaken on a task of
/// its own, and one that fails (a client that does not trust the certificate) is dropped.
struct TlsAccept {
    ready: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, SocketAddr)>,
    local: SocketAddr,
    /// The accept loop; it goes (and the port with it) when the double's server does.
    accepting: tokio::task::JoinHandle<()>,
}

impl Drop for TlsAccept {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl TlsAccept {
    fn new(tcp: tokio::net::TcpListener, acceptor: tokio_rustls::TlsAcceptor) -> TlsAccept {
        let local = tcp.local_addr().unwrap();
        let (tx, ready) = tokio::sync::mpsc::channel(16);
        let accepting = tokio::spawn(async move {
            while let Ok((conn, peer)) = tcp.accept().await {
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    if let Ok(Ok(stream)) = tokio::time::timeout(std::time::Duration::from_secs(5), acceptor.accept(conn)).await {
                        let _ = tx.send((stream, peer)).await;
                    }
                });
            }
        });
        TlsAccept { ready, local, accepting }
    }
}

impl axum::serve::Listener for TlsAccept {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept loop ended: serve nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

impl DataplaneDouble {
    /// Starts a double of `api` with the given (empty) backends.
    pub async fn start(api: ApiVersion, backends: &[&str]) -> DataplaneDouble {
        Self::start_with(api, backends, None).await
    }

    /// `start`, serving HTTPS with the certificate chain and key in these PEM files (as the real
    /// program does behind its `tls` settings).
    pub async fn start_tls(api: ApiVersion, backends: &[&str], cert: &std::path::Path, key: &std::path::Path) -> DataplaneDouble {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert).unwrap().collect::<Result<_, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        Self::start_with(api, backends, Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_with(api: ApiVersion, backends: &[&str], tls: Option<tokio_rustls::TlsAcceptor>) -> DataplaneDouble {
        let spec = Spec::get(api);
        let state = Arc::new(Mutex::new(State {
            api,
            version: 1,
            config: backends.iter().map(|b| (b.to_string(), BTreeMap::new())).collect(),
            runtime: backends.iter().map(|b| (b.to_string(), BTreeMap::new())).collect(),
            transactions: BTreeMap::new(),
            tx_seq: 0,
            reloads: Vec::new(),
            pid: 4242,
            started: Instant::now(),
            next_server_id: 1,
            fail_config_writes: 0,
            fail_commits: 0,
            violations: Vec::new(),
            response_violations: Vec::new(),
            log: Vec::new(),
        }));
        let app = axum::Router::new().fallback(handle).with_state((state.clone(), spec));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = match tls {
            None => tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }),
            Some(acceptor) => tokio::spawn(async move {
                let _ = axum::serve(TlsAccept::new(listener, acceptor), app).await;
            }),
        };
        DataplaneDouble { addr, api, scheme, state, task }
    }

    /// `http://127.0.0.1:PORT`, or `https://` from `start_tls` (without the base path).
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    pub fn violations(&self) -> Vec<Violation> {
        self.st().violations.clone()
    }

    /// Answers of the double that do not match the spec (a bug of the double).
    pub fn response_violations(&self) -> Vec<String> {
        self.st().response_violations.clone()
    }

    pub fn requests(&self) -> Vec<Record> {
        self.st().log.clone()
    }

    /// How many requests reached `operation` (an operationId) and got a 2xx.
    pub fn count_ok(&self, operation: &str) -> usize {
        self.st().log.iter().filter(|r| r.operation == operation && (200..300).contains(&r.status)).count()
    }

    pub fn count(&self, operation: &str) -> usize {
        self.st().log.iter().filter(|r| r.operation == operation).count()
    }

    pub fn config_version(&self) -> i64 {
        self.st().version
    }

    /// Another writer changed the configuration.
    pub fn bump_version(&self) {
        self.st().version += 1;
    }

    pub fn runtime_servers(&self, backend: &str) -> BTreeMap<String, RuntimeServer> {
        self.st().runtime.get(backend).cloned().unwrap_or_default()
    }

    pub fn config_servers(&self, backend: &str) -> BTreeMap<String, Value> {
        self.st().config.get(backend).cloned().unwrap_or_default()
    }

    pub fn open_transactions(&self) -> usize {
        self.st().transactions.values().filter(|t| t.status == "in_progress").count()
    }

    pub fn reloads(&self) -> Vec<Reload> {
        self.st().reloads.clone()
    }

    /// Sets the current connections of a runtime server.
    pub fn set_connections(&self, backend: &str, server: &str, n: u64) {
        let mut st = self.st();
        let s = st.runtime.get_mut(backend).and_then(|b| b.get_mut(server)).unwrap_or_else(|| panic!("no runtime server {backend}/{server}"));
        s.connections = n;
    }

    /// Adds a server to the configuration and the runtime, as if declared in haproxy.cfg.
    pub fn declare_server(&self, backend: &str, name: &str, address: &str, port: u16) {
        let mut st = self.st();
        st.config.entry(backend.to_string()).or_default().insert(name.to_string(), json!({"name": name, "address": address, "port": port}));
        let id = st.next_server_id;
        st.next_server_id += 1;
        let rs = RuntimeServer { name: name.into(), id, address: address.into(), port: Some(port), weight: 1, admin_state: "ready".into(), connections: 0 };
        st.runtime.entry(backend.to_string()).or_default().insert(name.to_string(), rs);
    }

    /// The next `n` configuration writes (transaction starts and server writes) get 409.
    pub fn fail_next_config_writes(&self, n: u32) {
        self.st().fail_config_writes = n;
    }

    /// The next `n` commits get 406 (outdated transaction).
    pub fn fail_next_commits(&self, n: u32) {
        self.st().fail_commits = n;
    }

    /// Finishes every pending reload the way HAProxy would: new worker, servers from the
    /// configuration (runtime-only servers are gone).
    pub fn complete_reloads(&self) {
        let mut st = self.st();
        let mut any = false;
        for r in st.reloads.iter_mut().filter(|r| r.status == "in_progress") {
            r.status = "succeeded".into();
            any = true;
        }
        if any {
            st.restart();
        }
    }

    /// HAProxy restarts: new pid, uptime from zero, servers from the configuration.
    pub fn restart_haproxy(&self) {
        self.st().restart();
    }

    pub fn pid(&self) -> i64 {
        self.st().pid
    }
}

impl State {
    fn restart(&mut self) {
        self.pid += 1;
        self.started = Instant::now();
        let mut runtime = BTreeMap::new();
        for (b, servers) in &self.config {
            let mut rt = BTreeMap::new();
            for (name, s) in servers {
                let id = self.next_server_id;
                self.next_server_id += 1;
                rt.insert(
                    name.clone(),
                    RuntimeServer {
                        name: name.clone(),
                        id,
                        address: s.get("address").and_then(Value::as_str).unwrap_or("").to_string(),
                        port: s.get("port").and_then(Value::as_u64).map(|p| p as u16),
                        weight: s.get("weight").and_then(Value::as_u64).unwrap_or(1) as u32,
                        admin_state: if s.get("maintenance").and_then(Value::as_str) == Some("enabled") { "maint" } else { "ready" }.into(),
                        connections: 0,
                    },
                );
            }
            runtime.insert(b.clone(), rt);
        }
        self.runtime = runtime;
    }

    fn new_reload(&mut self) -> String {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
        let id = format!("{y:04}-{m:02}-{d:02}-{}", self.reloads.len() + 1);
        self.reloads.push(Reload { id: id.clone(), status: "in_progress".into(), timestamp: secs });
        id
    }

    fn runtime_json(&self, backend: &str, s: &RuntimeServer) -> Value {
        let mut v = json!({
            "name": s.name,
            "id": s.id.to_string(),
            "address": s.address,
            "port": s.port,
            "admin_state": s.admin_state,
            "operational_state": if s.admin_state == "maint" { "down" } else { "up" },
        });
        if self.api == ApiVersion::V3 {
            v["weight"] = json!(s.weight);
            v["uweight"] = json!(s.weight);
            v["iweight"] = json!(s.weight);
            v["backend_name"] = json!(backend);
        }
        v
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn base64(input: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in input.chunks(3) {
        let n = (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// An answer: status, headers, JSON body.
struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Option<Value>,
}

fn ok(status: u16, body: Value) -> Answer {
    Answer { status, headers: vec![], body: Some(body) }
}

fn empty(status: u16) -> Answer {
    Answer { status, headers: vec![], body: None }
}

fn error(status: u16, message: impl Into<String>) -> Answer {
    ok(status, json!({"code": status, "message": message.into()}))
}

impl Answer {
    fn header(mut self, name: &'static str, value: impl ToString) -> Answer {
        self.headers.push((name, value.to_string()));
        self
    }
}

async fn handle(AxState((state, spec)): AxState<Shared>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 16 << 20).await.unwrap_or_default();
    let method = parts.method.as_str().to_string();
    let uri = parts.uri.to_string();
    let raw_path = parts.uri.path();
    let query: Vec<(String, String)> = reqwest::Url::parse(&format!("http://x/?{}", parts.uri.query().unwrap_or("")))
        .map(|u| u.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
        .unwrap_or_default();
    let content_type = parts.headers.get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string);

    let mut errors = Vec::new();
    let expected_auth = format!("Basic {}", base64(format!("{USER}:{PASSWORD}").as_bytes()));
    let auth_ok = parts.headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(expected_auth.as_str());
    if !auth_ok {
        errors.push("missing or wrong basic auth (the spec requires basic_auth)".to_string());
    }
    let (op, spec_errors) = match raw_path.strip_prefix(spec.version.base_path()).filter(|p| p.starts_with('/')) {
        Some(path) => spec.validate_request(&spec::Request { method: &method, path, query: &query, content_type: content_type.as_deref(), body: &bytes }),
        None => (None, vec![format!("{raw_path} is not under the base path {}", spec.version.base_path())]),
    };
    errors.extend(spec_errors);

    let answer = if !errors.is_empty() {
        let msg = errors.join("; ");
        state.lock().unwrap().violations.push(Violation { method: method.clone(), uri: uri.clone(), errors });
        if auth_ok {
            error(400, format!("request does not match the spec: {msg}"))
        } else {
            error(401, msg)
        }
    } else {
        let op = op.as_ref().expect("a valid request has an operation");
        let body: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        let q: BTreeMap<&str, &str> = query.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut st = state.lock().unwrap();
        dispatch(&mut st, &op.id, &op.path_params, &q, body)
    };

    let body_bytes = answer.body.as_ref().map(|b| serde_json::to_vec(b).unwrap()).unwrap_or_default();
    {
        let mut st = state.lock().unwrap();
        if let Some(op) = &op {
            // A 401 for missing auth is not the double's fault; check every other answer.
            if answer.status != 401 {
                for e in spec.validate_response(op, answer.status, &body_bytes) {
                    st.response_violations.push(format!("{method} {uri}: {e}"));
                }
            }
        }
        st.log.push(Record { method, uri, operation: op.as_ref().map(|o| o.id.clone()).unwrap_or_default(), status: answer.status });
    }
    let mut resp = Response::builder().status(StatusCode::from_u16(answer.status).unwrap());
    if answer.body.is_some() {
        resp = resp.header("content-type", "application/json");
    }
    for (k, v) in &answer.headers {
        resp = resp.header(*k, HeaderValue::from_str(v).unwrap());
    }
    resp.body(Body::from(body_bytes)).unwrap()
}

fn dispatch(st: &mut State, op: &str, path: &BTreeMap<String, String>, q: &BTreeMap<&str, &str>, body: Value) -> Answer {
    // v3 names the backend in the path; v2 in `backend` (or `parent_name`) of the query.
    let backend =
        path.get("parent_name").map(String::as_str).or_else(|| q.get("backend").copied()).or_else(|| q.get("parent_name").copied()).unwrap_or("").to_string();
    let name = path.get("name").cloned().unwrap_or_default();
    match op {
        "getConfigurationVersion" => ok(200, json!(st.version)).header("Configuration-Version", st.version),
        "getHaproxyProcessInfo" => {
            let info = json!({
                "runtimeAPI": "/run/haproxy/admin.sock",
                "info": {"pid": st.pid, "uptime": st.started.elapsed().as_secs(), "version": "2.6.12-1+deb12u1", "nbthread": 2},
            });
            match st.api {
                ApiVersion::V3 => ok(200, info),
                ApiVersion::V2 => ok(200, json!([info])),
            }
        }
        "getStats" => {
            let mut stats = Vec::new();
            if q.get("type").is_none_or(|t| *t == "server") {
                for (b, servers) in &st.runtime {
                    if q.get("parent").is_some_and(|p| p != b) {
                        continue;
                    }
                    for s in servers.values() {
                        if q.get("name").is_some_and(|n| *n != s.name) {
                            continue;
                        }
                        let status = match s.admin_state.as_str() {
                            "maint" => "MAINT",
                            "drain" => "NOLB",
                            _ => "UP",
                        };
                        stats.push(json!({"name": s.name, "backend_name": b, "type": "server", "stats": {"scur": s.connections, "weight": s.weight, "status": status}}));
                    }
                }
            }
            let coll = json!({"runtimeAPI": "/run/haproxy/admin.sock", "stats": stats});
            match st.api {
                ApiVersion::V3 => ok(200, coll),
                ApiVersion::V2 => ok(200, json!([coll])),
            }
        }
        "getReload" => match st.reloads.iter().find(|r| r.id == name || path.get("id") == Some(&r.id)) {
            Some(r) => ok(200, json!({"id": r.id, "status": r.status, "reload_timestamp": r.timestamp})),
            None => error(404, "reload not found"),
        },
        "getReloads" => ok(200, Value::Array(st.reloads.iter().map(|r| json!({"id": r.id, "status": r.status, "reload_timestamp": r.timestamp})).collect())),

        // ----- runtime servers -----
        "getAllRuntimeServer" | "getRuntimeServers" => match st.runtime.get(&backend) {
            Some(servers) => ok(200, Value::Array(servers.values().map(|s| st.runtime_json(&backend, s)).collect())),
            None => error(404, format!("backend {backend} not found")),
        },
        "getRuntimeServer" => match st.runtime.get(&backend).and_then(|b| b.get(&name)) {
            Some(s) => ok(200, st.runtime_json(&backend, s)),
            None => error(404, format!("server {backend}/{name} not found")),
        },
        "addRuntimeServer" => {
            let (Some(n), Some(addr)) = (body.get("name").and_then(Value::as_str), body.get("address").and_then(Value::as_str)) else {
                return error(400, "name and address are needed to add a server");
            };
            let id = st.next_server_id;
            let Some(servers) = st.runtime.get_mut(&backend) else { return error(404, format!("backend {backend} not found")) };
            if servers.contains_key(n) {
                return error(409, format!("server {backend}/{n} already exists"));
            }
            let s = RuntimeServer {
                name: n.into(),
                id,
                address: addr.into(),
                port: body.get("port").and_then(Value::as_u64).map(|p| p as u16),
                weight: body.get("weight").and_then(Value::as_u64).unwrap_or(1) as u32,
                // Like HAProxy's `add server`: a new dynamic server starts in maintenance.
                admin_state: "maint".into(),
                connections: 0,
            };
            servers.insert(n.to_string(), s);
            st.next_server_id += 1;
            ok(201, body)
        }
        "replaceRuntimeServer" => {
            let api = st.api;
            let Some(s) = st.runtime.get_mut(&backend).and_then(|b| b.get_mut(&name)) else { return error(404, format!("server {backend}/{name} not found")) };
            if let Some(a) = body.get("admin_state").and_then(Value::as_str) {
                s.admin_state = a.to_string();
            }
            if api == ApiVersion::V3 {
                if let Some(w) = body.get("weight").and_then(Value::as_u64) {
                    s.weight = w as u32;
                }
            }
            let s = s.clone();
            ok(200, st.runtime_json(&backend, &s))
        }
        "deleteRuntimeServer" => {
            let Some(s) = st.runtime.get_mut(&backend).and_then(|b| b.get_mut(&name)) else { return error(404, format!("server {backend}/{name} not found")) };
            // The API puts the server in maintenance first, then deletes it.
            s.admin_state = "maint".into();
            if s.connections > 0 {
                return error(400, format!("Server still has connections attached to it, cannot remove it ({} left)", s.connections));
            }
            st.runtime.get_mut(&backend).unwrap().remove(&name);
            empty(204)
        }

        // ----- configuration servers -----
        "getAllServerBackend" | "getServers" => {
            let config = match q.get("transaction_id") {
                Some(t) => match st.transactions.get(*t) {
                    Some(tx) => &tx.config,
                    None => return error(404, format!("transaction {t} not found")),
                },
                None => &st.config,
            };
            let Some(servers) = config.get(&backend) else { return error(404, format!("backend {backend} not found")) };
            let list = Value::Array(servers.values().cloned().collect());
            let body = match st.api {
                ApiVersion::V3 => list,
                ApiVersion::V2 => json!({"_version": st.version, "data": list}),
            };
            ok(200, body).header("Configuration-Version", st.version)
        }
        "getServerBackend" | "getServer" => match st.config.get(&backend).and_then(|b| b.get(&name)) {
            Some(s) => {
                let body = match st.api {
                    ApiVersion::V3 => s.clone(),
                    ApiVersion::V2 => json!({"_version": st.version, "data": s}),
                };
                ok(200, body).header("Configuration-Version", st.version)
            }
            None => error(404, format!("server {backend}/{name} not found")),
        },
        "createServerBackend" | "createServer" => config_write(st, q, |cfg| {
            let n = body.get("name").and_then(Value::as_str).unwrap_or("").to_string();
            let Some(servers) = cfg.get_mut(&backend) else { return Err(error(404, format!("backend {backend} not found"))) };
            if servers.contains_key(&n) {
                return Err(error(409, format!("server {backend}/{n} already exists")));
            }
            servers.insert(n, body.clone());
            Ok((201, Some(body.clone())))
        }),
        "replaceServerBackend" | "replaceServer" => config_write(st, q, |cfg| {
            let Some(s) = cfg.get_mut(&backend).and_then(|b| b.get_mut(&name)) else { return Err(error(404, format!("server {backend}/{name} not found"))) };
            if body.get("name").and_then(Value::as_str) != Some(name.as_str()) {
                return Err(error(400, "the body's name must be the path's"));
            }
            *s = body.clone();
            Ok((200, Some(body.clone())))
        }),
        "deleteServerBackend" | "deleteServer" => config_write(st, q, |cfg| match cfg.get_mut(&backend).and_then(|b| b.remove(&name)) {
            Some(_) => Ok((204, None)),
            None => Err(error(404, format!("server {backend}/{name} not found"))),
        }),

        // ----- transactions -----
        "startTransaction" => {
            let v: i64 = q.get("version").and_then(|v| v.parse().ok()).unwrap_or(-1);
            if st.fail_config_writes > 0 {
                st.fail_config_writes -= 1;
                return error(409, "version mismatch (injected)").header("Configuration-Version", st.version);
            }
            if v != st.version {
                return error(409, format!("version mismatch: have {}, given {v}", st.version)).header("Configuration-Version", st.version);
            }
            if st.transactions.values().filter(|t| t.status == "in_progress").count() >= MAX_OPEN_TRANSACTIONS {
                return ok(429, json!({"code": 429, "message": "too many open transactions"}));
            }
            st.tx_seq += 1;
            let id = format!("{:08x}-0000-4000-8000-{:012x}", st.tx_seq, st.pid);
            let tx = Transaction { version: v, status: "in_progress", config: st.config.clone() };
            st.transactions.insert(id.clone(), tx);
            ok(201, json!({"id": id, "_version": v, "status": "in_progress"})).header("Configuration-Version", st.version)
        }
        "getTransaction" => match st.transactions.get(path.get("id").map(String::as_str).unwrap_or("")) {
            Some(t) => ok(200, json!({"id": path["id"], "_version": t.version, "status": t.status})).header("Configuration-Version", st.version),
            None => error(404, "transaction not found"),
        },
        "getTransactions" => ok(
            200,
            Value::Array(
                st.transactions
                    .iter()
                    .filter(|(_, t)| q.get("status").is_none_or(|s| *s == t.status))
                    .map(|(id, t)| json!({"id": id, "_version": t.version, "status": t.status}))
                    .collect(),
            ),
        ),
        "deleteTransaction" => match st.transactions.remove(path.get("id").map(String::as_str).unwrap_or("")) {
            Some(_) => empty(204),
            None => error(404, "transaction not found"),
        },
        "commitTransaction" => {
            let id = path.get("id").cloned().unwrap_or_default();
            let current = st.version;
            let Some(tx) = st.transactions.get_mut(&id) else { return error(404, format!("transaction {id} not found")) };
            if tx.status != "in_progress" {
                return error(406, format!("transaction {id} is {}", tx.status)).header("Configuration-Version", current);
            }
            let injected = st.fail_commits > 0;
            let tx = st.transactions.get_mut(&id).unwrap();
            if injected || tx.version != current {
                tx.status = "outdated";
                if injected {
                    st.fail_commits -= 1;
                }
                return error(406, format!("transaction {id} is outdated: version {} but the configuration is at {current}", st.transactions[&id].version))
                    .header("Configuration-Version", current);
            }
            let tx = st.transactions.remove(&id).unwrap();
            st.config = tx.config;
            st.version += 1;
            let reload = st.new_reload();
            ok(202, json!({"id": id, "_version": tx.version, "status": "success"})).header("Configuration-Version", st.version).header("Reload-ID", reload)
        }
        other => error(501, format!("the double does not implement {other}")),
    }
}

/// A configuration write: inside a transaction (`transaction_id`) or at a version (`version`).
fn config_write(
    st: &mut State,
    q: &BTreeMap<&str, &str>,
    f: impl FnOnce(&mut BTreeMap<String, BTreeMap<String, Value>>) -> Result<(u16, Option<Value>), Answer>,
) -> Answer {
    let (tx, version) = (q.get("transaction_id"), q.get("version"));
    if tx.is_some() && version.is_some() {
        return error(400, "version and transaction_id cannot both be given");
    }
    if tx.is_none() && version.is_none() {
        return error(400, "version or transaction_id not specified");
    }
    if st.fail_config_writes > 0 {
        st.fail_config_writes -= 1;
        return error(409, "version mismatch (injected)").header("Configuration-Version", st.version);
    }
    let current = st.version;
    if let Some(t) = tx {
        let Some(tx) = st.transactions.get_mut(*t) else {
            return error(404, format!("transaction {t} not found"));
        };
        if tx.status != "in_progress" {
            return error(400, format!("transaction {t} is {}", tx.status));
        }
        return match f(&mut tx.config) {
            // Inside a transaction nothing is applied yet: 202, no reload.
            Ok((_, body)) => Answer { status: 202, headers: vec![], body }.header("Configuration-Version", current),
            Err(a) => a.header("Configuration-Version", current),
        };
    }
    let v: i64 = version.and_then(|v| v.parse().ok()).unwrap_or(-1);
    if v != current {
        return error(409, format!("version mismatch: have {current}, given {v}")).header("Configuration-Version", current);
    }
    match f(&mut st.config) {
        Ok((_, body)) => {
            st.version += 1;
            let reload = st.new_reload();
            Answer { status: 202, headers: vec![], body }.header("Configuration-Version", st.version).header("Reload-ID", reload)
        }
        Err(a) => a.header("Configuration-Version", current),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_checked_too() {
        for (api, op_path) in [(ApiVersion::V3, "/services/haproxy/runtime/backends/b/servers"), (ApiVersion::V2, "/services/haproxy/runtime/servers")] {
            let spec = Spec::get(api);
            let op = spec.find("GET", op_path).unwrap();
            assert!(spec.validate_response(&op, 200, br#"[{"name": "s", "admin_state": "ready"}]"#).is_empty());
            let bad = spec.validate_response(&op, 200, br#"[{"name": "s", "admin_state": "bogus"}]"#);
            assert!(bad.iter().any(|e| e.contains("is not one of")), "{bad:?}");
            assert!(!spec.validate_response(&op, 200, b"").is_empty());
        }
    }

    #[test]
    fn base64_and_dates() {
        assert_eq!(base64(b"admin:adminpwd"), "YWRtaW46YWRtaW5wd2Q=");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
    }
}
