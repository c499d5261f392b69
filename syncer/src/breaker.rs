//! The breaker: a registry answer alone must never empty a backend or remove most of it at
//! once (docs/syncer.md, "How it works"). Per backend, removals are held when they would leave fewer than
//! `min_servers`, or when more than `max_fraction` of the backend was already removed in the
//! current window. Held removals are retried on every pass and go through once allowed.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

use crate::model::{DesiredSet, Op};
use crate::plan::is_removal;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub min_servers: usize,
    pub max_fraction: f64,
    pub window: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { min_servers: 1, max_fraction: 0.5, window: Duration::from_secs(10) }
    }
}

#[derive(Debug)]
pub struct Breaker {
    limits: Limits,
    window_start: Option<Instant>,
    /// Managed servers in the backend when the window opened.
    base: usize,
    /// Removals started in the current window.
    removed: usize,
    /// Servers already let go (draining or being deleted): their later steps pass freely.
    released: BTreeSet<String>,
}

impl Breaker {
    pub fn new(limits: Limits) -> Breaker {
        Breaker { limits, window_start: None, base: 0, removed: 0, released: BTreeSet::new() }
    }

    /// New limits (a reload), from the next pass; the current window's count stays.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Splits `ops` into those allowed now and the removals held back. `managed` names the
    /// managed servers the backend has now.
    pub fn filter(&mut self, ops: Vec<Op>, desired: &DesiredSet, managed: &[String], now: Instant) -> (Vec<Op>, Vec<Op>) {
        if self.window_start.is_none_or(|s| now.saturating_duration_since(s) >= self.limits.window) {
            self.window_start = Some(now);
            self.base = 0;
            self.removed = 0;
        }
        // The fraction is of the largest the backend has been in this window: a window that
        // opened while the backend was still filling must not keep the budget at one.
        self.base = self.base.max(managed.len());
        self.released.retain(|n| managed.contains(n) && !desired.contains_key(n));
        let budget = if self.limits.max_fraction >= 1.0 { usize::MAX } else { ((self.base as f64 * self.limits.max_fraction).floor() as usize).max(1) };
        // After this pass the backend holds every desired server plus the undesired ones not
        // let go; letting one go must not take that below `min_servers`.
        let undesired_kept = managed.iter().filter(|n| !desired.contains_key(*n) && !self.released.contains(*n)).count();
        let mut may_release = undesired_kept.saturating_sub(self.limits.min_servers.saturating_sub(desired.len()));
        let mut allowed = Vec::new();
        let mut held = Vec::new();
        for op in ops {
            if !is_removal(&op, desired) || self.released.contains(op.server()) {
                allowed.push(op);
                continue;
            }
            if self.removed >= budget || may_release == 0 {
                held.push(op);
                continue;
            }
            self.removed += 1;
            may_release -= 1;
            self.released.insert(op.server().to_string());
            allowed.push(op);
        }
        (allowed, held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AdminState, DesiredServer};

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("sd-{i}")).collect()
    }

    fn desired(names: &[String]) -> DesiredSet {
        names
            .iter()
            .map(|n| (n.clone(), DesiredServer { name: n.clone(), address: "127.0.0.1".into(), port: 1, weight: 100, state: AdminState::Ready }))
            .collect()
    }

    fn removals(names: &[String]) -> Vec<Op> {
        names.iter().map(|n| Op::Remove { name: n.clone() }).collect()
    }

    #[test]
    fn never_empties_a_backend() {
        let mut b = Breaker::new(Limits { max_fraction: 1.0, ..Limits::default() });
        let all = names(3);
        let (allowed, held) = b.filter(removals(&all), &DesiredSet::new(), &all, Instant::now());
        assert_eq!((allowed.len(), held.len()), (2, 1), "the floor of 1 keeps one server");
    }

    #[test]
    fn at_most_the_fraction_per_window() {
        let t0 = Instant::now();
        let mut b = Breaker::new(Limits::default());
        let all = names(10);
        let keep = desired(&all[..2]);
        let (allowed, held) = b.filter(removals(&all[2..]), &keep, &all, t0);
        assert_eq!((allowed.len(), held.len()), (5, 3));
        // Same window: the held ones stay held.
        let left: Vec<String> = all[..2].iter().chain(&all[7..]).cloned().collect();
        let (allowed, held) = b.filter(removals(&all[7..]), &keep, &left, t0 + Duration::from_secs(5));
        assert_eq!((allowed.len(), held.len()), (0, 3));
        // Next window: the budget is half of what is there then (floor of 5 * 0.5 = 2).
        let (allowed, held) = b.filter(removals(&all[7..]), &keep, &left, t0 + Duration::from_secs(10));
        assert_eq!((allowed.len(), held.len()), (2, 1));
    }

    #[test]
    fn a_drain_and_its_delete_count_once() {
        let t0 = Instant::now();
        let mut b = Breaker::new(Limits { max_fraction: 0.5, ..Limits::default() });
        let all = names(2);
        let keep = desired(&all[..1]);
        let drain = vec![Op::SetState { name: all[1].clone(), state: AdminState::Drain }];
        assert_eq!(b.filter(drain, &keep, &all, t0).0.len(), 1);
        let (allowed, held) = b.filter(removals(&all[1..]), &keep, &all, t0 + Duration::from_secs(1));
        assert_eq!((allowed.len(), held.len()), (1, 0), "the delete of a released server is not held");
    }

    #[test]
    fn a_window_opened_on_an_empty_backend_follows_its_growth() {
        let t0 = Instant::now();
        let mut b = Breaker::new(Limits { min_servers: 0, ..Limits::default() });
        assert!(b.filter(vec![], &DesiredSet::new(), &[], t0).0.is_empty());
        let all = names(1000);
        let (allowed, held) = b.filter(removals(&all), &DesiredSet::new(), &all, t0 + Duration::from_secs(1));
        assert_eq!((allowed.len(), held.len()), (500, 500), "half of the 1000 it grew to");
        let mut unlimited = Breaker::new(Limits { min_servers: 0, max_fraction: 1.0, ..Limits::default() });
        assert_eq!(unlimited.filter(removals(&all), &DesiredSet::new(), &all, t0).0.len(), 1000);
    }

    #[test]
    fn other_ops_pass() {
        let mut b = Breaker::new(Limits::default());
        let all = names(1);
        let ops = vec![Op::SetWeight { name: all[0].clone(), weight: 5 }];
        assert_eq!(b.filter(ops, &desired(&all), &all, Instant::now()).0.len(), 1);
    }
}
