//! The registry as a source: list once, then follow `/v1/watch` from the list's revision,
//! resuming from the last revision seen after a broken stream and re-listing on `compacted`.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use client::Client;
use proto::{Instance, WatchEvent};
use rand::Rng;

use super::{mark_down, Endpoint, Snapshot, Tx};

fn endpoint(i: &Instance) -> Endpoint {
    Endpoint { addr: i.address.clone(), port: i.port, weight: i.weight, state: i.state }
}

async fn list(client: &Client, services: &[String]) -> Result<(Snapshot, u64), client::Error> {
    let mut snap = Snapshot::default();
    let mut since = u64::MAX;
    for s in services {
        let answer = client.service(s, false).await?;
        since = since.min(answer.revision);
        snap.revision = snap.revision.max(answer.revision);
        snap.services.insert(s.clone(), answer.instances.iter().map(|i| (i.instance.clone(), endpoint(i))).collect());
    }
    // Watch from the oldest list: events the later lists already contain are applied again,
    // which is harmless (puts and deletes are idempotent).
    Ok((snap, if since == u64::MAX { 0 } else { since }))
}

fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(100) * 2u32.pow(attempt.min(5));
    base.min(Duration::from_secs(2)).mul_f64(rand::thread_rng().gen_range(0.5..1.5))
}

/// Runs forever, keeping `tx` current.
pub async fn run(client: Client, services: Vec<String>, tx: Tx) {
    let filter = if services.len() == 1 { Some(services[0].clone()) } else { None };
    let mut attempt = 0;
    'relist: loop {
        let (mut snap, mut since) = match list(&client, &services).await {
            Ok(x) => x,
            Err(e) => {
                mark_down(&tx, format!("listing services: {e}"));
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
                continue;
            }
        };
        publish(&tx, &snap);
        loop {
            let mut stream = match client.watch(filter.as_deref(), Some(since)).await {
                Ok(s) => s,
                Err(e) => {
                    mark_down(&tx, format!("opening watch: {e}"));
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                    continue;
                }
            };
            attempt = 0;
            loop {
                match stream.next().await {
                    Ok(Some(WatchEvent::Compacted { revision, compact_revision })) => {
                        tracing::warn!(since, revision, compact_revision, "watch history compacted; re-listing");
                        continue 'relist;
                    }
                    Ok(Some(event)) => {
                        since = since.max(event.revision());
                        apply(&mut snap, &services, event);
                        publish(&tx, &snap);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        mark_down(&tx, format!("watch stream from {}: {e}", stream.url()));
                        break;
                    }
                }
            }
        }
    }
}

/// Applies one event. The snapshot's revision moves only with changes to watched services: it
/// is what the backends report they reflect, and moving it for other services (or progress
/// lines) would make the syncer's own report, itself a write, trigger the next report.
fn apply(snap: &mut Snapshot, services: &[String], event: WatchEvent) {
    let revision = event.revision();
    match event {
        WatchEvent::Put { instance, .. } if services.contains(&instance.service) => {
            snap.revision = snap.revision.max(revision);
            snap.services.entry(instance.service.clone()).or_insert_with(BTreeMap::new).insert(instance.instance.clone(), endpoint(&instance));
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
}
