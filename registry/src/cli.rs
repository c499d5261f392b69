//! The operator commands: `registry ls`, `registry status`, `registry members`, `registry token`.
//! Each returns the text to print, so tests can check it without a terminal.

use client::Client;
use proto::{ClusterInfo, Instance, NodeRole};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

/// Left-aligned columns separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let fmt = |cells: Vec<&str>| {
        let line: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        line.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = fmt(header.to_vec());
    for r in rows {
        out += &fmt(r.iter().map(String::as_str).collect());
    }
    out
}

fn ms(v: u64) -> String {
    format!("{:.1}s", v as f64 / 1000.0)
}

/// Every instance of every service (or of one), read through the leader so lease timings show.
pub async fn ls(client: &Client, service: Option<&str>, stale: bool, output: Output) -> Result<String, client::Error> {
    let names: Vec<String> = match service {
        Some(s) => vec![s.to_string()],
        None => client.services(stale).await?.services.into_iter().map(|s| s.service).collect(),
    };
    let mut instances: Vec<Instance> = Vec::new();
    for name in names {
        instances.extend(client.service(&name, stale).await?.instances);
    }
    if output == Output::Json {
        return Ok(serde_json::to_string_pretty(&instances).expect("serializable") + "\n");
    }
    let rows: Vec<Vec<String>> = instances
        .iter()
        .map(|i| {
            let (lease, left, renewed) = match (&i.lease_id, &i.lease) {
                (None, _) => ("-".to_string(), "-".to_string(), "-".to_string()),
                (Some(id), Some(l)) => (id.to_string(), ms(l.remaining_ms), format!("{} ago", ms(l.since_renewal_ms))),
                (Some(id), None) => (id.to_string(), "?".to_string(), "?".to_string()),
            };
            // Why it is in maintenance (`announcer maint on --reason`); last, so the columns
            // before it stay where scripts expect them.
            let reason = match i.meta.get(proto::MAINT_REASON_META) {
                Some(r) if i.state == proto::InstanceState::Maint => r.clone(),
                _ => "-".to_string(),
            };
            vec![
                i.service.clone(),
                i.instance.clone(),
                format!("{}:{}", i.address, i.port),
                i.state.to_string(),
                i.weight.to_string(),
                lease,
                left,
                renewed,
                reason,
            ]
        })
        .collect();
    Ok(table(&["SERVICE", "INSTANCE", "ADDRESS", "STATE", "WEIGHT", "LEASE", "TTL-LEFT", "LAST-RENEWAL", "REASON"], &rows))
}

/// The most recent removals (of one service, or all), oldest first, with cause and time.
pub async fn removed(client: &Client, service: Option<&str>, stale: bool, output: Output) -> Result<String, client::Error> {
    let list = client.removals(stale).await?;
    let removals: Vec<proto::Removal> = list.removals.into_iter().filter(|r| service.is_none_or(|s| r.service == s)).collect();
    if output == Output::Json {
        return Ok(serde_json::to_string_pretty(&removals).expect("serializable") + "\n");
    }
    let rows: Vec<Vec<String>> = removals
        .iter()
        .map(|r| {
            let when = r.at_ms.map(utc).unwrap_or_else(|| "-".into());
            vec![when, r.service.clone(), r.instance.clone(), format!("{}:{}", r.address, r.port), r.cause.to_string(), r.revision.to_string()]
        })
        .collect();
    Ok(table(&["TIME", "SERVICE", "INSTANCE", "ADDRESS", "CAUSE", "REVISION"], &rows))
}

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds.
fn utc(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub leader: Option<u64>,
    pub term: u64,
    pub members: Vec<MemberStatus>,
    /// Every syncer that reports its progress (docs/syncer.md, "How it works").
    pub balancers: Vec<BalancerStatus>,
}

/// One HAProxy backend as a syncer reports it.
#[derive(Debug, Serialize)]
pub struct BalancerStatus {
    pub syncer: String,
    pub backend: String,
    pub service: String,
    /// Registry revision the backend reflects, if it has applied one.
    pub applied_revision: Option<u64>,
    /// Revision of the last change to the service.
    pub service_index: u64,
    /// Revisions of the service the backend has not applied yet (0 when current).
    pub behind: Option<u64>,
    /// Since the syncer last renewed its report; `None` on a stale read.
    pub last_seen_ms: Option<u64>,
}

/// Reads the `_syncers` reports and compares them with each service's last change.
async fn balancers(client: &Client) -> Result<Vec<BalancerStatus>, client::Error> {
    let reports = client.service(proto::SYNCER_SERVICE, false).await?;
    let mut index_of = std::collections::BTreeMap::new();
    let mut out = Vec::new();
    for r in &reports.instances {
        for (backend, b) in proto::SyncerReport::from_meta(&r.meta).backends {
            let service = &b.service;
            if !index_of.contains_key(service) {
                let idx = client.service(service, false).await.map(|s| s.index).unwrap_or(0);
                index_of.insert(service.clone(), idx);
            }
            let service_index = index_of[service];
            let applied = b.applied;
            out.push(BalancerStatus {
                syncer: r.instance.clone(),
                backend,
                service: service.clone(),
                applied_revision: applied,
                service_index,
                behind: applied.map(|a| service_index.saturating_sub(a)),
                last_seen_ms: r.lease.as_ref().map(|l| l.since_renewal_ms),
            });
        }
    }
    Ok(out)
}

#[derive(Debug, Serialize)]
pub struct MemberStatus {
    pub id: u64,
    pub addr: String,
    pub voter: bool,
    pub role: NodeRole,
    pub reachable: bool,
    pub term: Option<u64>,
    pub last_log_index: Option<u64>,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub matched_index: Option<u64>,
    pub error: Option<String>,
}

/// Asks any node for the membership, then every member for its own view.
pub async fn status(client: &Client, output: Output) -> Result<String, client::Error> {
    let view = client.cluster().await?;
    let mut members = Vec::new();
    for m in &view.members {
        let own: Result<ClusterInfo, _> = client.cluster_at(&m.addr).await;
        let (role, reachable, own, error) = match own {
            Ok(c) => (c.role, true, Some(c), None),
            Err(e) => (NodeRole::Unreachable, false, None, Some(e.to_string())),
        };
        let matched = if view.role == NodeRole::Leader { m.matched_index } else { None };
        members.push(MemberStatus {
            id: m.id,
            addr: m.addr.clone(),
            voter: m.voter,
            role,
            reachable,
            term: own.as_ref().map(|c| c.term),
            last_log_index: own.as_ref().map(|c| c.last_log_index),
            commit_index: own.as_ref().map(|c| c.commit_index),
            applied_index: own.as_ref().map(|c| c.applied_index),
            matched_index: matched,
            error,
        });
    }
    // Without a leader the reports cannot be read; the members table still helps then.
    let balancers = balancers(client).await.unwrap_or_default();
    let status = Status { leader: view.leader, term: view.term, members, balancers };
    if output == Output::Json {
        return Ok(serde_json::to_string_pretty(&status).expect("serializable") + "\n");
    }
    let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = status
        .members
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.addr.clone(),
                if m.voter { "voter" } else { "learner" }.to_string(),
                serde_json::to_value(m.role).unwrap().as_str().unwrap_or("?").to_string(),
                opt(m.term),
                opt(m.last_log_index),
                opt(m.commit_index),
                opt(m.applied_index),
                if m.reachable { "healthy".into() } else { format!("UNREACHABLE: {}", m.error.as_deref().unwrap_or("")) },
            ]
        })
        .collect();
    let head = format!("leader: {}  term: {}\n", status.leader.map(|l| l.to_string()).unwrap_or_else(|| "none".into()), status.term);
    let mut text = head + &table(&["ID", "ADDRESS", "KIND", "ROLE", "TERM", "LAST-LOG", "COMMIT", "APPLIED", "HEALTH"], &rows);
    if !status.balancers.is_empty() {
        let rows: Vec<Vec<String>> = status
            .balancers
            .iter()
            .map(|b| {
                vec![
                    b.syncer.clone(),
                    b.backend.clone(),
                    b.service.clone(),
                    opt(b.applied_revision),
                    b.service_index.to_string(),
                    match b.behind {
                        Some(0) => "in sync".to_string(),
                        Some(n) => format!("BEHIND by {n}"),
                        None => "not applied yet".to_string(),
                    },
                    b.last_seen_ms.map(ms).map(|t| format!("{t} ago")).unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        text += "\nbalancers:\n";
        text += &table(&["SYNCER", "BACKEND", "SERVICE", "APPLIED", "SERVICE-INDEX", "STATE", "LAST-REPORT"], &rows);
    }
    Ok(text)
}

/// `registry token list`: the cluster's tokens, never their secrets.
pub async fn tokens(client: &Client, output: Output) -> Result<String, client::Error> {
    let list = client.tokens().await?;
    if output == Output::Json {
        return Ok(serde_json::to_string_pretty(&list).expect("serializes") + "\n");
    }
    if !list.enabled {
        return Ok("ACLs are off in this cluster (start a node with --acl-bootstrap-token-file to turn them on)\n".into());
    }
    let rows: Vec<Vec<String>> = list
        .tokens
        .iter()
        .map(|t| vec![t.id.to_string(), t.scopes.join(" "), t.description.clone(), t.created_ms.map(utc).unwrap_or_else(|| "-".into())])
        .collect();
    Ok(table(&["ID", "SCOPES", "DESCRIPTION", "CREATED"], &rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(&["A", "BB"], &[vec!["long".into(), "x".into()]]);
        assert_eq!(t, "A     BB\nlong  x\n");
    }
}

#[cfg(test)]
mod removal_tests {
    #[test]
    fn utc_times() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::utc(951_782_400_123), "2000-02-29T00:00:00.123Z");
    }
}

/// A secret written to a new file beside its destination (mode 0600, a random name), moved
/// there by `commit`; removed if dropped uncommitted (the OS removes nothing after a SIGKILL,
/// but a leftover has a random name and blocks no later run). `registry token create --out`
/// stages the token before asking for it, so a token is never minted with nowhere to go.
pub struct StagedSecret {
    tmp: tempfile::NamedTempFile,
    path: std::path::PathBuf,
}

pub fn stage_secret(path: &std::path::Path, secret: &str) -> Result<StagedSecret, String> {
    use std::io::Write as _;
    // `symlink_metadata`: a dangling symlink is "something there" too.
    if path.symlink_metadata().is_ok() {
        return Err(format!("{} exists; not overwriting it", path.display()));
    }
    let name = path.file_name().ok_or_else(|| format!("{} is not a file path", path.display()))?.to_string_lossy().into_owned();
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(&format!(".{name}.")).tempfile_in(dir).map_err(|e| format!("creating a file in {}: {e}", dir.display()))?;
    tmp.write_all(format!("{secret}\n").as_bytes()).and_then(|_| tmp.as_file().sync_all()).map_err(|e| format!("writing {}: {e}", tmp.path().display()))?;
    Ok(StagedSecret { tmp, path: path.to_path_buf() })
}

impl StagedSecret {
    /// Moves the secret into place; a file that appeared there meanwhile is not overwritten.
    pub fn commit(self) -> Result<(), String> {
        let path = self.path;
        self.tmp.persist_noclobber(&path).map(|_| ()).map_err(|e| format!("writing {}: {}", path.display(), e.error))
    }
}

#[cfg(test)]
mod staged_tests {
    use super::*;

    #[test]
    fn a_staged_secret_lands_only_on_commit_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tok");
        drop(stage_secret(&path, "abc").unwrap());
        assert!(!path.exists() && std::fs::read_dir(dir.path()).unwrap().next().is_none(), "an uncommitted secret left a file");
        stage_secret(&path, "abc").unwrap().commit().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "abc\n");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(stage_secret(&path, "xyz").is_err(), "overwrote an existing file");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "abc\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let dangling = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert!(stage_secret(&dangling, "xyz").is_err(), "a dangling symlink counted as free");
        // Another run's leftover temporary file does not block this one.
        std::fs::write(dir.path().join(".tok2.tmp"), "").unwrap();
        stage_secret(&dir.path().join("tok2"), "def").unwrap().commit().unwrap();
    }
}
