//! `registry ls`: the instances, once or (`--watch`) redrawn whenever the watch stream says
//! something changed; and `registry ls --removed`.

use std::time::Duration;

use client::{Client, Update, Watcher};
use proto::{Instance, InstanceState, Revision};

use super::{ms, table, utc, Output};

/// `--state`: which instances to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StateFilter {
    Up,
    Drain,
    Maint,
}

impl StateFilter {
    fn matches(self, s: InstanceState) -> bool {
        matches!((self, s), (StateFilter::Up, InstanceState::Up) | (StateFilter::Drain, InstanceState::Drain) | (StateFilter::Maint, InstanceState::Maint))
    }
}

/// What `registry ls` lists.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// One service; otherwise every service.
    pub service: Option<String>,
    pub state: Option<StateFilter>,
    /// Also the internal services (names starting with `_`, such as the syncers' `_syncers`
    /// reports). A service named in `service` is shown whatever its name.
    pub all: bool,
    /// Read the answering node's replica (no lease timings) instead of the leader.
    pub stale: bool,
}

/// Whether `service` is one the registry's own agents keep (`_syncers`), hidden by default.
pub fn is_internal(service: &str) -> bool {
    service.starts_with('_')
}

/// The instances `q` asks for, and the revision the list is at least as new as.
pub async fn fetch(client: &Client, q: &Query) -> Result<(Vec<Instance>, Revision), client::Error> {
    let (names, revision) = match &q.service {
        Some(s) => (vec![s.clone()], None),
        None => {
            let list = client.services(q.stale).await?;
            let names = list.services.into_iter().map(|s| s.service).filter(|s| q.all || !is_internal(s)).collect();
            (names, Some(list.revision))
        }
    };
    let mut instances: Vec<Instance> = Vec::new();
    let mut at = revision;
    for name in names {
        let s = client.service(&name, q.stale).await?;
        at = Some(at.map_or(s.revision, |r| r.min(s.revision)));
        instances.extend(s.instances.into_iter().filter(|i| q.state.is_none_or(|f| f.matches(i.state))));
    }
    Ok((instances, at.unwrap_or(0)))
}

/// The table (or JSON) of `instances`.
pub fn render(instances: &[Instance], output: Output) -> String {
    if output == Output::Json {
        return serde_json::to_string_pretty(instances).expect("serializable") + "\n";
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
                Some(r) if i.state == InstanceState::Maint => r.clone(),
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
    table(&["SERVICE", "INSTANCE", "ADDRESS", "STATE", "WEIGHT", "LEASE", "TTL-LEFT", "LAST-RENEWAL", "REASON"], &rows)
}

/// Every instance of every service (or of one), read through the leader so lease timings show.
pub async fn ls(client: &Client, q: &Query, output: Output) -> Result<String, client::Error> {
    let (instances, _) = fetch(client, q).await?;
    Ok(render(&instances, output))
}

/// How long changes are gathered before one redraw: a revoke or a deploy is many events.
const SETTLE: Duration = Duration::from_millis(100);
/// On a terminal, the lease timings are redrawn this often even when nothing changes.
const TICK: Duration = Duration::from_secs(1);
/// After a failed read or a broken stream, before trying again (the client has tried every
/// node by then).
const RETRY: Duration = Duration::from_millis(500);

/// `registry ls --watch`: draws the list, then again after every change the watch stream
/// reports (and, on a terminal, every second, so the TTL column counts down). On a terminal
/// each draw replaces the last; piped, each is a block after a blank line (JSON: one document
/// per line). `terminal`: whether `out` is one. Runs until interrupted; returns only on an
/// error it cannot retry.
pub async fn watch(client: &Client, q: &Query, output: Output, terminal: bool, mut out: impl std::io::Write) -> Result<(), client::Error> {
    let tty = terminal && output == Output::Table;
    let mut watcher: Option<Watcher> = None;
    let mut problem: Option<String> = None;
    loop {
        let (instances, revision) = match fetch(client, q).await {
            Ok(v) => v,
            Err(e) if e.is_retriable() => {
                problem = Some(e.to_string());
                tokio::time::sleep(RETRY).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let frame = match output {
            Output::Json => serde_json::json!({ "revision": revision, "instances": instances }).to_string() + "\n",
            Output::Table => {
                let now = utc(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64);
                let n = instances.len();
                let mut head = format!("revision {revision}, {n} instance{}, {now}", if n == 1 { "" } else { "s" });
                if let Some(p) = problem.take() {
                    head += &format!("  (watch interrupted, resumed: {p})");
                }
                let body = render(&instances, output);
                if tty {
                    format!("\x1b[H\x1b[2J{head}  (Ctrl-C to stop)\n{body}")
                } else {
                    format!("\n{head}\n{body}")
                }
            }
        };
        if out.write_all(frame.as_bytes()).and_then(|_| out.flush()).is_err() {
            // The reader went away (`| head`): done.
            return Ok(());
        }
        let w = watcher.get_or_insert_with(|| Watcher::new(client.clone(), q.service.clone(), revision));
        // Wait for a change (or, on a terminal, the next tick), then let a burst settle. One
        // deadline for the whole wait: the progress lines the stream sends every second must
        // not push the tick back.
        let tick = tty.then(|| tokio::time::Instant::now() + TICK);
        let mut settled: Option<tokio::time::Instant> = None;
        loop {
            let next = match settled.or(tick) {
                Some(at) => tokio::time::timeout_at(at, w.next()).await,
                None => Ok(w.next().await),
            };
            match next {
                // The tick, or the end of a burst.
                Err(_) => break,
                Ok(Ok(Update::Changes { events, .. })) => {
                    if settled.is_none() && events.iter().any(|e| shown(q, e)) {
                        settled = Some(tokio::time::Instant::now() + SETTLE);
                    }
                }
                Ok(Ok(Update::Progress { .. })) => {}
                Ok(Ok(Update::Compacted { revision, .. })) => {
                    w.reset(revision);
                    break;
                }
                Ok(Err(e)) => {
                    problem = Some(e.to_string());
                    tokio::time::sleep(RETRY).await;
                    break;
                }
            }
        }
    }
}

/// Whether a change can alter what `q` lists.
fn shown(q: &Query, e: &proto::WatchEvent) -> bool {
    e.service().is_some_and(|s| q.all || q.service.is_some() || !is_internal(s))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_services_start_with_an_underscore() {
        assert!(is_internal(proto::SYNCER_SERVICE));
        assert!(!is_internal("web-servers"));
    }

    #[test]
    fn a_redraw_follows_changes_to_what_is_listed_only() {
        let put = |service: &str| proto::WatchEvent::Put {
            revision: 5,
            instance: Instance {
                service: service.into(),
                instance: "i".into(),
                address: "10.0.0.1".into(),
                port: 1,
                weight: 1,
                state: InstanceState::Up,
                meta: Default::default(),
                lease_id: None,
                create_revision: 5,
                mod_revision: 5,
                lease: None,
            }
            .into(),
        };
        let every = Query::default();
        assert!(shown(&every, &put("web")));
        assert!(!shown(&every, &put("_syncers")), "a hidden service's change redraws nothing");
        assert!(shown(&Query { all: true, ..Query::default() }, &put("_syncers")));
        assert!(shown(&Query { service: Some("_syncers".into()), ..Query::default() }, &put("_syncers")));
        assert!(!shown(&every, &proto::WatchEvent::Progress { revision: 5 }));
    }

    #[test]
    fn a_state_filter_matches_its_state_only() {
        assert!(StateFilter::Drain.matches(InstanceState::Drain));
        assert!(!StateFilter::Drain.matches(InstanceState::Up));
        assert!(StateFilter::Maint.matches(InstanceState::Maint));
    }
}
