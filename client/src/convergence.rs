//! Whether the balancers have applied a change. Every syncer reports, as an instance of
//! `_syncers`, which service each of its HAProxy backends follows and which registry revision
//! it has applied (`proto::SyncerReport`). A change written at revision R to service S is
//! applied by a backend that follows S once it reports R or later. `judge` is the rule (pure);
//! `follow` reads the reports until it can decide. The announcer's drain and
//! `registry deregister --wait` both wait on it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proto::{Instance, Revision, SyncerReport, SYNCER_SERVICE};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::{Client, Error};

/// Per service, the revision the balancers must have applied (the latest change, if several).
pub type Targets = BTreeMap<String, Revision>;

/// How long one blocking read of the reports waits for a change before it reads again anyway.
const POLL: Duration = Duration::from_secs(2);

/// What is known of the balancers' progress with a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Convergence {
    /// No live balancer reports following these services (when first read): nothing balances
    /// them through a syncer, or none reports.
    Unfollowed { services: Vec<String> },
    /// It cannot be told (why): the reports cannot be read, or a balancer that had not applied
    /// the change stopped reporting (its syncer stopped or lost its lease; its HAProxy keeps
    /// the set it had, fail-static, so it may still route to what was removed).
    Unknown { why: String },
    /// These balancers have not applied the change yet.
    Waiting { late: Vec<Late> },
    /// Every live balancer that follows the services has applied the change (their
    /// `syncer/backend` names).
    Applied { balancers: Vec<String> },
}

/// One balancer backend that has not applied the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Late {
    pub syncer: String,
    pub backend: String,
    pub service: String,
    /// The registry revision it has applied, if any.
    pub applied: Option<u64>,
    /// The revision of the change.
    pub needed: u64,
}

impl std::fmt::Display for Late {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let applied = self.applied.map_or_else(|| "nothing".to_string(), |a| format!("revision {a}"));
        write!(f, "{}/{} ({}: applied {applied}, the change is revision {})", self.syncer, self.backend, self.service, self.needed)
    }
}

/// The verdict for the reports in `reports` (the instances of `_syncers`, each a live syncer:
/// a report goes with its syncer's lease). A service no report follows makes it `Unfollowed`.
pub fn judge(reports: &[Instance], targets: &Targets) -> Convergence {
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
        return Convergence::Unfollowed { services: unfollowed.into_iter().cloned().collect() };
    }
    if late.is_empty() {
        Convergence::Applied { balancers: applied }
    } else {
        Convergence::Waiting { late }
    }
}

/// Reads the reports (linearizable, then blocking queries on `_syncers`) and sends each new
/// verdict until one is final. A token without `read` (401/403) or another refusal is final
/// (`Unknown`); an unreachable registry is retried, for as long as the receiver listens.
pub async fn follow(client: Client, targets: Targets, progress: mpsc::Sender<Convergence>) {
    if targets.is_empty() {
        let _ = progress.send(Convergence::Applied { balancers: vec![] }).await;
        return;
    }
    let mut index: Option<u64> = None;
    let mut last: Option<Convergence> = None;
    // Backends that were late at the last read: one missing from a later read stopped
    // reporting before it applied the change.
    let mut late: Vec<Late> = Vec::new();
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
            Err(e @ Error::Api { status: 401 | 403, .. }) => {
                let why = format!("cannot read the balancers' reports ({e}); it takes a token with `read`");
                let _ = progress.send(Convergence::Unknown { why }).await;
                return;
            }
            Err(e) if !e.is_retriable() => {
                let _ = progress.send(Convergence::Unknown { why: format!("cannot read the balancers' reports: {e}") }).await;
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "reading the balancers' reports failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 + rand::random::<u64>() % 200)).await;
                continue;
            }
        };
        let verdict = match vanished(&reports, &late) {
            Some(gone) => Convergence::Unknown {
                why: format!("{gone} stopped reporting before it applied the change (its syncer stopped or lost its lease; its HAProxy keeps the set it had)"),
            },
            None => judge(&reports, &targets),
        };
        late = match &verdict {
            Convergence::Waiting { late } => late.clone(),
            _ => Vec::new(),
        };
        let done = !matches!(verdict, Convergence::Waiting { .. });
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

/// The first of `late` (`syncer/backend`) that no longer reports in `reports`.
fn vanished(reports: &[Instance], late: &[Late]) -> Option<String> {
    late.iter()
        .find(|l| !reports.iter().any(|r| r.instance == l.syncer && SyncerReport::from_meta(&r.meta).backends.contains_key(&l.backend)))
        .map(|l| format!("{}/{}", l.syncer, l.backend))
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
            meta: r.to_meta().into(),
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
    fn applied_once_every_backend_that_follows_the_service_reached_the_change() {
        let t = targets(&[("web", 10)]);
        let reports = [report("lb1", &[("be_web", "web", Some(10)), ("be_api", "api", Some(3))]), report("lb2", &[("be_web", "web", Some(12))])];
        assert_eq!(judge(&reports, &t), Convergence::Applied { balancers: vec!["lb1/be_web".into(), "lb2/be_web".into()] });
    }

    #[test]
    fn a_backend_behind_or_without_a_revision_is_late() {
        let t = targets(&[("web", 10), ("api", 11)]);
        let reports = [report("lb1", &[("be_web", "web", Some(9)), ("be_api", "api", Some(11))]), report("lb2", &[("w", "web", None), ("a", "api", Some(20))])];
        let Convergence::Waiting { late } = judge(&reports, &t) else { panic!("not waiting") };
        let names: Vec<String> = late.iter().map(|l| format!("{}/{}", l.syncer, l.backend)).collect();
        assert_eq!(names, vec!["lb1/be_web", "lb2/w"]);
        assert_eq!((late[0].applied, late[0].needed), (Some(9), 10));
        assert!(late[1].to_string().contains("applied nothing"), "{}", late[1]);
    }

    #[test]
    fn a_service_no_balancer_follows_is_unfollowed() {
        let t = targets(&[("web", 10), ("api", 11)]);
        let reports = [report("lb1", &[("be_web", "web", Some(10))])];
        assert_eq!(judge(&reports, &t), Convergence::Unfollowed { services: vec!["api".into()] });
        assert_eq!(judge(&[], &targets(&[("web", 1)])), Convergence::Unfollowed { services: vec!["web".into()] });
        assert_eq!(judge(&[], &Targets::new()), Convergence::Applied { balancers: vec![] }, "no change, nothing to wait for");
    }

    #[test]
    fn a_late_balancer_whose_report_is_gone_is_named() {
        let t = targets(&[("web", 10)]);
        let before = [report("lb1", &[("be_web", "web", Some(10))]), report("lb2", &[("be_web", "web", Some(9))])];
        let Convergence::Waiting { late } = judge(&before, &t) else { panic!("not waiting") };
        // lb2's lease ended: judge alone would call the rest applied.
        let after = [report("lb1", &[("be_web", "web", Some(10))])];
        assert!(matches!(judge(&after, &t), Convergence::Applied { .. }));
        assert_eq!(vanished(&after, &late).as_deref(), Some("lb2/be_web"));
        assert_eq!(vanished(&before, &late), None);
    }
}
