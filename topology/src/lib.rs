//! The deployment's topology: which nodes exist, who is whose parent, where parents listen.
//!
//! A topology file is TOML with one `[[node]]` table per node:
//!
//! ```toml
//! [[node]]
//! name = "origin"
//! listen = "10.0.0.1:7400"   # required for every node that has children
//!
//! [[node]]
//! name = "web-1"
//! parent = "origin"
//! ```
//!
//! [`Topology::parse`] turns such text into a validated tree ("parse, don't validate"): once
//! a `Topology` exists it has exactly one root, no cycle, no unknown parent, unique names that
//! are DNS labels, unique listen addresses, and a `listen` address on every node that has
//! children. The node's [`Role`] follows from its place in the tree.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

mod parse;

/// What went wrong while reading a topology; each variant names the node or line at fault.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot read topology {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("topology syntax error: {0}")]
    Syntax(String),
    #[error("topology has no nodes")]
    Empty,
    #[error("line {line}: node name {name:?} is not a valid DNS label (1-63 of a-z, 0-9, '-', not starting or ending with '-')")]
    BadName { name: String, line: usize },
    #[error("line {line}: duplicate node name {name:?} (first defined on line {first})")]
    DuplicateName {
        name: String,
        line: usize,
        first: usize,
    },
    #[error("line {line}: node {node:?} names unknown parent {parent:?}")]
    UnknownParent {
        node: String,
        parent: String,
        line: usize,
    },
    #[error("line {line}: node {node:?} is its own parent")]
    SelfParent { node: String, line: usize },
    #[error("topology has no root: every node has a parent")]
    NoRoot,
    #[error("topology has more than one root (a node without parent): {0}")]
    ManyRoots(String),
    #[error("topology has a cycle through nodes: {0}")]
    Cycle(String),
    #[error("line {line}: node {node:?} has children ({children}) but no listen address")]
    MissingListen {
        node: String,
        children: String,
        line: usize,
    },
    #[error("line {line}: node {node:?} listens on {addr}, already used by node {other:?}")]
    DuplicateListen {
        node: String,
        other: String,
        addr: SocketAddr,
        line: usize,
    },
    #[error("line {line}: node {node:?} names unknown backup parent {backup:?}")]
    UnknownBackup {
        node: String,
        backup: String,
        line: usize,
    },
    #[error("line {line}: node {node:?} cannot use {backup:?} as a backup parent: {why}")]
    BadBackup {
        node: String,
        backup: String,
        why: &'static str,
        line: usize,
    },
    #[error("no node named {0:?} in the topology")]
    UnknownNode(String),
    #[error("the origin cannot change while the tree runs: {old:?} is the origin, the new topology makes {new:?} the origin")]
    OriginChanged { old: String, new: String },
    #[error("line {line}: revoked entry {entry:?} is not a certificate fingerprint (`sha256:` then 64 hex digits, as `cascade certs fingerprint` prints it)")]
    BadRevoked { entry: String, line: usize },
}

/// A node's role, derived from its position in the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The root: publishes releases.
    Origin,
    /// Has a parent and children: verifies, stores and forwards.
    Relay,
    /// Has a parent and no children: keeps the served directory.
    Leaf,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Origin => "origin",
            Role::Relay => "relay",
            Role::Leaf => "leaf",
        })
    }
}

/// One node of a validated topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub parent: Option<String>,
    pub listen: Option<SocketAddr>,
    /// Nodes to attach to, in order, while `parent` is unreachable.
    pub backup_parents: Vec<String>,
    /// Children in the order they appear in the file.
    pub children: Vec<String>,
    pub depth: usize,
    pub role: Role,
    /// 1-based line of the node's `name` key in the file.
    pub line: usize,
}

/// A validated tree of nodes.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Nodes in file order.
    nodes: Vec<Node>,
    by_name: HashMap<String, usize>,
    root: usize,
    /// SHA-256 fingerprints of certificates refused at every handshake (`revoked = [...]`,
    /// before the first `[[node]]`).
    revoked: Vec<[u8; 32]>,
}

impl Topology {
    /// Reads and validates a topology file.
    pub fn load(path: &Path) -> Result<Self, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses and validates topology text (see [`parse`](mod@parse) for the checks, in order).
    pub fn parse(text: &str) -> Result<Self, TopologyError> {
        parse::parse(text)
    }

    /// The node called `name`, or an error naming it.
    pub fn node(&self, name: &str) -> Result<&Node, TopologyError> {
        self.by_name
            .get(name)
            .map(|&i| &self.nodes[i])
            .ok_or_else(|| TopologyError::UnknownNode(name.to_owned()))
    }

    /// The fingerprints of revoked certificates, in file order.
    pub fn revoked(&self) -> &[[u8; 32]] {
        &self.revoked
    }

    /// The origin (root) node.
    pub fn origin(&self) -> &Node {
        &self.nodes[self.root]
    }

    /// All nodes, in file order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Whether `child` may attach to `parent`: as its parent or one of its backup parents.
    pub fn may_attach(&self, child: &str, parent: &str) -> bool {
        self.node(child).is_ok_and(|c| {
            c.parent.as_deref() == Some(parent) || c.backup_parents.iter().any(|b| b == parent)
        })
    }

    /// Every node that can reach `name` by attaching to parents or backup parents, possibly
    /// through other nodes: the nodes whose reports may legitimately arrive through `name`.
    pub fn reachable_below(&self, name: &str) -> Vec<String> {
        let mut seen = std::collections::BTreeSet::new();
        let mut stack = vec![name.to_owned()];
        while let Some(cur) = stack.pop() {
            for n in &self.nodes {
                let attaches =
                    n.parent.as_deref() == Some(cur.as_str()) || n.backup_parents.contains(&cur);
                if attaches && n.name != name && seen.insert(n.name.clone()) {
                    stack.push(n.name.clone());
                }
            }
        }
        seen.into_iter().collect()
    }

    /// Names of every node strictly below `name`, depth-first.
    pub fn descendants(&self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack: Vec<&str> = match self.by_name.get(name) {
            Some(&i) => self.nodes[i]
                .children
                .iter()
                .rev()
                .map(String::as_str)
                .collect(),
            None => return out,
        };
        while let Some(n) = stack.pop() {
            out.push(n.to_owned());
            let node = &self.nodes[self.by_name[n]];
            stack.extend(node.children.iter().rev().map(String::as_str));
        }
        out
    }

    /// Renders the tree, one node per line with role, depth and listen address.
    pub fn render_tree(&self) -> String {
        let mut out = String::new();
        self.render(&mut out, self.root, "", "");
        out
    }

    fn render(&self, out: &mut String, i: usize, first: &str, rest: &str) {
        let n = &self.nodes[i];
        out.push_str(first);
        out.push_str(&format!("{} ({}, depth {})", n.name, n.role, n.depth));
        if let Some(l) = n.listen {
            out.push_str(&format!(" listen {l}"));
        }
        out.push('\n');
        let last = n.children.len().saturating_sub(1);
        for (k, c) in n.children.iter().enumerate() {
            let ci = self.by_name[c];
            if k == last {
                self.render(out, ci, &format!("{rest}└── "), &format!("{rest}    "));
            } else {
                self.render(out, ci, &format!("{rest}├── "), &format!("{rest}│   "));
            }
        }
    }
}

/// One difference between a running topology and a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Added {
        name: String,
        parent: Option<String>,
    },
    Removed {
        name: String,
        parent: Option<String>,
    },
    Moved {
        name: String,
        from: Option<String>,
        to: Option<String>,
    },
    Role {
        name: String,
        from: Role,
        to: Role,
    },
    Listen {
        name: String,
        from: Option<SocketAddr>,
        to: Option<SocketAddr>,
    },
    Backups {
        name: String,
        from: Vec<String>,
        to: Vec<String>,
    },
    Revoked {
        added: usize,
        removed: usize,
    },
}

impl Change {
    /// The node the change is about (`None` for the revocation list).
    pub fn node(&self) -> Option<&str> {
        match self {
            Change::Added { name, .. }
            | Change::Removed { name, .. }
            | Change::Moved { name, .. }
            | Change::Role { name, .. }
            | Change::Listen { name, .. }
            | Change::Backups { name, .. } => Some(name),
            Change::Revoked { .. } => None,
        }
    }
}

fn or_none<T: fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or("none".to_owned(), |v| v.to_string())
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Added { name, parent } => {
                write!(f, "add {name} under {}", or_none(parent))
            }
            Change::Removed { name, parent } => {
                write!(f, "remove {name} (was under {})", or_none(parent))
            }
            Change::Moved { name, from, to } => {
                write!(f, "move {name}: {} -> {}", or_none(from), or_none(to))
            }
            Change::Role { name, from, to } => write!(f, "{name} becomes a {to} (was a {from})"),
            Change::Listen { name, from, to } => {
                write!(
                    f,
                    "{name} listens on {} (was {})",
                    or_none(to),
                    or_none(from)
                )
            }
            Change::Backups { name, from, to } => write!(
                f,
                "{name} backup parents: [{}] (were [{}])",
                to.join(", "),
                from.join(", ")
            ),
            Change::Revoked { added, removed } => write!(
                f,
                "revocation list: {added} certificate(s) added, {removed} removed"
            ),
        }
    }
}

impl Topology {
    /// What changes from `self` (running) to `new`, node by node in `new`'s file order, then
    /// the removed nodes, then the revocation list.
    pub fn changes_to(&self, new: &Topology) -> Vec<Change> {
        let mut out = Vec::new();
        for n in &new.nodes {
            let Ok(o) = self.node(&n.name) else {
                out.push(Change::Added {
                    name: n.name.clone(),
                    parent: n.parent.clone(),
                });
                continue;
            };
            if o.parent != n.parent {
                out.push(Change::Moved {
                    name: n.name.clone(),
                    from: o.parent.clone(),
                    to: n.parent.clone(),
                });
            }
            if o.role != n.role {
                out.push(Change::Role {
                    name: n.name.clone(),
                    from: o.role,
                    to: n.role,
                });
            }
            if o.listen != n.listen {
                out.push(Change::Listen {
                    name: n.name.clone(),
                    from: o.listen,
                    to: n.listen,
                });
            }
            if o.backup_parents != n.backup_parents {
                out.push(Change::Backups {
                    name: n.name.clone(),
                    from: o.backup_parents.clone(),
                    to: n.backup_parents.clone(),
                });
            }
        }
        for o in &self.nodes {
            if new.node(&o.name).is_err() {
                out.push(Change::Removed {
                    name: o.name.clone(),
                    parent: o.parent.clone(),
                });
            }
        }
        let (added, removed) = (
            new.revoked
                .iter()
                .filter(|r| !self.revoked.contains(r))
                .count(),
            self.revoked
                .iter()
                .filter(|r| !new.revoked.contains(r))
                .count(),
        );
        if added + removed > 0 {
            out.push(Change::Revoked { added, removed });
        }
        out
    }

    /// Whether a running tree can move from `self` to `new`: the origin stays the same node
    /// (a tree cannot change its origin while it runs).
    pub fn can_change_to(&self, new: &Topology) -> Result<(), TopologyError> {
        let (old, now) = (&self.origin().name, &new.origin().name);
        if old != now {
            return Err(TopologyError::OriginChanged {
                old: old.clone(),
                new: now.clone(),
            });
        }
        Ok(())
    }

    /// `new`'s tree with each node marked: `+` added, `~` changed (moved, role, listen
    /// address or backups), ` ` unchanged; then the removed nodes, marked `-`.
    pub fn render_changes_to(&self, new: &Topology) -> String {
        let changes = self.changes_to(new);
        let changed: std::collections::HashSet<&str> =
            changes.iter().filter_map(Change::node).collect();
        let mut out = String::new();
        for line in new.render_tree().lines() {
            let name = line
                .trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
                .split(' ')
                .next()
                .unwrap_or("");
            let mark = if self.node(name).is_err() {
                '+'
            } else if changed.contains(name) {
                '~'
            } else {
                ' '
            };
            out.push(mark);
            out.push(' ');
            out.push_str(line);
            out.push('\n');
        }
        for c in &changes {
            if let Change::Removed { name, parent } = c {
                out.push_str(&format!("- {name} (was under {})\n", or_none(parent)));
            }
        }
        out
    }
}

/// RFC 1123 label: 1-63 chars of lowercase a-z, 0-9 and '-', not starting or ending with '-'.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    const TREE: &str = r#"
[[node]]
name = "origin"
listen = "127.0.0.1:7400"

[[node]]
name = "relay-a"
parent = "origin"
listen = "127.0.0.1:7401"

[[node]]
name = "relay-b"
parent = "origin"
listen = "127.0.0.1:7402"

[[node]]
name = "web-1"
parent = "relay-a"

[[node]]
name = "web-2"
parent = "relay-b"
"#;

    fn err(text: &str) -> String {
        Topology::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn valid_three_level_tree() {
        let t = Topology::parse(TREE).unwrap();
        assert_eq!(t.origin().name, "origin");
        let roles: Vec<_> = t
            .nodes()
            .iter()
            .map(|n| (n.name.as_str(), n.role, n.depth))
            .collect();
        assert_eq!(
            roles,
            vec![
                ("origin", Role::Origin, 0),
                ("relay-a", Role::Relay, 1),
                ("relay-b", Role::Relay, 1),
                ("web-1", Role::Leaf, 2),
                ("web-2", Role::Leaf, 2),
            ]
        );
        assert_eq!(t.node("relay-a").unwrap().children, vec!["web-1"]);
        assert_eq!(
            t.descendants("origin"),
            vec!["relay-a", "web-1", "relay-b", "web-2"]
        );
        let tree = t.render_tree();
        assert!(
            tree.starts_with("origin (origin, depth 0) listen 127.0.0.1:7400\n"),
            "{tree}"
        );
        assert!(tree.contains("├── relay-a (relay, depth 1)"), "{tree}");
        assert!(tree.contains("│   └── web-1 (leaf, depth 2)"), "{tree}");
        assert!(tree.contains("    └── web-2 (leaf, depth 2)"), "{tree}");
    }

    #[test]
    fn single_origin_is_valid() {
        let t = Topology::parse("[[node]]\nname = \"solo\"\n").unwrap();
        assert_eq!(t.origin().role, Role::Origin);
    }

    #[test]
    fn no_root() {
        let e = err("[[node]]\nname = \"a\"\nparent = \"b\"\nlisten = \"127.0.0.1:1\"\n[[node]]\nname = \"b\"\nparent = \"a\"\nlisten = \"127.0.0.1:2\"\n");
        assert!(e.contains("no root"), "{e}");
    }

    #[test]
    fn two_roots() {
        let e = err("[[node]]\nname = \"a\"\n[[node]]\nname = \"b\"\n");
        assert!(
            e.contains("more than one root") && e.contains("a, b"),
            "{e}"
        );
    }

    #[test]
    fn cycle_below_root() {
        let e = err(
            "[[node]]\nname = \"o\"\n[[node]]\nname = \"a\"\nparent = \"b\"\nlisten = \"127.0.0.1:1\"\n[[node]]\nname = \"b\"\nparent = \"a\"\nlisten = \"127.0.0.1:2\"\n",
        );
        assert!(
            e.contains("cycle") && e.contains('a') && e.contains('b'),
            "{e}"
        );
    }

    #[test]
    fn self_parent() {
        let e = err("[[node]]\nname = \"o\"\n[[node]]\nname = \"a\"\nparent = \"a\"\n");
        assert!(e.contains("line 4") && e.contains("its own parent"), "{e}");
    }

    #[test]
    fn unknown_parent() {
        let e = err("[[node]]\nname = \"o\"\nlisten = \"127.0.0.1:1\"\n[[node]]\nname = \"a\"\nparent = \"nope\"\n");
        assert!(
            e.contains("line 5") && e.contains("\"a\"") && e.contains("\"nope\""),
            "{e}"
        );
    }

    #[test]
    fn duplicate_name() {
        let e = err("[[node]]\nname = \"o\"\nlisten = \"127.0.0.1:1\"\n[[node]]\nname = \"o\"\nparent = \"o\"\n");
        assert!(
            e.contains("duplicate node name \"o\"") && e.contains("line 5") && e.contains("line 2"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_listen() {
        let e = err(&TREE.replace("127.0.0.1:7402", "127.0.0.1:7401"));
        assert!(
            e.contains("relay-b") && e.contains("relay-a") && e.contains("127.0.0.1:7401"),
            "{e}"
        );
    }

    #[test]
    fn parent_without_listen() {
        let e = err(&TREE.replace("listen = \"127.0.0.1:7401\"\n", ""));
        assert!(
            e.contains("\"relay-a\"") && e.contains("no listen address") && e.contains("web-1"),
            "{e}"
        );
    }

    #[test]
    fn changes_between_two_topologies_are_listed_and_marked_on_the_tree() {
        let old = Topology::parse(
            r#"
[[node]]
name = "origin"
listen = "10.0.0.1:7400"
[[node]]
name = "east"
parent = "origin"
listen = "10.0.1.1:7400"
[[node]]
name = "west"
parent = "origin"
listen = "10.0.2.1:7400"
[[node]]
name = "web-1"
parent = "east"
[[node]]
name = "web-2"
parent = "east"
[[node]]
name = "web-3"
parent = "west"
"#,
        )
        .unwrap();
        let new = Topology::parse(
            r#"
revoked = ["sha256:abababababababababababababababababababababababababababababababab"]
[[node]]
name = "origin"
listen = "10.0.0.1:7400"
[[node]]
name = "east"
parent = "origin"
listen = "10.0.1.9:7400"
[[node]]
name = "west"
parent = "origin"
listen = "10.0.2.1:7400"
backup_parents = ["east"]
[[node]]
name = "web-1"
parent = "west"
listen = "10.0.3.1:7400"
[[node]]
name = "web-4"
parent = "web-1"
"#,
        )
        .unwrap();
        let words: Vec<String> = old.changes_to(&new).iter().map(|c| c.to_string()).collect();
        assert_eq!(
            words,
            [
                "east becomes a leaf (was a relay)",
                "east listens on 10.0.1.9:7400 (was 10.0.1.1:7400)",
                "west backup parents: [east] (were [])",
                "move web-1: east -> west",
                "web-1 becomes a relay (was a leaf)",
                "web-1 listens on 10.0.3.1:7400 (was none)",
                "add web-4 under web-1",
                "remove web-2 (was under east)",
                "remove web-3 (was under west)",
                "revocation list: 1 certificate(s) added, 0 removed",
            ]
        );
        let tree = old.render_changes_to(&new);
        assert!(tree.contains("~ ├── east (leaf"), "{tree}");
        assert!(tree.contains("+         └── web-4 (leaf"), "{tree}");
        assert!(tree.contains("- web-2 (was under east)"), "{tree}");
        assert!(old.changes_to(&old).is_empty());
        assert!(old.can_change_to(&new).is_ok());
        let other_origin = Topology::parse("[[node]]\nname = \"east\"\n").unwrap();
        let e = old.can_change_to(&other_origin).unwrap_err().to_string();
        assert!(e.contains("origin cannot change"), "{e}");
    }

    #[test]
    fn revoked_fingerprints_are_parsed_or_named_by_line() {
        let fp = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        let t = Topology::parse(&format!(
            "revoked = [\"sha256:{fp}\", \"{colons}\"]\n[[node]]\nname = \"o\"\n"
        ))
        .unwrap();
        assert_eq!(t.revoked(), [[0xab; 32], [0xab; 32]]);
        for bad in ["sha256:abc", &format!("sha256:+{}", &fp[1..]), "md5:00"] {
            let e = Topology::parse(&format!(
                "\nrevoked = [\"{bad}\"]\n[[node]]\nname = \"o\"\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(e.starts_with("line 2: revoked entry"), "{e}");
        }
    }

    #[test]
    fn bad_dns_label() {
        for bad in ["Web_1", "-a", "a-", "", "a.b", &"x".repeat(64)] {
            let e = err(&format!("[[node]]\nname = \"{bad}\"\n"));
            assert!(
                e.contains("not a valid DNS label") && e.contains("line 2"),
                "{bad}: {e}"
            );
        }
        assert!(is_dns_label("web-1") && is_dns_label(&"x".repeat(63)));
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let e = err("[[node]]\nname = \"o\"\nlisten = 127.0.0.1\n");
        assert!(
            e.contains("syntax error") && e.contains("line 3, column"),
            "{e}"
        );
    }

    #[test]
    fn bad_listen_address_and_unknown_key() {
        let e = err("[[node]]\nname = \"o\"\nlisten = \"nowhere\"\n");
        assert!(e.contains("line 3"), "{e}");
        let e = err("[[node]]\nname = \"o\"\nparnet = \"x\"\n");
        assert!(e.contains("parnet") && e.contains("line 3"), "{e}");
    }

    #[test]
    fn backup_parents() {
        let with = |node: &str, backups: &str| {
            let marker = format!("name = \"{node}\"\n");
            TREE.replace(&marker, &format!("{marker}backup_parents = [{backups}]\n"))
        };
        let t = Topology::parse(&with("web-1", "\"relay-b\", \"origin\"")).unwrap();
        assert_eq!(
            t.node("web-1").unwrap().backup_parents,
            vec!["relay-b", "origin"]
        );
        assert!(t.may_attach("web-1", "relay-a") && t.may_attach("web-1", "relay-b"));
        assert!(!t.may_attach("web-2", "relay-a") && !t.may_attach("origin", "web-1"));
        assert_eq!(t.reachable_below("relay-b"), vec!["web-1", "web-2"]);
        assert_eq!(t.reachable_below("relay-a"), vec!["web-1"]);
        let e = err(&with("web-1", "\"nope\""));
        assert!(
            e.contains("unknown backup parent \"nope\"") && e.contains("line 17"),
            "{e}"
        );
        assert!(err(&with("web-1", "\"web-1\"")).contains("the node itself"));
        assert!(err(&with("relay-a", "\"web-1\"")).contains("no listen address"));
        let chain = "[[node]]\nname = \"o\"\nlisten = \"127.0.0.1:1\"\n[[node]]\nname = \"a\"\nparent = \"o\"\nlisten = \"127.0.0.1:2\"\nbackup_parents = [\"b\"]\n[[node]]\nname = \"b\"\nparent = \"a\"\nlisten = \"127.0.0.1:3\"\n[[node]]\nname = \"c\"\nparent = \"b\"\n";
        let e = err(chain);
        assert!(e.contains("descendants") && e.contains("\"a\""), "{e}");
        assert!(err(&with("origin", "\"relay-a\"")).contains("origin has no parent"));
    }

    #[test]
    fn empty_file() {
        assert!(err("").contains("no nodes"));
    }
}
