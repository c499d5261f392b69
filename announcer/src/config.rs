//! Announcer settings: flags for one service, or a TOML file for several. Every problem is
//! reported at once, each naming its field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use crate::health::{Check, HttpTls};

pub use runtime::logs::LogFormat;

/// Flags of the announcer's main mode. Kept after startup: SIGHUP resolves them again, with the
/// config file read anew.
#[derive(Debug, Args, Default, Clone)]
pub struct RunArgs {
    /// TOML file describing one or more services (see docs/announcer.md); flags override its
    /// global settings. Services come from the file then, not from --service.
    #[arg(long, env = "ANNOUNCER_CONFIG")]
    pub config: Option<PathBuf>,
    /// A conf.d-style directory: every `*.toml` in it (in name order) holds `[[services]]`
    /// entries only, added to the config file's. One file per service is easy to drop in and
    /// take out with a package or a configuration tool; SIGHUP reads the directory again.
    #[arg(long, env = "ANNOUNCER_CONFIG_DIR", value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// Registry nodes, comma-separated (`http://HOST:PORT`); any node will do.
    #[arg(long, env = "REGISTRY_ADDR", value_delimiter = ',')]
    pub registry: Vec<String>,
    #[command(flatten)]
    pub access: client::AccessArgs,
    /// Write ephemeral znodes to this ZooKeeper (`HOST:PORT[,HOST:PORT]`) instead of the registry.
    #[arg(long, env = "ANNOUNCER_ZOOKEEPER")]
    pub zookeeper: Option<String>,
    /// ZooKeeper mode: a file holding `USER:PASSWORD`, a digest identity. Sessions authenticate
    /// with it, and znodes are written so that only it may change them (anyone may read).
    #[arg(long, env = "ANNOUNCER_ZOOKEEPER_AUTH_FILE", value_name = "FILE")]
    pub zookeeper_auth_file: Option<PathBuf>,
    /// Service name, e.g. `web-servers`.
    #[arg(long, env = "ANNOUNCER_SERVICE")]
    pub service: Option<String>,
    /// Where the balancer should send traffic: `HOST:PORT` of the local server.
    #[arg(long, env = "ANNOUNCER_ADDRESS")]
    pub address: Option<String>,
    /// Instance id [default: the --address].
    #[arg(long, env = "ANNOUNCER_INSTANCE")]
    pub instance: Option<String>,
    /// HAProxy weight, 0..256 [default: 100].
    #[arg(long, env = "ANNOUNCER_WEIGHT")]
    pub weight: Option<u32>,
    /// Metadata, `KEY=VALUE`; repeat for several.
    #[arg(long = "meta", env = "ANNOUNCER_META")]
    pub meta: Vec<String>,
    /// Lease TTL (ZooKeeper: session timeout) [default: 3s]. Renewed every TTL/3.
    #[arg(long, env = "ANNOUNCER_TTL", value_parser = humantime::parse_duration)]
    pub ttl: Option<Duration>,
    /// HTTP health check: GET this URL; healthy on 2xx/3xx.
    #[arg(long, env = "ANNOUNCER_CHECK_HTTP")]
    pub check_http: Option<String>,
    /// With --check-http: the body must contain this text.
    #[arg(long, env = "ANNOUNCER_CHECK_EXPECT")]
    pub check_expect: Option<String>,
    /// With an https:// --check-http: trust this CA (PEM) alone for the check.
    #[arg(long, env = "ANNOUNCER_CHECK_CA_FILE", value_name = "FILE")]
    pub check_ca_file: Option<PathBuf>,
    /// With an https:// --check-http: do not verify the server's certificate (warned about).
    #[arg(long, env = "ANNOUNCER_CHECK_TLS_SKIP_VERIFY")]
    pub check_tls_skip_verify: bool,
    /// TCP health check: connect to this HOST:PORT.
    #[arg(long, env = "ANNOUNCER_CHECK_TCP")]
    pub check_tcp: Option<String>,
    /// Command health check: `sh -c COMMAND`; healthy on exit status 0.
    #[arg(long, env = "ANNOUNCER_CHECK_EXEC")]
    pub check_exec: Option<String>,
    /// Time between checks [default: 1s].
    #[arg(long, env = "ANNOUNCER_CHECK_INTERVAL", value_parser = humantime::parse_duration)]
    pub check_interval: Option<Duration>,
    /// Time a check may take [default: 1s].
    #[arg(long, env = "ANNOUNCER_CHECK_TIMEOUT", value_parser = humantime::parse_duration)]
    pub check_timeout: Option<Duration>,
    /// Consecutive successes to become healthy [default: 2].
    #[arg(long, env = "ANNOUNCER_RISE")]
    pub rise: Option<u32>,
    /// Consecutive failures to become unhealthy [default: 2].
    #[arg(long, env = "ANNOUNCER_FALL")]
    pub fall: Option<u32>,
    /// On SIGTERM/SIGINT: how long instances stay in `drain` before they are removed [default: 5s].
    #[arg(long, env = "ANNOUNCER_DRAIN", value_parser = humantime::parse_duration)]
    pub drain: Option<Duration>,
    /// Serve /healthz, /metrics, /v1/status and the maintenance control (`announcer maint`)
    /// on this address, or `off`. Keep it on loopback: it has no authentication
    /// [default: 127.0.0.1:9470].
    #[arg(long, env = "ANNOUNCER_ADMIN", value_name = "IP:PORT|off")]
    pub admin: Option<proto::admin::AdminListen>,
    /// Where state that outlives a restart is kept (`maint.json`: maintenance); created when
    /// first needed. Another announcer on the same host needs a directory of its own
    /// [default: /var/lib/announcer].
    #[arg(long, env = "ANNOUNCER_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Log format: `text` for people, `json` (one object per line) for log pipelines
    /// [default: text].
    #[arg(long, env = "ANNOUNCER_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log level: error, warn, info, debug or trace, or directives like `info,openraft=warn`;
    /// over RUST_LOG [default: info].
    #[arg(long, env = "ANNOUNCER_LOG_LEVEL", value_parser = runtime::logs::parse_level)]
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
    zookeeper_auth_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    drain: Option<Duration>,
    admin: Option<String>,
    state_dir: Option<PathBuf>,
    config_dir: Option<PathBuf>,
    log_format: Option<LogFormat>,
    log_level: Option<String>,
    #[serde(default)]
    services: Vec<FileService>,
}

/// A file in `--config-dir`: services only.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DirFile {
    #[serde(default)]
    services: Vec<FileService>,
}

/// The services of every `*.toml` in `dir`, in file-name order, each labelled with its file.
fn services_in_dir(p: &mut Problems, dir: &std::path::Path) -> Vec<(String, FileService)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            p.add("config-dir", format!("{}: {e}", dir.display()));
            return vec![];
        }
    };
    // Every `*.toml` entry, whatever it is: a dangling symlink or a directory there is an
    // operator's mistake, reported by the read below rather than skipped in silence.
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|f| f.extension().is_some_and(|x| x == "toml")).collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let parsed = std::fs::read_to_string(&f).map_err(|e| e.to_string()).and_then(|t| toml::from_str::<DirFile>(&t).map_err(|e| e.to_string()));
        match parsed {
            Ok(d) => out.extend(d.services.into_iter().enumerate().map(|(i, s)| (format!("{}: services[{i}]", f.display()), s))),
            Err(e) => p.add("config-dir", format!("{}: {e}", f.display())),
        }
    }
    out
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileService {
    name: String,
    address: String,
    instance: Option<String>,
    weight: Option<u32>,
    #[serde(default)]
    meta: BTreeMap<String, String>,
    check: Option<FileCheck>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCheck {
    http: Option<String>,
    expect: Option<String>,
    /// https only: trust this CA alone.
    ca_file: Option<PathBuf>,
    /// https only: do not verify the certificate.
    tls_skip_verify: Option<bool>,
    tcp: Option<String>,
    exec: Option<String>,
    #[serde(default, with = "humantime_serde")]
    interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    rise: Option<u32>,
    fall: Option<u32>,
}

/// `--state-dir` unless given.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/announcer";

/// Where registrations go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// Node URLs, and how to reach them (TLS, token).
    Registry(Vec<String>, client::Access),
    Zookeeper(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckConfig {
    pub check: Check,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    pub service: String,
    pub instance: String,
    /// The address the instance is reached at (an IP or DNS name, without the port).
    pub address: String,
    pub port: u16,
    pub weight: u32,
    pub meta: BTreeMap<String, String>,
    pub check: Option<CheckConfig>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub backend: Backend,
    /// `--zookeeper-auth-file`, read.
    pub zookeeper_auth: Option<proto::ZkDigest>,
    pub ttl: Duration,
    pub drain: Duration,
    pub admin: Option<SocketAddr>,
    /// `admin` is the default, not asked for: if its port is taken the process runs without
    /// it (with a warning) instead of refusing to start.
    pub admin_default: bool,
    /// `--state-dir`: the maintenance file is `maint.json` in it.
    pub state_dir: PathBuf,
    pub log_format: LogFormat,
    /// `--log-level` or `log_level`, checked; `None`: RUST_LOG or the default.
    pub log_level: Option<String>,
    pub services: Vec<ServiceConfig>,
    /// `--config-dir`, for `config check`.
    pub config_dir: Option<PathBuf>,
    /// Where each of `services` was read (`services[0]`, `DIR/10-web.toml: services[0]`, or
    /// `service` for the flags), for `config check`.
    pub service_origins: Vec<String>,
}

impl Config {
    /// The effective settings, for `announcer config check`: keys as in the file, secrets as
    /// the paths they are read from.
    pub fn effective(&self) -> Vec<(String, String)> {
        use runtime::config::or_none;
        let d = |d: Duration| humantime::format_duration(d).to_string();
        let mut out: Vec<(String, String)> = Vec::new();
        match &self.backend {
            Backend::Registry(urls, access) => {
                out.push(("registry".into(), urls.join(",")));
                out.extend(access.describe());
            }
            Backend::Zookeeper(connect) => {
                out.push(("zookeeper".into(), connect.clone()));
                out.push(("zookeeper_auth".into(), if self.zookeeper_auth.is_some() { "(from zookeeper_auth_file)".into() } else { "(none)".into() }));
            }
        }
        out.push(("ttl".into(), d(self.ttl)));
        out.push(("drain".into(), d(self.drain)));
        out.push(("admin".into(), or_none(self.admin).replace("(none)", "off")));
        out.push(("state_dir".into(), self.state_dir.display().to_string()));
        out.push(("log_format".into(), format!("{:?}", self.log_format).to_lowercase()));
        out.push(("log_level".into(), or_none(self.log_level.clone())));
        out.push(("config_dir".into(), or_none(self.config_dir.as_ref().map(|d| d.display().to_string()))));
        for (i, s) in self.services.iter().enumerate() {
            let at = format!("services[{i}]");
            if let Some(from) = self.service_origins.get(i).filter(|o| **o != at && o.as_str() != "service") {
                out.push((format!("{at}.from"), from.clone()));
            }
            out.push((format!("{at}.name"), s.service.clone()));
            out.push((format!("{at}.instance"), s.instance.clone()));
            out.push((format!("{at}.address"), format!("{}:{}", s.address, s.port)));
            out.push((format!("{at}.weight"), s.weight.to_string()));
            out.push((format!("{at}.meta"), s.meta.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")));
            let check = match &s.check {
                None => "(none: announced while the announcer runs)".to_string(),
                Some(c) => {
                    let what = match &c.check {
                        Check::Http { url, expect, .. } => {
                            format!("http {}{}", without_password(url), expect.as_ref().map(|e| format!(" expect {e:?}")).unwrap_or_default())
                        }
                        Check::Tcp { addr } => format!("tcp {addr}"),
                        Check::Exec { command } => format!("exec {command:?}"),
                    };
                    format!("{what}, every {}, timeout {}, rise {}, fall {}", d(c.interval), d(c.timeout), c.rise, c.fall)
                }
            };
            out.push((format!("{at}.check"), check));
        }
        out
    }
}

/// Splits `HOST:PORT` (IPv6 in brackets) and checks both parts.
pub fn host_port(raw: &str) -> Result<(String, u16), String> {
    let (host, port) = raw.rsplit_once(':').ok_or_else(|| format!("{raw:?} is not HOST:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    proto::validate::address(host)?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((host.to_string(), p)),
        _ => Err(format!("{raw:?} has no valid port (1..65535)")),
    }
}

/// Collects problems as `field: message`.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, field: &str, msg: impl std::fmt::Display) {
        self.0.push(format!("{field}: {msg}"));
    }
}

fn check_config(p: &mut Problems, at: &str, c: FileCheck) -> Option<CheckConfig> {
    let kinds = [c.http.is_some(), c.tcp.is_some(), c.exec.is_some()].iter().filter(|k| **k).count();
    if kinds != 1 {
        p.add(at, "give exactly one of http, tcp or exec");
    }
    if c.expect.is_some() && c.http.is_none() {
        p.add(&format!("{at}.expect"), "only applies to an http check");
    }
    if let Some(url) = &c.http {
        match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => p.add(&format!("{at}.http"), format!("{url:?} is not an http(s) URL")),
        }
    }
    if let Some(addr) = &c.tcp {
        if let Err(e) = host_port(addr) {
            p.add(&format!("{at}.tcp"), e);
        }
    }
    let https = c.http.as_deref().and_then(|u| reqwest::Url::parse(u).ok()).is_some_and(|u| u.scheme() == "https");
    let tls = match (c.ca_file, c.tls_skip_verify.unwrap_or(false)) {
        (Some(_), true) => {
            p.add(&format!("{at}.tls_skip_verify"), "give either ca_file or tls_skip_verify, not both");
            HttpTls::SystemRoots
        }
        (Some(path), false) => match read_ca(&path) {
            Ok(pem) => HttpTls::CaFile { path, pem },
            Err(e) => {
                p.add(&format!("{at}.ca_file"), e);
                HttpTls::SystemRoots
            }
        },
        (None, true) => HttpTls::SkipVerify,
        (None, false) => HttpTls::SystemRoots,
    };
    if tls != HttpTls::SystemRoots && !https {
        let field = if tls == HttpTls::SkipVerify { "tls_skip_verify" } else { "ca_file" };
        p.add(&format!("{at}.{field}"), "only applies to an https:// http check");
    }
    if c.exec.as_deref().is_some_and(|e| e.trim().is_empty()) {
        p.add(&format!("{at}.exec"), "is empty");
    }
    let interval = c.interval.unwrap_or(Duration::from_secs(1));
    let timeout = c.timeout.unwrap_or(Duration::from_secs(1));
    if interval < Duration::from_millis(10) {
        p.add(&format!("{at}.interval"), "must be at least 10ms");
    }
    if timeout.is_zero() {
        p.add(&format!("{at}.timeout"), "must be above zero");
    }
    let (rise, fall) = (c.rise.unwrap_or(2), c.fall.unwrap_or(2));
    if rise == 0 {
        p.add(&format!("{at}.rise"), "must be at least 1");
    }
    if fall == 0 {
        p.add(&format!("{at}.fall"), "must be at least 1");
    }
    let check = match (c.http, c.tcp, c.exec) {
        (Some(url), None, None) => Check::Http { url, expect: c.expect, tls },
        (None, Some(addr), None) => Check::Tcp { addr },
        (None, None, Some(command)) => Check::Exec { command },
        _ => return None,
    };
    Some(CheckConfig { check, interval, timeout, rise, fall })
}

/// A CA file for an https check: PEM with at least one certificate.
fn read_ca(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(pem),
        Ok(_) => Err(format!("{}: no PEM certificate in it", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn service_config(p: &mut Problems, at: &str, s: FileService) -> Option<ServiceConfig> {
    let before = p.0.len();
    if let Err(e) = proto::validate::service_name(&s.name) {
        p.add(&format!("{at}.name"), e);
    }
    let hp = host_port(&s.address).map_err(|e| p.add(&format!("{at}.address"), e)).ok();
    let instance = s.instance.unwrap_or_else(|| s.address.clone());
    if let Err(e) = proto::validate::instance_name(&instance) {
        p.add(&format!("{at}.instance"), e);
    }
    let weight = s.weight.unwrap_or(100);
    if weight > proto::validate::MAX_WEIGHT {
        p.add(&format!("{at}.weight"), format!("{weight} is above {}", proto::validate::MAX_WEIGHT));
    }
    let check = s.check.and_then(|c| check_config(p, &format!("{at}.check"), c));
    if p.0.len() > before {
        return None;
    }
    let (address, port) = hp?;
    Some(ServiceConfig { service: s.name, instance, address, port, weight, meta: s.meta, check })
}

impl RunArgs {
    fn flag_service(&self, p: &mut Problems) -> Option<FileService> {
        let check = if self.check_http.is_some() || self.check_tcp.is_some() || self.check_exec.is_some() {
            Some(FileCheck {
                http: self.check_http.clone(),
                expect: self.check_expect.clone(),
                ca_file: self.check_ca_file.clone(),
                tls_skip_verify: self.check_tls_skip_verify.then_some(true),
                tcp: self.check_tcp.clone(),
                exec: self.check_exec.clone(),
                interval: self.check_interval,
                timeout: self.check_timeout,
                rise: self.rise,
                fall: self.fall,
            })
        } else {
            if self.check_expect.is_some() {
                p.add("check-expect", "needs --check-http");
            }
            if self.check_ca_file.is_some() || self.check_tls_skip_verify {
                p.add("check-ca-file", "--check-ca-file and --check-tls-skip-verify need an https:// --check-http");
            }
            None
        };
        let mut meta = BTreeMap::new();
        for m in &self.meta {
            match m.split_once('=') {
                Some((k, v)) => {
                    meta.insert(k.to_string(), v.to_string());
                }
                None => p.add("meta", format!("{m:?} is not KEY=VALUE")),
            }
        }
        match (&self.service, &self.address) {
            (Some(name), Some(address)) => {
                Some(FileService { name: name.clone(), address: address.clone(), instance: self.instance.clone(), weight: self.weight, meta, check })
            }
            (name, address) => {
                if name.is_none() {
                    p.add("service", "missing (--service NAME, or services in --config FILE)");
                }
                match address {
                    None => p.add("address", "missing (--address HOST:PORT of the local server)"),
                    Some(a) => {
                        if let Err(e) = host_port(a) {
                            p.add("service.address", e);
                        }
                    }
                }
                // Still check the rest, so every problem is reported in one go.
                if let Some(c) = check {
                    check_config(p, "service.check", c);
                }
                None
            }
        }
    }

    /// Merges flags, file and defaults; returns every problem found.
    pub fn resolve(self) -> Result<Config, Vec<String>> {
        let mut p = Problems::default();
        let file = match &self.config {
            None => FileConfig::default(),
            Some(path) => match std::fs::read_to_string(path) {
                Err(e) => return Err(vec![format!("config file {}: {e}", path.display())]),
                Ok(text) => match toml::from_str::<FileConfig>(&text) {
                    Ok(f) => f,
                    Err(e) => return Err(vec![format!("config file {}: {e}", path.display())]),
                },
            },
        };
        let service_flags = self.service.is_some() || self.address.is_some() || self.instance.is_some();
        let config_dir = self.config_dir.clone().or(file.config_dir.clone());
        let raw_services: Vec<(String, FileService)> = if self.config.is_some() || config_dir.is_some() {
            if service_flags {
                p.add("service", "give services either with flags or in --config/--config-dir, not both");
            }
            let mut all: Vec<(String, FileService)> = file.services.into_iter().enumerate().map(|(i, s)| (format!("services[{i}]"), s)).collect();
            if let Some(dir) = &config_dir {
                all.extend(services_in_dir(&mut p, dir));
            }
            if all.is_empty() {
                p.add(
                    "services",
                    if config_dir.is_some() {
                        "neither the config file nor --config-dir lists any [[services]]"
                    } else {
                        "the config file lists no [[services]]"
                    },
                );
            }
            all
        } else {
            self.flag_service(&mut p).map(|s| vec![("service".to_string(), s)]).unwrap_or_default()
        };
        let services: Vec<(String, ServiceConfig)> = raw_services.into_iter().filter_map(|(at, s)| service_config(&mut p, &at, s).map(|c| (at, c))).collect();
        let mut seen: BTreeMap<(String, String), String> = BTreeMap::new();
        for (at, s) in &services {
            if let Some(first) = seen.insert((s.service.clone(), s.instance.clone()), at.clone()) {
                p.add("services", format!("{}/{} is listed twice: {first} and {at}", s.service, s.instance));
            }
        }
        let (service_origins, services): (Vec<String>, Vec<ServiceConfig>) = services.into_iter().unzip();
        let registry: Vec<String> = if !self.registry.is_empty() { self.registry.clone() } else { file.registry.map(|l| l.into_vec()).unwrap_or_default() };
        let zookeeper = self.zookeeper.clone().or(file.zookeeper);
        let zookeeper_auth = self.zookeeper_auth_file.clone().or(file.zookeeper_auth_file).and_then(|path| {
            let read = std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()));
            read.and_then(|t| proto::ZkDigest::parse(&t).map_err(|e| format!("{}: {e}", path.display()))).map_err(|e| p.add("zookeeper-auth-file", e)).ok()
        });
        let access = self.access.over(client::Access {
            tls: client::TlsFiles { ca: file.ca_file, cert: file.cert, key: file.key },
            token_file: file.token_file,
            token: None,
        });
        let backend = match (registry.is_empty(), zookeeper) {
            (false, None) => {
                if let Err(e) = client::Client::builder(&registry).and_then(|b| b.access(&access)).and_then(|b| b.build()) {
                    p.add("registry", e);
                }
                Some(Backend::Registry(registry, access))
            }
            (true, Some(zk)) => {
                for part in zk.split(',') {
                    if let Err(e) = host_port(part) {
                        p.add("zookeeper", e);
                    }
                }
                Some(Backend::Zookeeper(zk))
            }
            (false, Some(_)) => {
                p.add("registry", "give either --registry or --zookeeper, not both");
                None
            }
            (true, None) => {
                p.add("registry", "missing (--registry URLS or REGISTRY_ADDR, or --zookeeper HOST:PORT)");
                None
            }
        };
        let ttl = self.ttl.or(file.ttl).unwrap_or(Duration::from_secs(3));
        if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(3600) {
            p.add("ttl", format!("{} is outside 1s..1h", humantime::format_duration(ttl)));
        }
        let drain = self.drain.or(file.drain).unwrap_or(Duration::from_secs(5));
        let admin_default = self.admin.is_none() && file.admin.is_none();
        let admin = match (self.admin, file.admin) {
            (Some(a), _) => a.0,
            (None, Some(a)) => a.parse::<proto::admin::AdminListen>().map_err(|e| p.add("admin", e)).ok().and_then(|a| a.0),
            (None, None) => proto::admin::ANNOUNCER_DEFAULT.0,
        };
        let state_dir = self.state_dir.clone().or(file.state_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let log_level = match (self.log_level.clone(), file.log_level.as_deref()) {
            (Some(l), _) => Some(l),
            (None, Some(l)) => runtime::logs::parse_level(l).map_err(|e| p.add("log_level", e)).ok(),
            (None, None) => None,
        };
        if !p.0.is_empty() {
            return Err(p.0);
        }
        Ok(Config {
            backend: backend.expect("checked"),
            zookeeper_auth,
            ttl,
            drain,
            admin,
            admin_default,
            state_dir,
            log_format: self.log_format.or(file.log_format).unwrap_or_default(),
            log_level,
            services,
            config_dir,
            service_origins,
        })
    }
}

/// A check URL as `config check` prints it: a password in it (`http://user:pass@host/`) is
/// shown as `***`, since the output goes to terminals and tickets.
fn without_password(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_check_hides_a_password_in_a_check_url() {
        assert_eq!(without_password("http://probe:s3cret@127.0.0.1:8080/health"), "http://probe:***@127.0.0.1:8080/health");
        assert_eq!(without_password("https://127.0.0.1:8443/health"), "https://127.0.0.1:8443/health");
    }

    fn args() -> RunArgs {
        RunArgs {
            registry: vec!["http://127.0.0.1:7401".into()],
            service: Some("web-servers".into()),
            address: Some("10.0.0.5:8080".into()),
            ..Default::default()
        }
    }

    #[test]
    fn flags_make_one_service_with_defaults() {
        let c = args().resolve().unwrap();
        assert_eq!(c.services.len(), 1);
        let s = &c.services[0];
        assert_eq!((s.instance.as_str(), s.address.as_str(), s.port, s.weight), ("10.0.0.5:8080", "10.0.0.5", 8080, 100));
        assert_eq!(c.ttl, Duration::from_secs(3));
        assert_eq!(c.drain, Duration::from_secs(5));
        assert_eq!(c.admin, Some("127.0.0.1:9470".parse().unwrap()), "the admin endpoint is on, on loopback, by default");
        let off = RunArgs { admin: Some("off".parse().unwrap()), ..args() }.resolve().unwrap();
        assert_eq!(off.admin, None);
    }

    #[test]
    fn every_flag_error_is_reported() {
        let a = RunArgs {
            address: Some("10.0.0.5:0".into()),
            ttl: Some(Duration::from_millis(10)),
            check_http: Some("ftp://x".into()),
            check_tcp: Some("a:1".into()),
            rise: Some(0),
            ..Default::default()
        };
        let e = a.resolve().unwrap_err();
        for field in ["service:", "registry:", "ttl:", "service.check:", "service.check.http:", "service.check.rise:"] {
            assert!(e.iter().any(|x| x.starts_with(field)), "{field} missing from {e:?}");
        }
    }

    #[test]
    fn a_file_describes_several_services() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        std::fs::write(
            &path,
            r#"
registry = ["http://127.0.0.1:7401", "http://127.0.0.1:7402"]
ttl = "5s"
drain = "0s"
[[services]]
name = "web-servers"
address = "10.0.0.5:8080"
meta = { zone = "a" }
check = { http = "http://127.0.0.1:8080/health", expect = "ok", rise = 1 }
[[services]]
name = "api-servers"
address = "10.0.0.5:9090"
weight = 50
check = { tcp = "127.0.0.1:9090" }
"#,
        )
        .unwrap();
        let c = RunArgs { config: Some(path), ..Default::default() }.resolve().unwrap();
        assert_eq!(c.services.len(), 2);
        assert_eq!(c.drain, Duration::ZERO);
        assert_eq!(c.admin, Some("127.0.0.1:9470".parse().unwrap()));
        assert_eq!(c.services[1].weight, 50);
        assert!(matches!(c.services[0].check.as_ref().unwrap().check, Check::Http { .. }));
    }

    #[test]
    fn file_errors_name_their_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        std::fs::write(
            &path,
            r#"
zookeeper = "127.0.0.1:2181"
[[services]]
name = "web servers"
address = "nohost"
[[services]]
name = "api"
address = "10.0.0.5:9090"
weight = 999
check = { tcp = "127.0.0.1:9090", exec = "true" }
"#,
        )
        .unwrap();
        let e = RunArgs { config: Some(path), ..Default::default() }.resolve().unwrap_err();
        for field in ["services[0].name:", "services[0].address:", "services[1].weight:", "services[1].check:"] {
            assert!(e.iter().any(|x| x.starts_with(field)), "{field} missing from {e:?}");
        }
    }

    #[test]
    fn a_config_dir_adds_its_services_in_file_name_order_and_refuses_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let confd = dir.path().join("announcer.d");
        std::fs::create_dir(&confd).unwrap();
        let service = |name: &str, port: u16| format!("[[services]]\nname = \"{name}\"\naddress = \"10.0.0.5:{port}\"\n");
        let main = dir.path().join("announcer.toml");
        std::fs::write(&main, format!("registry = \"http://127.0.0.1:7401\"\nconfig_dir = \"{}\"\n{}", confd.display(), service("web-servers", 8080))).unwrap();
        // Written out of order: the merge follows the names, not the creation order.
        std::fs::write(confd.join("20-api.toml"), format!("{}{}", service("api-servers", 9090), service("api-servers", 9091))).unwrap();
        std::fs::write(confd.join("10-mail.toml"), service("mail-servers", 2525)).unwrap();
        std::fs::write(confd.join("30-notes.txt"), "not toml, not read").unwrap();
        let c = RunArgs { config: Some(main.clone()), ..Default::default() }.resolve().unwrap();
        let names: Vec<(&str, u16)> = c.services.iter().map(|s| (s.service.as_str(), s.port)).collect();
        assert_eq!(names, [("web-servers", 8080), ("mail-servers", 2525), ("api-servers", 9090), ("api-servers", 9091)]);
        // `config check` says where each came from.
        let shown: BTreeMap<String, String> = c.effective().into_iter().collect();
        assert_eq!(shown.get("config_dir"), Some(&confd.display().to_string()));
        assert_eq!(shown.get("services[0].from"), None, "the config file's own service");
        assert_eq!(shown.get("services[3].from"), Some(&format!("{}: services[1]", confd.join("20-api.toml").display())));

        // --config-dir alone, without a config file, is enough.
        let c = RunArgs { config_dir: Some(confd.clone()), registry: vec!["http://127.0.0.1:7401".into()], ..Default::default() }.resolve().unwrap();
        assert_eq!(c.services.len(), 3);

        // The same instance in two files: an error naming both files.
        std::fs::write(confd.join("40-again.toml"), service("api-servers", 9091)).unwrap();
        let e = RunArgs { config: Some(main.clone()), ..Default::default() }.resolve().unwrap_err();
        let twice = e.iter().find(|x| x.contains("listed twice")).unwrap_or_else(|| panic!("no duplicate error in {e:?}"));
        assert!(twice.contains("20-api.toml") && twice.contains("40-again.toml") && twice.contains("api-servers/10.0.0.5:9091"), "{twice}");
        std::fs::remove_file(confd.join("40-again.toml")).unwrap();

        // A bad file in the directory is named, along with the config file's own problems.
        std::fs::write(confd.join("50-bad.toml"), "[[services]]\nname = \"x\"\naddress = \"10.0.0.5:1\"\nport = 1\n").unwrap();
        std::fs::write(confd.join("60-bad.toml"), service("bad name", 1)).unwrap();
        let e = RunArgs { config: Some(main), ttl: Some(Duration::ZERO), ..Default::default() }.resolve().unwrap_err();
        assert!(e.iter().any(|x| x.starts_with("config-dir:") && x.contains("50-bad.toml") && x.contains("port")), "{e:?}");
        assert!(e.iter().any(|x| x.contains("60-bad.toml") && x.contains("services[0].name")), "{e:?}");
        assert!(e.iter().any(|x| x.starts_with("ttl:")), "{e:?}");

        // A dangling symlink is named, not skipped.
        std::fs::remove_file(confd.join("50-bad.toml")).unwrap();
        std::fs::remove_file(confd.join("60-bad.toml")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("gone.toml"), confd.join("70-link.toml")).unwrap();
        let e = RunArgs { config_dir: Some(confd.clone()), registry: vec!["http://127.0.0.1:7401".into()], ..Default::default() }.resolve().unwrap_err();
        assert!(e.iter().any(|x| x.starts_with("config-dir:") && x.contains("70-link.toml")), "{e:?}");
    }

    #[test]
    fn unknown_keys_in_the_file_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        std::fs::write(&path, "registry = \"http://x:1\"\n[[services]]\nname = \"a\"\naddress = \"1.2.3.4:5\"\nport = 5\n").unwrap();
        let e = RunArgs { config: Some(path), ..Default::default() }.resolve().unwrap_err();
        assert!(e[0].contains("port"), "{e:?}");
    }

    #[test]
    fn https_check_options_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&ca, rcgen::CertificateParams::default().self_signed(&key).unwrap().pem()).unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let path = dir.path().join("a.toml");
        let ca = ca.display();
        std::fs::write(
            &path,
            format!(
                r#"
registry = "http://127.0.0.1:7401"
[[services]]
name = "a"
address = "10.0.0.5:1"
check = {{ http = "https://127.0.0.1:8443/health", ca_file = "{ca}" }}
[[services]]
name = "b"
address = "10.0.0.5:2"
check = {{ http = "https://127.0.0.1:8443/health", tls_skip_verify = true }}
"#
            ),
        )
        .unwrap();
        let c = RunArgs { config: Some(path.clone()), ..Default::default() }.resolve().unwrap();
        let tls = |i: usize| match &c.services[i].check.as_ref().unwrap().check {
            Check::Http { tls, .. } => tls.clone(),
            other => panic!("{other:?}"),
        };
        assert!(matches!(tls(0), HttpTls::CaFile { pem, .. } if !pem.is_empty()));
        assert_eq!(tls(1), HttpTls::SkipVerify);
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));

        std::fs::write(
            &path,
            format!(
                r#"
registry = "http://127.0.0.1:7401"
state_dir = "/tmp/x"
[[services]]
name = "a"
address = "10.0.0.5:1"
check = {{ http = "https://127.0.0.1:8443/health", ca_file = "{ca}", tls_skip_verify = true }}
[[services]]
name = "b"
address = "10.0.0.5:2"
check = {{ http = "http://127.0.0.1:8080/health", tls_skip_verify = true }}
[[services]]
name = "c"
address = "10.0.0.5:3"
check = {{ http = "https://127.0.0.1:8443/health", ca_file = "{}" }}
[[services]]
name = "d"
address = "10.0.0.5:4"
check = {{ tcp = "127.0.0.1:8443", ca_file = "{ca}" }}
"#,
                junk.display()
            ),
        )
        .unwrap();
        let e = RunArgs { config: Some(path), ..Default::default() }.resolve().unwrap_err();
        for field in ["services[0].check.tls_skip_verify:", "services[1].check.tls_skip_verify:", "services[2].check.ca_file:", "services[3].check.ca_file:"] {
            assert!(e.iter().any(|x| x.starts_with(field)), "{field} missing from {e:?}");
        }
        let flags = RunArgs { check_tls_skip_verify: true, ..args() }.resolve().unwrap_err();
        assert!(flags.iter().any(|x| x.contains("https")), "{flags:?}");
        let flags = RunArgs { check_http: Some("https://127.0.0.1:1/".into()), check_tls_skip_verify: true, ..args() }.resolve().unwrap();
        assert!(matches!(&flags.services[0].check.as_ref().unwrap().check, Check::Http { tls: HttpTls::SkipVerify, .. }));
    }
}
