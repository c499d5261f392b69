//! The Data Plane API over HTTP: the base URL and its version, basic auth, one request, the
//! mapping of a failed answer to `DriverError`, the paths of the v3 and v2 server endpoints, and
//! the reads whose answers need parsing. It keeps no state about HAProxy.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use crate::config::DataplaneVersion;
use crate::driver::DriverError;

/// Timeout of one HTTP request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Path segments and query of one endpoint.
pub(super) type ApiPath<'a> = (Vec<&'a str>, Vec<(&'static str, String)>);

/// Current sessions and the stats' weight of each server of a backend.
pub(super) type ServerStats = HashMap<String, (u64, Option<u32>)>;

/// One HTTP answer.
pub(super) struct Answer {
    pub(super) status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    pub(super) fn json(&self) -> Result<Value, DriverError> {
        serde_json::from_slice(&self.body).map_err(|e| DriverError::Protocol(format!("answer is not JSON ({e}): {}", self.text())))
    }

    pub(super) fn text(&self) -> String {
        let t = String::from_utf8_lossy(&self.body);
        t.chars().take(300).collect()
    }

    /// The error body's message, or the raw text.
    pub(super) fn message(&self) -> String {
        match serde_json::from_slice::<Value>(&self.body) {
            Ok(v) => v.get("message").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| self.text()),
            Err(_) => self.text(),
        }
    }

    pub(super) fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
    }

    pub(super) fn config_version(&self) -> Option<i64> {
        self.header("Configuration-Version").and_then(|v| v.trim().parse().ok())
    }

    /// The usual mapping of a failed answer: 5xx is the API's trouble (try later), 4xx a refusal.
    pub(super) fn error(&self, what: &str) -> DriverError {
        let msg = format!("{what}: {} {}", self.status.as_u16(), self.message());
        if self.status.is_server_error() {
            DriverError::Unreachable(msg)
        } else {
            DriverError::Refused(msg)
        }
    }
}

/// The HTTP side of the Data Plane API.
pub(super) struct ApiClient {
    http: reqwest::Client,
    /// Base URL including `/v3` or `/v2`.
    pub(super) base: Url,
    version: DataplaneVersion,
    user: Option<String>,
    password: Option<String>,
}

impl ApiClient {
    /// `url` is the API's address (`http://HOST:PORT`, with or without the `/v3` or `/v2` base
    /// path).
    pub(super) fn new(url: &str, version: DataplaneVersion, auth: crate::config::DataplaneAuth) -> anyhow::Result<ApiClient> {
        let crate::config::DataplaneAuth { user, password, ca_file } = auth;
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
        let mut http = reqwest::Client::builder().timeout(REQUEST_TIMEOUT);
        if let Some(ca) = &ca_file {
            let pem = std::fs::read(ca).map_err(|e| anyhow::anyhow!("--dataplane-ca-file {}: {e}", ca.display()))?;
            http = http.tls_built_in_root_certs(false);
            for c in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| anyhow::anyhow!("--dataplane-ca-file {}: {e}", ca.display()))? {
                http = http.add_root_certificate(c);
            }
        }
        if user.is_some() && base.scheme() == "http" && base.host_str().is_some_and(|h| h != "127.0.0.1" && h != "localhost" && h != "::1") {
            tracing::warn!(url = %base, "sending Data Plane API credentials over plain http to another host; use https://");
        }
        Ok(ApiClient { http: http.build()?, base, version, user, password })
    }

    /// GET that must answer 200 with JSON; anything else is an error saying `what` failed.
    pub(super) async fn get_json(&self, segments: &[&str], query: &[(&str, String)], what: &str) -> Result<Value, DriverError> {
        let a = self.call(Method::GET, segments, query, None).await?;
        if a.status != StatusCode::OK {
            return Err(a.error(what));
        }
        a.json()
    }

    pub(super) async fn call(&self, method: Method, segments: &[&str], query: &[(&str, String)], body: Option<&Value>) -> Result<Answer, DriverError> {
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
        let resp = req.send().await.map_err(|e| DriverError::Unreachable(format!("{method} {}: {}", url.path(), client::cause(&e))))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(|e| DriverError::Unreachable(format!("{method} {}: {}", url.path(), client::cause(&e))))?.to_vec();
        tracing::debug!(%method, path = url.path(), status = status.as_u16(), "data plane API");
        Ok(Answer { status, headers, body })
    }

    pub(super) fn v3(&self) -> bool {
        self.version == DataplaneVersion::V3
    }

    /// Path and query of the runtime servers of `backend` (optionally one of them).
    pub(super) fn runtime_path<'a>(&self, backend: &'a str, name: Option<&'a str>) -> ApiPath<'a> {
        self.servers_path("runtime", backend, name)
    }

    /// Path and query of the configuration servers of `backend` (optionally one of them).
    pub(super) fn config_path<'a>(&self, backend: &'a str, name: Option<&'a str>) -> ApiPath<'a> {
        self.servers_path("configuration", backend, name)
    }

    /// v3 nests servers under their backend; v2 names the backend in the query.
    fn servers_path<'a>(&self, section: &'a str, backend: &'a str, name: Option<&'a str>) -> ApiPath<'a> {
        let (mut p, q) = if self.v3() {
            (vec!["services", "haproxy", section, "backends", backend, "servers"], vec![])
        } else {
            (vec!["services", "haproxy", section, "servers"], vec![("backend", backend.to_string())])
        };
        p.extend(name);
        (p, q)
    }

    // ----- reading -----

    pub(super) async fn read_runtime(&self, backend: &str) -> Result<Vec<Value>, DriverError> {
        let (path, query) = self.runtime_path(backend, None);
        match self.get_json(&path, &query, &format!("reading runtime servers of {backend}")).await? {
            Value::Array(items) => Ok(items),
            Value::Null => Ok(vec![]),
            other => Err(DriverError::Protocol(format!("runtime servers: expected an array, got {other}"))),
        }
    }

    /// Configuration servers of `backend` (in `tx` if given), and the version the answer carries.
    pub(super) async fn read_config(&self, backend: &str, tx: Option<&str>) -> Result<(BTreeMap<String, Value>, Option<i64>), DriverError> {
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
    pub(super) async fn read_stats(&self, backend: &str) -> Result<ServerStats, DriverError> {
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

    /// The configuration's current version.
    pub(super) async fn read_version(&self) -> Result<i64, DriverError> {
        // Not `get_json`: the version may come in the header rather than the body.
        let a = self.call(Method::GET, &["services", "haproxy", "configuration", "version"], &[], None).await?;
        if a.status != StatusCode::OK {
            return Err(a.error("reading the configuration version"));
        }
        a.json()?.as_i64().or(a.config_version()).ok_or_else(|| DriverError::Protocol(format!("configuration version: {}", a.text())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_gets_the_version_path() {
        let d = ApiClient::new("http://127.0.0.1:5555/v3/", DataplaneVersion::V3, Default::default()).unwrap();
        assert_eq!(d.base.as_str(), "http://127.0.0.1:5555/v3");
        let d = ApiClient::new("http://127.0.0.1:5555", DataplaneVersion::V2, Default::default()).unwrap();
        assert_eq!(d.base.as_str(), "http://127.0.0.1:5555/v2");
    }
}
