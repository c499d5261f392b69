//! The registry as a source: list once, then follow a `client::Watcher` from the list's
//! revision. The watcher hands out whole revisions and resumes after a broken stream from the
//! last complete one; `compacted` means re-list. As a backstop, the source re-lists every
//! `RELIST_EVERY` anyway and counts what that corrected (`SourceState::corrections`), which
//! should stay zero.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use client::{Client, Update, Watcher};
use proto::{Instance, WatchEvent};
use rand::Rng;
use tokio::time::Instant;

use super::{mark_down, Endpoint, Snapshot, Tx};

fn endpoint(i: &Instance) -> Endpoint {
    Endpoint { addr: i.address.clone(), port: i.port, weight: i.weight, state: i.state }
}

/// Lists every watched service. Also returns the revision to watch from and each service's
/// index (the revision of its last change).
async fn list(client: &Client, services: &[String]) -> Result<(Snapshot, u64, BTreeMap<String, u64>), client::Error> {
    let mut snap = Snapshot::default();
    let mut since = u64::MAX;
    let mut indexes = BTreeMap::new();
    for s in services {
        let answer = client.service(s, false).await?;
        since = since.min(answer.revision);
        indexes.insert(s.clone(), answer.index);
        snap.revision = snap.revision.max(answer.revision);
        snap.services.insert(s.clone(), answer.instances.iter().map(|i| (i.instance.clone(), endpoint(i))).collect());
    }
    // Watch from the oldest list: events the later lists already contain are applied again,
    // which is harmless (puts and deletes are idempotent).
    Ok((snap, if since == u64::MAX { 0 } else { since }, indexes))
}

fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(100) * 2u32.pow(attempt.min(5));
    base.min(Duration::from_secs(2)).mul_f64(rand::thread_rng().gen_range(0.5..1.5))
}

/// How often the source re-lists even though the watch looks healthy.
pub const RELIST_EVERY: Duration = Duration::from_secs(300);

/// Runs forever, keeping `tx` current.
pub async fn run(client: Client, services: Vec<String>, tx: Tx) {
    run_with(client, services, tx, RELIST_EVERY).await
}

/// `run`, re-listing every `relist_every`.
pub async fn run_with(client: Client, services: Vec<String>, tx: Tx, relist_every: Duration) {
    let filter = if services.len() == 1 { Some(services[0].clone()) } else { None };
    let mut attempt = 0;
    // What the watch had built, and the revision it was complete up to, at the last re-list.
    let mut known: Option<(Snapshot, u64)> = None;
    'relist: loop {
        let (mut snap, since, indexes) = match list(&client, &services).await {
            Ok(x) => x,
            Err(e) => {
                mark_down(&tx, format!("listing services: {e}"));
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
                continue;
            }
        };
        if let Some((old, complete)) = known.take() {
            // Only services that have not changed since the watch was complete can be
            // compared: a later change may simply not have arrived yet.
            let settled = |name: &String| indexes.get(name).is_some_and(|i| *i <= complete);
            let fixed = differences(&only(&old, settled), &only(&snap, settled));
            if fixed > 0 {
                tracing::warn!(fixed, "the periodic re-list corrected endpoints the watch had missed");
                tx.send_modify(|s| s.corrections += fixed as u64);
            }
        }
        publish(&tx, &snap);
        let relist_at = Instant::now() + relist_every;
        let mut watcher = Watcher::new(client.clone(), filter.clone(), since);
        loop {
            let next = tokio::select! {
                n = watcher.next() => n,
                _ = tokio::time::sleep_until(relist_at) => {
                    known = Some((snap, watcher.since()));
                    continue 'relist;
                }
            };
            match next {
                Ok(Update::Compacted { revision, compact_revision }) => {
                    tracing::warn!(since = watcher.since(), revision, compact_revision, "watch history compacted; re-listing");
                    known = None;
                    continue 'relist;
                }
                Ok(Update::Changes { events, .. }) => {
                    attempt = 0;
                    for event in events {
                        apply(&mut snap, &services, event);
                    }
                    publish(&tx, &snap);
                }
                Ok(Update::Progress { .. }) => attempt = 0,
                Err(e) => {
                    mark_down(&tx, format!("watch stream: {e}"));
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }
}

/// The services of `snap` that `keep` accepts.
fn only(snap: &Snapshot, keep: impl Fn(&String) -> bool) -> Snapshot {
    Snapshot { revision: snap.revision, services: snap.services.iter().filter(|(n, _)| keep(n)).map(|(n, m)| (n.clone(), m.clone())).collect() }
}

/// Endpoints that differ between two views of the same services (added, removed or changed).
fn differences(a: &Snapshot, b: &Snapshot) -> usize {
    let names: std::collections::BTreeSet<&String> = a.services.keys().chain(b.services.keys()).collect();
    let empty = BTreeMap::new();
    names
        .into_iter()
        .map(|n| {
            let (x, y) = (a.services.get(n).unwrap_or(&empty), b.services.get(n).unwrap_or(&empty));
            let ids: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            ids.into_iter().filter(|id| x.get(*id) != y.get(*id)).count()
        })
        .sum()
}

/// Applies one event. The snapshot's revision moves only with changes to watched services: it
/// is what the backends report they reflect, and moving it for other services (or progress
/// lines) would make the syncer's own report, itself a write, trigger the next report.
fn apply(snap: &mut Snapshot, services: &[String], event: WatchEvent) {
    let revision = event.revision();
    match event {
        WatchEvent::Put { instance, .. } if services.contains(&instance.service) => {
            snap.revision = snap.revision.max(revision);
            snap.services.entry(instance.service.clone()).or_default().insert(instance.instance.clone(), endpoint(&instance));
        }
        WatchEvent::Delete { service, instance, .. } if services.contains(&service) => {
            snap.revision = snap.revision.max(revision);
            if let Some(m) = snap.services.get_mut(&service) {
                m.remove(&instance);
            }
        }
        _ => {}
    }
}

fn publish(tx: &Tx, snap: &Snapshot) {
    tx.send_modify(|s| {
        if !s.healthy {
            tracing::info!(revision = snap.revision, "source current");
        }
        s.snapshot = Some(snap.clone());
        s.healthy = true;
        s.last_ok = Some(SystemTime::now());
        s.error = None;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(service: &str, name: &str, rev: u64) -> Instance {
        Instance {
            service: service.into(),
            instance: name.into(),
            address: "127.0.0.1".into(),
            port: 80,
            weight: 100,
            state: Default::default(),
            meta: Default::default(),
            lease_id: None,
            create_revision: rev,
            mod_revision: rev,
            lease: None,
        }
    }

    #[test]
    fn events_update_only_watched_services() {
        let services = vec!["web".to_string()];
        let mut snap = Snapshot::default();
        apply(&mut snap, &services, WatchEvent::Put { revision: 3, instance: instance("web", "a", 3) });
        apply(&mut snap, &services, WatchEvent::Put { revision: 4, instance: instance("other", "b", 4) });
        assert_eq!(snap.services.len(), 1);
        assert_eq!(snap.revision, 3, "another service's change does not move the revision");
        apply(&mut snap, &services, WatchEvent::Delete { revision: 5, service: "web".into(), instance: "a".into() });
        assert!(snap.services["web"].is_empty());
        assert_eq!(snap.revision, 5);
        apply(&mut snap, &services, WatchEvent::Progress { revision: 9 });
        assert_eq!(snap.revision, 5, "progress does not either");
    }

    #[test]
    fn differences_count_added_removed_and_changed_endpoints() {
        let services = vec!["web".to_string()];
        let mut a = Snapshot::default();
        for (n, r) in [("a", 1), ("b", 2), ("c", 3)] {
            apply(&mut a, &services, WatchEvent::Put { revision: r, instance: instance("web", n, r) });
        }
        let mut b = a.clone();
        assert_eq!(differences(&a, &b), 0);
        apply(&mut b, &services, WatchEvent::Delete { revision: 4, service: "web".into(), instance: "a".into() });
        let mut changed = instance("web", "b", 5);
        changed.port = 81;
        apply(&mut b, &services, WatchEvent::Put { revision: 5, instance: changed });
        apply(&mut b, &services, WatchEvent::Put { revision: 6, instance: instance("web", "d", 6) });
        assert_eq!(differences(&a, &b), 3);
    }
}
