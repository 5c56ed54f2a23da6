//! What each node reports about itself; reports flow up the tree to the origin, where
//! [`view`] arranges them into the tree an operator reads (`cascade status`).

pub mod rate;
pub mod render;
pub mod view;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// One node's state as its parent (and eventually the origin) sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    /// Version of the last release applied completely.
    pub applied: Option<u64>,
    pub state: NodeState,
    /// Body bytes fetched from the parent for the most recent release.
    pub fetched_bytes: u64,
    /// Bodies fetched from the parent for the most recent release.
    pub fetched_files: u64,
    /// Whether the link to this node's parent is up (as last known).
    pub connected: bool,
    /// The parent this node is linked to now (a backup parent after a failover); `None`
    /// while it has no link.
    pub parent: Option<String>,
    /// When the link to this node was seen to drop, by its parent (ms since the Unix epoch,
    /// the parent's clock); `None` while it is up.
    pub down_since_ms: Option<u64>,
    /// Body bytes per second arriving from the parent now (over the last few seconds of a
    /// fetch; 0 when not fetching).
    pub rate_bps: u64,
    /// Body bytes this node has served to its children since it started.
    pub sent_bytes: u64,
    /// Bytes of offers (whole manifests or deltas) this node has sent its children since it
    /// started: what the tree's shape costs besides the bodies.
    pub offered_bytes: u64,
    /// When the node last changed this status (ms since the Unix epoch, the node's clock).
    /// Reports of one node reaching the origin by two paths (after a failover) keep the newer.
    pub updated_ms: u64,
    /// The last hook failure (which hook, why), cleared when a hook succeeds.
    pub hook_error: Option<String>,
    /// Paths the applied release publishes that this node keeps as its own (`keep`).
    pub kept: Vec<String>,
    /// Files that drifted from the release and were repaired, since the node started.
    pub repaired: u64,
}

/// What a node is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    Idle,
    Fetching {
        version: u64,
        done_bytes: u64,
        total_bytes: u64,
    },
    Applying {
        version: u64,
    },
    Failed {
        version: u64,
        error: String,
    },
    /// The node's `check` hook refused this release: it stays on its own and does not try
    /// this version again.
    Refused {
        version: u64,
        reason: String,
    },
}

impl NodeStatus {
    pub fn new(name: &str) -> Self {
        NodeStatus {
            name: name.to_owned(),
            applied: None,
            state: NodeState::Idle,
            fetched_bytes: 0,
            fetched_files: 0,
            connected: false,
            parent: None,
            down_since_ms: None,
            rate_bps: 0,
            sent_bytes: 0,
            offered_bytes: 0,
            updated_ms: 0,
            hook_error: None,
            kept: Vec::new(),
            repaired: 0,
        }
    }
}

/// Longest text a report carries (an error, a hook failure).
pub const MAX_TEXT: usize = 1024;
/// Kept paths a status lists (the node's log has them all).
pub const MAX_KEPT: usize = 20;

impl NodeStatus {
    /// A child's report as a parent keeps it: texts and lists cut to size (a report must
    /// never grow a relay's own past the frame limit), and a time no later than `now_ms`
    /// (a clock far ahead must not pin a stale entry).
    pub fn bounded(mut self, now_ms: u64) -> Self {
        cut(&mut self.name, 64);
        if let Some(p) = &mut self.parent {
            cut(p, 64);
        }
        self.down_since_ms = self.down_since_ms.map(|t| t.min(now_ms));
        if let NodeState::Failed { error: text, .. } | NodeState::Refused { reason: text, .. } =
            &mut self.state
        {
            cut(text, MAX_TEXT);
        }
        if let Some(e) = &mut self.hook_error {
            cut(e, MAX_TEXT);
        }
        self.kept.truncate(MAX_KEPT);
        for k in &mut self.kept {
            cut(k, 256);
        }
        self.updated_ms = self.updated_ms.min(now_ms);
        self
    }
}

/// Cuts `s` to at most `max` bytes, on a character boundary, marking the cut.
fn cut(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str("...");
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.applied {
            Some(v) => write!(f, "{}: applied v{v}", self.name)?,
            None => write!(f, "{}: no release", self.name)?,
        }
        match &self.state {
            NodeState::Idle => {}
            NodeState::Fetching {
                version,
                done_bytes,
                total_bytes,
            } => write!(
                f,
                ", fetching v{version} ({done_bytes}/{total_bytes} bytes)"
            )?,
            NodeState::Applying { version } => write!(f, ", applying v{version}")?,
            NodeState::Failed { version, error } => write!(f, ", FAILED v{version}: {error}")?,
            NodeState::Refused { version, reason } => write!(f, ", REFUSED v{version}: {reason}")?,
        }
        if !self.connected {
            f.write_str(", disconnected")?;
        }
        if let Some(e) = &self.hook_error {
            write!(f, ", HOOK FAILED: {e}")?;
        }
        if !self.kept.is_empty() {
            write!(f, ", keeps its own {}", self.kept.join(" "))?;
        }
        if self.repaired > 0 {
            write!(f, ", repaired {} drifted", self.repaired)?;
        }
        Ok(())
    }
}

/// Statuses of a node and its subtree, by name.
pub type Statuses = BTreeMap<String, NodeStatus>;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Merges reported statuses into `board`, keeping the newer copy of each node's status.
/// Returns whether anything changed.
pub fn merge(board: &mut Statuses, reports: impl IntoIterator<Item = NodeStatus>) -> bool {
    let mut changed = false;
    for s in reports {
        match board.get(&s.name) {
            Some(old) if old.updated_ms > s.updated_ms || *old == s => {}
            _ => {
                board.insert(s.name.clone(), s);
                changed = true;
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_the_newer_report() {
        let mut board = Statuses::new();
        let mut fresh = NodeStatus::new("web-1");
        fresh.applied = Some(3);
        fresh.updated_ms = 200;
        let mut stale = fresh.clone();
        stale.applied = Some(2);
        stale.updated_ms = 100;
        assert!(merge(&mut board, [fresh.clone()]));
        assert!(!merge(&mut board, [stale]));
        assert!(!merge(&mut board, [fresh.clone()]));
        assert_eq!(board["web-1"].applied, Some(3));
        // The same report with only the link state changed by a parent is taken.
        fresh.connected = true;
        assert!(merge(&mut board, [fresh]));
    }

    #[test]
    fn a_hostile_report_is_cut_to_size_and_cannot_pin_the_future() {
        let mut s = NodeStatus::new("web-1");
        s.state = NodeState::Failed {
            version: 2,
            error: "é".repeat(100_000),
        };
        s.hook_error = Some("x".repeat(100_000));
        s.kept = vec!["k".repeat(1000); 1000];
        s.updated_ms = u64::MAX;
        let b = s.bounded(5_000);
        let NodeState::Failed { error, .. } = &b.state else {
            unreachable!()
        };
        assert!(error.len() <= MAX_TEXT && error.ends_with("..."));
        assert!(b.hook_error.unwrap().len() <= MAX_TEXT);
        assert_eq!(b.kept.len(), MAX_KEPT);
        assert!(b.kept.iter().all(|k| k.len() <= 256));
        assert_eq!(b.updated_ms, 5_000);
    }
}
