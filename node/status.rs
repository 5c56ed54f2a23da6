//! What each node reports about itself; reports flow up the tree to the origin.

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
    /// Body bytes this node has served to its children since it started.
    pub sent_bytes: u64,
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
            sent_bytes: 0,
            updated_ms: 0,
            hook_error: None,
            kept: Vec::new(),
            repaired: 0,
        }
    }
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
}
