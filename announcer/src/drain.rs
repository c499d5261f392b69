//! What a drain waits for: the balancers. Every syncer reports, as an instance of `_syncers`,
//! which service each of its HAProxy backends follows and which registry revision it has
//! applied (`proto::SyncerReport`). A drain written at revision R for service S is applied by a
//! backend that follows S once it reports R or later; once every live report agrees, the
//! instances can go without waiting out the fixed drain time. `judge` is the rule (pure);
//! `follow` reads the reports until it can decide. Used by `RegistryPublisher::follow_drain`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use client::Client;
use proto::{Instance, Revision, SyncerReport, SYNCER_SERVICE};
use tokio::sync::mpsc;

use crate::publish::{DrainProgress, Late};

/// Per drained service, the revision its drain was written at (the latest, if several
/// instances of the service were drained).
pub type Targets = BTreeMap<String, Revision>;

/// How long one blocking read of the reports waits for a change before it reads again anyway.
const POLL: Duration = Duration::from_secs(2);

/// The verdict for the reports in `reports` (the instances of `_syncers`, each a live syncer:
/// a report goes with its syncer's lease). A drained service no report follows makes it
/// `Unknown`: something else may balance it, so the fixed time applies.
pub fn judge(reports: &[Instance], targets: &Targets) -> DrainProgress {
    let mut followed = BTreeSet::new();
    let mut applied = Vec::new();
    let mut late = Vec::new();
    for r in reports {
        for (backend, b) in SyncerReport::from_meta(&r.meta).backends {
            let Some(&needed) = targets.get(&b.service) else { continue };
            followed.insert(b.service.clone());
            if b.applied.is_some_and(|a| a >= needed) {
                applied.push(format!("{}/{backend}", r.instance));
            } else {
                late.push(Late { syncer: r.instance.clone(), backend, service: b.service, applied: b.applied, needed });
            }
        }
    }
    let unfollowed: Vec<&String> = targets.keys().filter(|s| !followed.contains(*s)).collect();
    if !unfollowed.is_empty() {
        return DrainProgress::Unknown { why: format!("no balancer reports following {unfollowed:?}") };
    }
    if late.is_empty() {
        DrainProgress::Applied { balancers: applied }
    } else {
        DrainProgress::Waiting { late }
    }
}

/// Reads the reports (linearizable, then blocking queries on `_syncers`) and sends each new
/// verdict until one is final. A token without `read` (401/403) or another refusal is final
/// (`Unknown`); an unreachable registry is retried, for as long as the agent waits.
pub async fn follow(client: Client, targets: Targets, progress: mpsc::Sender<DrainProgress>) {
    if targets.is_empty() {
        let _ = progress.send(DrainProgress::Applied { balancers: vec![] }).await;
        return;
    }
    let mut index: Option<u64> = None;
    let mut last: Option<DrainProgress> = None;
    loop {
        let read = match index {
            None => client.service(SYNCER_SERVICE, false).await,
            Some(i) => client.service_after(SYNCER_SERVICE, i, POLL).await,
        };
        let reports = match read {
            Ok(s) => {
                index = Some(s.index);
                s.instances
            }
            // No syncer has ever reported.
            Err(e) if e.is_not_found() => {
                index = None;
                Vec::new()
            }
            Err(e @ client::Error::Api { status: 401 | 403, .. }) => {
                let why = format!("cannot read the balancers' reports ({e}); a token with `read` lets the drain end when they have applied it");
                let _ = progress.send(DrainProgress::Unknown { why }).await;
                return;
            }
            Err(e) if !e.is_retriable() => {
                let _ = progress.send(DrainProgress::Unknown { why: format!("cannot read the balancers' reports: {e}") }).await;
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "reading the balancers' reports failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 + rand::random::<u64>() % 200)).await;
                continue;
            }
        };
        let verdict = judge(&reports, &targets);
        let done = !matches!(verdict, DrainProgress::Waiting { .. });
        if last.as_ref() != Some(&verdict) {
            if progress.send(verdict.clone()).await.is_err() {
                return;
            }
            last = Some(verdict);
        }
        if done {
            return;
        }
        if index.is_none() {
            tokio::time::sleep(POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(syncer: &str, backends: &[(&str, &str, Option<u64>)]) -> Instance {
        let r =
            SyncerReport { backends: backends.iter().map(|(b, s, a)| (b.to_string(), proto::BackendReport { service: s.to_string(), applied: *a })).collect() };
        Instance {
            service: SYNCER_SERVICE.into(),
            instance: syncer.into(),
            address: "10.0.0.9".into(),
            port: 1,
            weight: 0,
            state: proto::InstanceState::Up,
            meta: r.to_meta(),
            lease_id: Some(1),
            create_revision: 1,
            mod_revision: 1,
            lease: None,
        }
    }

    fn targets(t: &[(&str, u64)]) -> Targets {
        t.iter().map(|(s, r)| (s.to_string(), *r)).collect()
    }

    #[test]
    fn applied_once_every_backend_that_follows_the_service_reached_the_drain() {
        let t = targets(&[("web", 10)]);
        let reports = [report("lb1", &[("be_web", "web", Some(10)), ("be_api", "api", Some(3))]), report("lb2", &[("be_web", "web", Some(12))])];
        assert_eq!(judge(&reports, &t), DrainProgress::Applied { balancers: vec!["lb1/be_web".into(), "lb2/be_web".into()] });
    }

    #[test]
    fn a_backend_behind_or_without_a_revision_is_late() {
        let t = targets(&[("web", 10), ("api", 11)]);
        let reports = [report("lb1", &[("be_web", "web", Some(9)), ("be_api", "api", Some(11))]), report("lb2", &[("w", "web", None), ("a", "api", Some(20))])];
        let DrainProgress::Waiting { late } = judge(&reports, &t) else { panic!("not waiting") };
        let names: Vec<String> = late.iter().map(|l| format!("{}/{}", l.syncer, l.backend)).collect();
        assert_eq!(names, vec!["lb1/be_web", "lb2/w"]);
        assert_eq!((late[0].applied, late[0].needed), (Some(9), 10));
        assert!(late[1].to_string().contains("applied nothing"), "{}", late[1]);
    }

    #[test]
    fn a_service_no_balancer_follows_means_the_fixed_time() {
        let t = targets(&[("web", 10), ("api", 11)]);
        let reports = [report("lb1", &[("be_web", "web", Some(10))])];
        assert!(matches!(judge(&reports, &t), DrainProgress::Unknown { why } if why.contains("api")));
        assert!(matches!(judge(&[], &targets(&[("web", 1)])), DrainProgress::Unknown { .. }));
        assert_eq!(judge(&[], &Targets::new()), DrainProgress::Applied { balancers: vec![] }, "nothing drained, nothing to wait for");
    }
}
