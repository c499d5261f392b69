//! `registry serve` settings: flags (with environment variables) over a TOML file over defaults.
//! Every problem is reported at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use crate::node::NodeConfig;
use crate::peer_auth::{ClusterSecret, PeerAuth};
use crate::tls::{Tls, TlsFiles};

pub use runtime::logs::LogFormat;

/// Flags of `registry serve`. Each may also come from the config file under the same name
/// with `_` for `-`.
#[derive(Debug, Args, Default, Clone)]
pub struct ServeArgs {
    /// TOML file with any of the settings below; flags override it.
    #[arg(long, env = "REGISTRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id (a positive integer, unique in the cluster).
    #[arg(long, env = "REGISTRY_ID")]
    pub id: Option<u64>,
    /// Address to serve the client API and peer RPC on.
    #[arg(long, env = "REGISTRY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address other nodes and clients use to reach this node [default: the --peers entry of
    /// this node, else --listen].
    #[arg(long, env = "REGISTRY_ADVERTISE")]
    pub advertise: Option<String>,
    /// Where the log, vote and snapshots live.
    #[arg(long, env = "REGISTRY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Initial members, `ID=HOST:PORT,...`. Used only on the first start with an empty data
    /// directory; later starts use what is on disk. Leave out to start a node that waits to be
    /// added with `registry members add`.
    #[arg(long, env = "REGISTRY_PEERS")]
    pub peers: Option<String>,
    /// Log format: `text` for people, `json` (one object per line) for log pipelines
    /// [default: text].
    #[arg(long, env = "REGISTRY_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log level: error, warn, info, debug or trace, or directives like `info,openraft=warn`;
    /// over RUST_LOG [default: info,openraft=warn].
    #[arg(long, env = "REGISTRY_LOG_LEVEL", value_parser = runtime::logs::parse_level)]
    pub log_level: Option<String>,
    /// How often the leader tells the followers it is alive (and shares lease renewals); at
    /// most a 4th of --election-timeout-min [default: 50ms].
    #[arg(long, env = "REGISTRY_HEARTBEAT", value_parser = humantime::parse_duration)]
    pub heartbeat: Option<Duration>,
    /// Shortest election timeout; the spread up to the longest is the random part of a follower's wait [default: 200ms].
    #[arg(long, env = "REGISTRY_ELECTION_TIMEOUT_MIN", value_parser = humantime::parse_duration)]
    pub election_timeout_min: Option<Duration>,
    /// Longest election timeout: how long a voter refuses votes after hearing a leader (the floor of a failover); less one heartbeat, how long a leader acts on its last quorum ack [default: 300ms].
    #[arg(long, env = "REGISTRY_ELECTION_TIMEOUT_MAX", value_parser = humantime::parse_duration)]
    pub election_timeout_max: Option<Duration>,
    /// Shortest lease TTL a client may ask for [default: 1s].
    #[arg(long, env = "REGISTRY_MIN_TTL", value_parser = humantime::parse_duration)]
    pub min_ttl: Option<Duration>,
    /// Longest lease TTL a client may ask for [default: 1h].
    #[arg(long, env = "REGISTRY_MAX_TTL", value_parser = humantime::parse_duration)]
    pub max_ttl: Option<Duration>,
    /// Change events each node keeps for watchers to resume from [default: 100000].
    #[arg(long, env = "REGISTRY_HISTORY")]
    pub history: Option<usize>,
    /// Take a snapshot (and compact the log) every this many entries [default: 10000].
    #[arg(long, env = "REGISTRY_SNAPSHOT_EVERY")]
    pub snapshot_every: Option<u64>,
    /// Approximate bytes of change history each node keeps for watchers, beside --history
    /// [default: 256MiB]. Accepts a plain number of bytes.
    #[arg(long, env = "REGISTRY_HISTORY_BYTES")]
    pub history_bytes: Option<usize>,
    /// Open watch streams one node serves at most; more get 429 [default: 10000].
    #[arg(long, env = "REGISTRY_MAX_WATCHES")]
    pub max_watches: Option<usize>,
    /// Blocking queries one node holds at most; more get 429 [default: 10000].
    #[arg(long, env = "REGISTRY_MAX_BLOCKING_QUERIES")]
    pub max_blocking_queries: Option<usize>,
    /// Live leases one client address may hold; more grants get 429 [default: 20000].
    #[arg(long, env = "REGISTRY_MAX_LEASES_PER_CLIENT")]
    pub max_leases_per_client: Option<u64>,
    /// Rejoin the cluster at --peers from an empty data directory: for a node whose disk was
    /// wiped or replaced. It is removed from the membership, added back as a learner, and
    /// promoted once caught up. Ignored when the data directory already holds a log.
    #[arg(long, env = "REGISTRY_JOIN")]
    pub join: bool,
    /// With --join: a file holding an admin token, for a cluster with ACLs. Under TLS a node on
    /// a host that is no longer a member's (its old self removed, or a new host) proves nothing
    /// with its certificate, and needs it to add itself.
    #[arg(long, env = "REGISTRY_JOIN_TOKEN_FILE", value_name = "FILE")]
    pub join_token_file: Option<PathBuf>,
    /// Append a JSON line per write that clients send this node (grants, puts, deletes,
    /// revokes, membership and token changes; keepalives only when refused), accepted or
    /// refused: time, client address, token id, method, path, status. Off by default; SIGHUP
    /// reopens the file (for logrotate). See docs/operations.md.
    #[arg(long, env = "REGISTRY_AUDIT_LOG", value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// File holding the cluster's shared secret (at least 22 visible characters, e.g.
    /// `head -c 32 /dev/urandom | base64`); every node must have the same one. Peer RPC and
    /// forwarded requests without it are refused. Sent in plain text unless TLS is on: see
    /// docs/security.md.
    #[arg(long, env = "REGISTRY_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// Run without peer authentication: anyone who can reach this port can force elections,
    /// write the log and replace the store. For a laptop, never for a shared network; a warning
    /// is logged every minute.
    #[arg(long, env = "REGISTRY_INSECURE")]
    pub insecure: bool,
    /// This node's certificate (PEM, its chain after it): turns TLS on for the client API and
    /// peer RPC on the one address. Peers prove membership with their node certificates (the
    /// node role, as `registry tls init` writes), so no cluster secret is needed. Needs
    /// --tls-key and --tls-ca; re-read on SIGHUP.
    #[arg(long, env = "REGISTRY_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "REGISTRY_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// The cluster CA (PEM): client and peer certificates are verified against it.
    #[arg(long, env = "REGISTRY_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Turn ACLs on, with the token in this file as the first `admin` token (at least 32
    /// visible characters; `registry token generate` makes one). Applies once, when the cluster
    /// has no ACLs yet; from then on every client route needs a token (`Authorization: Bearer`),
    /// on every node. Until it applies, this node takes only that token.
    #[arg(long, env = "REGISTRY_ACL_BOOTSTRAP_TOKEN_FILE", value_name = "FILE")]
    pub acl_bootstrap_token_file: Option<PathBuf>,
    /// With ACLs on, serve /metrics without a token (for a Prometheus scraper).
    #[arg(long, env = "REGISTRY_METRICS_OPEN")]
    pub metrics_open: bool,
    /// Test only: while this file exists, every flush of the Raft log hangs, as on a stalled
    /// volume. The chaos test's disk-stall fault.
    #[arg(long, hide = true)]
    pub fault_disk_stall_file: Option<PathBuf>,
}

/// The config file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    id: Option<u64>,
    listen: Option<String>,
    advertise: Option<String>,
    data_dir: Option<PathBuf>,
    /// Either a table `{ 1 = "host:port" }` or the flag's string form.
    peers: Option<Peers>,
    log_format: Option<LogFormat>,
    log_level: Option<String>,
    #[serde(default, with = "humantime_serde")]
    heartbeat: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    election_timeout_min: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    election_timeout_max: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    min_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_ttl: Option<Duration>,
    history: Option<usize>,
    snapshot_every: Option<u64>,
    history_bytes: Option<usize>,
    max_watches: Option<usize>,
    max_blocking_queries: Option<usize>,
    max_leases_per_client: Option<u64>,
    cluster_secret_file: Option<PathBuf>,
    insecure: Option<bool>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    acl_bootstrap_token_file: Option<PathBuf>,
    metrics_open: Option<bool>,
    audit_log: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Peers {
    Table(BTreeMap<String, String>),
    /// A list of `ID=HOST:PORT`, or the flag's comma-separated string (`runtime::config`).
    Flag(runtime::config::StringList),
}

/// A resolved configuration.
#[derive(Debug)]
pub struct Serve {
    pub listen: SocketAddr,
    pub log_format: LogFormat,
    /// `--log-level` or `log_level`, checked; `None`: RUST_LOG or the default.
    pub log_level: Option<String>,
    pub node: NodeConfig,
    pub fault_disk_stall_file: Option<PathBuf>,
}

/// `registry config check FILE`: every problem at once, or the effective settings (keys as in
/// the file; secrets as the paths they are read from), with the flags and REGISTRY_* variables
/// in `args` applied as `serve` would.
pub fn check(mut args: ServeArgs, file: PathBuf) -> Result<String, Vec<String>> {
    use runtime::config::or_none;
    args.config = Some(file);
    let paths = args.clone();
    let s = args.resolve()?;
    let n = &s.node;
    let d = |d: Duration| humantime::format_duration(d).to_string();
    let path = |p: &Option<PathBuf>| or_none(p.as_ref().map(|p| p.display().to_string()));
    // The file's key when the flag was not given.
    let file = toml::from_str::<FileConfig>(&std::fs::read_to_string(paths.config.as_ref().expect("set above")).unwrap_or_default()).unwrap_or_default();
    let pick = |flag: &Option<PathBuf>, key: &Option<PathBuf>| path(&flag.clone().or(key.clone()));
    let peer_auth = match &n.peer_auth {
        PeerAuth::Secret(_) => format!("cluster secret from {}", pick(&paths.cluster_secret_file, &file.cluster_secret_file)),
        PeerAuth::NodeCertificate => "node certificates (TLS)".to_string(),
        PeerAuth::Insecure => "NONE (--insecure): anyone who reaches the port is a peer".to_string(),
    };
    let settings: Vec<(String, String)> = vec![
        ("id".into(), n.id.to_string()),
        ("listen".into(), s.listen.to_string()),
        ("advertise".into(), n.advertise.clone()),
        ("data_dir".into(), n.data_dir.display().to_string()),
        ("peers".into(), n.peers.iter().map(|(i, a)| format!("{i}={a}")).collect::<Vec<_>>().join(",")),
        ("peer_auth".into(), peer_auth),
        ("tls_cert".into(), pick(&paths.tls_cert, &file.tls_cert)),
        ("tls_key".into(), pick(&paths.tls_key, &file.tls_key)),
        ("tls_ca".into(), pick(&paths.tls_ca, &file.tls_ca)),
        ("acl_bootstrap_token_file".into(), pick(&paths.acl_bootstrap_token_file, &file.acl_bootstrap_token_file)),
        ("metrics_open".into(), n.metrics_open.to_string()),
        ("audit_log".into(), path(&n.audit_log)),
        ("heartbeat".into(), d(n.heartbeat)),
        ("election_timeout_min".into(), d(n.election_timeout.0)),
        ("election_timeout_max".into(), d(n.election_timeout.1)),
        ("min_ttl".into(), d(n.min_ttl)),
        ("max_ttl".into(), d(n.max_ttl)),
        ("history".into(), n.history.to_string()),
        ("history_bytes".into(), n.limits.history_bytes.to_string()),
        ("snapshot_every".into(), n.snapshot_every.to_string()),
        ("max_watches".into(), n.limits.max_watches.to_string()),
        ("max_blocking_queries".into(), n.limits.max_blocking_queries.to_string()),
        ("max_leases_per_client".into(), n.limits.max_leases_per_client.to_string()),
        ("log_format".into(), format!("{:?}", s.log_format).to_lowercase()),
        ("log_level".into(), or_none(s.log_level.clone())),
    ];
    Ok(runtime::config::render_settings(&settings))
}

/// The shortest election timeout must be at least this many heartbeats. A leader acts (renews
/// leases, expires them) only while its last quorum ack is younger than the longest election
/// timeout less one heartbeat, and followers campaign no sooner than the longest timeout after
/// their last contact; acks arrive about every heartbeat (`leadership::pulse`), plus a round
/// trip and scheduling. Four heartbeats under even the shortest timeout keep a follower from
/// campaigning over a few late heartbeats.
pub const MIN_ELECTION_HEARTBEATS: u32 = 4;

/// Parses `1=host:port,2=host:port`.
pub fn parse_peers(raw: &str) -> Result<BTreeMap<u64, String>, Vec<String>> {
    let pairs = raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|p| match p.split_once('=') {
        Some((id, addr)) => Ok((id.trim().to_string(), addr.trim().to_string())),
        None => Err(format!("peers: {p:?} is not ID=HOST:PORT")),
    });
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for p in pairs {
        match p {
            Ok(kv) => ok.push(kv),
            Err(e) => errors.push(e),
        }
    }
    match check_peers(ok) {
        Ok(m) if errors.is_empty() => Ok(m),
        Ok(_) => Err(errors),
        Err(mut e) => {
            errors.append(&mut e);
            Err(errors)
        }
    }
}

fn check_peers(pairs: Vec<(String, String)>) -> Result<BTreeMap<u64, String>, Vec<String>> {
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    for (id, addr) in pairs {
        let Ok(n) = id.parse::<u64>() else {
            errors.push(format!("peers: node id {id:?} is not a number"));
            continue;
        };
        if let Err(e) = check_host_port(&addr) {
            errors.push(format!("peers: node {n}: {e}"));
        }
        if out.insert(n, addr).is_some() {
            errors.push(format!("peers: node {n} is listed twice"));
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

pub fn check_host_port(addr: &str) -> Result<(), String> {
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| format!("{addr:?} is not HOST:PORT"))?;
    proto::validate::address(host.trim_matches(['[', ']']))?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{addr:?} has no valid port")),
    }
}

impl ServeArgs {
    /// Merges flags, file and defaults; returns every problem found.
    pub fn resolve(self) -> Result<Serve, Vec<String>> {
        let mut errors = Vec::new();
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
        let id = self.id.or(file.id);
        if id.is_none() {
            errors.push("id: missing (--id or `id` in the config file)".to_string());
        }
        if id == Some(0) {
            errors.push("id: must be a positive integer".to_string());
        }
        let listen = match (self.listen, file.listen) {
            (Some(l), _) => Some(l),
            (None, Some(l)) => match l.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    errors.push(format!("listen: {l:?} is not IP:PORT"));
                    None
                }
            },
            (None, None) => {
                errors.push("listen: missing (--listen IP:PORT)".to_string());
                None
            }
        };
        let data_dir = self.data_dir.or(file.data_dir);
        if data_dir.is_none() {
            errors.push("data-dir: missing (--data-dir DIR)".to_string());
        }
        let peers = match (self.peers, file.peers) {
            (Some(raw), _) => parse_peers(&raw).unwrap_or_else(|mut e| {
                errors.append(&mut e);
                BTreeMap::new()
            }),
            (None, Some(Peers::Flag(list))) => parse_peers(&list.into_vec().join(",")).unwrap_or_else(|mut e| {
                errors.append(&mut e);
                BTreeMap::new()
            }),
            (None, Some(Peers::Table(t))) => check_peers(t.into_iter().collect()).unwrap_or_else(|mut e| {
                errors.append(&mut e);
                BTreeMap::new()
            }),
            (None, None) => BTreeMap::new(),
        };
        let advertise = self.advertise.or(file.advertise).or_else(|| id.and_then(|i| peers.get(&i).cloned()));
        let advertise = match (advertise, listen) {
            (Some(a), _) => {
                if let Err(e) = check_host_port(&a) {
                    errors.push(format!("advertise: {e}"));
                }
                Some(a)
            }
            (None, Some(l)) if l.ip().is_unspecified() => {
                errors.push("advertise: needed when listening on an unspecified address".to_string());
                None
            }
            (None, l) => l.map(|l| l.to_string()),
        };
        let heartbeat = self.heartbeat.or(file.heartbeat).unwrap_or(crate::node::DEFAULT_HEARTBEAT);
        let et_min = self.election_timeout_min.or(file.election_timeout_min).unwrap_or(crate::node::DEFAULT_ELECTION_TIMEOUT.0);
        let et_max = self.election_timeout_max.or(file.election_timeout_max).unwrap_or(crate::node::DEFAULT_ELECTION_TIMEOUT.1);
        if heartbeat.is_zero() || heartbeat * MIN_ELECTION_HEARTBEATS > et_min {
            errors.push(format!(
                "heartbeat: {heartbeat:?} must be above zero and at most a {MIN_ELECTION_HEARTBEATS}th of election-timeout-min {et_min:?}, so a leader's lease keeps a margin over its heartbeats"
            ));
        }
        if et_min >= et_max {
            errors.push(format!("election-timeout-min {et_min:?} must be below election-timeout-max {et_max:?}"));
        }
        let min_ttl = self.min_ttl.or(file.min_ttl).unwrap_or(Duration::from_secs(1));
        let max_ttl = self.max_ttl.or(file.max_ttl).unwrap_or(Duration::from_secs(3600));
        if min_ttl.is_zero() || min_ttl > max_ttl {
            errors.push(format!("min-ttl {min_ttl:?} must be above zero and at most max-ttl {max_ttl:?}"));
        }
        let history = self.history.or(file.history).unwrap_or(100_000);
        if history == 0 {
            errors.push("history: must be at least 1".to_string());
        }
        let snapshot_every = self.snapshot_every.or(file.snapshot_every).unwrap_or(10_000);
        if snapshot_every == 0 {
            errors.push("snapshot-every: must be at least 1".to_string());
        }
        let defaults = crate::node::Limits::default();
        let limits = crate::node::Limits {
            max_watches: self.max_watches.or(file.max_watches).unwrap_or(defaults.max_watches),
            max_blocking_queries: self.max_blocking_queries.or(file.max_blocking_queries).unwrap_or(defaults.max_blocking_queries),
            max_leases_per_client: self.max_leases_per_client.or(file.max_leases_per_client).unwrap_or(defaults.max_leases_per_client),
            history_bytes: self.history_bytes.or(file.history_bytes).unwrap_or(defaults.history_bytes),
        };
        for (name, v) in [
            ("max-watches", limits.max_watches as u64),
            ("max-blocking-queries", limits.max_blocking_queries as u64),
            ("max-leases-per-client", limits.max_leases_per_client),
            ("history-bytes", limits.history_bytes as u64),
        ] {
            if v == 0 {
                errors.push(format!("{name}: must be at least 1"));
            }
        }
        let insecure = self.insecure || file.insecure.unwrap_or(false);
        let tls_files = match (self.tls_cert.or(file.tls_cert), self.tls_key.or(file.tls_key), self.tls_ca.or(file.tls_ca)) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => Some(TlsFiles { cert, key, ca }),
            _ => {
                errors.push("tls-cert, tls-key, tls-ca: give all three (make them with `registry tls init`), or none".to_string());
                None
            }
        };
        let tls = tls_files.and_then(|f| match Tls::load(f) {
            Ok(t) => Some(t),
            Err(e) => {
                errors.push(format!("tls: {e}"));
                None
            }
        });
        let secret_file = self.cluster_secret_file.or(file.cluster_secret_file);
        let peer_auth = match (secret_file, insecure, tls.is_some()) {
            (Some(_), _, true) => {
                errors.push("cluster-secret-file and tls: with TLS, peers prove membership with their node certificates; drop the secret".to_string());
                None
            }
            (None, true, true) => {
                errors.push("insecure and tls: with TLS, peers are always authenticated; drop --insecure".to_string());
                None
            }
            (None, false, true) => Some(PeerAuth::NodeCertificate),
            (Some(_), true, false) => {
                errors.push("cluster-secret-file and insecure: give one or the other".to_string());
                None
            }
            (Some(path), false, false) => match ClusterSecret::from_file(&path) {
                Ok(s) => Some(PeerAuth::Secret(s)),
                Err(e) => {
                    errors.push(format!("cluster-secret-file: {e}"));
                    None
                }
            },
            (None, true, false) => Some(PeerAuth::Insecure),
            (None, false, false) => {
                errors.push(
                    "peer authentication: give --tls-cert/--tls-key/--tls-ca (see `registry tls init`), or --cluster-secret-file FILE \
                     (the same secret on every node; create one with `head -c 32 /dev/urandom | base64 > FILE`), or --insecure to let \
                     anyone who reaches this port act as a peer"
                        .to_string(),
                );
                None
            }
        };
        let acl_bootstrap = match self.acl_bootstrap_token_file.or(file.acl_bootstrap_token_file) {
            None => None,
            Some(path) => match std::fs::read_to_string(&path) {
                Err(e) => {
                    errors.push(format!("acl-bootstrap-token-file: reading {}: {e}", path.display()));
                    None
                }
                Ok(text) => match crate::acl::check_token(&text) {
                    Ok(()) => Some(crate::acl::TokenHash::of(&text)),
                    Err(e) => {
                        errors.push(format!("acl-bootstrap-token-file: {}: {e}", path.display()));
                        None
                    }
                },
            },
        };
        if acl_bootstrap.is_some() && matches!(peer_auth, Some(PeerAuth::Insecure)) {
            errors.push(
                "acl-bootstrap-token-file and insecure: tokens protect nothing while anyone may act as a peer; give --cluster-secret-file or --tls-*"
                    .to_string(),
            );
        }
        let log_level = match (self.log_level.clone(), file.log_level.as_deref()) {
            (Some(l), _) => Some(l),
            (None, Some(l)) => runtime::logs::parse_level(l).map_err(|e| errors.push(format!("log_level: {e}"))).ok(),
            (None, None) => None,
        };
        // Read before the errors are counted: a bad file is one of them.
        let join_token = match &self.join_token_file {
            None => None,
            Some(path) => match std::fs::read_to_string(path) {
                Ok(t) if crate::acl::check_token(&t).is_ok() => Some(t.trim().to_string()),
                Ok(_) => {
                    errors.push(format!("join-token-file: {} does not hold a token", path.display()));
                    None
                }
                Err(e) => {
                    errors.push(format!("join-token-file: reading {}: {e}", path.display()));
                    None
                }
            },
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut node = NodeConfig::new(id.unwrap(), advertise.unwrap(), data_dir.unwrap(), peers);
        node.heartbeat = heartbeat;
        node.election_timeout = (et_min, et_max);
        node.min_ttl = min_ttl;
        node.max_ttl = max_ttl;
        node.history = history;
        node.snapshot_every = snapshot_every;
        node.join = self.join;
        node.join_token = join_token;
        node.limits = limits;
        node.peer_auth = peer_auth.unwrap();
        node.tls = tls;
        node.acl_bootstrap = acl_bootstrap;
        node.metrics_open = self.metrics_open || file.metrics_open.unwrap_or(false);
        node.audit_log = self.audit_log.or(file.audit_log);
        Ok(Serve {
            listen: listen.unwrap(),
            log_format: self.log_format.or(file.log_format).unwrap_or_default(),
            log_level,
            node,
            fault_disk_stall_file: self.fault_disk_stall_file,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse() {
        let p = parse_peers("1=127.0.0.1:7001, 2=localhost:7002").unwrap();
        assert_eq!(p[&2], "localhost:7002");
        let e = parse_peers("1=127.0.0.1:7001,x=a:1,3=bad,1=c:2").unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
    }

    #[test]
    fn every_error_is_reported() {
        let args = ServeArgs {
            heartbeat: Some(Duration::from_secs(5)),
            min_ttl: Some(Duration::from_secs(10)),
            max_ttl: Some(Duration::from_secs(1)),
            join_token_file: Some("/nonexistent/join-token".into()),
            ..Default::default()
        };
        let errors = args.resolve().unwrap_err();
        for needle in ["id:", "listen:", "data-dir:", "heartbeat:", "min-ttl", "join-token-file:"] {
            assert!(errors.iter().any(|e| e.starts_with(needle)), "{needle} missing from {errors:?}");
        }
    }

    #[test]
    fn election_timeouts_keep_a_margin_over_the_heartbeat() {
        let base =
            || ServeArgs { id: Some(1), listen: Some("127.0.0.1:1".parse().unwrap()), data_dir: Some("/tmp/x".into()), insecure: true, ..Default::default() };
        let ok = ServeArgs {
            heartbeat: Some(Duration::from_millis(25)),
            election_timeout_min: Some(Duration::from_millis(100)),
            election_timeout_max: Some(Duration::from_millis(200)),
            ..base()
        };
        assert!(ok.resolve().is_ok());
        // The old chaos topology: a 100 ms lease over 30 ms heartbeats leaves no room for a late ack.
        let tight = ServeArgs {
            heartbeat: Some(Duration::from_millis(30)),
            election_timeout_min: Some(Duration::from_millis(100)),
            election_timeout_max: Some(Duration::from_millis(180)),
            ..base()
        };
        let e = tight.resolve().unwrap_err();
        assert!(e.len() == 1 && e[0].starts_with("heartbeat:"), "{e:?}");
        assert!(base().resolve().is_ok(), "the defaults pass");
    }

    #[test]
    fn file_and_flags_merge() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.toml");
        std::fs::write(
            &path,
            "id = 2\nlisten = \"127.0.0.1:7002\"\ndata_dir = \"/tmp/x\"\nheartbeat = \"40ms\"\n[peers]\n1 = \"127.0.0.1:7001\"\n2 = \"127.0.0.1:7002\"\n",
        )
        .unwrap();
        let args = ServeArgs { config: Some(path), id: Some(2), insecure: true, ..Default::default() };
        let s = args.resolve().unwrap();
        assert_eq!(s.node.heartbeat, Duration::from_millis(40));
        assert_eq!(s.node.advertise, "127.0.0.1:7002");
        assert_eq!(s.node.peers.len(), 2);
    }

    #[test]
    fn a_node_needs_peer_credentials_or_an_explicit_insecure() {
        let dir = tempfile::tempdir().unwrap();
        let base = || ServeArgs { id: Some(1), listen: Some("127.0.0.1:1".parse().unwrap()), data_dir: Some("/tmp/x".into()), ..Default::default() };
        let e = base().resolve().unwrap_err();
        assert!(e.len() == 1 && e[0].starts_with("peer authentication:") && e[0].contains("--insecure"), "{e:?}");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "bm90LWEtcmVhbC1zZWNyZXQtYnV0LWxvbmctZW5vdWdo\n").unwrap();
        let s = ServeArgs { cluster_secret_file: Some(secret.clone()), ..base() }.resolve().unwrap();
        assert!(matches!(s.node.peer_auth, PeerAuth::Secret(_)));
        let e = ServeArgs { cluster_secret_file: Some(secret), insecure: true, ..base() }.resolve().unwrap_err();
        assert!(e[0].contains("one or the other"), "{e:?}");
        let e = ServeArgs { cluster_secret_file: Some(dir.path().join("missing")), ..base() }.resolve().unwrap_err();
        assert!(e[0].starts_with("cluster-secret-file:"), "{e:?}");
        assert!(matches!(ServeArgs { insecure: true, ..base() }.resolve().unwrap().node.peer_auth, PeerAuth::Insecure));
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.toml");
        std::fs::write(&path, "id = 1\nlisen = \"x\"\n").unwrap();
        let e = ServeArgs { config: Some(path), ..Default::default() }.resolve().unwrap_err();
        assert!(e[0].contains("lisen"), "{e:?}");
    }
}
