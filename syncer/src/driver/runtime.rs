//! The HAProxy Runtime API driver: changes servers through the stats socket (`add server`,
//! `set server ... state`, `set weight`, `del server`), so nothing on the hot path reloads
//! HAProxy (docs/syncer.md, "How it works").
//!
//! One command per connection: HAProxy answers a non-interactive connection and closes it, so
//! there is no prompt handling, no session state to get out of step and nothing to reconnect.
//! Every command has a deadline covering connect, write and read.
//!
//! Format facts this module relies on, checked against HAProxy 2.6.12 (Debian 12):
//! - `show info`: `Key: value` lines; `Pid` is the worker's pid (a reload with `-W` forks a new
//!   worker, so it changes), `Start_time_sec` its start in Unix seconds.
//! - `show servers state B`: a version line `1`, a `# col col ...` header, one space-separated
//!   row per server, then an empty line; an unknown backend answers `Can't find backend.`.
//! - `srv_admin_state` is a bit set (include/haproxy/server-t.h): 0x01 forced maint, 0x02
//!   inherited maint, 0x04 maint by configuration (`disabled`, kept after `state ready`, so
//!   ignored), 0x08 forced drain, 0x10 inherited drain, 0x20 maint by a resolution failure.
//!   Seen: a fresh dynamic server 1, `state ready` 0, `state drain` 8, a `disabled` server 5 and
//!   after `state ready` 4.
//! - `show stat B 4 -1` (4 = servers only): CSV with a `# pxname,svname,...` header; `scur` is
//!   the current sessions. Its `weight` is the effective weight, not the user weight.
//! - Answers: `add server` -> `New server registered.`, `del server` -> `Server deleted.`,
//!   `set server`/`set weight`/`enable health`/`shutdown sessions` -> nothing; errors are one
//!   sentence (`No such server.`, `Only servers in maintenance mode can be deleted.`,
//!   `Server still has connections attached to it, cannot remove it.`, ...).

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::driver::{Driver, DriverError, Generation};
use crate::model::{ActualServer, AdminState, DesiredServer, Op};

/// Options `add server` gets when the configuration gives none: health-check every second,
/// down after 2 failures, up after 1 success (so a new server takes traffic within ~1 s).
pub const DEFAULT_SERVER_OPTIONS: &str = "check inter 1s fall 2 rise 1";

/// Deadline of one command (connect, send, read the whole answer).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest answer we read: `show stat` of a 1,000-server backend is about 0.5 MB, so this
/// only guards against a runaway peer.
const MAX_ANSWER: u64 = 64 << 20;

/// `del server` right after `shutdown sessions` can still find connections being torn down;
/// it is retried this many times, this far apart.
const DELETE_RETRIES: u32 = 10;
const DELETE_RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Where HAProxy's Runtime API listens (`stats socket` in haproxy.cfg).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix socket path (`stats socket /run/haproxy/admin.sock level admin`).
    Unix(PathBuf),
    /// `host:port` (`stats socket ipv4@127.0.0.1:9999 level admin`).
    Tcp(String),
}

impl Endpoint {
    /// `unix:PATH` or `tcp:HOST:PORT` explicitly; otherwise a value containing `/` is a path
    /// and anything else is `host:port`.
    pub fn parse(s: &str) -> Endpoint {
        if let Some(p) = s.strip_prefix("unix:") {
            Endpoint::Unix(PathBuf::from(p))
        } else if let Some(a) = s.strip_prefix("tcp:") {
            Endpoint::Tcp(a.to_string())
        } else if s.contains('/') {
            Endpoint::Unix(PathBuf::from(s))
        } else {
            Endpoint::Tcp(s.to_string())
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// The Runtime API driver. Holds no connection between commands (see the module doc).
#[derive(Debug, Clone)]
pub struct RuntimeApi {
    endpoint: Endpoint,
    server_options: String,
    timeout: Duration,
}

impl RuntimeApi {
    /// `server_options` is what `add server B/S ADDR:PORT` gets before `weight W`, e.g.
    /// [`DEFAULT_SERVER_OPTIONS`]. If it contains `check`, health checks are enabled after the add
    /// (HAProxy starts dynamic servers with checks off).
    pub fn new(endpoint: Endpoint, server_options: impl Into<String>) -> RuntimeApi {
        RuntimeApi { endpoint, server_options: server_options.into(), timeout: DEFAULT_TIMEOUT }
    }

    /// Overrides the per-command deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> RuntimeApi {
        self.timeout = timeout;
        self
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn server_options(&self) -> &str {
        &self.server_options
    }

    /// Sends one command and returns HAProxy's whole answer. Connection problems and the
    /// deadline are `Unreachable`; what the answer means is the caller's business.
    pub async fn command(&self, cmd: &str) -> Result<String, DriverError> {
        // One line only: a newline would start a second command (and `;` too, which callers
        // rule out with `check_token`).
        if cmd.contains(['\n', '\r']) {
            return Err(DriverError::Refused(format!("command contains a line break: {cmd:?}")));
        }
        let run = async {
            match &self.endpoint {
                Endpoint::Unix(p) => exchange(tokio::net::UnixStream::connect(p).await?, cmd).await,
                Endpoint::Tcp(a) => exchange(tokio::net::TcpStream::connect(a.as_str()).await?, cmd).await,
            }
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(Ok(text)) => Ok(text),
            // The packages put the syncer user in the haproxy group only if haproxy was there
            // first: say what to run rather than just "permission denied".
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::PermissionDenied && matches!(self.endpoint, Endpoint::Unix(_)) => Err(DriverError::Unreachable(format!(
                "{}: {cmd}: {e}: the syncer's user may not open the socket; if it belongs to the haproxy group, run `usermod -a -G haproxy syncer` and restart the syncer",
                self.endpoint
            ))),
            Ok(Err(e)) => Err(DriverError::Unreachable(format!("{}: {cmd}: {e}", self.endpoint))),
            Err(_) => Err(DriverError::Unreachable(format!("{}: {cmd}: no answer within {:?}", self.endpoint, self.timeout))),
        }
    }

    /// What HAProxy lacks for the syncer to work, each with what to do (empty: nothing). Read
    /// from `show info` (version 2.6 or later: `add server`/`del server`), `show cli level`
    /// (the socket must be `level admin`) and `show backend` (each mapped backend must be
    /// declared in haproxy.cfg). `Err` only when HAProxy cannot be asked.
    pub async fn prerequisites(&self, backends: &[String]) -> Result<Vec<String>, DriverError> {
        let mut problems = Vec::new();
        let info = self.command("show info").await?;
        match info.lines().find_map(|l| l.strip_prefix("Version:")).map(str::trim) {
            Some(v) => {
                let mut parts = v.split(|c: char| !c.is_ascii_digit()).filter(|p| !p.is_empty()).map(|p| p.parse::<u32>().unwrap_or(0));
                let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
                if (major, minor) < (2, 6) {
                    problems.push(format!("HAProxy {v}: the syncer needs 2.6 or later (dynamic servers: add server / del server)"));
                }
            }
            None => problems.push(format!("show info has no Version line: {}", info.trim())),
        }
        let level = self.command("show cli level").await?;
        if level.trim() != "admin" {
            problems.push(format!(
                "{}: the socket's level is {:?}; the syncer needs `stats socket ... level admin` to add and remove servers",
                self.endpoint,
                level.trim()
            ));
        }
        let declared = self.command("show backend").await?;
        let names: Vec<&str> = declared.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
        for b in backends {
            if !names.contains(&b.as_str()) {
                problems.push(format!(
                    "backend {b:?} is not declared in haproxy.cfg (declared: {}); add `backend {b}` with a dynamic balance algorithm such as roundrobin",
                    names.join(", ")
                ));
            }
        }
        Ok(problems)
    }

    /// Runs a command whose success answer is empty (`set ...`, `enable health`, ...).
    async fn expect_empty(&self, cmd: &str) -> Result<(), DriverError> {
        let answer = self.command(cmd).await?;
        if answer.trim().is_empty() {
            Ok(())
        } else {
            Err(refused(cmd, &answer))
        }
    }

    async fn set_state(&self, backend: &str, name: &str, state: AdminState) -> Result<(), DriverError> {
        self.expect_empty(&format!("set server {backend}/{name} state {}", state.as_str())).await
    }

    async fn add(&self, backend: &str, d: &DesiredServer) -> Result<(), DriverError> {
        check_token("address", &d.address)?;
        let addr = if d.address.contains(':') { format!("[{}]:{}", d.address, d.port) } else { format!("{}:{}", d.address, d.port) };
        let mut cmd = format!("add server {backend}/{} {addr}", d.name);
        if !self.server_options.trim().is_empty() {
            cmd.push(' ');
            cmd.push_str(self.server_options.trim());
        }
        // Last, so it wins over a `weight` in the template.
        cmd.push_str(&format!(" weight {}", d.weight));
        // A dynamic server starts in maintenance with its checks off, whatever the options say.
        // All three commands go on one line (the Runtime API runs `;`-separated commands in
        // order): one connection per server instead of three, which is what makes a thousand
        // adds take a few hundred milliseconds.
        if self.server_options.split_whitespace().any(|w| w == "check") {
            cmd.push_str(&format!("; enable health {backend}/{}", d.name));
        }
        cmd.push_str(&format!("; set server {backend}/{} state {}", d.name, d.state.as_str()));
        let answer = self.command(&cmd).await?;
        // Success is the add's line and nothing from the others (they answer nothing on success).
        if answer.contains("New server registered.") && answer.replace("New server registered.", "").trim().is_empty() {
            Ok(())
        } else {
            Err(refused(&cmd, &answer))
        }
    }

    async fn remove(&self, backend: &str, name: &str) -> Result<(), DriverError> {
        // `del server` only accepts servers in maintenance; both commands go on one line.
        // Someone else having deleted it already is what we wanted.
        let del = format!("del server {backend}/{name}");
        let cmd = format!("set server {backend}/{name} state maint; {del}");
        let mut answer = self.command(&cmd).await?;
        if answer.contains("Server deleted.") {
            return Ok(());
        }
        if answer.lines().map(str::trim).filter(|l| !l.is_empty()).all(|l| l == "No such server.") {
            return Ok(());
        }
        if !answer.contains("connections") {
            return Err(refused(&cmd, &answer));
        }
        // Still has connections (the planner decided the drain is over, or they are idle
        // keep-alive connections): cut them and try again, briefly, while they close.
        self.expect_empty(&format!("shutdown sessions server {backend}/{name}")).await?;
        for _ in 0..DELETE_RETRIES {
            answer = self.command(&del).await?;
            if answer.contains("Server deleted.") {
                return Ok(());
            }
            tokio::time::sleep(DELETE_RETRY_PAUSE).await;
        }
        Err(refused(&del, &answer))
    }

    async fn apply_one(&self, backend: &str, op: &Op) -> Result<(), DriverError> {
        check_token("server name", op.server())?;
        match op {
            Op::Add(d) => self.add(backend, d).await,
            Op::SetWeight { name, weight } => self.expect_empty(&format!("set weight {backend}/{name} {weight}")).await,
            Op::SetState { name, state } => self.set_state(backend, name, *state).await,
            Op::Remove { name } => self.remove(backend, name).await,
        }
    }
}

impl Driver for RuntimeApi {
    async fn generation(&mut self) -> Result<Generation, DriverError> {
        parse_show_info(&self.command("show info").await?)
    }

    async fn servers(&mut self, backend: &str) -> Result<Vec<ActualServer>, DriverError> {
        check_token("backend", backend)?;
        let rows = parse_servers_state(&self.command(&format!("show servers state {backend}")).await?)?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        // Sessions are only in `show stat`; a server added or deleted between the two
        // commands simply has no entry, which reads as 0 (the next round corrects it).
        // `show stat B 4 -1` (4 = server rows only) reads an all-digit name as a proxy id, so
        // such a backend gets the whole dump, filtered by name.
        let cmd = if backend.bytes().all(|b| b.is_ascii_digit()) { "show stat".to_string() } else { format!("show stat {backend} 4 -1") };
        let sessions = parse_stat_sessions(&self.command(&cmd).await?, backend)?;
        Ok(rows
            .into_iter()
            .map(|r| ActualServer {
                sessions: sessions.get(&r.name).copied().unwrap_or(0),
                name: r.name,
                address: r.address,
                port: r.port,
                weight: r.weight,
                state: r.state,
            })
            .collect())
    }

    async fn apply(&mut self, backend: &str, ops: &[Op]) -> Result<(), (usize, DriverError)> {
        check_token("backend", backend).map_err(|e| (0, e))?;
        for (i, op) in ops.iter().enumerate() {
            self.apply_one(backend, op).await.map_err(|e| (i, e))?;
        }
        Ok(())
    }
}

/// Sends `cmd`, half-closes (the master CLI waits for the end of input before it answers and
/// closes; the stats socket answers either way) and reads until HAProxy closes.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, cmd: &str) -> std::io::Result<String> {
    s.write_all(format!("{cmd}\n").as_bytes()).await?;
    s.shutdown().await?;
    let mut buf = Vec::new();
    (&mut s).take(MAX_ANSWER).read_to_end(&mut buf).await?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn refused(cmd: &str, answer: &str) -> DriverError {
    let text = answer.trim();
    DriverError::Refused(if text.is_empty() { format!("{cmd}: empty answer") } else { format!("{cmd}: {text}") })
}

/// Rejects values that would change the meaning of a CLI line: HAProxy splits on whitespace,
/// runs several commands separated by `;` and treats `\` as an escape.
fn check_token(what: &str, v: &str) -> Result<(), DriverError> {
    if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control() || c == ';' || c == '\\') {
        return Err(DriverError::Refused(format!("invalid {what} {v:?} for the HAProxy CLI")));
    }
    Ok(())
}

/// The process identity in `show info`: the worker's pid and start time. With `-W` a reload
/// forks a new worker (new pid) and a restart starts a new process; the start time guards
/// against pid reuse.
pub fn parse_show_info(text: &str) -> Result<Generation, DriverError> {
    let fields: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim(), v.trim())).collect();
    let Some(pid) = fields.get("Pid").filter(|p| p.parse::<u32>().is_ok()) else {
        return Err(if text.contains("Name: HAProxy") {
            DriverError::Protocol(format!("no Pid in show info: {}", text.trim()))
        } else {
            // Typically a permission problem (`Permission denied.`) or not HAProxy at all.
            DriverError::Refused(format!("show info: {}", text.trim()))
        });
    };
    let mut g = format!("pid={pid}");
    if let Some(start) = fields.get("Start_time_sec") {
        g.push_str(&format!(" start={start}"));
    }
    if let Some(n) = fields.get("Process_num") {
        g.push_str(&format!(" proc={n}"));
    }
    Ok(Generation(g))
}

/// One row of `show servers state`, the columns the syncer needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRow {
    pub name: String,
    pub address: String,
    pub port: u16,
    /// `srv_uweight`: the weight set by configuration or `set weight`.
    pub weight: u32,
    pub state: AdminState,
    /// The raw `srv_admin_state` bits.
    pub admin_bits: u32,
}

const ADMF_MAINT: u32 = 0x01 | 0x02 | 0x20; // forced, inherited, resolution failure (not 0x04: see the module doc)
const ADMF_DRAIN: u32 = 0x08 | 0x10; // forced, inherited

/// `srv_admin_state` bits to the Runtime API's three states (maint wins over drain).
pub fn admin_state(bits: u32) -> AdminState {
    if bits & ADMF_MAINT != 0 {
        AdminState::Maint
    } else if bits & ADMF_DRAIN != 0 {
        AdminState::Drain
    } else {
        AdminState::Ready
    }
}

/// Parses `show servers state` (format version 1), mapping columns by the header's names.
/// An answer that is not a state dump (`Can't find backend.`) is `Refused` with its text.
pub fn parse_servers_state(text: &str) -> Result<Vec<StateRow>, DriverError> {
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("").trim();
    match first.parse::<u32>() {
        Ok(1) => {}
        Ok(v) => return Err(DriverError::Protocol(format!("show servers state: format version {v}, expected 1"))),
        Err(_) => return Err(DriverError::Refused(format!("show servers state: {}", text.trim()))),
    }
    let header = lines.next().and_then(|h| h.strip_prefix('#')).ok_or_else(|| DriverError::Protocol("show servers state: no # header line".into()))?;
    let cols: Vec<&str> = header.split_whitespace().collect();
    let col = |name: &str| cols.iter().position(|c| *c == name).ok_or_else(|| DriverError::Protocol(format!("show servers state: no {name} column")));
    let (i_name, i_addr, i_port, i_weight, i_admin) = (col("srv_name")?, col("srv_addr")?, col("srv_port")?, col("srv_uweight")?, col("srv_admin_state")?);
    let mut rows = Vec::new();
    for line in lines {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let get = |i: usize| f.get(i).copied().ok_or_else(|| DriverError::Protocol(format!("show servers state: short row: {line}")));
        let num = |i: usize| -> Result<u32, DriverError> {
            let v = get(i)?;
            v.parse().map_err(|_| DriverError::Protocol(format!("show servers state: {:?} is not a number in column {}: {line}", v, cols[i])))
        };
        let admin_bits = num(i_admin)?;
        rows.push(StateRow {
            name: get(i_name)?.to_string(),
            address: get(i_addr)?.to_string(),
            port: u16::try_from(num(i_port)?).map_err(|_| DriverError::Protocol(format!("show servers state: port out of range: {line}")))?,
            weight: num(i_weight)?,
            state: admin_state(admin_bits),
            admin_bits,
        });
    }
    Ok(rows)
}

/// Current sessions (`scur`) per server of `backend` from `show stat` CSV, columns mapped by
/// the `# pxname,svname,...` header. FRONTEND/BACKEND rows and other proxies are skipped.
pub fn parse_stat_sessions(text: &str, backend: &str) -> Result<HashMap<String, u64>, DriverError> {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("");
    let Some(header) = header.strip_prefix("# ") else {
        return Err(DriverError::Refused(format!("show stat: {}", text.trim())));
    };
    let cols: Vec<&str> = header.split(',').collect();
    let col = |name: &str| cols.iter().position(|c| *c == name).ok_or_else(|| DriverError::Protocol(format!("show stat: no {name} column")));
    let (i_px, i_sv, i_scur) = (col("pxname")?, col("svname")?, col("scur")?);
    let mut out = HashMap::new();
    for line in lines {
        if line.trim().is_empty() {
            continue;
        }
        // No field of the columns we read contains a comma (names cannot).
        let f: Vec<&str> = line.split(',').collect();
        let (Some(px), Some(sv)) = (f.get(i_px), f.get(i_sv)) else { continue };
        if *px != backend || *sv == "FRONTEND" || *sv == "BACKEND" {
            continue;
        }
        let scur = f.get(i_scur).copied().unwrap_or("");
        let n =
            if scur.is_empty() { 0 } else { scur.parse().map_err(|_| DriverError::Protocol(format!("show stat: scur {scur:?} is not a number: {line}")))? };
        out.insert(sv.to_string(), n);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `show info` captured from HAProxy 2.6.12 (Debian 12), worker of `haproxy -W`.
    const SHOW_INFO: &str = r#"Name: HAProxy
Version: 2.6.12-1+deb12u4
Release_date: 2026/10/17
Nbthread: 2
Nbproc: 1
Process_num: 1
Pid: 7923
Uptime: 0d 0h00m54s
Uptime_sec: 54
Memmax_MB: 0
PoolAlloc_MB: 0
PoolUsed_MB: 0
PoolFailed: 0
Ulimit-n: 19999
Maxsock: 19999
Maxconn: 9979
Hard_maxconn: 9979
CurrConns: 0
CumConns: 48
CumReq: 20
MaxSslConns: 0
CurrSslConns: 0
CumSslConns: 0
Maxpipes: 0
PipesUsed: 0
PipesFree: 0
ConnRate: 0
ConnRateLimit: 0
MaxConnRate: 1
SessRate: 0
SessRateLimit: 0
MaxSessRate: 1
SslRate: 0
SslRateLimit: 0
MaxSslRate: 0
SslFrontendKeyRate: 0
SslFrontendMaxKeyRate: 0
SslFrontendSessionReuse_pct: 0
SslBackendKeyRate: 0
SslBackendMaxKeyRate: 0
SslCacheLookups: 0
SslCacheMisses: 0
CompressBpsIn: 0
CompressBpsOut: 0
CompressBpsRateLim: 0
Tasks: 16
Run_queue: 0
Idle_pct: 100
node: vm
Stopping: 0
Jobs: 4
Unstoppable Jobs: 1
Listeners: 3
ActivePeers: 0
ConnectedPeers: 0
DroppedLogs: 0
BusyPolling: 0
FailedResolutions: 0
TotalBytesOut: 6849
TotalSplicdedBytesOut: 0
BytesOutRate: 0
DebugCommandsIssued: 0
CumRecvLogs: 0
Build info: 2.6.12-1+deb12u4
Memmax_bytes: 0
PoolAlloc_bytes: 128496
PoolUsed_bytes: 128496
Start_time_sec: 1795434364
Tainted: 0

"#;

    /// `show servers state web` from HAProxy 2.6.12: sd-c was added without `check` and is in
    /// maint (admin 1), sd-x was added with `check` and set to drain (admin 8), sd-y in maint
    /// with weight 0.
    const SERVERS_STATE: &str = r#"1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 web 1 sd-c 127.0.0.1 0 1 5 5 41 1 0 0 0 0 0 0 - 18777 - 0 0 - - 0
3 web 2 sd-x 127.0.0.1 2 8 50 50 1 1 0 0 2 0 0 0 - 9 - 0 0 - - 0
3 web 3 sd-y 127.0.0.1 0 1 0 0 0 1 0 0 0 0 0 0 - 10 - 0 0 - - 0

"#;

    /// `show stat web 4 -1` from the same process (4 = servers only).
    const SHOW_STAT: &str = r#"# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,conn_rate,conn_rate_max,conn_tot,intercepted,dcon,dses,wrew,connect,reuse,cache_lookups,cache_hits,srv_icur,src_ilim,qtime_max,ctime_max,rtime_max,ttime_max,eint,idle_conn_cur,safe_conn_cur,used_conn_cur,need_conn_est,uweight,agg_server_status,agg_server_check_status,agg_check_status,-,ssl_sess,ssl_reused_sess,ssl_failed_handshake,h2_headers_rcvd,h2_data_rcvd,h2_settings_rcvd,h2_rst_stream_rcvd,h2_goaway_rcvd,h2_detected_conn_protocol_errors,h2_detected_strm_protocol_errors,h2_rst_stream_resp,h2_goaway_resp,h2_open_connections,h2_backend_open_streams,h2_total_connections,h2_backend_total_streams,h1_open_connections,h1_open_streams,h1_total_connections,h1_total_streams,h1_bytes_in,h1_bytes_out,h1_spliced_bytes_in,h1_spliced_bytes_out,
web,sd-c,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT,1,1,0,,,41,,,1,3,1,,0,,2,0,,0,,,,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,,,,,,,,,127.0.0.1:18777,,http,,,,,,,,0,0,0,,,0,0,0,0,0,0,0,0,0,0,0,5,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,
web,sd-x,0,0,0,0,,0,0,0,,0,,0,0,0,0,DRAIN,50,1,0,,,1,,,1,3,2,,0,,2,0,,0,,,,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,,,,,,,,,127.0.0.1:9,,http,,,,,,,,0,0,0,,,0,0,0,0,0,0,0,0,0,0,0,50,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,
web,sd-y,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT,1,1,0,,,0,,,1,3,3,,0,,2,0,,0,,,,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,,,,,,,,,127.0.0.1:10,,http,,,,,,,,0,0,0,,,0,0,0,0,0,0,0,0,0,0,0,0,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,

"#;

    #[test]
    fn generation_from_show_info() {
        assert_eq!(parse_show_info(SHOW_INFO).unwrap(), Generation("pid=7923 start=1795434364 proc=1".into()));
    }

    #[test]
    fn generation_changes_with_pid_or_start_time() {
        let other_pid = SHOW_INFO.replace("Pid: 7923", "Pid: 7924");
        let other_start = SHOW_INFO.replace("Start_time_sec: 1795434364", "Start_time_sec: 1795434365");
        let g = parse_show_info(SHOW_INFO).unwrap();
        assert_ne!(parse_show_info(&other_pid).unwrap(), g);
        assert_ne!(parse_show_info(&other_start).unwrap(), g);
        // Uptime moves on every call and must not count as a new generation.
        assert_eq!(parse_show_info(&SHOW_INFO.replace("Uptime_sec: 54", "Uptime_sec: 99")).unwrap(), g);
    }

    #[test]
    fn show_info_errors() {
        assert!(matches!(parse_show_info("Permission denied.\n\n"), Err(DriverError::Refused(_))));
        assert!(matches!(parse_show_info("Name: HAProxy\nVersion: 2.6\n"), Err(DriverError::Protocol(_))));
    }

    #[test]
    fn servers_state_rows() {
        let rows = parse_servers_state(SERVERS_STATE).unwrap();
        let got: Vec<_> = rows.iter().map(|r| (r.name.as_str(), r.address.as_str(), r.port, r.weight, r.state, r.admin_bits)).collect();
        assert_eq!(
            got,
            vec![
                ("sd-c", "127.0.0.1", 18777, 5, AdminState::Maint, 1),
                ("sd-x", "127.0.0.1", 9, 50, AdminState::Drain, 8),
                ("sd-y", "127.0.0.1", 10, 0, AdminState::Maint, 1),
            ]
        );
    }

    #[test]
    fn servers_state_config_disabled_server() {
        // Captured from a backend with `server dis 127.0.0.1:9 disabled` and a weight-0 server,
        // after `set server b/dis state ready` (0x04 stays set but the server is ready).
        let before = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n2 b 1 dis 127.0.0.1 0 5 1 1 1 1 0 0 8 0 0 0 - 9 - 0 0 - - 0\n2 b 2 dr 127.0.0.1 2 0 0 0 1 1 0 2 0 0 0 0 - 9 - 0 0 - - 0\n\n";
        let after = before.replace("2 b 1 dis 127.0.0.1 0 5", "2 b 1 dis 127.0.0.1 2 4");
        let states = |t: &str| parse_servers_state(t).unwrap().into_iter().map(|r| (r.name, r.state)).collect::<Vec<_>>();
        assert_eq!(states(before), vec![("dis".into(), AdminState::Maint), ("dr".into(), AdminState::Ready)]);
        assert_eq!(states(&after), vec![("dis".into(), AdminState::Ready), ("dr".into(), AdminState::Ready)]);
    }

    #[test]
    fn servers_state_maps_columns_by_name() {
        // Same data, columns in another order and one unknown column: still parsed.
        let text = "1\n# srv_port extra srv_admin_state srv_name srv_uweight srv_addr\n8080 x 8 sd-a 20 10.0.0.5\n\n";
        let rows = parse_servers_state(text).unwrap();
        assert_eq!(rows, vec![StateRow { name: "sd-a".into(), address: "10.0.0.5".into(), port: 8080, weight: 20, state: AdminState::Drain, admin_bits: 8 }]);
    }

    #[test]
    fn servers_state_empty_backend_and_errors() {
        let empty = SERVERS_STATE.lines().take(2).collect::<Vec<_>>().join("\n") + "\n\n";
        assert_eq!(parse_servers_state(&empty).unwrap(), vec![]);
        match parse_servers_state("Can't find backend.\n\n") {
            Err(DriverError::Refused(m)) => assert!(m.contains("Can't find backend."), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_servers_state("2\n# a b\n"), Err(DriverError::Protocol(_))));
        assert!(matches!(parse_servers_state("1\n# srv_name srv_addr\nx y\n"), Err(DriverError::Protocol(_))));
    }

    #[test]
    fn admin_state_bits() {
        assert_eq!(admin_state(0), AdminState::Ready);
        assert_eq!(admin_state(0x04), AdminState::Ready);
        assert_eq!(admin_state(0x01), AdminState::Maint);
        assert_eq!(admin_state(0x02), AdminState::Maint);
        assert_eq!(admin_state(0x20), AdminState::Maint);
        assert_eq!(admin_state(0x05), AdminState::Maint);
        assert_eq!(admin_state(0x08), AdminState::Drain);
        assert_eq!(admin_state(0x10), AdminState::Drain);
        assert_eq!(admin_state(0x09), AdminState::Maint);
    }

    #[test]
    fn stat_sessions() {
        let s = parse_stat_sessions(SHOW_STAT, "web").unwrap();
        assert_eq!(s, HashMap::from([("sd-c".to_string(), 0), ("sd-x".to_string(), 0), ("sd-y".to_string(), 0)]));
        // scur is found by name: a session count in a captured row is read from that column.
        let busy = SHOW_STAT.replace("web,sd-x,0,0,0,0,", "web,sd-x,0,0,3,3,");
        assert_eq!(parse_stat_sessions(&busy, "web").unwrap()["sd-x"], 3);
        assert!(parse_stat_sessions(SHOW_STAT, "other").unwrap().is_empty());
        assert!(matches!(parse_stat_sessions("No such proxy.\n\n", "web"), Err(DriverError::Refused(_))));
    }

    #[test]
    fn stat_sessions_skips_frontend_and_backend_rows() {
        let text = "# pxname,svname,qcur,qmax,scur\nweb,FRONTEND,,,4\nweb,s1,0,0,2\nweb,BACKEND,0,0,6\nother,s1,0,0,9\n\n";
        assert_eq!(parse_stat_sessions(text, "web").unwrap(), HashMap::from([("s1".to_string(), 2)]));
    }

    #[test]
    fn tokens_that_would_change_the_command_are_refused() {
        for bad in ["", "a b", "a;show info", "a\\b", "a\nb"] {
            assert!(check_token("x", bad).is_err(), "{bad:?}");
        }
        assert!(check_token("x", "sd-10.0.0.5:8080").is_ok());
    }

    #[test]
    fn endpoint_parse() {
        assert_eq!(Endpoint::parse("/run/haproxy/admin.sock"), Endpoint::Unix("/run/haproxy/admin.sock".into()));
        assert_eq!(Endpoint::parse("127.0.0.1:9999"), Endpoint::Tcp("127.0.0.1:9999".into()));
        assert_eq!(Endpoint::parse("unix:admin.sock"), Endpoint::Unix("admin.sock".into()));
        assert_eq!(Endpoint::parse("tcp:lb1:9999"), Endpoint::Tcp("lb1:9999".into()));
    }
}
