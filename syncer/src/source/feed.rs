//! The one consumer of a source's updates: it folds them into the snapshot, publishes it on the
//! channel the reconciler reads, and keeps the source's health (healthy, last ok, error) and
//! its retry backoff. Sources only say what they learned and when they failed.

use std::time::{Duration, SystemTime};

use super::{Backoff, Discovery, Snapshot, Tx};

pub struct Feed {
    tx: Tx,
    /// Names the source in logs.
    source: &'static str,
    /// Everything folded so far; published whole.
    current: Snapshot,
    backoff: Backoff,
}

impl Feed {
    pub fn new(tx: Tx, source: &'static str, backoff: Backoff) -> Feed {
        Feed { tx, source, current: Snapshot::default(), backoff }
    }

    /// What the source has said so far (empty before the first `publish`).
    pub fn current(&self) -> &Snapshot {
        &self.current
    }

    /// Folds one batch (a whole revision, or a whole listing) and publishes the result: the
    /// source is current. An empty batch still says so.
    pub fn publish(&mut self, updates: impl IntoIterator<Item = Discovery>) {
        for u in updates {
            self.current.fold(u);
        }
        let snap = &self.current;
        self.tx.send_modify(|s| {
            if !s.healthy {
                tracing::info!(source = self.source, revision = snap.revision, "source current");
            }
            s.snapshot = Some(snap.clone());
            s.healthy = true;
            s.last_ok = Some(SystemTime::now());
            s.error = None;
        });
    }

    /// Marks the source as down, keeping the last snapshot (fail static).
    pub fn mark_down(&self, error: String) {
        self.tx.send_modify(|s| {
            if s.healthy || s.error.as_deref() != Some(&error) {
                tracing::warn!(source = self.source, %error, "source unavailable; keeping HAProxy as it is");
            }
            s.healthy = false;
            s.error = Some(error);
        });
    }

    /// An attempt failed: marks the source down and returns how long to wait before the next
    /// one (the backoff grows until `reset_backoff`).
    pub fn failed(&mut self, error: String) -> Duration {
        self.mark_down(error);
        self.backoff.next_delay()
    }

    /// The source answered: the next failure waits the shortest delay again.
    pub fn reset_backoff(&mut self) {
        self.backoff.reset();
    }

    /// Counts endpoints a re-list found wrong (`SourceState::corrections`).
    pub fn add_corrections(&self, n: u64) {
        self.tx.send_modify(|s| s.corrections += n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{channel, Endpoint};

    fn put(id: &str, revision: u64) -> Discovery {
        let endpoint = Endpoint { address: "10.0.0.1".into(), port: 80, weight: 100, state: Default::default() };
        Discovery::Put { service: "web".into(), id: id.into(), endpoint, revision }
    }

    #[test]
    fn publish_folds_the_batch_and_marks_the_source_current() {
        let (tx, rx) = channel();
        let mut feed = Feed::new(tx, "test", Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 0.0));
        feed.mark_down("not yet".into());
        assert!(rx.borrow().snapshot.is_none(), "nothing is published before the first batch");
        feed.publish([put("a", 1), put("b", 2)]);
        let st = rx.borrow().clone();
        assert!(st.healthy && st.error.is_none() && st.last_ok.is_some());
        let snap = st.snapshot.unwrap();
        assert_eq!((snap.revision, snap.services["web"].len()), (2, 2));
        assert_eq!(&snap, feed.current());
    }

    #[test]
    fn a_failure_keeps_the_snapshot_and_backs_off_until_reset() {
        let (tx, rx) = channel();
        let mut feed = Feed::new(tx, "test", Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 0.0));
        feed.publish([put("a", 1)]);
        let last_ok = rx.borrow().last_ok;
        assert_eq!(feed.failed("refused".into()), Duration::from_millis(100));
        assert_eq!(feed.failed("refused".into()), Duration::from_millis(200));
        let st = rx.borrow().clone();
        assert!(!st.healthy);
        assert_eq!(st.error.as_deref(), Some("refused"));
        assert_eq!(st.last_ok, last_ok, "last ok stays when the source was last current");
        assert_eq!(st.snapshot.unwrap().services["web"].len(), 1, "fail static: the snapshot stays");
        feed.reset_backoff();
        assert_eq!(feed.failed("refused".into()), Duration::from_millis(100));
        feed.publish([]);
        assert!(rx.borrow().healthy && rx.borrow().error.is_none(), "an empty batch says the source is current");
    }

    #[test]
    fn corrections_add_up() {
        let (tx, rx) = channel();
        let feed = Feed::new(tx, "test", Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 0.0));
        feed.add_corrections(2);
        feed.add_corrections(3);
        assert_eq!(rx.borrow().corrections, 5);
    }
}
