//! `syncer plan`: what the syncer would do to HAProxy right now, printed, with nothing changed.
//! It reads the source once (the same source code the daemon runs) and each backend's servers,
//! and runs the same `plan` and breaker. This is how an operator checks a new backend map
//! before trusting it.

use std::fmt::Write as _;
use std::time::Duration;

use tokio::time::Instant;

use crate::breaker::Breaker;
use crate::config::{Config, Source};
use crate::driver::Driver;
use crate::model::{is_managed, Op};
use crate::plan::{plan, Draining};
use crate::reconcile::desired_set;
use crate::source::Snapshot;

/// Reads the source until it has delivered a full state once, or `limit` passes.
pub async fn read_source(config: &Config, limit: Duration) -> anyhow::Result<Snapshot> {
    let (tx, mut rx) = crate::source::channel();
    let services: Vec<String> = config.settings.mappings.iter().map(|m| m.service.clone()).collect();
    let task = match &config.source {
        Source::Registry(urls, access) => {
            let client = client::Client::builder(urls)?.access(access)?.build()?;
            tokio::spawn(crate::source::registry::run(client, services, tx))
        }
        Source::Zookeeper { connect, session_timeout, auth } => {
            tokio::spawn(crate::source::zookeeper::run(connect.clone(), *session_timeout, auth.clone(), services, tx))
        }
    };
    let got = tokio::time::timeout(limit, rx.wait_for(|s| s.snapshot.is_some())).await.ok().and_then(|r| r.ok()).and_then(|s| s.snapshot.clone());
    let last_error = rx.borrow().error.clone();
    task.abort();
    match got {
        Some(s) => Ok(s),
        None => anyhow::bail!("the source gave no complete state within {limit:?}{}", last_error.map(|e| format!(": {e}")).unwrap_or_default()),
    }
}

/// The operations for every backend, as text: what would be applied, and what the breaker
/// would hold back.
pub async fn plan_text<D: Driver>(driver: &mut D, config: &Config, snap: &Snapshot) -> anyhow::Result<String> {
    let now = Instant::now();
    let mut out = String::new();
    let _ = writeln!(out, "source revision {}", snap.revision);
    for m in &config.settings.mappings {
        let desired = desired_set(snap, &m.service);
        let actual = driver.servers(&m.backend).await.map_err(|e| anyhow::anyhow!("backend {}: {e}", m.backend))?;
        let ops = plan(&actual, &desired, &Draining::new(), now, config.settings.drain_timeout);
        let managed: Vec<String> = actual.iter().filter(|a| is_managed(&a.name)).map(|a| a.name.clone()).collect();
        let (allowed, held) = Breaker::new(config.settings.limits).filter(ops, &desired, &managed, now);
        let _ = writeln!(
            out,
            "backend {} (service {}): {} desired, {} managed now; {}",
            m.backend,
            m.service,
            desired.len(),
            managed.len(),
            if allowed.is_empty() && held.is_empty() { "in sync".to_string() } else { format!("{} to apply, {} held", allowed.len(), held.len()) }
        );
        for op in &allowed {
            let _ = writeln!(out, "  {}", describe(op));
        }
        for op in &held {
            let _ = writeln!(
                out,
                "  held by the breaker (min_servers {}, max_remove_fraction {}): {}",
                config.settings.limits.min_servers,
                config.settings.limits.max_fraction,
                describe(op)
            );
        }
    }
    Ok(out)
}

fn describe(op: &Op) -> String {
    match op {
        Op::Add(d) => format!("add {} {}:{} weight {} {:?}", d.name, d.address, d.port, d.weight, d.state),
        Op::SetWeight { name, weight } => format!("set weight {name} {weight}"),
        Op::SetState { name, state } => format!("set state {name} {state:?}"),
        Op::Remove { name } => format!("remove {name} (drain first)"),
    }
}
