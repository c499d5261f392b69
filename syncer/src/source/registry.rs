//! The registry as a source: list once, then follow a `client::Watcher` from the list's
//! revision. The watcher hands out whole revisions and resumes after a broken stream from the
//! last complete one; `compacted` means re-list. As a backstop, the source re-lists every
//! `RELIST_EVERY` anyway and counts what that corrected (`SourceState::corrections`), which
//! should stay zero.

use std::collections::BTreeMap;
use std::time::Duration;

use client::{Client, Watcher};
use proto::{Instance, WatchEvent};
use tokio::time::Instant;

use super::{Backoff, Discovery, Endpoint, Feed, Snapshot, Tx};

/// After a failed list or a broken stream: 100 ms, doubling to 2 s, each ±50 %.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2), 0.5);

fn endpoint(i: &Instance) -> Endpoint {
    Endpoint { address: i.address.clone(), port: i.port, weight: i.weight, state: i.state }
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
        snap.services.insert(s.clone(), answer.instances.iter().map(|i| (i.instance.clone(), endpoint(i))).collect());
    }
    // Watch from the oldest list: events the later lists already contain are applied again,
    // which is harmless (puts and deletes are idempotent). The snapshot is only known complete
    // up to that oldest list too: a change between two reads (a removal from a service read
    // first, say) is in no list, so claiming a later revision would report it applied
    // (`registry deregister --wait`, the announcer's drain) before the watch brings it.
    let since = if since == u64::MAX { 0 } else { since };
    snap.revision = since;
    Ok((snap, since, indexes))
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
    let mut feed = Feed::new(tx, "registry", BACKOFF);
    // What the watch had built, and the revision it was complete up to, at the last re-list.
    let mut known: Option<(Snapshot, u64)> = None;
    'relist: loop {
        let (listed, since, indexes) = match list(&client, &services).await {
            Ok(x) => x,
            Err(e) => {
                tokio::time::sleep(feed.failed(format!("listing services: {e}"))).await;
                continue;
            }
        };
        if let Some((old, complete)) = known.take() {
            // Only services that have not changed since the watch was complete can be
            // compared: a later change may simply not have arrived yet.
            let settled = |name: &String| indexes.get(name).is_some_and(|i| *i <= complete);
            let fixed = differences(&only(&old, settled), &only(&listed, settled));
            if fixed > 0 {
                tracing::warn!(fixed, "the periodic re-list corrected endpoints the watch had missed");
                feed.add_corrections(fixed as u64);
            }
        }
        feed.publish([Discovery::Reset(listed)]);
        let relist_at = Instant::now() + relist_every;
        let mut watcher = Watcher::new(client.clone(), filter.clone(), since);
        loop {
            let next = tokio::select! {
                n = watcher.next() => n,
                _ = tokio::time::sleep_until(relist_at) => {
                    known = Some((feed.current().clone(), watcher.since()));
                    continue 'relist;
                }
            };
            match next {
                Ok(client::Update::Compacted { revision, compact_revision }) => {
                    tracing::warn!(since = watcher.since(), revision, compact_revision, "watch history compacted; re-listing");
                    known = None;
                    continue 'relist;
                }
                // One publish per revision: the reconciler never sees part of one.
                Ok(client::Update::Changes { events, .. }) => {
                    feed.reset_backoff();
                    feed.publish(events.into_iter().filter_map(|event| update(&services, event)));
                }
                Ok(client::Update::Progress { .. }) => feed.reset_backoff(),
                Err(e) => tokio::time::sleep(feed.failed(format!("watch stream: {e}"))).await,
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

/// The update one event makes. Only changes to watched services make one, so only they move
/// the snapshot's revision: it is what the backends report they reflect, and moving it for
/// other services (or progress lines) would make the syncer's own report, itself a write,
/// trigger the next report.
fn update(services: &[String], event: WatchEvent) -> Option<Discovery> {
    match event {
        WatchEvent::Put { revision, instance } if services.contains(&instance.service) => {
            Some(Discovery::Put { endpoint: endpoint(&instance), service: instance.service.clone(), id: instance.instance.clone(), revision })
        }
        WatchEvent::Delete { revision, service, instance, .. } if services.contains(&service) => Some(Discovery::Delete { service, id: instance, revision }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Folds one event into `snap`, as the source does.
    fn apply(snap: &mut Snapshot, services: &[String], event: WatchEvent) {
        if let Some(u) = update(services, event) {
            snap.fold(u);
        }
    }

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
        apply(&mut snap, &services, WatchEvent::Put { revision: 3, instance: instance("web", "a", 3).into() });
        apply(&mut snap, &services, WatchEvent::Put { revision: 4, instance: instance("other", "b", 4).into() });
        assert_eq!(snap.services.len(), 1);
        assert_eq!(snap.revision, 3, "another service's change does not move the revision");
        apply(&mut snap, &services, WatchEvent::Delete { revision: 5, service: "web".into(), instance: "a".into(), cause: None });
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
            apply(&mut a, &services, WatchEvent::Put { revision: r, instance: instance("web", n, r).into() });
        }
        let mut b = a.clone();
        assert_eq!(differences(&a, &b), 0);
        apply(&mut b, &services, WatchEvent::Delete { revision: 4, service: "web".into(), instance: "a".into(), cause: None });
        let mut changed = instance("web", "b", 5);
        changed.port = 81;
        apply(&mut b, &services, WatchEvent::Put { revision: 5, instance: changed.into() });
        apply(&mut b, &services, WatchEvent::Put { revision: 6, instance: instance("web", "d", 6).into() });
        assert_eq!(differences(&a, &b), 3);
    }
}
