//! `registry status` (members, roles, indexes, and the balancers) and `registry balancers`
//! (the balancers' convergence table on its own).

use client::Client;
use proto::{ClusterInfo, NodeRole};
use serde::Serialize;

use super::{ms, short, table, Output};

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
async fn read_balancers(client: &Client) -> Result<Vec<BalancerStatus>, client::Error> {
    let reports = client.service(proto::SYNCER_SERVICE, false).await?;
    let mut index_of = std::collections::BTreeMap::new();
    let mut out = Vec::new();
    for r in &reports.instances {
        for (backend, b) in proto::SyncerReport::from_meta(&r.meta).backends {
            let service = &b.service;
            if !index_of.contains_key(service) {
                // A failed read is an error, not index 0 (which would show every backend in sync).
                let idx = client.service(service, false).await?.index;
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

fn opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn balancer_table(balancers: &[BalancerStatus]) -> String {
    let rows: Vec<Vec<String>> = balancers
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
    table(&["SYNCER", "BACKEND", "SERVICE", "APPLIED", "SERVICE-INDEX", "STATE", "LAST-REPORT"], &rows)
}

/// `registry balancers`: each live syncer's backends, the revision each has applied, and how
/// far behind its service it is (`service`: only backends that follow it).
pub async fn balancers(client: &Client, service: Option<&str>, output: Output) -> Result<String, client::Error> {
    let list: Vec<BalancerStatus> = read_balancers(client).await?.into_iter().filter(|b| service.is_none_or(|s| b.service == s)).collect();
    if output == Output::Json {
        return Ok(serde_json::to_string_pretty(&list).expect("serializable") + "\n");
    }
    if list.is_empty() {
        return Ok(match service {
            Some(s) => format!("no balancer reports following {s}\n"),
            None => "no balancer reports (no syncer runs, or none could write its report: it needs a token with announce:_syncers)\n".into(),
        });
    }
    Ok(balancer_table(&list))
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
            Err(e) => (NodeRole::Unreachable, false, None, Some(short(&e))),
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
    let balancers = read_balancers(client).await.unwrap_or_default();
    let status = Status { leader: view.leader, term: view.term, members, balancers };
    if output == Output::Json {
        return Ok(serde_json::to_string_pretty(&status).expect("serializable") + "\n");
    }
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
                if m.reachable { "healthy" } else { "UNREACHABLE" }.to_string(),
            ]
        })
        .collect();
    let head = format!("leader: {}  term: {}\n", status.leader.map(|l| l.to_string()).unwrap_or_else(|| "none".into()), status.term);
    let mut text = head + &table(&["ID", "ADDRESS", "KIND", "ROLE", "TERM", "LAST-LOG", "COMMIT", "APPLIED", "HEALTH"], &rows);
    // Why a node is unreachable goes below the table, a line each: a cause in a cell would
    // stretch every row.
    for m in status.members.iter().filter(|m| !m.reachable) {
        text += &format!("node {} unreachable: {}\n", m.id, m.error.as_deref().unwrap_or("?"));
    }
    if !status.balancers.is_empty() {
        text += "\nbalancers:\n";
        text += &balancer_table(&status.balancers);
    }
    Ok(text)
}
