//! `Watcher`: a watch that survives broken streams and hands out whole revisions.
//!
//! One log entry can make many changes at one revision (a revoke or an expiry removes every
//! instance of a lease). If a stream breaks after some of them, resuming from that revision
//! would skip the rest. So the watcher holds a revision's events until it knows the revision
//! is complete (an event of a later revision arrives, or a `progress` at or past it), then
//! hands them out together, and only then moves its resume point. After a broken stream it
//! reopens from the last complete revision, on the next node, and drops what it held.

use proto::{Revision, WatchEvent};

use crate::{Client, Error, Watch};

/// What a `Watcher` hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Every change made at `revision`, in order. Apply them together.
    Changes { revision: Revision, events: Vec<WatchEvent> },
    /// Nothing (more) happened up to `revision`.
    Progress { revision: Revision },
    /// The resume point is older than the history the node keeps. Re-list, then `reset` to the
    /// list's revision.
    Compacted { revision: Revision, compact_revision: Revision },
}

pub struct Watcher {
    client: Client,
    service: Option<String>,
    /// The last revision received whole: where the next stream starts.
    complete: Revision,
    /// Events of the revision in progress, not yet known complete.
    pending: Vec<WatchEvent>,
    stream: Option<Watch>,
    /// Index in the client's URLs of the node to try first when (re)opening.
    next_node: usize,
}

impl Watcher {
    /// Follows `service` (every service if `None`) from just after `since`.
    pub fn new(client: Client, service: Option<String>, since: Revision) -> Watcher {
        Watcher { client, service, complete: since, pending: Vec::new(), stream: None, next_node: 0 }
    }

    /// The last revision received whole. Resuming from it loses nothing.
    pub fn since(&self) -> Revision {
        self.complete
    }

    /// Starts again from `since` (after a re-list), dropping the current stream.
    pub fn reset(&mut self, since: Revision) {
        self.complete = since;
        self.pending.clear();
        self.stream = None;
    }

    /// The node the current stream comes from, if one is open.
    pub fn url(&self) -> Option<&str> {
        self.stream.as_ref().map(Watch::url)
    }

    /// The next update. Opens a stream if none is open. An error means the stream broke (or
    /// none could be opened): what it held of an incomplete revision is dropped, and the next
    /// call reopens from `since()` on the next node. Callers back off between errors.
    pub async fn next(&mut self) -> Result<Update, Error> {
        loop {
            if self.stream.is_none() {
                let (w, i) = self.client.watch_from(self.service.as_deref(), Some(self.complete), self.next_node).await?;
                self.stream = Some(w);
                self.next_node = i;
            }
            let read = self.stream.as_mut().expect("opened above").next().await;
            let event = match read {
                Ok(Some(e)) => e,
                Ok(None) => return Err(self.broken(Error::Unavailable("the node ended the watch stream".into()))),
                Err(e) => return Err(self.broken(e)),
            };
            if let Some(update) = self.take(event) {
                return Ok(update);
            }
        }
    }

    fn broken(&mut self, e: Error) -> Error {
        self.stream = None;
        self.pending.clear();
        // A node that broke the stream is likely cut off or stopping: start with the next.
        self.next_node += 1;
        e
    }

    fn pending_revision(&self) -> Option<Revision> {
        self.pending.last().map(WatchEvent::revision)
    }

    /// Folds one line into the state; returns an update when one is due.
    fn take(&mut self, event: WatchEvent) -> Option<Update> {
        match event {
            WatchEvent::Compacted { revision, compact_revision } => {
                self.stream = None;
                self.pending.clear();
                Some(Update::Compacted { revision, compact_revision })
            }
            WatchEvent::Progress { revision } => {
                let done = self.complete_pending(revision);
                self.complete = self.complete.max(revision);
                done.or(Some(Update::Progress { revision: self.complete }))
            }
            change => {
                let r = change.revision();
                if r <= self.complete {
                    // Already handed out whole (a node resending after a resume).
                    return None;
                }
                let done = match self.pending_revision() {
                    Some(p) if r > p => self.complete_pending(r - 1),
                    _ => None,
                };
                self.pending.push(change);
                done
            }
        }
    }

    /// Hands out the pending revision if it is at or below `upto`.
    fn complete_pending(&mut self, upto: Revision) -> Option<Update> {
        let p = self.pending_revision().filter(|p| *p <= upto)?;
        self.complete = p;
        Some(Update::Changes { revision: p, events: std::mem::take(&mut self.pending) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watcher() -> Watcher {
        Watcher::new(Client::new(&["127.0.0.1:9"]).unwrap(), None, 10)
    }

    fn del(rev: Revision, i: &str) -> WatchEvent {
        WatchEvent::Delete { revision: rev, service: "web".into(), instance: i.into(), cause: None }
    }

    #[test]
    fn a_revision_is_handed_out_only_when_complete() {
        let mut w = watcher();
        assert_eq!(w.take(del(11, "a")), None);
        assert_eq!(w.take(del(11, "b")), None);
        assert_eq!(w.since(), 10, "revision 11 is not known complete yet");
        assert_eq!(w.take(del(12, "c")), Some(Update::Changes { revision: 11, events: vec![del(11, "a"), del(11, "b")] }));
        assert_eq!(w.since(), 11);
        assert_eq!(w.take(WatchEvent::Progress { revision: 12 }), Some(Update::Changes { revision: 12, events: vec![del(12, "c")] }));
        assert_eq!(w.since(), 12);
        assert_eq!(w.take(WatchEvent::Progress { revision: 15 }), Some(Update::Progress { revision: 15 }));
        assert_eq!(w.since(), 15);
    }

    /// The bug this type exists for: a stream that breaks inside a revision must resume from
    /// before it, so the rest of the revision is not skipped.
    #[test]
    fn a_stream_broken_inside_a_revision_resumes_before_it() {
        let mut w = watcher();
        assert_eq!(w.take(del(11, "a")), None);
        w.broken(Error::Unavailable("cut".into()));
        assert_eq!(w.since(), 10);
        // The new stream sends all of 11 again.
        assert_eq!(w.take(del(11, "a")), None);
        assert_eq!(w.take(del(11, "b")), None);
        let Some(Update::Changes { revision: 11, events }) = w.take(WatchEvent::Progress { revision: 11 }) else { panic!() };
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn changes_at_or_below_the_resume_point_are_skipped() {
        let mut w = watcher();
        assert_eq!(w.take(del(9, "old")), None);
        assert_eq!(w.take(del(10, "old")), None);
        assert_eq!(w.take(WatchEvent::Progress { revision: 10 }), Some(Update::Progress { revision: 10 }));
    }

    #[test]
    fn compacted_drops_what_was_held() {
        let mut w = watcher();
        w.take(del(11, "a"));
        assert_eq!(w.take(WatchEvent::Compacted { revision: 50, compact_revision: 40 }), Some(Update::Compacted { revision: 50, compact_revision: 40 }));
        w.reset(50);
        assert_eq!(w.since(), 50);
        assert!(w.pending.is_empty());
    }
}
