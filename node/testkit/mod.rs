//! Real deployments for the tests, the benchmark and `cascade demo`: a topology, a
//! throwaway CA with a certificate per node, and one config file per node, all under one
//! base directory. This is the one place such configs are written.
//!
//! Layout under the base: `topology.toml`, `certs/`, and per node `NAME/node.toml`,
//! `NAME/data/` and (for nodes with a directory) `NAME/dir/`. Paths inside the base are
//! written relative to each config file, so a kept deployment can be moved and run by hand.

pub mod churn;
pub mod content;

use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cascade_topology::Topology;

use crate::config::{Keys, NodeConfig};

pub use content::noise;

/// A deployment on disk.
pub struct Deployment {
    pub base: PathBuf,
    pub topology: Topology,
    /// One per node, in topology order (the origin first).
    pub configs: Vec<NodeConfig>,
}

impl Deployment {
    /// The node's own directory under the base.
    pub fn home(&self, name: &str) -> PathBuf {
        self.base.join(name)
    }

    /// The node's config file.
    pub fn config_file(&self, name: &str) -> PathBuf {
        self.home(name).join("node.toml")
    }

    /// Provisions a node the running tree does not have yet, as an operator adding a host
    /// would: a certificate from the deployment's CA and a config whose topology is
    /// `topology` (a file under the base, the one that adds the node). Returns its config.
    pub fn add_node(&self, name: &str, topology: &str) -> Result<PathBuf> {
        cascade_certs::issue(&self.base.join("certs"), &[name])?;
        let home = self.home(name);
        fs::create_dir_all(home.join("dir"))?;
        let keys = Keys {
            name: Some(name.to_owned()),
            topology: Some(format!("../{topology}").into()),
            certs: Some("../certs".into()),
            dir: Some("dir".into()),
            data: Some("data".into()),
            ..Keys::default()
        };
        let file = self.config_file(name);
        fs::write(&file, keys.to_toml())?;
        Ok(file)
    }

    /// A free UDP address on 127.0.0.1 for a node added later to listen on.
    pub fn free_addr() -> Result<SocketAddr> {
        Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
    }
}

/// Which nodes get a `dir`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dirs {
    /// Every node (relays keep a copy too).
    All,
    /// The origin and the leaves; relays only store and forward.
    NotRelays,
}

/// What to deploy.
#[derive(Debug, Clone)]
pub struct Plan {
    /// (name, parent) in topology order, the origin first.
    nodes: Vec<(String, Option<String>)>,
    /// Each listening node on its own 127.0.0.x address instead of all on 127.0.0.1.
    spread: bool,
    dirs: Dirs,
    origin_dir: Option<PathBuf>,
    /// Keys set on every node.
    every_node: Keys,
    /// Keys set on the origin only (none that `every_node` sets).
    origin: Keys,
    /// Keys set on one node (none that `every_node` sets).
    node_keys: Vec<(String, Keys)>,
    /// Listening nodes given an address instead of a free one found on 127.0.0.x (an
    /// address of another network namespace, say).
    listen: Vec<(String, SocketAddr)>,
}

/// origin → `relays` relays → `leaves` leaves each, every node with a `dir`, on 127.0.0.1.
pub fn deploy(base: &Path, relays: usize, leaves: usize) -> Result<Deployment> {
    Plan::tree(relays, leaves).write(base)
}

impl Plan {
    /// origin → `relay-R` (R = 1..=relays) → `leaf-R-L` (L = 1..=leaves).
    pub fn tree(relays: usize, leaves: usize) -> Self {
        let mut nodes = vec![("origin".to_owned(), None)];
        for r in 1..=relays {
            nodes.push((format!("relay-{r}"), Some("origin".to_owned())));
            for l in 1..=leaves {
                nodes.push((format!("leaf-{r}-{l}"), Some(format!("relay-{r}"))));
            }
        }
        Self::nodes(nodes)
    }

    /// Any tree: (name, parent) in order, the origin (no parent) first.
    pub fn nodes(nodes: Vec<(String, Option<String>)>) -> Self {
        Plan {
            nodes,
            spread: false,
            dirs: Dirs::All,
            origin_dir: None,
            every_node: Keys::default(),
            origin: Keys::default(),
            node_keys: Vec::new(),
            listen: Vec::new(),
        }
    }

    /// Listening nodes each on an address of their own in 127.0.0.0/8.
    pub fn spread(mut self) -> Self {
        self.spread = true;
        self
    }

    /// Relays keep no `dir`.
    pub fn relays_without_dir(mut self) -> Self {
        self.dirs = Dirs::NotRelays;
        self
    }

    /// The origin publishes `dir` (outside the base) instead of `origin/dir`.
    pub fn origin_dir(mut self, dir: &Path) -> Self {
        self.origin_dir = Some(dir.to_owned());
        self
    }

    /// Sets these keys on every node.
    pub fn every_node(mut self, keys: Keys) -> Self {
        self.every_node = keys;
        self
    }

    /// Sets these keys on the origin (keys `every_node` does not set).
    pub fn origin_keys(mut self, keys: Keys) -> Self {
        self.origin = keys;
        self
    }

    /// Sets these keys on node `name` (keys `every_node` does not set).
    pub fn node_keys(mut self, name: &str, keys: Keys) -> Self {
        self.node_keys.push((name.to_owned(), keys));
        self
    }

    /// Node `name` listens on `addr`.
    pub fn listen(mut self, name: &str, addr: SocketAddr) -> Self {
        self.listen.push((name.to_owned(), addr));
        self
    }

    fn has_children(&self, name: &str) -> bool {
        self.nodes.iter().any(|(_, p)| p.as_deref() == Some(name))
    }

    /// Writes topology, CA, certificates and configs under `base` (which must be empty or
    /// new) and loads every config back.
    pub fn write(self, base: &Path) -> Result<Deployment> {
        fs::create_dir_all(base).with_context(|| base.display().to_string())?;
        let topo = self.topology_text()?;
        let topo_path = base.join("topology.toml");
        fs::write(&topo_path, &topo)?;
        let topology = Topology::load(&topo_path)?;
        let certs = base.join("certs");
        cascade_certs::init_ca(&certs, true)?;
        let names: Vec<String> = self.nodes.iter().map(|(n, _)| n.clone()).collect();
        cascade_certs::issue(&certs, &names)?;
        let mut configs = Vec::new();
        for (name, parent) in &self.nodes {
            let home = base.join(name);
            fs::create_dir_all(&home)?;
            let dir = match (parent, &self.origin_dir) {
                (None, Some(d)) => Some(d.clone()),
                (Some(_), _) if self.dirs == Dirs::NotRelays && self.has_children(name) => None,
                _ => Some(PathBuf::from("dir")),
            };
            if let Some(d) = &dir {
                fs::create_dir_all(home.join(d))?;
            }
            let keys = Keys {
                name: Some(name.clone()),
                topology: Some("../topology.toml".into()),
                certs: Some("../certs".into()),
                dir,
                data: Some("data".into()),
                ..self.every_node.clone()
            };
            let file = home.join("node.toml");
            let mut text = keys.to_toml();
            if parent.is_none() {
                text.push_str(&self.origin.to_toml());
            }
            for (_, keys) in self.node_keys.iter().filter(|(n, _)| n == name) {
                text.push_str(&keys.to_toml());
            }
            fs::write(&file, text)?;
            configs.push(NodeConfig::load(Some(&file), [], &Keys::default())?);
        }
        Ok(Deployment {
            base: base.to_owned(),
            topology,
            configs,
        })
    }

    fn topology_text(&self) -> Result<String> {
        let mut topo = String::new();
        // Held until every address is chosen, so no two nodes get the same one.
        let mut taken = Vec::new();
        for (name, parent) in &self.nodes {
            writeln!(topo, "[[node]]\nname = \"{name}\"")?;
            if let Some(p) = parent {
                writeln!(topo, "parent = \"{p}\"")?;
            }
            if let Some((_, addr)) = self.listen.iter().find(|(n, _)| n == name) {
                writeln!(topo, "listen = \"{addr}\"")?;
            } else if self.has_children(name) {
                let ip = if self.spread {
                    Ipv4Addr::new(127, 0, 0, 2 + (taken.len() % 250) as u8)
                } else {
                    Ipv4Addr::LOCALHOST
                };
                let sock = UdpSocket::bind(SocketAddr::new(ip.into(), 0))
                    .with_context(|| format!("cannot find a free UDP port on {ip}"))?;
                writeln!(topo, "listen = \"{}\"", sock.local_addr()?)?;
                taken.push(sock);
            }
            writeln!(topo)?;
        }
        Ok(topo)
    }
}
