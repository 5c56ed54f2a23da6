//! The tree as an operator sees it from one node: every node of the topology below it, placed
//! under the parent it is linked to now (a backup after a failover), with one state each,
//! its lag behind the node asked, and the reasons when something is wrong. `cascade status`
//! prints it (as text or `--json`), and the status page and metrics read the same view.
//!
//! The view is built from what the asked node knows: the statuses reported up to it (the
//! [`super::Statuses`] board) and its topology. A node that cannot report (its link, or a
//! link above it, is down) is shown with what was last heard of it, as unreachable.

use std::collections::{BTreeMap, HashSet};

use cascade_topology::Topology;
use serde::{Deserialize, Serialize};

use super::{NodeState, NodeStatus, Statuses};

/// The tree below one node, as that node sees it. Serialized as the `--json` output of
/// `cascade status`; fields are only ever added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeView {
    /// The node asked: the root of this view.
    pub node: String,
    /// The newest release the node asked holds; lag is measured against it.
    pub release: Option<u64>,
    /// When the view was made (ms since the Unix epoch, on the asked node's clock).
    pub at_ms: u64,
    pub root: ViewNode,
}

/// One node of a [`TreeView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewNode {
    pub name: String,
    /// "origin", "relay" or "leaf", from the topology.
    pub role: String,
    pub state: State,
    /// Why, for `failing`, `refused` and `unreachable` (e.g. "via relay-1"); else `None`.
    pub detail: Option<String>,
    /// The release applied completely, as last reported.
    pub release: Option<u64>,
    /// While `fetching`: which release and how far.
    pub fetching: Option<Progress>,
    /// Releases behind the asked node's (0 when in sync; `None` when either holds none).
    pub lag_releases: Option<u64>,
    /// Seconds since the asked node first had a release this one lacks (0 when in sync;
    /// `None` when unknown, e.g. the asked node restarted since).
    pub lag_seconds: Option<u64>,
    /// Body bytes per second arriving now.
    pub rate_bytes_per_second: u64,
    /// The parent it is linked to (or was, when unreachable); `None` for the root.
    pub parent: Option<String>,
    /// Whether that parent is one of its backup parents rather than its own.
    pub on_backup_parent: bool,
    /// When its link was seen to drop (ms since the Unix epoch), while `unreachable`.
    pub unreachable_since_ms: Option<u64>,
    /// When it last changed its status (ms since the Unix epoch, its own clock); `None` if it
    /// never reported.
    pub last_report_ms: Option<u64>,
    /// The last hook failure, until a hook succeeds.
    pub hook_error: Option<String>,
    /// Body bytes fetched for the most recent release.
    pub fetched_bytes: u64,
    pub fetched_files: u64,
    /// Body bytes served to children since the node started.
    pub sent_bytes: u64,
    /// Files that drifted and were repaired since the node started.
    pub repaired: u64,
    /// Paths of the release this node keeps as its own (`keep`).
    pub kept: Vec<String>,
    pub children: Vec<ViewNode>,
}

impl ViewNode {
    /// A node in `state` with nothing else known yet.
    pub fn new(name: &str, role: &str, state: State) -> Self {
        ViewNode {
            name: name.to_owned(),
            role: role.to_owned(),
            state,
            detail: None,
            release: None,
            fetching: None,
            lag_releases: None,
            lag_seconds: None,
            rate_bytes_per_second: 0,
            parent: None,
            on_backup_parent: false,
            unreachable_since_ms: None,
            last_report_ms: None,
            hook_error: None,
            fetched_bytes: 0,
            fetched_files: 0,
            sent_bytes: 0,
            repaired: 0,
            kept: Vec::new(),
            children: Vec::new(),
        }
    }
}

/// What a node is doing, as one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Holds the asked node's release and is doing nothing.
    InSync,
    Fetching,
    Applying,
    /// Holds an older release and is not fetching (e.g. waiting to retry, or just offered).
    Behind,
    /// Its last sync failed; it retries.
    Failing,
    /// Its `check` hook refused the release; it stays on its own.
    Refused,
    /// Its link (or one above it) is down: shown as last heard.
    Unreachable,
    /// In the topology, never heard of.
    NoReport,
}

impl State {
    /// Every state, in order.
    pub const ALL: [State; 8] = [
        State::InSync,
        State::Fetching,
        State::Applying,
        State::Behind,
        State::Failing,
        State::Refused,
        State::Unreachable,
        State::NoReport,
    ];

    /// As words, for people.
    pub fn as_str(self) -> &'static str {
        match self {
            State::InSync => "in sync",
            State::Fetching => "fetching",
            State::Applying => "applying",
            State::Behind => "behind",
            State::Failing => "failing",
            State::Refused => "refused",
            State::Unreachable => "unreachable",
            State::NoReport => "no report",
        }
    }

    /// As one word, the way `--json` and the metrics' `state` label write it (`in_sync`).
    pub fn label(self) -> String {
        self.as_str().replace(' ', "_")
    }

    /// Whether an operator should look at it.
    pub fn is_bad(self) -> bool {
        matches!(
            self,
            State::Failing | State::Refused | State::Unreachable | State::NoReport
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub version: u64,
    pub done_bytes: u64,
    pub total_bytes: u64,
}

/// What the asked node knows, to build its view from.
pub struct Known<'a> {
    /// The node asked.
    pub me: &'a str,
    pub topology: &'a Topology,
    /// The newest release it holds.
    pub release: Option<u64>,
    pub statuses: &'a Statuses,
    /// When it first had a release newer than the given one (ms since the Unix epoch).
    pub behind_since: &'a dyn Fn(Option<u64>) -> Option<u64>,
    pub now_ms: u64,
}

impl TreeView {
    /// Arranges what `k` knows into the tree below `k.me`.
    pub fn build(k: &Known) -> TreeView {
        // Where each node hangs: under the parent it reports being linked to when that link
        // is up and the parent is in the tree, else under its parent in the topology.
        let mut below: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for n in k.topology.nodes() {
            if n.name == k.me {
                continue;
            }
            let s = k.statuses.get(&n.name);
            let linked = s
                .filter(|s| s.connected)
                .and_then(|s| s.parent.clone())
                .filter(|p| k.topology.node(p).is_ok() && *p != n.name);
            if let Some(p) = linked.or_else(|| n.parent.clone()) {
                below.entry(p).or_default().push(n.name.clone());
            }
        }
        // Children in topology order.
        let order: BTreeMap<&str, usize> = k
            .topology
            .nodes()
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_str(), i))
            .collect();
        for kids in below.values_mut() {
            kids.sort_by_key(|c| order.get(c.as_str()).copied().unwrap_or(usize::MAX));
        }
        let mut seen = HashSet::new();
        let root = node(k, k.me, None, &below, &mut seen);
        TreeView {
            node: k.me.to_owned(),
            release: k.release,
            at_ms: k.now_ms,
            root,
        }
    }

    /// Every node of the view, root first, depth-first.
    pub fn nodes(&self) -> Vec<&ViewNode> {
        let mut out = Vec::new();
        let mut stack = vec![&self.root];
        while let Some(n) = stack.pop() {
            out.push(n);
            stack.extend(n.children.iter().rev());
        }
        out
    }

    /// How many nodes are in each state.
    pub fn counts(&self) -> BTreeMap<State, usize> {
        let mut c = BTreeMap::new();
        for n in self.nodes() {
            *c.entry(n.state).or_default() += 1;
        }
        c
    }
}

/// Why a node cannot be heard from here: it is unreachable itself, or the nearest ancestor
/// that is.
#[derive(Clone)]
struct Cut {
    via: String,
    since_ms: Option<u64>,
}

fn node(
    k: &Known,
    name: &str,
    cut: Option<Cut>,
    below: &BTreeMap<String, Vec<String>>,
    seen: &mut HashSet<String>,
) -> ViewNode {
    seen.insert(name.to_owned());
    let topo = k.topology.node(name).ok();
    let status = k.statuses.get(name);
    let root = name == k.me;
    let role = topo.map_or("unknown".to_owned(), |n| n.role.to_string());
    let mut v = ViewNode {
        release: status.and_then(|s| s.applied),
        last_report_ms: status.map(|s| s.updated_ms).filter(|&t| t > 0),
        hook_error: status.and_then(|s| s.hook_error.clone()),
        fetched_bytes: status.map_or(0, |s| s.fetched_bytes),
        fetched_files: status.map_or(0, |s| s.fetched_files),
        sent_bytes: status.map_or(0, |s| s.sent_bytes),
        repaired: status.map_or(0, |s| s.repaired),
        kept: status.map(|s| s.kept.clone()).unwrap_or_default(),
        ..ViewNode::new(name, &role, State::NoReport)
    };
    if !root {
        let own = topo.and_then(|n| n.parent.clone());
        v.parent = status
            .filter(|s| s.connected)
            .and_then(|s| s.parent.clone())
            .or(own.clone());
        v.on_backup_parent = v.parent.is_some() && v.parent != own;
    }
    // Cut off here: this node's link is down (seen by its parent), or it never reported.
    let cut = match (cut, status) {
        (Some(c), _) => Some(c),
        (None, Some(s)) if !root && !s.connected => Some(Cut {
            via: name.to_owned(),
            since_ms: s.down_since_ms,
        }),
        (None, _) => None,
    };
    let lag = |applied: Option<u64>| match (k.release, applied) {
        (Some(newest), Some(a)) if a >= newest => (Some(0), Some(0)),
        (Some(newest), a) => (
            Some(newest - a.unwrap_or(0)),
            (k.behind_since)(a).map(|t| k.now_ms.saturating_sub(t) / 1000),
        ),
        (None, _) => (None, None),
    };
    match status {
        None if !root => {
            v.state = State::NoReport;
            if let Some(c) = &cut {
                v.detail = Some(format!("via {}", c.via));
            }
        }
        _ => {
            let fallback = NodeStatus::new(name);
            let s = status.unwrap_or(&fallback);
            (v.lag_releases, v.lag_seconds) = lag(s.applied);
            match &cut {
                Some(c) => {
                    v.state = State::Unreachable;
                    v.unreachable_since_ms = c.since_ms;
                    if c.via != name {
                        v.detail = Some(format!("via {}", c.via));
                    }
                }
                None => {
                    v.rate_bytes_per_second = s.rate_bps;
                    v.state = match &s.state {
                        NodeState::Failed { error, .. } => {
                            v.detail = Some(error.clone());
                            State::Failing
                        }
                        NodeState::Refused { reason, .. } => {
                            v.detail = Some(reason.clone());
                            State::Refused
                        }
                        NodeState::Fetching {
                            version,
                            done_bytes,
                            total_bytes,
                        } => {
                            v.fetching = Some(Progress {
                                version: *version,
                                done_bytes: *done_bytes,
                                total_bytes: *total_bytes,
                            });
                            State::Fetching
                        }
                        NodeState::Applying { .. } => State::Applying,
                        NodeState::Idle if v.lag_releases.is_some_and(|l| l > 0) => State::Behind,
                        NodeState::Idle if root && s.applied.is_none() => State::Behind,
                        NodeState::Idle => State::InSync,
                    };
                }
            }
        }
    }
    if let Some(kids) = below.get(name) {
        for c in kids {
            if !seen.contains(c) {
                v.children.push(node(k, c, cut.clone(), below, seen));
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPOLOGY: &str = r#"
[[node]]
name = "origin"
listen = "127.0.0.1:7000"

[[node]]
name = "relay-1"
parent = "origin"
listen = "127.0.0.1:7001"

[[node]]
name = "relay-2"
parent = "origin"
listen = "127.0.0.1:7002"

[[node]]
name = "web-1"
parent = "relay-1"
backup_parents = ["relay-2"]

[[node]]
name = "web-2"
parent = "relay-1"

[[node]]
name = "web-3"
parent = "relay-2"
"#;

    fn status(name: &str, applied: u64, parent: Option<&str>) -> NodeStatus {
        NodeStatus {
            applied: Some(applied),
            connected: parent.is_some(),
            parent: parent.map(str::to_owned),
            updated_ms: 1_000,
            ..NodeStatus::new(name)
        }
    }

    fn view(statuses: Vec<NodeStatus>) -> TreeView {
        let topology = Topology::parse(TOPOLOGY).unwrap();
        let statuses: Statuses = statuses.into_iter().map(|s| (s.name.clone(), s)).collect();
        // Release 3 was first held at 10 s, release 4 at 20 s.
        let behind_since = |applied: Option<u64>| match applied {
            Some(3) => Some(20_000),
            Some(v) if v < 3 => Some(10_000),
            _ => None,
        };
        TreeView::build(&Known {
            me: "origin",
            topology: &topology,
            release: Some(4),
            statuses: &statuses,
            behind_since: &behind_since,
            now_ms: 65_000,
        })
    }

    fn find<'a>(v: &'a TreeView, name: &str) -> &'a ViewNode {
        v.nodes().into_iter().find(|n| n.name == name).unwrap()
    }

    #[test]
    fn every_node_is_placed_with_its_state_and_lag() {
        let mut fetching = status("web-2", 3, Some("relay-1"));
        fetching.state = NodeState::Fetching {
            version: 4,
            done_bytes: 5,
            total_bytes: 10,
        };
        fetching.rate_bps = 7;
        let mut down = status("relay-2", 4, None);
        down.down_since_ms = Some(30_000);
        let v = view(vec![
            status("origin", 4, None),
            status("relay-1", 4, Some("origin")),
            // Failed over to its backup parent.
            status("web-1", 4, Some("relay-2")),
            fetching,
            down,
            // web-3 never reported.
        ]);
        let names: Vec<_> = v.nodes().iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            names,
            ["origin", "relay-1", "web-2", "relay-2", "web-1", "web-3"]
        );
        assert_eq!(v.root.state, State::InSync);
        assert_eq!(find(&v, "relay-1").state, State::InSync);
        let web2 = find(&v, "web-2");
        assert_eq!(web2.state, State::Fetching);
        assert_eq!(web2.fetching.unwrap().done_bytes, 5);
        assert_eq!((web2.lag_releases, web2.lag_seconds), (Some(1), Some(45)));
        assert_eq!(web2.rate_bytes_per_second, 7);
        let relay2 = find(&v, "relay-2");
        assert_eq!(relay2.state, State::Unreachable);
        assert_eq!(relay2.unreachable_since_ms, Some(30_000));
        assert_eq!(relay2.detail, None);
        // Below an unreachable node: unreachable too, saying through which.
        let web1 = find(&v, "web-1");
        assert_eq!(web1.state, State::Unreachable);
        assert_eq!(web1.detail.as_deref(), Some("via relay-2"));
        assert!(web1.on_backup_parent);
        assert_eq!(web1.parent.as_deref(), Some("relay-2"));
        let web3 = find(&v, "web-3");
        assert_eq!(web3.state, State::NoReport);
        assert_eq!(v.counts()[&State::Unreachable], 2);
    }

    #[test]
    fn a_states_label_is_its_json_word() {
        for s in State::ALL {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.label())
            );
        }
    }

    #[test]
    fn failures_and_refusals_say_why_and_an_idle_node_behind_is_behind() {
        let mut failing = status("web-1", 2, Some("relay-1"));
        failing.state = NodeState::Failed {
            version: 4,
            error: "disk full".into(),
        };
        let mut refused = status("web-3", 4, Some("relay-2"));
        refused.state = NodeState::Refused {
            version: 4,
            reason: "check hook said no".into(),
        };
        let v = view(vec![
            status("origin", 4, None),
            status("relay-1", 4, Some("origin")),
            status("relay-2", 4, Some("origin")),
            failing,
            status("web-2", 2, Some("relay-1")),
            refused,
        ]);
        let web1 = find(&v, "web-1");
        assert_eq!(
            (web1.state, web1.detail.as_deref()),
            (State::Failing, Some("disk full"))
        );
        assert!(!web1.on_backup_parent);
        let web2 = find(&v, "web-2");
        assert_eq!(web2.state, State::Behind);
        assert_eq!((web2.lag_releases, web2.lag_seconds), (Some(2), Some(55)));
        assert_eq!(find(&v, "web-3").state, State::Refused);
    }
}
