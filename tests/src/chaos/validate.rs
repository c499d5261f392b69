//! The guarantees, each a named validator that reports its figures.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

use super::fault::{Event, Log};
use super::topology::TTL;
use super::workload::Record;

#[derive(Debug)]
pub struct Verdict {
    pub name: &'static str,
    pub passed: bool,
    pub figures: String,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:<48} {}", if self.passed { "PASS" } else { "FAIL" }, self.name, self.figures)
    }
}

/// A host's ports as they appear in samples.
pub struct HostPorts {
    pub web: u16,
    pub api: u16,
}

fn present(s: &BTreeSet<(String, u16)>, h: &HostPorts) -> (bool, bool) {
    (s.contains(&("web-servers".to_string(), h.web)), s.contains(&("api-servers".to_string(), h.api)))
}

/// Validator 1. No live, renewing instance ever disappears from HAProxy: from the first sample
/// that has a host's two servers after it (re)started, until it is killed, every sample has
/// them.
pub fn no_live_instance_dropped(rec: &Record, log: &Log, hosts: &[HostPorts], start: Instant) -> Verdict {
    let mut violations = Vec::new();
    let mut windows = 0;
    for (i, h) in hosts.iter().enumerate() {
        // Alive periods: [start or restart, kill or end].
        let mut periods = Vec::new();
        let mut from = Some(start);
        for (t, e) in &log.events {
            match e {
                Event::HostKilled { host, .. } if *host == i => {
                    if let Some(f) = from.take() {
                        periods.push((f, *t));
                    }
                }
                Event::HostRestarted { host } if *host == i => from = Some(*t),
                _ => {}
            }
        }
        if let Some(f) = from {
            periods.push((f, Instant::now()));
        }
        for (from, to) in periods {
            let mut seen = false;
            for (t, s) in rec.samples.iter().filter(|(t, _)| *t >= from && *t < to) {
                let (web, api) = present(s, h);
                if web && api {
                    seen = true;
                } else if seen {
                    violations.push(format!("host {i} missing at +{:?} (web {web}, api {api})", t.duration_since(start)));
                }
            }
            windows += seen as usize;
        }
    }
    Verdict {
        name: "1 no live instance dropped from HAProxy",
        passed: violations.is_empty(),
        figures: format!(
            "{} samples, {windows} live windows, {} violations {:?}",
            rec.samples.len(),
            violations.len(),
            violations.iter().take(5).collect::<Vec<_>>()
        ),
    }
}

/// Validator 2. No acknowledged registration is lost: every churn instance is in the registry at
/// the end unless it was revoked on purpose or its lease went a whole TTL without a successful
/// keepalive (the client's doing, not the registry's); a lease the registry dropped while it was
/// being renewed within its TTL is a loss; and no node ends below an acknowledged revision.
pub fn nothing_acknowledged_lost(rec: &Record, log: &Log, present: &BTreeSet<String>, node_revisions: &[u64]) -> Verdict {
    use super::workload::CHURN_TTL;
    let dropped_while_renewed: Vec<String> = rec
        .churned
        .iter()
        .filter(|c| c.expired_after.is_some_and(|gap| gap < CHURN_TTL))
        .map(|c| {
            let (at, answer) = c.expired_answer.clone().unwrap_or((Instant::now(), String::new()));
            let last_fault = log.events.iter().rev().find(|(t, _)| *t <= at).map(|(t, e)| format!("{e:?} {:?} before", at - *t));
            format!("{} (lease {}, {:?} after its last renewal; answer {answer:?}; last fault {last_fault:?})", c.name, c.lease, c.expired_after.unwrap())
        })
        .collect();
    let unrenewed = rec.churned.iter().filter(|c| c.expired_after.is_some_and(|gap| gap >= CHURN_TTL)).count();
    let expected: Vec<&String> = rec.churned.iter().filter(|c| c.registered && !c.revoked && c.expired_after.is_none()).map(|c| &c.name).collect();
    let missing: Vec<&&String> = expected.iter().filter(|n| !present.contains(**n)).collect();
    let max_ack = rec.acked.iter().map(|(_, r, _)| *r).max().unwrap_or(0);
    let min_node = node_revisions.iter().copied().min().unwrap_or(0);
    Verdict {
        name: "2 nothing acknowledged lost",
        passed: missing.is_empty() && dropped_while_renewed.is_empty() && min_node >= max_ack && !rec.acked.is_empty(),
        figures: format!(
            "{} registrations acknowledged, {} revoked on purpose, {unrenewed} left unrenewed for a TTL by the client, {} expected at the end, {} missing {missing:?}, {} dropped while renewed {dropped_while_renewed:?}; highest acked revision {max_ack}, lowest node revision {min_node}",
            rec.acked.len(),
            rec.revoked.len(),
            expected.len(),
            missing.len(),
            dropped_while_renewed.len(),
        ),
    }
}

/// Validator 3. Every killed instance leaves HAProxy within TTL + 1 s, also when the leader died with it.
pub fn dead_instances_removed_in_time(rec: &Record, log: &Log, hosts: &[HostPorts]) -> Verdict {
    let bound = TTL + Duration::from_secs(1);
    let mut delays = Vec::new();
    let mut late = Vec::new();
    for (t, e) in &log.events {
        let Event::HostKilled { host, with_leader } = e else { continue };
        let h = &hosts[*host];
        let gone = rec.samples.iter().find(|(s, servers)| s >= t && present(servers, h) == (false, false));
        match gone {
            Some((s, _)) => {
                let d = s.duration_since(*t);
                delays.push((d, *with_leader));
                if d > bound {
                    late.push(format!("host {host} after {d:?}{}", if *with_leader { " (leader killed too)" } else { "" }));
                }
            }
            None => late.push(format!("host {host} never left")),
        }
    }
    let max = delays.iter().map(|(d, _)| *d).max().unwrap_or_default();
    let max_leader = delays.iter().filter(|(_, l)| *l).map(|(d, _)| *d).max().unwrap_or_default();
    Verdict {
        name: "3 dead instances removed within TTL + 1 s",
        passed: late.is_empty() && !delays.is_empty(),
        figures: format!(
            "{} kills ({} with the leader), slowest {max:?} (with leader {max_leader:?}), bound {bound:?}, late {late:?}",
            delays.len(),
            delays.iter().filter(|(_, l)| *l).count()
        ),
    }
}

/// Validator 4. All registry nodes end with the same revision and data, and all are healthy.
pub fn nodes_converge(revisions: &[u64], same_data: bool, healthy: usize, members: usize) -> Verdict {
    let same_rev = revisions.windows(2).all(|w| w[0] == w[1]);
    Verdict {
        name: "4 registry nodes converge",
        passed: same_rev && same_data && healthy == members && members == 3,
        figures: format!("revisions {revisions:?}, same data {same_data}, {healthy}/{members} members healthy in registry status"),
    }
}

/// Validator 5. The success rate of HTTP requests through HAProxy.
pub fn success_rate(rec: &Record) -> Verdict {
    let total = rec.requests_ok + rec.requests_failed;
    let rate = if total == 0 { 0.0 } else { rec.requests_ok as f64 / total as f64 * 100.0 };
    Verdict {
        name: "5 HTTP success rate through HAProxy",
        passed: total > 0 && rate >= 99.9,
        figures: format!(
            "{rate:.3}% of {total} requests ({} failed; target 99.9%) {:?}",
            rec.requests_failed,
            rec.failures.iter().take(3).map(|(_, e)| e).collect::<Vec<_>>()
        ),
    }
}

/// Validator 6. Writes stay available: for every SIGKILL of the leader, the time to the first
/// acknowledged write issued after it (bound 1 s, the failover target with the defaults), and
/// the longest stretch of the run with no write acknowledged at all, whatever the fault.
pub fn writes_available(rec: &Record, log: &Log, start: Instant, end: Instant) -> Verdict {
    let bound = Duration::from_secs(1);
    let mut kills = Vec::new();
    let mut unresumed = 0;
    for (t, e) in &log.events {
        if !matches!(e, Event::RegistryKilled { leader: true, .. }) {
            continue;
        }
        match rec.writes.iter().filter(|(issued, _)| issued >= t).map(|(_, acked)| *acked).min() {
            Some(acked) => kills.push(acked.duration_since(*t)),
            None => unresumed += 1,
        }
    }
    kills.sort();
    let p50 = kills.get(kills.len().saturating_sub(1) / 2).copied().unwrap_or_default();
    let max = kills.last().copied().unwrap_or_default();
    let mut acks: Vec<Instant> = rec.writes.iter().map(|(_, a)| *a).filter(|a| *a >= start && *a <= end).collect();
    acks.sort();
    let (mut gap, mut gap_at) = (Duration::ZERO, Duration::ZERO);
    for w in std::iter::once(start).chain(acks.iter().copied()).chain(std::iter::once(end)).collect::<Vec<_>>().windows(2) {
        if w[1] - w[0] > gap {
            (gap, gap_at) = (w[1] - w[0], w[0] - start);
        }
    }
    // The fault behind the gap: the last one injected before it ended.
    let gap_end = start + gap_at + gap;
    let cause = match log.events.iter().rfind(|(t, _)| *t <= gap_end) {
        Some((t, e)) if *t >= start => format!("{e:?} at {:?}", t.duration_since(start)),
        _ => "no fault".to_string(),
    };
    Verdict {
        name: "6 writes resume within 1 s of a leader kill",
        passed: unresumed == 0 && max <= bound && !rec.writes.is_empty(),
        figures: format!(
            "{} leader kills: p50 {p50:?}, max {max:?} (bound {bound:?}){}; longest gap without an acknowledged write {gap:?}, {gap_at:?} into the run (last fault before it: {cause}); {} writes acknowledged",
            kills.len(),
            if unresumed > 0 { format!(", {unresumed} never resumed") } else { String::new() },
            rec.writes.len()
        ),
    }
}
