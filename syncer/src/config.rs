//! Syncer settings: flags (with environment variables) over a TOML file over defaults. Every
//! problem is reported at once, each naming its field.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use crate::breaker::Limits;
use crate::reconcile::{Mapping, Settings};

pub use runtime::logs::LogFormat;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DataplaneVersion {
    V2,
    #[default]
    V3,
}

/// Kept after startup: SIGHUP resolves them again, with the config file read anew.
#[derive(Debug, Args, Default, Clone)]
pub struct RunArgs {
    /// TOML file with any of the settings below (names with `_` for `-`); flags override it.
    #[arg(long, env = "SYNCER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Registry nodes, comma-separated (`http://HOST:PORT`); any node will do.
    #[arg(long, env = "REGISTRY_ADDR", value_delimiter = ',')]
    pub registry: Vec<String>,
    #[command(flatten)]
    pub access: client::AccessArgs,
    /// Read ephemeral znodes from this ZooKeeper (`HOST:PORT[,HOST:PORT]`) instead.
    #[arg(long, env = "SYNCER_ZOOKEEPER")]
    pub zookeeper: Option<String>,
    /// HAProxy Runtime API: a unix socket path, or `tcp:HOST:PORT`.
    #[arg(long, env = "SYNCER_HAPROXY_SOCKET")]
    pub haproxy_socket: Option<String>,
    /// HAProxy Data Plane API base URL (instead of the Runtime API).
    #[arg(long, env = "SYNCER_DATAPLANE_URL")]
    pub dataplane_url: Option<String>,
    /// Which Data Plane API the --dataplane-url speaks (its URL layout and models).
    #[arg(long, env = "SYNCER_DATAPLANE_VERSION", value_enum)]
    pub dataplane_version: Option<DataplaneVersion>,
    /// Data Plane API basic-auth user.
    #[arg(long, env = "SYNCER_DATAPLANE_USER")]
    pub dataplane_user: Option<String>,
    /// File holding the Data Plane API basic-auth password (never a flag value: `ps` shows
    /// those); or set SYNCER_DATAPLANE_PASSWORD.
    #[arg(long, env = "SYNCER_DATAPLANE_PASSWORD_FILE", value_name = "FILE")]
    pub dataplane_password_file: Option<PathBuf>,
    /// CA (PEM) to verify an https:// Data Plane API against, instead of the system's roots.
    #[arg(long, env = "SYNCER_DATAPLANE_CA_FILE", value_name = "FILE")]
    pub dataplane_ca_file: Option<PathBuf>,
    /// `SERVICE[=HAPROXY_BACKEND]`; repeat for several (the backend defaults to the service name).
    #[arg(long = "backend", env = "SYNCER_BACKEND", value_delimiter = ',')]
    pub backends: Vec<String>,
    /// What follows the address in the `add server` line of every server the syncer adds:
    /// HAProxy's own health check and its timings [default: "check inter 1s fall 2 rise 1"].
    #[arg(long, env = "SYNCER_SERVER_OPTIONS")]
    pub server_options: Option<String>,
    /// Where the last-known-good desired state is kept (applied at start if the source is
    /// down) [default: none: nothing is saved, and a start without a source changes nothing].
    #[arg(long, env = "SYNCER_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Never remove servers below this many per backend because of a source answer [default: 1].
    #[arg(long, env = "SYNCER_MIN_SERVERS")]
    pub min_servers: Option<usize>,
    /// Most of a backend removed per --breaker-window, as a fraction [default: 0.5].
    #[arg(long, env = "SYNCER_MAX_REMOVE_FRACTION")]
    pub max_remove_fraction: Option<f64>,
    /// The window over which --max-remove-fraction counts a backend's removals [default: 10s].
    #[arg(long, env = "SYNCER_BREAKER_WINDOW", value_parser = humantime::parse_duration)]
    pub breaker_window: Option<Duration>,
    /// Changes arriving within this window are applied together [default: 50ms].
    #[arg(long, env = "SYNCER_BATCH", value_parser = humantime::parse_duration)]
    pub batch: Option<Duration>,
    /// A removed server's connections get this long to finish before it is deleted [default: 30s].
    #[arg(long, env = "SYNCER_DRAIN_TIMEOUT", value_parser = humantime::parse_duration)]
    pub drain_timeout: Option<Duration>,
    /// Re-check HAProxy (restarts, drift) at least this often [default: 250ms].
    #[arg(long, env = "SYNCER_RESYNC", value_parser = humantime::parse_duration)]
    pub resync: Option<Duration>,
    /// With no source at start, apply the saved state after this long [default: 2s].
    #[arg(long, env = "SYNCER_SOURCE_WAIT", value_parser = humantime::parse_duration)]
    pub source_wait: Option<Duration>,
    /// With --zookeeper: the session timeout asked of ZooKeeper; a session that expires (this
    /// long without contact) is replaced and every backend re-read [default: 10s].
    #[arg(long, env = "SYNCER_ZOOKEEPER_SESSION_TIMEOUT", value_parser = humantime::parse_duration)]
    pub zookeeper_session_timeout: Option<Duration>,
    /// ZooKeeper mode: a file holding `USER:PASSWORD`, the digest identity to read with (the
    /// announcers' `--zookeeper-auth-file`).
    #[arg(long, env = "SYNCER_ZOOKEEPER_AUTH_FILE", value_name = "FILE")]
    pub zookeeper_auth_file: Option<PathBuf>,
    /// Serve /healthz and /metrics on this address, or `off`. Keep it on loopback: it has no
    /// authentication [default: 127.0.0.1:9480].
    #[arg(long, env = "SYNCER_ADMIN", value_name = "IP:PORT|off")]
    pub admin: Option<proto::admin::AdminListen>,
    /// Name this syncer reports its progress under in the registry [default: the host name].
    #[arg(long, env = "SYNCER_ID")]
    pub id: Option<String>,
    /// Log format: `text` for people, `json` (one object per line) for log pipelines
    /// [default: text].
    #[arg(long, env = "SYNCER_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log level: error, warn, info, debug or trace, or directives like `info,openraft=warn`;
    /// over RUST_LOG [default: info].
    #[arg(long, env = "SYNCER_LOG_LEVEL", value_parser = runtime::logs::parse_level)]
    pub log_level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    registry: Option<runtime::config::StringList>,
    ca_file: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    token_file: Option<PathBuf>,
    zookeeper: Option<String>,
    haproxy_socket: Option<String>,
    dataplane_url: Option<String>,
    dataplane_version: Option<DataplaneVersion>,
    dataplane_user: Option<String>,
    dataplane_password_file: Option<PathBuf>,
    dataplane_ca_file: Option<PathBuf>,
    /// `backend`, as the flag; `backends` is the name earlier versions read.
    #[serde(alias = "backends")]
    backend: Option<runtime::config::StringList>,
    server_options: Option<String>,
    state_dir: Option<PathBuf>,
    min_servers: Option<usize>,
    max_remove_fraction: Option<f64>,
    #[serde(default, with = "humantime_serde")]
    breaker_window: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    batch: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    drain_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    resync: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    source_wait: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    zookeeper_session_timeout: Option<Duration>,
    zookeeper_auth_file: Option<PathBuf>,
    admin: Option<String>,
    id: Option<String>,
    log_format: Option<LogFormat>,
    log_level: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Node URLs, and how to reach them (TLS, token).
    Registry(Vec<String>, client::Access),
    Zookeeper {
        connect: String,
        session_timeout: Duration,
        /// `--zookeeper-auth-file`, read.
        auth: Option<proto::ZkDigest>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Unix socket path or `tcp:HOST:PORT`.
    Runtime {
        endpoint: String,
        server_options: String,
    },
    Dataplane {
        url: String,
        version: DataplaneVersion,
        auth: DataplaneAuth,
        server_options: String,
    },
}

/// How the syncer proves itself to the Data Plane API and checks it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct DataplaneAuth {
    pub user: Option<String>,
    pub password: Option<String>,
    pub ca_file: Option<PathBuf>,
}

/// The password never reaches a log (the syncer logs its config at startup).
impl std::fmt::Debug for DataplaneAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataplaneAuth")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| ".."))
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub source: Source,
    pub target: Target,
    pub settings: Settings,
    pub state_dir: Option<PathBuf>,
    pub admin: Option<SocketAddr>,
    /// `admin` is the default, not asked for: if its port is taken the process runs without
    /// it (with a warning) instead of refusing to start.
    pub admin_default: bool,
    pub id: String,
    pub log_format: LogFormat,
    /// `--log-level` or `log_level`, checked; `None`: RUST_LOG or the default.
    pub log_level: Option<String>,
}

impl Config {
    /// The effective settings, for `syncer config check`: keys as in the file, secrets as the
    /// paths they are read from (`password_file` is the flag's, when one was given).
    pub fn effective(&self, password_file: Option<&std::path::Path>) -> Vec<(String, String)> {
        use runtime::config::or_none;
        let mut out: Vec<(String, String)> = Vec::new();
        let mut put = |k: &str, v: String| out.push((k.to_string(), v));
        match &self.source {
            Source::Registry(urls, access) => {
                put("registry", urls.join(","));
                for (k, v) in access.describe() {
                    put(&k, v);
                }
            }
            Source::Zookeeper { connect, session_timeout, auth } => {
                put("zookeeper", connect.clone());
                put("zookeeper_session_timeout", humantime::format_duration(*session_timeout).to_string());
                put("zookeeper_auth", if auth.is_some() { "(from zookeeper_auth_file)".into() } else { "(none)".into() });
            }
        }
        match &self.target {
            Target::Runtime { endpoint, server_options } => {
                put("haproxy_socket", endpoint.clone());
                put("server_options", server_options.clone());
            }
            Target::Dataplane { url, version, auth, server_options } => {
                put("dataplane_url", url.clone());
                put("dataplane_version", format!("{version:?}").to_lowercase());
                put("dataplane_user", or_none(auth.user.clone()));
                put("dataplane_password_file", or_none(password_file.map(|p| p.display().to_string())));
                put("dataplane_ca_file", or_none(auth.ca_file.as_ref().map(|p| p.display().to_string())));
                put("server_options", server_options.clone());
            }
        }
        put("backend", self.settings.mappings.iter().map(|m| format!("{}={}", m.service, m.backend)).collect::<Vec<_>>().join(","));
        put("min_servers", self.settings.limits.min_servers.to_string());
        put("max_remove_fraction", self.settings.limits.max_fraction.to_string());
        put("breaker_window", humantime::format_duration(self.settings.limits.window).to_string());
        put("batch", humantime::format_duration(self.settings.batch).to_string());
        put("drain_timeout", humantime::format_duration(self.settings.drain_timeout).to_string());
        put("resync", humantime::format_duration(self.settings.resync).to_string());
        put("source_wait", humantime::format_duration(self.settings.source_wait).to_string());
        put("state_dir", or_none(self.state_dir.as_ref().map(|p| p.display().to_string())));
        put("admin", or_none(self.admin).replace("(none)", "off"));
        put("id", self.id.clone());
        put("log_format", format!("{:?}", self.log_format).to_lowercase());
        put("log_level", or_none(self.log_level.clone()));
        out
    }
}

pub const DEFAULT_SERVER_OPTIONS: &str = "check inter 1s fall 2 rise 1";

/// Parses `SERVICE[=BACKEND]`.
pub fn parse_mapping(raw: &str) -> Result<Mapping, String> {
    let (service, backend) = match raw.split_once('=') {
        Some((s, b)) => (s.trim(), b.trim()),
        None => (raw.trim(), raw.trim()),
    };
    proto::validate::service_name(service)?;
    if backend.is_empty() || !backend.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')) {
        return Err(format!("HAProxy backend name {backend:?} is not valid"));
    }
    Ok(Mapping { service: service.to_string(), backend: backend.to_string() })
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_string()).ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "syncer".into())
}

impl RunArgs {
    pub fn resolve(self) -> Result<Config, Vec<String>> {
        let mut errors = Vec::new();
        let file = match &self.config {
            None => FileConfig::default(),
            Some(path) => {
                match std::fs::read_to_string(path).map_err(|e| e.to_string()).and_then(|t| toml::from_str::<FileConfig>(&t).map_err(|e| e.to_string())) {
                    Ok(f) => f,
                    Err(e) => return Err(vec![format!("config file {}: {e}", path.display())]),
                }
            }
        };
        let registry = if self.registry.is_empty() { file.registry.map(|l| l.into_vec()).unwrap_or_default() } else { self.registry };
        let zookeeper = self.zookeeper.or(file.zookeeper);
        let session_timeout = self.zookeeper_session_timeout.or(file.zookeeper_session_timeout).unwrap_or(Duration::from_secs(10));
        let access = self.access.over(client::Access {
            tls: client::TlsFiles { ca: file.ca_file, cert: file.cert, key: file.key },
            token_file: file.token_file,
            token: None,
        });
        let source = match (registry.is_empty(), zookeeper) {
            (false, None) => {
                if let Err(e) = client::Client::builder(&registry).and_then(|b| b.access(&access)).and_then(|b| b.build()) {
                    errors.push(format!("registry: {e}"));
                }
                Some(Source::Registry(registry, access))
            }
            (true, Some(connect)) => {
                let auth = self.zookeeper_auth_file.or(file.zookeeper_auth_file).and_then(|path| {
                    let read = std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()));
                    match read.and_then(|t| proto::ZkDigest::parse(&t).map_err(|e| format!("{}: {e}", path.display()))) {
                        Ok(d) => Some(d),
                        Err(e) => {
                            errors.push(format!("zookeeper-auth-file: {e}"));
                            None
                        }
                    }
                });
                Some(Source::Zookeeper { connect, session_timeout, auth })
            }
            (false, Some(_)) => {
                errors.push("registry: give either --registry or --zookeeper, not both".into());
                None
            }
            (true, None) => {
                errors.push("registry: missing (--registry URLS or REGISTRY_ADDR, or --zookeeper HOST:PORT)".into());
                None
            }
        };
        let server_options = self.server_options.or(file.server_options).unwrap_or_else(|| DEFAULT_SERVER_OPTIONS.into());
        let target = match (self.haproxy_socket.or(file.haproxy_socket), self.dataplane_url.or(file.dataplane_url)) {
            (Some(endpoint), None) => Some(Target::Runtime { endpoint, server_options }),
            (None, Some(url)) => {
                if reqwest::Url::parse(&url).is_err() {
                    errors.push(format!("dataplane-url: {url:?} is not a URL"));
                }
                let password = match self.dataplane_password_file.or(file.dataplane_password_file) {
                    Some(path) => match std::fs::read_to_string(&path) {
                        Ok(p) => Some(p.trim_end_matches(['\r', '\n']).to_string()),
                        Err(e) => {
                            errors.push(format!("dataplane-password-file: reading {}: {e}", path.display()));
                            None
                        }
                    },
                    None => std::env::var("SYNCER_DATAPLANE_PASSWORD").ok(),
                };
                let auth =
                    DataplaneAuth { user: self.dataplane_user.or(file.dataplane_user), password, ca_file: self.dataplane_ca_file.or(file.dataplane_ca_file) };
                if auth.password.is_some() && auth.user.is_none() {
                    errors.push("dataplane-user: a password is given, but no user".into());
                }
                Some(Target::Dataplane { url, version: self.dataplane_version.or(file.dataplane_version).unwrap_or_default(), auth, server_options })
            }
            (Some(_), Some(_)) => {
                errors.push("haproxy-socket: give either --haproxy-socket or --dataplane-url, not both".into());
                None
            }
            (None, None) => {
                errors.push("haproxy-socket: missing (--haproxy-socket PATH or --dataplane-url URL)".into());
                None
            }
        };
        let raw_maps = if self.backends.is_empty() { file.backend.map(|l| l.into_vec()).unwrap_or_default() } else { self.backends };
        if raw_maps.is_empty() {
            errors.push("backend: missing (--backend SERVICE[=HAPROXY_BACKEND], repeatable)".into());
        }
        let mut mappings = Vec::new();
        for m in &raw_maps {
            match parse_mapping(m) {
                Ok(m) if mappings.iter().any(|x: &Mapping| x.backend == m.backend) => errors.push(format!("backend: {} is mapped twice", m.backend)),
                Ok(m) => mappings.push(m),
                Err(e) => errors.push(format!("backend: {e}")),
            }
        }
        let limits = Limits {
            min_servers: self.min_servers.or(file.min_servers).unwrap_or(1),
            max_fraction: self.max_remove_fraction.or(file.max_remove_fraction).unwrap_or(0.5),
            window: self.breaker_window.or(file.breaker_window).unwrap_or(Duration::from_secs(10)),
        };
        if !(limits.max_fraction > 0.0 && limits.max_fraction <= 1.0) {
            errors.push(format!("max-remove-fraction: {} is outside (0, 1]", limits.max_fraction));
        }
        if limits.window.is_zero() {
            errors.push("breaker-window: must be above zero".into());
        }
        let settings = Settings {
            mappings,
            batch: self.batch.or(file.batch).unwrap_or(Duration::from_millis(50)),
            resync: self.resync.or(file.resync).unwrap_or(Duration::from_millis(250)),
            drain_timeout: self.drain_timeout.or(file.drain_timeout).unwrap_or(Duration::from_secs(30)),
            limits,
            source_wait: self.source_wait.or(file.source_wait).unwrap_or(Duration::from_secs(2)),
        };
        if settings.resync < Duration::from_millis(10) {
            errors.push("resync: must be at least 10ms".into());
        }
        let admin_default = self.admin.is_none() && file.admin.is_none();
        let admin = match (self.admin, file.admin) {
            (Some(a), _) => a.0,
            (None, Some(a)) => a.parse::<proto::admin::AdminListen>().map_err(|e| errors.push(format!("admin: {e}"))).ok().and_then(|a| a.0),
            (None, None) => proto::admin::SYNCER_DEFAULT.0,
        };
        let id = self.id.or(file.id).unwrap_or_else(hostname);
        if let Err(e) = proto::validate::instance_name(&id) {
            errors.push(format!("id: {e}"));
        }
        let log_level = match (self.log_level.clone(), file.log_level.as_deref()) {
            (Some(l), _) => Some(l),
            (None, Some(l)) => runtime::logs::parse_level(l).map_err(|e| errors.push(format!("log_level: {e}"))).ok(),
            (None, None) => None,
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Config {
            source: source.expect("checked"),
            target: target.expect("checked"),
            settings,
            state_dir: self.state_dir.or(file.state_dir),
            admin,
            admin_default,
            id,
            log_format: self.log_format.or(file.log_format).unwrap_or_default(),
            log_level,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_default_to_the_service_name() {
        assert_eq!(parse_mapping("web-servers").unwrap(), Mapping { service: "web-servers".into(), backend: "web-servers".into() });
        assert_eq!(parse_mapping("api-servers=api_backend").unwrap().backend, "api_backend");
        assert!(parse_mapping("bad name=x").is_err());
        assert!(parse_mapping("web=bad backend").is_err());
    }

    #[test]
    fn every_error_at_once() {
        let a = RunArgs { backends: vec!["a=b c".into()], max_remove_fraction: Some(2.0), resync: Some(Duration::ZERO), ..Default::default() };
        let e = a.resolve().unwrap_err();
        for field in ["registry:", "haproxy-socket:", "backend:", "max-remove-fraction:", "resync:"] {
            assert!(e.iter().any(|x| x.starts_with(field)), "{field} missing in {e:?}");
        }
    }

    #[test]
    fn flags_resolve() {
        let a = RunArgs {
            registry: vec!["http://127.0.0.1:7401".into()],
            haproxy_socket: Some("/run/haproxy/admin.sock".into()),
            backends: vec!["web-servers".into(), "api-servers=api".into()],
            id: Some("lb-1".into()),
            ..Default::default()
        };
        let c = a.resolve().unwrap();
        assert_eq!(c.settings.mappings.len(), 2);
        assert_eq!(c.settings.limits.min_servers, 1);
        assert_eq!(c.admin, Some("127.0.0.1:9480".parse().unwrap()), "the admin endpoint is on, on loopback, by default");
        assert!(matches!(c.target, Target::Runtime { ref server_options, .. } if server_options == DEFAULT_SERVER_OPTIONS));
    }

    #[test]
    fn the_dataplane_password_comes_from_a_file_and_never_shows_in_debug() {
        let dir = std::env::temp_dir().join(format!("syncer-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret-pass\n").unwrap();
        let a = RunArgs {
            registry: vec!["http://127.0.0.1:7401".into()],
            dataplane_url: Some("https://lb-1:5555".into()),
            dataplane_user: Some("admin".into()),
            dataplane_password_file: Some(file.clone()),
            backends: vec!["web-servers".into()],
            ..Default::default()
        };
        let c = a.resolve().unwrap();
        let Target::Dataplane { auth, .. } = &c.target else { panic!("{:?}", c.target) };
        assert_eq!(auth.password.as_deref(), Some("s3cret-pass"), "the trailing newline is not part of it");
        assert!(!format!("{c:?}").contains("s3cret"), "the password shows in the config's Debug");
        let missing = RunArgs {
            registry: vec!["http://127.0.0.1:7401".into()],
            dataplane_url: Some("https://lb-1:5555".into()),
            dataplane_password_file: Some(dir.join("nope")),
            backends: vec!["web-servers".into()],
            ..Default::default()
        };
        let errors = missing.resolve().unwrap_err();
        assert!(errors.iter().any(|e| e.contains("dataplane-password-file")), "{errors:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
