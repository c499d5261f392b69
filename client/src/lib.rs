//! A client for the registry's HTTP API, shared by the CLI, the announcer, the syncer and the
//! tests so that none of them writes the same HTTP code again.
//!
//! It knows several node URLs. Each request goes first to the node last named as leader (the
//! `x-registry-leader` header), then to the others in turn; a node that cannot be reached or
//! answers 503 is skipped. A 4xx answer is final and comes back as `Error::Api`.
//!
//! Retries never apply a write twice. Every lease and instance write carries a request id
//! (`Idempotency-Key`), the same on each attempt, which the registry applies once; membership
//! changes, which have none, move to the next node only when the first one certainly did not
//! run them (connection refused, or "not the leader").
//!
//! `Watcher` owns the watch resume rule: it hands out each revision whole and resumes from the
//! last revision it received completely (docs/api.md, "Watch"). `convergence` owns the rule
//! for when the balancers have applied a change.

pub mod convergence;
mod watcher;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::{
    ClusterInfo, ErrorBody, ErrorCode, InstanceSpec, KeepaliveResponse, LeaseGrant, LeaseGrantRequest, LeaseId, MemberChange, ServiceInstances, ServiceList,
    WatchEvent, WriteResult, CLUSTER_SECRET_HEADER, IDEMPOTENCY_KEY_HEADER, LEADER_HEADER,
};

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
pub use watcher::{Update, Watcher};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The registry node at `node` answered with an error.
    #[error("{node}: {status} {} ({})", body.message, body.code)]
    Api { node: String, status: u16, body: ErrorBody },
    /// No node could serve the request: each node, or group of nodes, with its cause.
    #[error("no registry node could serve the request: {0}")]
    Unavailable(String),
    #[error("bad answer from {url}: {reason}")]
    Decode { url: String, reason: String },
    #[error("invalid registry URL {0:?}")]
    BadUrl(String),
    #[error("bad credentials: {0}")]
    BadCredentials(String),
}

impl Error {
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Api { status, .. } => *status >= 500,
            Error::Unavailable(_) | Error::Decode { .. } => true,
            Error::BadUrl(_) | Error::BadCredentials(_) => false,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Api { status: 404, .. })
    }
}

/// A handle on the registry; cheap to clone (clones share connections and the leader hint).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    urls: Vec<String>,
    /// For addresses given without one (`cluster_at`): `https` once a CA is set.
    scheme: &'static str,
    http: reqwest::Client,
    /// The same settings without an overall timeout, for watch streams.
    streams: reqwest::Client,
    leader: Mutex<Option<String>>,
    /// Random per client; with `seq`, makes every write's request id unique.
    id: u64,
    seq: AtomicU64,
}

/// When a failed attempt may be sent again, to another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads, keepalives and writes with a request id: any retriable failure.
    Always,
    /// Writes the registry cannot deduplicate: only when the node certainly did not run it.
    IfNotRun,
}

/// Normalises `HOST:PORT` or `http://HOST:PORT/` to `http://HOST:PORT`.
/// The root cause of a failed request, as an operator wants it: "connection refused", "no
/// answer within 2s", the TLS error, rather than reqwest's "error sending request for url".
pub fn cause(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "no answer in time (timed out)".into();
    }
    let mut deepest: &dyn std::error::Error = e;
    while let Some(next) = deepest.source() {
        deepest = next;
    }
    if let Some(io) = deepest.downcast_ref::<std::io::Error>() {
        use std::io::ErrorKind as K;
        let what = match io.kind() {
            K::ConnectionRefused => "connection refused (nothing listens there, or the node is down)".to_string(),
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => "connection reset by the node".to_string(),
            K::TimedOut => "connecting timed out".to_string(),
            K::NotFound => "host name not found".to_string(),
            _ => io.to_string(),
        };
        return what;
    }
    let text = deepest.to_string();
    if e.is_connect() {
        format!("cannot connect: {text}")
    } else {
        text
    }
}

/// An answer that is not our JSON error (an HTML page from a proxy in front, say) as one short
/// line: whitespace collapsed, cut at 200 characters.
fn one_line(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body).split_whitespace().collect::<Vec<_>>().join(" ");
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

/// `(node, cause)` pairs as one line, nodes with the same cause named together, each cause
/// where its first node was tried: "http://a, http://c: connection refused (...); http://b:
/// 503 ...".
fn by_cause(failures: &[(String, String)]) -> String {
    let mut groups: Vec<(Vec<&str>, &str)> = Vec::new();
    for (node, why) in failures {
        match groups.iter_mut().find(|(_, w)| w == why) {
            Some((nodes, _)) => nodes.push(node),
            None => groups.push((vec![node], why)),
        }
    }
    groups.iter().map(|(nodes, why)| format!("{}: {why}", nodes.join(", "))).collect::<Vec<_>>().join("; ")
}

pub fn normalize_url(raw: &str) -> Result<String, Error> {
    normalize_url_as(raw, "http")
}

/// `normalize_url`, with `scheme` for an address given without one.
pub fn normalize_url_as(raw: &str, scheme: &str) -> Result<String, Error> {
    let raw = raw.trim();
    let bad = || Error::BadUrl(raw.to_string());
    let url = if raw.contains("://") { raw.to_string() } else { format!("{scheme}://{raw}") };
    let parsed = reqwest::Url::parse(&url).map_err(|_| bad())?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad());
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// A new random token: 32 bytes, URL-safe base64 (43 characters).
pub fn generate_token() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// How to build a `Client` with credentials: `Client::builder(urls)...build()`.
pub struct Builder {
    urls: Vec<String>,
    headers: reqwest::header::HeaderMap,
    ca: Vec<reqwest::Certificate>,
    identity: Option<reqwest::Identity>,
}

/// Where a client's TLS settings come from (`--ca-file`, `--cert`, `--key`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA: `https://` nodes are verified against it, and only it.
    pub ca: Option<std::path::PathBuf>,
    /// For mutual TLS: this client's certificate and key.
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

impl TlsFiles {
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }
}

/// How a client proves itself and checks the nodes: TLS settings and an ACL token. Its
/// `Debug` never shows the token.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Access {
    pub tls: TlsFiles,
    /// A file holding the token (`--token-file`).
    pub token_file: Option<std::path::PathBuf>,
    /// The token itself (`REGISTRY_TOKEN`); `token_file` wins.
    pub token: Option<String>,
}

impl Access {
    /// How it reaches the registry, for `config check`: file paths, never a token.
    pub fn describe(&self) -> Vec<(String, String)> {
        let path = |p: &Option<std::path::PathBuf>| p.as_ref().map_or_else(|| "(none)".to_string(), |p| p.display().to_string());
        let token = match (&self.token_file, &self.token) {
            (Some(f), _) => f.display().to_string(),
            (None, Some(_)) => "(from REGISTRY_TOKEN)".to_string(),
            (None, None) => "(none)".to_string(),
        };
        vec![("ca_file".into(), path(&self.tls.ca)), ("cert".into(), path(&self.tls.cert)), ("key".into(), path(&self.tls.key)), ("token_file".into(), token)]
    }
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access").field("tls", &self.tls).field("token_file", &self.token_file).field("token", &self.token.as_ref().map(|_| "..")).finish()
    }
}

/// The access flags of every binary that talks to the registry (the CLI, the announcer, the
/// syncer), defined once.
#[cfg(feature = "clap")]
#[derive(clap::Args, Debug, Default, Clone)]
pub struct AccessArgs {
    /// The registry's CA (PEM): https:// nodes are verified against it alone, and addresses
    /// given without a scheme become https://.
    #[arg(long, env = "REGISTRY_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// A client certificate (PEM) for mutual TLS with the registry, with --key.
    #[arg(long, env = "REGISTRY_CERT_FILE", value_name = "FILE")]
    pub cert: Option<std::path::PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, env = "REGISTRY_KEY_FILE", value_name = "FILE")]
    pub key: Option<std::path::PathBuf>,
    /// A file holding the ACL token to send (`Authorization: Bearer`); or set REGISTRY_TOKEN to
    /// the token itself. Needed once the cluster has ACLs on.
    #[arg(long, env = "REGISTRY_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,
}

#[cfg(feature = "clap")]
impl AccessArgs {
    /// The flags (and REGISTRY_TOKEN), each over its config-file counterpart.
    pub fn over(&self, file: Access) -> Access {
        Access {
            tls: TlsFiles { ca: self.ca_file.clone().or(file.tls.ca), cert: self.cert.clone().or(file.tls.cert), key: self.key.clone().or(file.tls.key) },
            token_file: self.token_file.clone().or(file.token_file),
            token: std::env::var("REGISTRY_TOKEN").ok().filter(|t| !t.trim().is_empty()).or(file.token),
        }
    }
}

impl Builder {
    /// Proves membership of the cluster (`--cluster-secret-file`): needed only to change the
    /// membership. Sent on every request; never shown in logs or `Debug`.
    pub fn cluster_secret(mut self, secret: &str) -> Result<Builder, Error> {
        let mut v =
            reqwest::header::HeaderValue::from_str(secret.trim()).map_err(|_| Error::BadCredentials("the cluster secret must be visible ASCII".into()))?;
        v.set_sensitive(true);
        self.headers.insert(CLUSTER_SECRET_HEADER, v);
        Ok(self)
    }

    /// An ACL token (`--token-file`, `REGISTRY_TOKEN`), sent as `Authorization: Bearer` on
    /// every request; never shown in logs or `Debug`.
    pub fn token(mut self, token: &str) -> Result<Builder, Error> {
        let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .map_err(|_| Error::BadCredentials("the token must be visible ASCII".into()))?;
        v.set_sensitive(true);
        self.headers.insert(reqwest::header::AUTHORIZATION, v);
        Ok(self)
    }

    /// TLS settings and a token, as `Access` gives them.
    pub fn access(self, a: &Access) -> Result<Builder, Error> {
        let b = self.tls(&a.tls)?;
        match (&a.token_file, &a.token) {
            (Some(path), _) => {
                let text = std::fs::read_to_string(path).map_err(|e| Error::BadCredentials(format!("reading the token file {}: {e}", path.display())))?;
                b.token(&text)
            }
            (None, Some(t)) => b.token(t),
            (None, None) => Ok(b),
        }
    }

    /// TLS settings for `https://` nodes. Every problem names its file.
    pub fn tls(mut self, files: &TlsFiles) -> Result<Builder, Error> {
        let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| Error::BadCredentials(format!("reading {}: {e}", p.display())));
        if let Some(ca) = &files.ca {
            // A bundle may hold the old and the new CA while one replaces the other.
            self.ca = reqwest::Certificate::from_pem_bundle(&read(ca)?).map_err(|e| Error::BadCredentials(format!("{}: {e}", ca.display())))?;
            if self.ca.is_empty() {
                return Err(Error::BadCredentials(format!("{}: no PEM certificate in it", ca.display())));
            }
        }
        match (&files.cert, &files.key) {
            (Some(cert), Some(key)) => {
                let mut pem = read(key)?;
                pem.extend_from_slice(b"\n");
                pem.extend_from_slice(&read(cert)?);
                self.identity =
                    Some(reqwest::Identity::from_pem(&pem).map_err(|e| Error::BadCredentials(format!("{} and {}: {e}", cert.display(), key.display())))?);
            }
            (None, None) => {}
            _ => return Err(Error::BadCredentials("--cert and --key go together".into())),
        }
        if self.identity.is_some() && self.ca.is_empty() {
            return Err(Error::BadCredentials("--cert needs --ca-file: the nodes are verified against the cluster CA".into()));
        }
        Ok(self)
    }

    fn http(&self, overall: Option<Duration>) -> Result<reqwest::Client, Error> {
        let mut b = reqwest::Client::builder()
            .default_headers(self.headers.clone())
            // A redirect could carry credentials to another host; the registry never redirects.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_millis(500))
            .pool_idle_timeout(Duration::from_secs(30));
        if let Some(t) = overall {
            b = b.timeout(t);
        }
        if !self.ca.is_empty() {
            // The cluster's own CA only: a public CA has no say over who is a registry node.
            b = b.tls_built_in_root_certs(false);
            for ca in &self.ca {
                b = b.add_root_certificate(ca.clone());
            }
        }
        if let Some(id) = &self.identity {
            b = b.identity(id.clone());
        }
        b.build().map_err(|e| Error::Unavailable(e.to_string()))
    }

    pub fn build(self) -> Result<Client, Error> {
        // With the cluster CA given, an address without a scheme is an https one.
        let scheme = if self.ca.is_empty() { "http" } else { "https" };
        let urls: Vec<String> = self.urls.iter().map(|u| normalize_url_as(u, scheme)).collect::<Result<_, _>>()?;
        if self.ca.is_empty() {
            if let Some(u) = urls.iter().find(|u| u.starts_with("https://")) {
                return Err(Error::BadCredentials(format!("{u}: an https:// registry needs --ca-file (the cluster CA)")));
            }
        } else if let Some(u) = urls.iter().find(|u| u.starts_with("http://")) {
            // Credentials in clear beside a CA is a mistake, not a choice.
            return Err(Error::BadCredentials(format!("{u}: plain http:// while --ca-file is given; use https:// (or no scheme)")));
        }
        let http = self.http(Some(Duration::from_secs(10)))?;
        // No overall timeout: a watch stream is long-lived; `Watch::next` bounds each read.
        let streams = self.http(None)?;
        let id = rand::random::<u64>();
        Ok(Client { inner: Arc::new(Inner { urls, scheme, http, streams, leader: Mutex::new(None), id, seq: AtomicU64::new(0) }) })
    }
}

impl Client {
    /// `urls` are node base URLs (`http://host:port` or `host:port`); a single string may also
    /// hold several, comma-separated.
    pub fn new<S: AsRef<str>>(urls: &[S]) -> Result<Client, Error> {
        Client::builder(urls)?.build()
    }

    /// Like `new`, with credentials to add before `build`.
    pub fn builder<S: AsRef<str>>(urls: &[S]) -> Result<Builder, Error> {
        let urls: Vec<String> =
            urls.iter().flat_map(|u| u.as_ref().split(',').map(str::to_string).collect::<Vec<_>>()).filter(|u| !u.trim().is_empty()).collect();
        if urls.is_empty() {
            return Err(Error::BadUrl(String::new()));
        }
        // Checked now, so a bad address is reported before any credentials are read.
        for u in &urls {
            normalize_url(u)?;
        }
        Ok(Builder { urls, headers: reqwest::header::HeaderMap::new(), ca: Vec::new(), identity: None })
    }

    pub fn urls(&self) -> &[String] {
        &self.inner.urls
    }

    /// A fresh request id for one logical write.
    fn request_id(&self) -> String {
        format!("{:016x}-{}", self.inner.id, self.inner.seq.fetch_add(1, Ordering::Relaxed))
    }

    /// The nodes to try: the known leader first, unless the read is stale (then the nodes in
    /// the order given, so a stale read stays on the node the caller named first).
    fn order(&self, leader_first: bool) -> Vec<String> {
        let mut out = Vec::with_capacity(self.inner.urls.len() + 1);
        if leader_first {
            if let Some(l) = self.inner.leader.lock().unwrap().clone() {
                out.push(l);
            }
        }
        for u in &self.inner.urls {
            if !out.contains(u) {
                out.push(u.clone());
            }
        }
        out
    }

    /// A read, or a write that is safe to repeat.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        timeout: Option<Duration>,
    ) -> Result<T, Error> {
        self.send(method, path, body, timeout, None, Retry::Always).await
    }

    /// A lease or instance write: one request id for every attempt.
    async fn write<T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<&(impl Serialize + ?Sized)>) -> Result<T, Error> {
        let id = self.request_id();
        self.send(method, path, body, None, Some(&id), Retry::Always).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        timeout: Option<Duration>,
        request_id: Option<&str>,
        retry: Retry,
    ) -> Result<T, Error> {
        // Every node's failure, so the operator sees each node's cause, not only the last.
        let mut failures: Vec<(String, String)> = Vec::new();
        for base in self.order(!path.contains("stale=true")) {
            let mut req = self.inner.http.request(method.clone(), format!("{base}{path}"));
            if let Some(b) = body {
                req = req.json(b);
            }
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            if let Some(id) = request_id {
                req = req.header(IDEMPOTENCY_KEY_HEADER, id);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    self.forget_leader(&base);
                    if retry == Retry::IfNotRun && !e.is_connect() {
                        return Err(Error::Unavailable(format!("{base}: {} (not retried: it may have been applied)", cause(&e))));
                    }
                    failures.push((base, cause(&e)));
                    continue;
                }
            };
            // A hint in another scheme than ours is not followed: it would downgrade to http.
            if let Some(l) = resp.headers().get(LEADER_HEADER).and_then(|v| v.to_str().ok()).filter(|l| l.starts_with(&format!("{}://", self.inner.scheme))) {
                *self.inner.leader.lock().unwrap() = Some(l.to_string());
            }
            let status = resp.status();
            let bytes = match resp.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    if retry == Retry::IfNotRun {
                        return Err(Error::Unavailable(format!("{base}: {} (not retried: it may have been applied)", cause(&e))));
                    }
                    failures.push((base, cause(&e)));
                    continue;
                }
            };
            if status.is_success() {
                return serde_json::from_slice(&bytes).map_err(|e| Error::Decode { url: format!("{base}{path}"), reason: e.to_string() });
            }
            let err = match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => Error::Api { node: base.clone(), status: status.as_u16(), body },
                Err(_) => Error::Api { node: base.clone(), status: status.as_u16(), body: ErrorBody { code: ErrorCode::Unknown, message: one_line(&bytes) } },
            };
            if status == StatusCode::SERVICE_UNAVAILABLE {
                // "no_leader" is answered before anything runs; any other 503 (a timed-out
                // commit, a failed forward) may hide a write that still applies.
                let not_run = matches!(&err, Error::Api { body, .. } if body.code == ErrorCode::NoLeader);
                if let Error::Api { body, .. } = &err {
                    failures.push((base.clone(), format!("503 {} ({})", body.message, body.code)));
                }
                self.forget_leader(&base);
                if retry == Retry::IfNotRun && !not_run {
                    return Err(err);
                }
                continue;
            }
            return Err(err);
        }
        Err(Error::Unavailable(if failures.is_empty() { "no node tried".into() } else { by_cause(&failures) }))
    }

    fn forget_leader(&self, base: &str) {
        let mut l = self.inner.leader.lock().unwrap();
        if l.as_deref() == Some(base) {
            *l = None;
        }
    }

    pub async fn grant(&self, ttl: Duration) -> Result<LeaseGrant, Error> {
        self.write(Method::POST, "/v1/leases", Some(&LeaseGrantRequest { ttl_ms: ttl.as_millis() as u64 })).await
    }

    /// Grants a lease and puts `instances` under it in one durable write (`POST /v1/register`).
    pub async fn register(&self, ttl: Duration, instances: Vec<proto::RegisterInstance>) -> Result<LeaseGrant, Error> {
        self.write(Method::POST, "/v1/register", Some(&proto::RegisterRequest { ttl_ms: ttl.as_millis() as u64, instances })).await
    }

    pub async fn keepalive(&self, lease: LeaseId) -> Result<KeepaliveResponse, Error> {
        // Short: a paused or cut-off node must not eat the lease's TTL; the next node is tried.
        self.call(Method::POST, &format!("/v1/leases/{lease}/keepalive"), None::<&()>, Some(Duration::from_secs(1))).await
    }

    pub async fn revoke(&self, lease: LeaseId) -> Result<WriteResult, Error> {
        self.write(Method::DELETE, &format!("/v1/leases/{lease}"), None::<&()>).await
    }

    pub async fn put_instance(&self, service: &str, instance: &str, spec: &InstanceSpec) -> Result<WriteResult, Error> {
        self.write(Method::PUT, &format!("/v1/services/{service}/instances/{instance}"), Some(spec)).await
    }

    pub async fn delete_instance(&self, service: &str, instance: &str) -> Result<WriteResult, Error> {
        self.write(Method::DELETE, &format!("/v1/services/{service}/instances/{instance}"), None::<&()>).await
    }

    pub async fn services(&self, stale: bool) -> Result<ServiceList, Error> {
        self.call(Method::GET, &format!("/v1/services?stale={stale}"), None::<&()>, None).await
    }

    /// The most recent instance removals and their causes, oldest first.
    pub async fn removals(&self, stale: bool) -> Result<proto::RemovalList, Error> {
        self.call(Method::GET, &format!("/v1/removals?stale={stale}"), None::<&()>, None).await
    }

    pub async fn service(&self, service: &str, stale: bool) -> Result<ServiceInstances, Error> {
        self.call(Method::GET, &format!("/v1/services/{service}?stale={stale}"), None::<&()>, None).await
    }

    /// Consul-style blocking query: answers once the service's index passes `index`, or after `wait`.
    pub async fn service_after(&self, service: &str, index: u64, wait: Duration) -> Result<ServiceInstances, Error> {
        let path = format!("/v1/services/{service}?index={index}&wait={}ms", wait.as_millis());
        self.call(Method::GET, &path, None::<&()>, Some(wait + Duration::from_secs(5))).await
    }

    /// The cluster as the first node that answers sees it.
    /// A backup of the registry's state (admin): `registry snapshot save` writes it to a file.
    pub async fn snapshot(&self) -> Result<proto::SnapshotDocument, Error> {
        self.call(Method::GET, "/v1/snapshot", None::<&()>, None).await
    }

    pub async fn cluster(&self) -> Result<ClusterInfo, Error> {
        self.call(Method::GET, "/v1/cluster", None::<&()>, None).await
    }

    /// A GET of `path` on the node at `base` alone, with a short deadline: its URL and answer.
    async fn get_at(&self, base: &str, path: &str) -> Result<(String, reqwest::Response), Error> {
        let base = normalize_url_as(base, self.inner.scheme)?;
        let resp = self
            .inner
            .http
            .get(format!("{base}{path}"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map_err(|e| Error::Unavailable(format!("{base}: {}", cause(&e))))?;
        Ok((base, resp))
    }

    /// The cluster as one particular node sees it.
    pub async fn cluster_at(&self, base: &str) -> Result<ClusterInfo, Error> {
        let (base, resp) = self.get_at(base, "/v1/cluster").await?;
        let status = resp.status();
        if !status.is_success() {
            // An answer that is not the state (401, 403, ...) is that answer, not a garbled one.
            let bytes = resp.bytes().await.unwrap_or_default();
            let body = serde_json::from_slice::<ErrorBody>(&bytes).unwrap_or_else(|_| ErrorBody { code: ErrorCode::Unknown, message: one_line(&bytes) });
            return Err(Error::Api { node: base, status: status.as_u16(), body });
        }
        resp.json().await.map_err(|e| Error::Decode { url: base, reason: e.to_string() })
    }

    /// Whether the node at `base` is ready (`/readyz`: a member that knows a leader, with its
    /// ACLs applied); `Ok(Err(reason))` when it answers that it is not.
    pub async fn ready_at(&self, base: &str) -> Result<Result<(), String>, Error> {
        let (_, resp) = self.get_at(base, "/readyz").await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(Ok(()));
        }
        let body = resp.text().await.unwrap_or_default();
        Ok(Err(format!("{status}: {}", body.trim())))
    }

    /// Creates an ACL token from a secret the caller made (`generate_token`); admin only.
    pub async fn create_token(&self, token: &str, scopes: &[String], description: &str) -> Result<proto::TokenCreated, Error> {
        let body = proto::TokenCreateRequest { token: token.to_string(), scopes: scopes.to_vec(), description: description.to_string() };
        self.write(Method::POST, "/v1/acl/tokens", Some(&body)).await
    }

    pub async fn tokens(&self) -> Result<proto::TokenList, Error> {
        self.call(Method::GET, "/v1/acl/tokens", None::<&()>, None).await
    }

    pub async fn revoke_token(&self, id: u64) -> Result<WriteResult, Error> {
        self.write(Method::DELETE, &format!("/v1/acl/tokens/{id}"), None::<&()>).await
    }

    pub async fn add_member(&self, id: u64, addr: &str) -> Result<WriteResult, Error> {
        let body = MemberChange { id, addr: Some(addr.to_string()) };
        self.send(Method::POST, "/v1/cluster/members", Some(&body), Some(Duration::from_secs(120)), None, Retry::IfNotRun).await
    }

    pub async fn remove_member(&self, id: u64) -> Result<WriteResult, Error> {
        self.send(Method::DELETE, &format!("/v1/cluster/members/{id}"), None::<&()>, Some(Duration::from_secs(120)), None, Retry::IfNotRun).await
    }

    /// Opens a watch stream on the first node that accepts it. Prefer `Watcher`, which
    /// resumes broken streams without losing or splitting a revision.
    pub async fn watch(&self, service: Option<&str>, since: Option<u64>) -> Result<Watch, Error> {
        self.watch_from(service, since, 0).await.map(|(w, _)| w)
    }

    /// `watch`, trying the nodes in order from the `start`th; also returns which one answered.
    async fn watch_from(&self, service: Option<&str>, since: Option<u64>, start: usize) -> Result<(Watch, usize), Error> {
        let mut query = Vec::new();
        if let Some(s) = service {
            query.push(format!("service={s}"));
        }
        if let Some(r) = since {
            query.push(format!("since={r}"));
        }
        let path = format!("/v1/watch?{}", query.join("&"));
        let mut last = String::new();
        let urls = self.urls();
        for k in 0..urls.len() {
            let i = (start + k) % urls.len();
            let base = &urls[i];
            // `Watch::next` bounds each read. The answer's head is bounded too, or a paused node
            // (whose kernel still accepts) holds us.
            match tokio::time::timeout(STALL, self.inner.streams.get(format!("{base}{path}")).send()).await {
                Ok(Ok(r)) if r.status().is_success() => return Ok((Watch { resp: r, buf: Vec::new(), url: base.clone() }, i)),
                Ok(Ok(r)) => last = format!("{base}: {}", r.status()),
                Ok(Err(e)) => last = format!("{base}: {}", cause(&e)),
                Err(_) => last = format!("{base}: no answer within {STALL:?}"),
            }
        }
        Err(Error::Unavailable(last))
    }
}

/// A watch stream. The server sends a `progress` line every second, so a read that waits
/// longer than `STALL` means the node is gone (paused, cut off) and the caller should resume
/// elsewhere.
pub struct Watch {
    resp: reqwest::Response,
    buf: Vec<u8>,
    url: String,
}

pub(crate) const STALL: Duration = Duration::from_millis(2500);

impl Watch {
    /// The next event; `Ok(None)` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<WatchEvent>, Error> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return serde_json::from_slice(&line[..pos]).map(Some).map_err(|e| Error::Decode { url: self.url.clone(), reason: e.to_string() });
            }
            match tokio::time::timeout(STALL, self.resp.chunk()).await {
                Err(_) => return Err(Error::Unavailable(format!("{}: watch stream stalled", self.url))),
                Ok(Err(e)) => return Err(Error::Unavailable(format!("{}: {e}", self.url))),
                Ok(Ok(None)) => return Ok(None),
                Ok(Ok(Some(chunk))) => self.buf.extend_from_slice(&chunk),
            }
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_normalized_or_rejected() {
        assert_eq!(normalize_url("127.0.0.1:7401").unwrap(), "http://127.0.0.1:7401");
        assert_eq!(normalize_url(" http://node-1:7401/ ").unwrap(), "http://node-1:7401");
        for bad in ["", "http://", "ftp://x:1", "http:// :1"] {
            assert!(normalize_url(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn errors_name_the_root_cause_of_every_node() {
        // Two ports that were free a moment ago: nothing listens there.
        let ports: Vec<u16> = (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).collect();
        let urls: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let e = Client::new(&urls).unwrap().services(true).await.unwrap_err().to_string();
        // One line: both nodes named, their shared cause said once.
        let both = format!("http://127.0.0.1:{}, http://127.0.0.1:{}: connection refused", ports[0], ports[1]);
        assert!(e.contains(&both) && e.matches("connection refused").count() == 1 && !e.contains('\n'), "{e}");
        assert!(!e.contains("error sending request"), "{e}");
    }

    #[test]
    fn a_body_that_is_not_json_becomes_one_short_line() {
        assert_eq!(one_line(b"<html>\n  <body>502 Bad Gateway</body>\n</html>\n"), "<html> <body>502 Bad Gateway</body> </html>");
        let long = one_line("x ".repeat(500).as_bytes());
        assert!(long.len() <= 203 && long.ends_with("...") && !long.contains('\n'), "{long}");
    }

    #[test]
    fn failures_are_grouped_by_cause_in_the_order_tried() {
        let f = |n: &str, w: &str| (n.to_string(), w.to_string());
        let line = by_cause(&[f("http://a", "refused"), f("http://b", "503 no leader"), f("http://c", "refused")]);
        assert_eq!(line, "http://a, http://c: refused; http://b: 503 no leader");
    }
}
