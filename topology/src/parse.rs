//! Topology text to a validated [`Topology`], one check per step, in this order (the first
//! fault found is the one reported):
//!
//! 1. TOML syntax, known keys, valid `listen` addresses; at least one node;
//! 2. names: DNS labels, unique;
//! 3. parents: known, not the node itself; then exactly one root and no cycle;
//! 4. `listen`: present on every node with children, unique;
//! 5. backup parents: known, not the node itself nor below it, listening; none on the origin.
//!
//! Depths and roles follow from the checked tree.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use petgraph::algo::toposort;
use petgraph::graph::{DiGraph, NodeIndex};
use serde::Deserialize;
use toml::Spanned;

use super::{Node, Role, Topology, TopologyError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    revoked: Vec<Spanned<String>>,
    #[serde(default)]
    node: Vec<RawNode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Spanned<String>,
    parent: Option<String>,
    listen: Option<SocketAddr>,
    #[serde(default)]
    backup_parents: Vec<String>,
}

/// The file's nodes while they are being checked, with each one's line and index by name.
struct Draft {
    raw: Vec<RawNode>,
    lines: Vec<usize>,
    by_name: HashMap<String, usize>,
}

pub(super) fn parse(text: &str) -> Result<Topology, TopologyError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| TopologyError::Syntax(syntax(text, &e)))?;
    if raw.node.is_empty() {
        return Err(TopologyError::Empty);
    }
    let revoked = raw
        .revoked
        .iter()
        .map(|r| {
            fingerprint(r.get_ref()).ok_or_else(|| TopologyError::BadRevoked {
                entry: r.get_ref().clone(),
                line: line_at(text, r.span().start),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let draft = Draft::new(text, raw.node)?;
    let (graph, root) = draft.tree()?;
    let children = draft.children();
    draft.check_listens(&children)?;
    let depth = draft.depths(&graph, root)?;
    draft.check_backups()?;
    let mut t = draft.into_topology(root, children, depth);
    t.revoked = revoked;
    Ok(t)
}

/// `sha256:` then 64 hex digits (the prefix optional, colons between bytes allowed).
fn fingerprint(text: &str) -> Option<[u8; 32]> {
    let t = text.trim();
    let t = t.strip_prefix("sha256:").unwrap_or(t);
    let hex: Vec<u8> = t.bytes().filter(|&c| c != b':').collect();
    if hex.len() != 64 || !hex.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

impl Draft {
    /// Step 2: every name a DNS label, no name twice.
    fn new(text: &str, raw: Vec<RawNode>) -> Result<Self, TopologyError> {
        let lines: Vec<usize> = raw
            .iter()
            .map(|n| line_at(text, n.name.span().start))
            .collect();
        let mut by_name = HashMap::new();
        for (i, n) in raw.iter().enumerate() {
            let name = n.name.get_ref();
            if !super::is_dns_label(name) {
                return Err(TopologyError::BadName {
                    name: name.clone(),
                    line: lines[i],
                });
            }
            if let Some(&first) = by_name.get(name) {
                return Err(TopologyError::DuplicateName {
                    name: name.clone(),
                    line: lines[i],
                    first: lines[first],
                });
            }
            by_name.insert(name.clone(), i);
        }
        Ok(Draft {
            raw,
            lines,
            by_name,
        })
    }

    fn name(&self, i: usize) -> &String {
        self.raw[i].name.get_ref()
    }

    /// Step 3: parents exist and are not the node itself; one root; no cycle. Returns the
    /// parent → child graph and the root.
    fn tree(&self) -> Result<(DiGraph<usize, ()>, usize), TopologyError> {
        let mut graph = DiGraph::<usize, ()>::new();
        let idx: Vec<NodeIndex> = (0..self.raw.len()).map(|i| graph.add_node(i)).collect();
        let mut roots = Vec::new();
        for (i, n) in self.raw.iter().enumerate() {
            match &n.parent {
                None => roots.push(i),
                Some(p) if p == self.name(i) => {
                    return Err(TopologyError::SelfParent {
                        node: p.clone(),
                        line: self.lines[i],
                    })
                }
                Some(p) => {
                    let &pi = self
                        .by_name
                        .get(p)
                        .ok_or_else(|| TopologyError::UnknownParent {
                            node: self.name(i).clone(),
                            parent: p.clone(),
                            line: self.lines[i],
                        })?;
                    graph.add_edge(idx[pi], idx[i], ());
                }
            }
        }
        if roots.is_empty() {
            return Err(TopologyError::NoRoot);
        }
        if let Err(cycle) = toposort(&graph, None) {
            return Err(TopologyError::Cycle(
                self.cycle_from(graph[cycle.node_id()]),
            ));
        }
        match roots.as_slice() {
            [r] => Ok((graph, *r)),
            many => {
                let names: Vec<_> = many.iter().map(|&i| self.name(i).as_str()).collect();
                Err(TopologyError::ManyRoots(names.join(", ")))
            }
        }
    }

    /// The whole cycle through `start`, walking parents: `a -> b -> c -> a`.
    fn cycle_from(&self, start: usize) -> String {
        let mut names = vec![self.name(start).clone()];
        let mut cur = start;
        while let Some(&p) = self.raw[cur]
            .parent
            .as_ref()
            .and_then(|p| self.by_name.get(p))
        {
            if p == start {
                break;
            }
            names.push(self.name(p).clone());
            cur = p;
            if names.len() > self.raw.len() {
                break;
            }
        }
        names.push(self.name(start).clone());
        names.join(" -> ")
    }

    /// Each node's children, in file order.
    fn children(&self) -> Vec<Vec<String>> {
        let mut children = vec![Vec::new(); self.raw.len()];
        for n in &self.raw {
            if let Some(p) = &n.parent {
                children[self.by_name[p]].push(n.name.get_ref().clone());
            }
        }
        children
    }

    /// Step 4: a node with children listens, and no two nodes listen on one address.
    fn check_listens(&self, children: &[Vec<String>]) -> Result<(), TopologyError> {
        let mut listens: BTreeMap<SocketAddr, usize> = BTreeMap::new();
        for (i, n) in self.raw.iter().enumerate() {
            if !children[i].is_empty() && n.listen.is_none() {
                return Err(TopologyError::MissingListen {
                    node: self.name(i).clone(),
                    children: children[i].join(", "),
                    line: self.lines[i],
                });
            }
            if let Some(addr) = n.listen {
                if let Some(&other) = listens.get(&addr) {
                    return Err(TopologyError::DuplicateListen {
                        node: self.name(i).clone(),
                        other: self.name(other).clone(),
                        addr,
                        line: self.lines[i],
                    });
                }
                listens.insert(addr, i);
            }
        }
        Ok(())
    }

    /// Each node's depth. With no cycle and one root every node reaches the root.
    fn depths(&self, graph: &DiGraph<usize, ()>, root: usize) -> Result<Vec<usize>, TopologyError> {
        let mut depth = vec![usize::MAX; self.raw.len()];
        depth[root] = 0;
        for ni in toposort(graph, None).map_err(|_| TopologyError::NoRoot)? {
            let i = graph[ni];
            if let Some(p) = &self.raw[i].parent {
                depth[i] = depth[self.by_name[p]] + 1;
            }
        }
        Ok(depth)
    }

    /// Step 5: every backup parent exists, listens, and is neither the node nor below it.
    fn check_backups(&self) -> Result<(), TopologyError> {
        for (i, n) in self.raw.iter().enumerate() {
            let name = self.name(i);
            for b in &n.backup_parents {
                let bad = |why| TopologyError::BadBackup {
                    node: name.clone(),
                    backup: b.clone(),
                    why,
                    line: self.lines[i],
                };
                let &bi = self
                    .by_name
                    .get(b)
                    .ok_or_else(|| TopologyError::UnknownBackup {
                        node: name.clone(),
                        backup: b.clone(),
                        line: self.lines[i],
                    })?;
                if b == name {
                    return Err(bad("it is the node itself"));
                }
                if n.parent.is_none() {
                    return Err(bad("the origin has no parent to back up"));
                }
                if self.raw[bi].listen.is_none() {
                    return Err(bad("it has no listen address"));
                }
                // Walk up from the backup: reaching the node means the backup is below it.
                let mut cur = self.raw[bi].parent.as_ref();
                while let Some(p) = cur {
                    if p == name {
                        return Err(bad("it is one of the node's descendants"));
                    }
                    cur = self.raw[self.by_name[p]].parent.as_ref();
                }
            }
        }
        Ok(())
    }

    /// The checked tree, each node with its children, depth and role.
    fn into_topology(
        self,
        root: usize,
        mut children: Vec<Vec<String>>,
        depth: Vec<usize>,
    ) -> Topology {
        let nodes = self
            .raw
            .into_iter()
            .enumerate()
            .map(|(i, n)| {
                let kids = std::mem::take(&mut children[i]);
                let role = match (&n.parent, kids.is_empty()) {
                    (None, _) => Role::Origin,
                    (Some(_), true) => Role::Leaf,
                    (Some(_), false) => Role::Relay,
                };
                Node {
                    name: n.name.into_inner(),
                    parent: n.parent,
                    listen: n.listen,
                    backup_parents: n.backup_parents,
                    children: kids,
                    depth: depth[i],
                    role,
                    line: self.lines[i],
                }
            })
            .collect();
        Topology {
            nodes,
            by_name: self.by_name,
            root,
            revoked: Vec::new(),
        }
    }
}

fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&c| c == b'\n')
        .count()
        + 1
}

fn syntax(text: &str, e: &toml::de::Error) -> String {
    let msg = e
        .message()
        .trim()
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ");
    match e.span() {
        Some(span) => {
            let line = line_at(text, span.start);
            let line_start = text[..span.start.min(text.len())]
                .rfind('\n')
                .map_or(0, |p| p + 1);
            let col = text[line_start..span.start.min(text.len())].chars().count() + 1;
            format!("line {line}, column {col}: {msg}")
        }
        None => msg,
    }
}
