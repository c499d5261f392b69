//! `plan(actual, desired) -> ops`: the pure diff that drives HAProxy (docs/syncer.md, "How it works").
//!
//! Architecture Invariant: planning does no I/O and reads no clock; the caller passes `now` and
//! what it remembers about drains, so every decision is testable from a table.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::model::{is_managed, ActualServer, AdminState, DesiredSet, Op};

/// When the servers being removed started draining.
pub type Draining = BTreeMap<String, Instant>;

/// Computes the operations that bring a backend from `actual` to `desired`.
///
/// - a desired server that is missing is added; one whose address or port changed is removed
///   (at once, it points somewhere else now) and added again;
/// - weight and state are corrected where they differ;
/// - a managed server that is no longer desired is drained first, and removed once it has no
///   sessions or has drained for `drain_timeout`;
/// - servers without the managed prefix (declared in haproxy.cfg) are never touched.
pub fn plan(actual: &[ActualServer], desired: &DesiredSet, draining: &Draining, now: Instant, drain_timeout: Duration) -> Vec<Op> {
    let mut ops = Vec::new();
    let by_name: BTreeMap<&str, &ActualServer> = actual.iter().map(|a| (a.name.as_str(), a)).collect();
    for (name, want) in desired {
        match by_name.get(name.as_str()) {
            None => ops.push(Op::Add(want.clone())),
            Some(have) if have.address != want.address || have.port != want.port => {
                ops.push(Op::Remove { name: name.clone() });
                ops.push(Op::Add(want.clone()));
            }
            Some(have) => {
                if have.weight != want.weight {
                    ops.push(Op::SetWeight { name: name.clone(), weight: want.weight });
                }
                if have.state != want.state {
                    ops.push(Op::SetState { name: name.clone(), state: want.state });
                }
            }
        }
    }
    for have in actual {
        if !is_managed(&have.name) || desired.contains_key(&have.name) {
            continue;
        }
        let drained_long = draining.get(&have.name).is_some_and(|since| now.saturating_duration_since(*since) >= drain_timeout);
        if have.sessions == 0 || drained_long || have.state == AdminState::Maint {
            ops.push(Op::Remove { name: have.name.clone() });
        } else if have.state != AdminState::Drain {
            ops.push(Op::SetState { name: have.name.clone(), state: AdminState::Drain });
        }
    }
    ops
}

/// Whether `op` takes a server out of rotation for good (what the breaker limits).
pub fn is_removal(op: &Op, desired: &DesiredSet) -> bool {
    match op {
        Op::Remove { name } => !desired.contains_key(name),
        Op::SetState { name, state: AdminState::Drain } => !desired.contains_key(name),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DesiredServer;

    fn d(name: &str, port: u16, weight: u32, state: AdminState) -> DesiredServer {
        DesiredServer { name: name.into(), address: "127.0.0.1".into(), port, weight, state }
    }

    fn a(name: &str, port: u16, weight: u32, state: AdminState, sessions: u64) -> ActualServer {
        ActualServer { name: name.into(), address: "127.0.0.1".into(), port, weight, state, sessions }
    }

    fn set(servers: &[DesiredServer]) -> DesiredSet {
        servers.iter().map(|s| (s.name.clone(), s.clone())).collect()
    }

    use AdminState::*;

    #[test]
    fn table() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(30);
        struct Case {
            name: &'static str,
            actual: Vec<ActualServer>,
            desired: Vec<DesiredServer>,
            draining: Vec<(&'static str, Duration)>,
            want: Vec<Op>,
        }
        let cases = vec![
            Case { name: "nothing to do", actual: vec![a("sd-a", 1, 100, Ready, 0)], desired: vec![d("sd-a", 1, 100, Ready)], draining: vec![], want: vec![] },
            Case {
                name: "add missing",
                actual: vec![],
                desired: vec![d("sd-a", 1, 100, Ready)],
                draining: vec![],
                want: vec![Op::Add(d("sd-a", 1, 100, Ready))],
            },
            Case {
                name: "weight and state corrected",
                actual: vec![a("sd-a", 1, 10, Maint, 0)],
                desired: vec![d("sd-a", 1, 100, Drain)],
                draining: vec![],
                want: vec![Op::SetWeight { name: "sd-a".into(), weight: 100 }, Op::SetState { name: "sd-a".into(), state: Drain }],
            },
            Case {
                name: "moved port is replaced",
                actual: vec![a("sd-a", 1, 100, Ready, 3)],
                desired: vec![d("sd-a", 2, 100, Ready)],
                draining: vec![],
                want: vec![Op::Remove { name: "sd-a".into() }, Op::Add(d("sd-a", 2, 100, Ready))],
            },
            Case {
                name: "idle undesired server removed at once",
                actual: vec![a("sd-a", 1, 100, Ready, 0)],
                desired: vec![],
                draining: vec![],
                want: vec![Op::Remove { name: "sd-a".into() }],
            },
            Case {
                name: "busy undesired server drained first",
                actual: vec![a("sd-a", 1, 100, Ready, 5)],
                desired: vec![],
                draining: vec![],
                want: vec![Op::SetState { name: "sd-a".into(), state: Drain }],
            },
            Case {
                name: "draining server waits",
                actual: vec![a("sd-a", 1, 100, Drain, 5)],
                desired: vec![],
                draining: vec![("sd-a", Duration::from_secs(10))],
                want: vec![],
            },
            Case {
                name: "drain deadline passed",
                actual: vec![a("sd-a", 1, 100, Drain, 5)],
                desired: vec![],
                draining: vec![("sd-a", Duration::from_secs(30))],
                want: vec![Op::Remove { name: "sd-a".into() }],
            },
            Case {
                name: "drained server with no sessions removed",
                actual: vec![a("sd-a", 1, 100, Drain, 0)],
                desired: vec![],
                draining: vec![("sd-a", Duration::from_secs(1))],
                want: vec![Op::Remove { name: "sd-a".into() }],
            },
            Case { name: "config-declared servers left alone", actual: vec![a("static1", 1, 100, Ready, 0)], desired: vec![], draining: vec![], want: vec![] },
        ];
        for c in cases {
            // Each case drains at most one server, which started draining `ago` before `now`.
            let draining: Draining = c.draining.iter().map(|(n, _)| (n.to_string(), t0)).collect();
            let now = t0 + c.draining.first().map(|(_, ago)| *ago).unwrap_or_default();
            let got = plan(&c.actual, &set(&c.desired), &draining, now, timeout);
            assert_eq!(got, c.want, "case {:?}", c.name);
        }
    }

    #[test]
    fn removals_are_recognised_for_the_breaker() {
        let desired = set(&[d("sd-a", 1, 100, Drain)]);
        assert!(!is_removal(&Op::SetState { name: "sd-a".into(), state: Drain }, &desired), "a desired drain is not a removal");
        assert!(is_removal(&Op::SetState { name: "sd-b".into(), state: Drain }, &desired));
        assert!(is_removal(&Op::Remove { name: "sd-b".into() }, &desired));
        assert!(!is_removal(&Op::Remove { name: "sd-a".into() }, &desired), "a replacement is not a removal");
    }
}
