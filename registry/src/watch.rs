//! Retained change history and the hub that wakes watchers.
//!
//! Every applied change is appended here in log order. A watcher asks for the events after a
//! revision; if that revision has left the retained window it gets `Compacted` and re-lists.
//! History is per node and not replicated: a node that starts from a snapshot retains history
//! from the snapshot's revision on.

use std::collections::VecDeque;
use std::sync::Mutex;

use proto::{Revision, WatchEvent};
use tokio::sync::watch;

pub struct WatchHub {
    history: Mutex<History>,
    head: watch::Sender<Revision>,
}

struct History {
    events: VecDeque<WatchEvent>,
    capacity: usize,
    /// Bound on the approximate size of `events` (large meta would otherwise let 100k events
    /// hold gigabytes).
    max_bytes: usize,
    bytes: usize,
    /// Events at or below this revision may be missing from `events`.
    compacted: Revision,
    head: Revision,
}

/// `since` is older than the retained history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    pub head: Revision,
    pub compact_revision: Revision,
}

/// About how many bytes an event holds in memory (its strings and a fixed overhead).
fn approx_size(e: &WatchEvent) -> usize {
    const OVERHEAD: usize = 160;
    OVERHEAD
        + match e {
            WatchEvent::Put { instance: i, .. } => {
                i.service.len() + i.instance.len() + i.address.len() + i.meta.iter().map(|(k, v)| k.len() + v.len() + 48).sum::<usize>()
            }
            WatchEvent::Delete { service, instance, .. } => service.len() + instance.len(),
            _ => 0,
        }
}

/// Default bound on the bytes of retained history.
pub const DEFAULT_HISTORY_BYTES: usize = 256 << 20;

impl WatchHub {
    pub fn new(capacity: usize) -> WatchHub {
        WatchHub::with_limits(capacity, DEFAULT_HISTORY_BYTES)
    }

    /// Keeps at most `capacity` events and about `max_bytes` of them, whichever is reached first.
    pub fn with_limits(capacity: usize, max_bytes: usize) -> WatchHub {
        WatchHub {
            history: Mutex::new(History { events: VecDeque::new(), capacity: capacity.max(1), max_bytes: max_bytes.max(1), bytes: 0, compacted: 0, head: 0 }),
            head: watch::channel(0).0,
        }
    }

    /// Records the changes of one applied entry (possibly none) and wakes watchers.
    pub fn publish(&self, revision: Revision, events: Vec<WatchEvent>) {
        let mut h = self.history.lock().unwrap();
        for e in events {
            h.bytes += approx_size(&e);
            h.events.push_back(e);
        }
        while h.events.len() > h.capacity || (h.bytes > h.max_bytes && h.events.len() > 1) {
            let dropped = h.events.pop_front().expect("len > 1");
            h.bytes -= approx_size(&dropped);
            h.compacted = h.compacted.max(dropped.revision());
        }
        h.head = h.head.max(revision);
        let head = h.head;
        drop(h);
        self.head.send_replace(head);
    }

    /// Forgets history up to `revision`: the store was replaced by a snapshot.
    pub fn reset(&self, revision: Revision) {
        let mut h = self.history.lock().unwrap();
        h.events.clear();
        h.bytes = 0;
        h.compacted = revision;
        h.head = revision;
        drop(h);
        self.head.send_replace(revision);
    }

    /// Events after `since` for `service` (all services if `None`), at most `max` of them
    /// (never splitting a revision), and the revision the answer is complete up to.
    pub fn since(&self, since: Revision, service: Option<&str>, max: usize) -> Result<(Vec<WatchEvent>, Revision), Compacted> {
        let h = self.history.lock().unwrap();
        if since < h.compacted {
            return Err(Compacted { head: h.head, compact_revision: h.compacted });
        }
        let start = h.events.partition_point(|e| e.revision() <= since);
        let mut out = Vec::new();
        let mut upto = h.head;
        for e in h.events.range(start..) {
            if out.len() >= max && out.last().map(WatchEvent::revision) != Some(e.revision()) {
                upto = out.last().map(WatchEvent::revision).unwrap_or(since);
                break;
            }
            if service.is_none() || e.service() == service {
                out.push(e.clone());
            }
        }
        Ok((out, upto))
    }

    pub fn head(&self) -> Revision {
        *self.head.borrow()
    }

    /// A receiver that changes whenever the head revision moves.
    pub fn subscribe(&self) -> watch::Receiver<Revision> {
        self.head.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn del(rev: Revision, service: &str) -> WatchEvent {
        WatchEvent::Delete { revision: rev, service: service.into(), instance: format!("i{rev}"), cause: None }
    }

    #[test]
    fn since_returns_only_newer_events_in_order() {
        let hub = WatchHub::new(100);
        hub.publish(1, vec![del(1, "web")]);
        hub.publish(2, vec![]);
        hub.publish(3, vec![del(3, "api"), del(3, "web")]);
        let (ev, upto) = hub.since(1, None, 100).unwrap();
        assert_eq!(ev.iter().map(|e| e.revision()).collect::<Vec<_>>(), vec![3, 3]);
        assert_eq!(upto, 3);
        let (ev, _) = hub.since(0, Some("web"), 100).unwrap();
        assert_eq!(ev.len(), 2);
    }

    #[test]
    fn old_since_is_compacted() {
        let hub = WatchHub::new(2);
        for r in 1..=4 {
            hub.publish(r, vec![del(r, "web")]);
        }
        assert_eq!(hub.since(1, None, 10), Err(Compacted { head: 4, compact_revision: 2 }));
        assert_eq!(hub.since(2, None, 10).unwrap().0.len(), 2);
    }

    #[test]
    fn a_page_never_splits_a_revision() {
        let hub = WatchHub::new(100);
        hub.publish(1, vec![del(1, "a"), del(1, "b"), del(1, "c")]);
        hub.publish(2, vec![del(2, "a")]);
        let (ev, upto) = hub.since(0, None, 1).unwrap();
        assert_eq!(ev.len(), 3);
        assert_eq!(upto, 1);
        let (ev, upto) = hub.since(upto, None, 1).unwrap();
        assert_eq!((ev.len(), upto), (1, 2));
    }

    #[test]
    fn history_is_bounded_by_bytes_too() {
        let big = |rev: Revision| {
            let meta = (0..8).map(|k| (format!("k{k}"), "v".repeat(1000))).collect();
            let instance = proto::Instance {
                service: "web".into(),
                instance: format!("i{rev}"),
                address: "10.0.0.1".into(),
                port: 80,
                weight: 1,
                state: Default::default(),
                meta,
                lease_id: None,
                create_revision: rev,
                mod_revision: rev,
                lease: None,
            };
            WatchEvent::Put { revision: rev, instance: instance.into() }
        };
        // Room for 1000 events by count, but only about 5 of 8 KB by size.
        let hub = WatchHub::with_limits(1000, 45_000);
        for r in 1..=20 {
            hub.publish(r, vec![big(r)]);
        }
        let (kept, _) = hub.since(15, None, 100).unwrap();
        assert_eq!(kept.len(), 5);
        assert!(matches!(hub.since(10, None, 100), Err(Compacted { compact_revision: 15, .. })));
    }

    #[test]
    fn reset_compacts_everything_before() {
        let hub = WatchHub::new(10);
        hub.publish(1, vec![del(1, "a")]);
        hub.reset(50);
        assert!(hub.since(10, None, 10).is_err());
        assert_eq!(hub.since(50, None, 10).unwrap(), (vec![], 50));
    }
}
