//! Injected faults: the one seam where tests make a node's network, disk or state machine
//! misbehave. In production it is empty and costs one uncontended mutex check per peer RPC,
//! per log flush and per applied batch.
//!
//! - Network: isolate a node, cut one link, delay or drop RPCs (checked by `network` and by
//!   forwarding).
//! - Disk: stall a node's log flushes, as a hung volume does (checked by the log writer
//!   thread before every fsync). A real process can be stalled from outside through a file:
//!   `registry serve --fault-disk-stall-file PATH` stalls while PATH exists.
//! - State machine: delay a node's apply, as a slow or overloaded apply does.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::storage::log_store::FlushHook;
use crate::types::NodeId;

/// Injected faults, shared by every node of an in-process test cluster.
#[derive(Clone, Default)]
pub struct Faults {
    rules: Arc<Mutex<Rules>>,
}

#[derive(Default)]
struct Rules {
    isolated: HashSet<NodeId>,
    cut: HashSet<(NodeId, NodeId)>,
    delay: HashMap<NodeId, Duration>,
    drop_one_in: Option<u64>,
    counter: u64,
    disk_stalled: HashSet<NodeId>,
    /// While this file exists, every node sharing these faults stalls its disk.
    disk_stall_file: Option<PathBuf>,
    apply_delay: HashMap<NodeId, Duration>,
}

#[derive(Debug, thiserror::Error)]
#[error("fault injected: {0}")]
pub struct Injected(&'static str);

/// How often a stalled flush looks again whether the stall is over.
const STALL_POLL: Duration = Duration::from_millis(5);

impl Faults {
    /// Faults for a real process: only the disk stall driven by a file, if one is given.
    pub fn from_stall_file(file: Option<PathBuf>) -> Faults {
        let f = Faults::default();
        f.rules.lock().unwrap().disk_stall_file = file;
        f
    }

    /// Cuts `node` off from every other node, both ways.
    pub fn isolate(&self, node: NodeId) {
        self.rules.lock().unwrap().isolated.insert(node);
    }

    /// Cuts the link from `from` to `to` (one way).
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.rules.lock().unwrap().cut.insert((from, to));
    }

    /// Delays every RPC sent to `node`.
    pub fn delay_to(&self, node: NodeId, by: Duration) {
        self.rules.lock().unwrap().delay.insert(node, by);
    }

    /// Drops one RPC in `n` (deterministically, by count).
    pub fn drop_one_in(&self, n: u64) {
        self.rules.lock().unwrap().drop_one_in = Some(n.max(1));
    }

    /// Stalls every log flush (fsync, vote, truncate, purge) of `node` until `unstall_disk`.
    pub fn stall_disk(&self, node: NodeId) {
        self.rules.lock().unwrap().disk_stalled.insert(node);
    }

    pub fn unstall_disk(&self, node: NodeId) {
        self.rules.lock().unwrap().disk_stalled.remove(&node);
    }

    /// Delays each batch of entries `node` applies to its state machine.
    pub fn delay_apply(&self, node: NodeId, by: Duration) {
        self.rules.lock().unwrap().apply_delay.insert(node, by);
    }

    /// Lifts every fault except the stall file (which belongs to the process, not the test).
    pub fn heal(&self) {
        let mut r = self.rules.lock().unwrap();
        let file = r.disk_stall_file.take();
        *r = Rules { disk_stall_file: file, ..Rules::default() };
    }

    /// Whether an RPC from `from` to `to` may pass, and after what delay.
    pub fn check(&self, from: NodeId, to: NodeId) -> Result<Duration, Injected> {
        let mut r = self.rules.lock().unwrap();
        if r.isolated.contains(&from) || r.isolated.contains(&to) {
            return Err(Injected("node isolated"));
        }
        if r.cut.contains(&(from, to)) {
            return Err(Injected("link cut"));
        }
        if let Some(n) = r.drop_one_in {
            r.counter += 1;
            if r.counter.is_multiple_of(n) {
                return Err(Injected("rpc dropped"));
            }
        }
        Ok(r.delay.get(&to).copied().unwrap_or_default())
    }

    fn disk_stalled(&self, node: NodeId) -> bool {
        let r = self.rules.lock().unwrap();
        r.disk_stalled.contains(&node) || r.disk_stall_file.as_ref().is_some_and(|f| f.exists())
    }

    /// Blocks the calling (writer) thread while `node`'s disk is stalled.
    pub fn wait_disk(&self, node: NodeId) {
        let mut logged = false;
        while self.disk_stalled(node) {
            if !logged {
                tracing::warn!(node, "fault injected: disk stalled");
                logged = true;
            }
            std::thread::sleep(STALL_POLL);
        }
        if logged {
            tracing::warn!(node, "fault injected: disk stall over");
        }
    }

    pub fn apply_delay(&self, node: NodeId) -> Duration {
        self.rules.lock().unwrap().apply_delay.get(&node).copied().unwrap_or_default()
    }

    /// The hook the log writer calls before each flush.
    pub fn disk_hook(&self, node: NodeId) -> FlushHook {
        let f = self.clone();
        FlushHook::new(move || f.wait_disk(node))
    }
}
