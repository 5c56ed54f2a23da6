//! What the parts of one node share: who it is, its store, the release it holds, its board,
//! the bodies it is receiving, and how it applies releases to `dir`.

use std::path::PathBuf;

use cascade_topology::Role;
use tokio::sync::mpsc;

use super::board::Board;
use super::flight::Flights;
use super::held::Held;
use super::keys::Keys;
use super::layout::Layouts;
use super::trust::Trust;
use crate::data::{StateError, Store};
use crate::dir::Applier;
use crate::hooks::Hooks;
use crate::net::Limiter;
use crate::status::NodeState;
use crate::tree::{Blake3, Release};

#[derive(Debug)]
pub struct Shared {
    pub name: String,
    pub role: Role,
    /// The topology the node runs under, which a release can change.
    pub layouts: Layouts,
    pub store: Store,
    /// The release held and the one offered to children.
    pub held: Held,
    /// This node's and its subtree's statuses.
    pub board: Board,
    /// Bodies being received, for children served while they arrive.
    pub flights: Flights,
    /// How releases reach `dir` (none on the origin, or on a relay without `dir`).
    pub applier: Option<Applier>,
    /// Whether this node serves children (has children or is someone's backup parent);
    /// set when a topology change makes it a relay.
    pub serves: std::sync::atomic::AtomicBool,
    /// On the origin: where the held release's bodies lie in `dir` (they are served from
    /// there unless the store holds them).
    pub in_dir: Option<super::bodies::in_dir::InDir>,
    /// Bodies `dir` holds by BLAKE3, for the held release (a node that started serving
    /// children takes them from there instead of fetching them again).
    pub dir_bodies: super::bodies::in_dir::BodyIndex,
    /// Caps what is sent to children (`upload_limit`).
    pub upload: Option<Limiter>,
    /// How this node asks its parent to send bodies (`compress`).
    pub compress: crate::wire::Compress,
    /// Commands run around a release, and where they run.
    pub hooks: HookSetup,
    /// The link to the parent while one is up (a verify fetches bodies over it).
    pub parent_link: std::sync::Mutex<Option<quinn::Connection>>,
    /// Held while a release is applied or `dir` is verified: one at a time.
    pub landing: tokio::sync::Mutex<()>,
    /// Whether a verify reads every file by default (`verify = "full"`).
    pub verify_full: bool,
    /// The release-signing key's public half (and, on the origin, the key itself).
    pub trust: Trust,
    /// The certificates refused at every handshake.
    pub keys: Keys,
    /// What the node counts for Prometheus.
    pub metrics: crate::metrics::Metrics,
    /// The children that take bodies pushed while this node scans (the origin).
    pub pusher: super::pushed::Pusher,
    /// Bodies the parent pushed, waiting for an offer to name them.
    pub pushed: super::pushed::Received,
}

/// The node's hooks and what they need.
#[derive(Debug, Default)]
pub struct HookSetup {
    pub hooks: Hooks,
    /// Where `CASCADE_CHANGED` files are written (the data dir).
    pub scratch: PathBuf,
    /// Releases for the `on_release` runner: (version, the directory, changed paths).
    pub queue: Option<mpsc::UnboundedSender<(u64, PathBuf, Vec<String>)>>,
}

impl Shared {
    /// Records `release` as held (saved, then offered to children) and drops from the store
    /// every body that neither this release nor the previous one uses (the previous one's
    /// stay for children still fetching it). Callers hold releases one at a time.
    pub fn hold(&self, release: Release) -> Result<(), StateError> {
        let version = release.version;
        let (held, previous) = self.held.hold(release)?;
        self.keys.release_held(&held.release);
        let needed = (held.release.manifest.files())
            .chain(previous.iter().flat_map(|p| p.release.manifest.files()))
            .map(|(_, _, id)| id);
        match self.store.retain(needed) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "store garbage collected"),
            Err(e) => tracing::warn!("store garbage collection: {e}"),
        }
        self.board.set_own(|s| {
            s.applied = Some(version);
            s.state = NodeState::Idle;
        });
        self.metrics.releases.inc();
        Ok(())
    }

    /// The tree below this node as an operator sees it (`cascade status`, the status page).
    pub fn tree_view(&self) -> crate::status::view::TreeView {
        let statuses: crate::status::Statuses = self
            .board
            .all()
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        let layout = self.layouts.current();
        let behind_since = |applied: Option<u64>| self.held.behind_since(applied);
        crate::status::view::TreeView::build(&crate::status::view::Known {
            me: &self.name,
            topology: &layout.topology,
            release: self.held.version(),
            statuses: &statuses,
            behind_since: &behind_since,
            now_ms: crate::status::now_ms(),
        })
    }

    /// Whether this node serves children now.
    pub fn serves(&self) -> bool {
        self.serves.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Copies body `id` from `dir` into the store if the held release has a file with that
    /// body and `dir` still holds it unchanged (checked while copying); returns whether the
    /// store now holds it. A leaf that became a relay serves its children this way.
    pub fn adopt_from_dir(&self, id: &Blake3) -> bool {
        let (Some(applier), Some(held)) = (&self.applier, self.held.current()) else {
            return false;
        };
        let Some(entry) = self.dir_bodies.entry(&held, id) else {
            return false;
        };
        let Some(expected) = super::bodies::expected(&entry, false) else {
            return false;
        };
        matches!(
            self.store.adopt(&applier.dir.join(&entry.path), expected),
            Ok(true)
        )
    }

    /// Where body `id` lies in the origin's `dir`, when neither the store holds it nor is it
    /// arriving (so that only the file has it).
    pub fn body_in_dir(&self, id: &Blake3) -> Option<super::bodies::in_dir::Found> {
        let in_dir = self.in_dir.as_ref()?;
        if self.flights.has(id) || self.store.has(id) {
            return None;
        }
        in_dir.find(self.held.current(), id)
    }

    /// Whether a hook will want the paths a release changes (so they are worth listing).
    pub fn hooks_want_changes(&self) -> bool {
        self.hooks.queue.is_some() || !self.hooks.hooks.check.is_empty()
    }

    /// Hands a release that reached `dir` to the `on_release` hook (if there is one).
    pub fn released(&self, version: u64, dir: PathBuf, changed: Vec<String>) {
        if let Some(q) = &self.hooks.queue {
            let _ = q.send((version, dir, changed));
        }
    }

    /// Offers `release` to children while it is still being fetched (cut-through), unless
    /// something newer is offered already. Its bodies must be registered in `flights` first.
    pub fn offer_early(&self, release: &Release) {
        if self.serves() {
            self.held.offer_release(release.clone());
        }
    }
}
