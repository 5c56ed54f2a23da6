//! The topology a node runs under, which can change while it runs.
//!
//! At start a node reads its configured topology file, unless its data dir holds a topology
//! that a release carried (`DATA/topology.toml`): the newest one the node has seen wins, so a
//! node that was down while the tree changed comes back in the new tree. Delete that file to
//! make the node start from its configured file again.
//!
//! The origin puts the topology it runs under into every release it signs; a node adopts the
//! topology of a release it accepts from its parent (signature checked) when it differs from
//! its own. A child never sends a topology: the protocol has no message for it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cascade_topology::{Node, Topology, TopologyError};
use tokio::sync::watch;

/// A topology and where it came from.
#[derive(Debug, Clone)]
pub struct Layout {
    pub topology: Arc<Topology>,
    /// The text it was parsed from (what releases carry and `topology plan` compares with).
    pub text: Arc<str>,
    /// The release that carried it; `None` for the configured file.
    pub version: Option<u64>,
}

impl Layout {
    /// This node's entry, if the topology still has it.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.topology.node(name).ok()
    }

    /// `name`'s parent first, then its backups, each with its listen address (none for the
    /// origin, or a node the topology no longer has).
    pub fn parents(&self, name: &str) -> Vec<(String, SocketAddr)> {
        let Some(me) = self.node(name) else {
            return Vec::new();
        };
        me.parent
            .iter()
            .chain(&me.backup_parents)
            .filter_map(|p| Some((p.clone(), self.topology.node(p).ok()?.listen?)))
            .collect()
    }

    /// Where `name` listens: only if it has children or serves as someone's backup parent.
    pub fn listen(&self, name: &str) -> Option<SocketAddr> {
        let me = self.node(name)?;
        let adopts = self
            .topology
            .nodes()
            .iter()
            .any(|n| n.backup_parents.contains(&me.name));
        if me.children.is_empty() && !adopts {
            None
        } else {
            me.listen
        }
    }
}

/// The current layout, saved in the data dir when a release brought it.
#[derive(Debug)]
pub struct Layouts {
    tx: watch::Sender<Layout>,
    saved: PathBuf,
}

const HEADER: &str = "# cascade: the topology of release ";

impl Layouts {
    /// The topology saved in `data` (if a release brought one), else the file at `file`.
    pub fn load(file: &Path, data: &Path) -> Result<Self, TopologyError> {
        let saved = data.join("topology.toml");
        let layout = match std::fs::read_to_string(&saved) {
            Ok(text) => {
                let version = text
                    .lines()
                    .next()
                    .and_then(|l| l.strip_prefix(HEADER))
                    .and_then(|l| l.split_whitespace().next())
                    .and_then(|v| v.parse().ok());
                let topology = Topology::parse(&text).map_err(|e| TopologyError::Read {
                    path: saved.display().to_string(),
                    source: std::io::Error::other(format!(
                        "{e} (delete it to start from the configured topology)"
                    )),
                })?;
                tracing::info!(
                    path = %saved.display(),
                    release = ?version,
                    "running under the topology a release brought (newer than {}; delete it to go back to that file)",
                    file.display()
                );
                Layout {
                    topology: Arc::new(topology),
                    text: strip_header(&text).into(),
                    version,
                }
            }
            Err(_) => {
                let text = std::fs::read_to_string(file).map_err(|source| TopologyError::Read {
                    path: file.display().to_string(),
                    source,
                })?;
                Layout {
                    topology: Arc::new(Topology::parse(&text)?),
                    text: text.into(),
                    version: None,
                }
            }
        };
        Ok(Layouts {
            tx: watch::Sender::new(layout),
            saved,
        })
    }

    pub fn current(&self) -> Layout {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Layout> {
        self.tx.subscribe()
    }

    /// Runs under `text`, carried by release `version`, if it differs from the current
    /// topology; saved first, so a restart comes back under it. Returns whether it changed.
    pub fn adopt(&self, text: &str, version: u64) -> Result<bool, String> {
        let text = strip_header(text);
        {
            let current = self.tx.borrow();
            // Never an older topology, nor the same one again.
            if *current.text == *text || current.version.is_some_and(|v| v >= version) {
                return Ok(false);
            }
        }
        let topology = Topology::parse(text).map_err(|e| e.to_string())?;
        let saved = format!("{HEADER}{version} (newest seen; delete this file to start from the configured one)\n{text}");
        write_atomic(&self.saved, saved.as_bytes())
            .map_err(|e| format!("cannot save {}: {e}", self.saved.display()))?;
        self.tx.send_replace(Layout {
            topology: Arc::new(topology),
            text: text.into(),
            version: Some(version),
        });
        Ok(true)
    }
}

/// `text` without the line this module writes at the top of a saved topology.
fn strip_header(text: &str) -> &str {
    text.strip_prefix(HEADER)
        .and_then(|t| t.split_once('\n').map(|(_, rest)| rest))
        .unwrap_or(text)
}

fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = "[[node]]\nname = \"o\"\nlisten = \"127.0.0.1:1\"\n[[node]]\nname = \"a\"\nparent = \"o\"\n";
    const TWO: &str = "[[node]]\nname = \"o\"\nlisten = \"127.0.0.1:1\"\n[[node]]\nname = \"b\"\nparent = \"o\"\n";

    #[test]
    fn the_newest_topology_seen_wins_and_an_older_one_is_never_taken() {
        let d = tempfile::tempdir().unwrap();
        let (file, data) = (d.path().join("topology.toml"), d.path().join("data"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(&file, ONE).unwrap();
        let l = Layouts::load(&file, &data).unwrap();
        assert_eq!((l.current().version, &*l.current().text), (None, ONE));
        assert_eq!(l.adopt(TWO, 5), Ok(true));
        assert_eq!(l.adopt(TWO, 6), Ok(false), "the same text again");
        assert_eq!(l.adopt(ONE, 4), Ok(false), "an older release's topology");
        assert!(l.current().node("b").is_some());
        assert!(l.adopt("not toml [", 9).is_err());
        // A restart comes back under the topology of release 5, not the file.
        let l = Layouts::load(&file, &data).unwrap();
        assert_eq!(l.current().version, Some(5));
        assert_eq!(&*l.current().text, TWO);
        assert_eq!(l.current().parents("b")[0].0, "o");
        assert!(l.current().parents("a").is_empty());
        // Deleting the saved topology goes back to the file.
        std::fs::remove_file(data.join("topology.toml")).unwrap();
        let l = Layouts::load(&file, &data).unwrap();
        assert_eq!((l.current().version, &*l.current().text), (None, ONE));
    }
}
