//! The board: this node's status and those of every node below it, as last reported. What
//! the node reports to its parent, what `cascade status` shows, and what `publish --wait`
//! follows are all read from here.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

use crate::status::{merge, now_ms, NodeStatus, Statuses};

#[derive(Debug)]
pub struct Board {
    name: String,
    statuses: watch::Sender<Statuses>,
    /// Body bytes served to children since start (counted per write, copied into the
    /// node's own status when that is next read or changed).
    sent_bytes: AtomicU64,
    /// Offer frames (manifests and deltas) sent to children since start, copied likewise.
    offered_bytes: AtomicU64,
}

impl Board {
    /// A board holding only this node's own status.
    pub fn new(own: NodeStatus) -> Self {
        Board {
            name: own.name.clone(),
            statuses: watch::Sender::new(Statuses::from([(own.name.clone(), own)])),
            sent_bytes: AtomicU64::new(0),
            offered_bytes: AtomicU64::new(0),
        }
    }

    /// Updates this node's own entry (watchers wake only if it changed).
    pub fn set_own(&self, f: impl FnOnce(&mut NodeStatus)) {
        self.statuses.send_if_modified(|b| {
            let own = b
                .entry(self.name.clone())
                .or_insert_with(|| NodeStatus::new(&self.name));
            let before = own.clone();
            f(own);
            if !matches!(own.state, crate::status::NodeState::Fetching { .. }) {
                own.rate_bps = 0;
            }
            own.sent_bytes = self.sent_bytes.load(Ordering::Relaxed);
            own.offered_bytes = self.offered_bytes.load(Ordering::Relaxed);
            let changed = *own != before;
            if changed {
                own.updated_ms = now_ms();
            }
            changed
        });
    }

    /// Counts body bytes sent to a child.
    pub fn add_sent(&self, n: u64) {
        self.sent_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts the bytes of an offer frame sent to a child.
    pub fn add_offered(&self, n: u64) {
        self.offered_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Takes a child's reports, keeping the newer copy of each node's status.
    pub fn merge(&self, reports: impl IntoIterator<Item = NodeStatus>) {
        self.statuses.send_if_modified(|b| merge(b, reports));
    }

    /// Marks `name`'s link to this node as down, since now (its last report stays).
    pub fn disconnected(&self, name: &str) {
        self.statuses.send_modify(|b| {
            if let Some(s) = b.get_mut(name) {
                s.connected = false;
                s.rate_bps = 0;
                s.down_since_ms.get_or_insert_with(now_ms);
            }
        });
    }

    /// Follows every change of the board.
    pub fn subscribe(&self) -> watch::Receiver<Statuses> {
        self.statuses.subscribe()
    }

    /// The node's own status followed by its subtree's, up to date.
    pub fn all(&self) -> Vec<NodeStatus> {
        self.set_own(|_| {});
        self.statuses.borrow().values().cloned().collect()
    }

    /// The highest release any node on the board has applied.
    pub fn highest_applied(&self) -> Option<u64> {
        self.statuses
            .borrow()
            .values()
            .filter_map(|s| s.applied)
            .max()
    }
}
