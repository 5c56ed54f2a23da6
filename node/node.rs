//! A running node: loads its identity, store and last release, binds its endpoint, and runs
//! the halves its place in the tree calls for (upstream if it has a parent, downstream if it
//! listens, the publisher on the origin), plus the local admin socket.
//!
//! Every task is owned by [`RunningNode`]; dropping it aborts them, and
//! [`RunningNode::shutdown`] closes links cleanly first.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cascade_certs::Identity;
use cascade_topology::{Role, Topology};
use quinn::Endpoint;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinSet;

use crate::apply::{Applier, ApplyError};
use crate::config::NodeConfig;
use crate::flight::Flights;
use crate::link::{self, LinkError};
use crate::manifest::Manifest;
use crate::scan::{scan, ScanError, StatCache};
use crate::status::{now_ms, Board, NodeState, NodeStatus};
use crate::store::{Store, StoreError};
use crate::wire::{self, Down, ErrorCode, PublishSummary, Release};
use crate::{admin, downstream, upstream};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Topology(#[from] cascade_topology::TopologyError),
    #[error("node {name:?} is not in topology {topology}")]
    NotInTopology { name: String, topology: PathBuf },
    #[error("node {0:?} is the {1} and needs `dir` (the directory to {2}) in its config")]
    NeedsDir(String, Role, &'static str),
    #[error("certificates for node {name:?}: {source}")]
    Certs {
        name: String,
        source: cascade_certs::CertError,
    },
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: saved release is unreadable ({reason}); move it away to fetch the release again"
    )]
    State { path: PathBuf, reason: String },
    #[error("another node is already running with data dir {0}")]
    AlreadyRunning(PathBuf),
    #[error("node {0:?} is a {1}; only the origin can publish")]
    NotOrigin(String, Role),
    #[error("apply failed: {0}")]
    Apply(String),
    #[error("apply needs {} bodies that are neither in the store nor in dir", .0.len())]
    MissingBodies(Vec<crate::manifest::Md5>),
    #[error("publish failed: {0}")]
    Scan(#[from] ScanError),
}

pub(crate) fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A release with its offer frame encoded once for all children.
#[derive(Debug)]
pub struct Offer {
    pub release: Release,
    pub offer_frame: Vec<u8>,
}

impl Offer {
    pub fn new(release: Release) -> Arc<Self> {
        let down = Down::Offer(release);
        let offer_frame = wire::encode(&down);
        let Down::Offer(release) = down;
        Arc::new(Offer {
            release,
            offer_frame,
        })
    }
}

/// State shared by the halves of one node.
#[derive(Debug)]
pub struct Shared {
    pub name: String,
    pub role: Role,
    pub topology: Topology,
    pub store: Store,
    pub dir: Option<PathBuf>,
    /// How releases reach `dir` (none on a relay without `dir`).
    pub applier: Option<Applier>,
    pub data: PathBuf,
    /// The newest release held completely (verified, applied).
    pub held: watch::Sender<Option<Arc<Offer>>>,
    /// The newest release children are offered: the held one, or one this node is still
    /// fetching, whose bodies it forwards as they arrive (see [`crate::flight`]).
    pub offered: watch::Sender<Option<Arc<Offer>>>,
    /// Bodies being received, for children served while they arrive.
    pub flights: Flights,
    /// Whether this node serves children (has children or is someone's backup parent).
    pub serves: bool,
    /// This node's and its subtree's statuses.
    pub board: watch::Sender<Board>,
    /// Body bytes served to children since start.
    pub sent_bytes: AtomicU64,
    /// Caps what is sent to children (`upload_limit`).
    pub upload: Option<crate::limit::Limiter>,
    publish_lock: Mutex<()>,
}

impl Shared {
    /// Updates this node's own entry on the board (watchers wake only if it changed).
    pub fn set_own(&self, f: impl FnOnce(&mut NodeStatus)) {
        self.board.send_if_modified(|b| {
            let own = b
                .entry(self.name.clone())
                .or_insert_with(|| NodeStatus::new(&self.name));
            let before = own.clone();
            f(own);
            own.sent_bytes = self.sent_bytes.load(Ordering::Relaxed);
            let changed = *own != before;
            if changed {
                own.updated_ms = now_ms();
            }
            changed
        });
    }

    pub fn held_release(&self) -> Option<Arc<Offer>> {
        self.held.borrow().clone()
    }

    /// Offers `release` to children while it is still being fetched (cut-through), unless
    /// something newer is offered already. Its bodies must be registered in `flights` first.
    pub fn offer_early(&self, release: &Release) {
        if self.serves {
            let offer = Offer::new(release.clone());
            self.offer(offer);
        }
    }

    fn offer(&self, offer: Arc<Offer>) {
        self.offered.send_if_modified(|o| {
            let newer = o
                .as_ref()
                .is_none_or(|o| o.release.version < offer.release.version);
            if newer {
                *o = Some(offer);
            }
            newer
        });
    }

    /// Records `release` as held: persisted first, then offered to children. Bodies that
    /// neither this release nor the previous one uses are removed from the store (the previous
    /// one's stay for children still fetching it). Callers hold releases one at a time.
    pub fn hold(&self, release: Release) -> Result<(), NodeError> {
        save_release(&release_path(&self.data), &release)?;
        let version = release.version;
        let held = Offer::new(release);
        let previous = self.held.send_replace(Some(held.clone()));
        self.offer(held.clone());
        let keep = held
            .release
            .manifest
            .files()
            .chain(previous.iter().flat_map(|p| p.release.manifest.files()))
            .map(|(_, _, md5)| md5)
            .collect();
        match self.store.retain(&keep) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "store garbage collected"),
            Err(e) => tracing::warn!("store garbage collection: {e}"),
        }
        self.set_own(|s| {
            s.applied = Some(version);
            s.state = NodeState::Idle;
        });
        Ok(())
    }

    /// Applies `release` to `dir` (if this node has one) and holds it. The release is recorded
    /// as pending first, so a node killed mid-apply finishes it when restarted.
    pub async fn apply_and_hold(self: &Arc<Self>, release: Release) -> Result<(), NodeError> {
        if let Some(applier) = self.applier.clone() {
            save_release(&pending_path(&self.data), &release)?;
            let me = self.clone();
            let (release, stats) = tokio::task::spawn_blocking(move || {
                let old = me.held_release();
                let stats = applier.apply(
                    release.version,
                    &release.manifest,
                    old.as_ref()
                        .map(|h| (h.release.version, &h.release.manifest)),
                    &me.store,
                );
                (release, stats)
            })
            .await
            .expect("apply does not panic");
            let stats = stats.map_err(|e| match e {
                ApplyError::MissingBodies(missing) => NodeError::MissingBodies(missing),
                e => NodeError::Apply(e.to_string()),
            })?;
            tracing::info!(
                written = stats.written,
                linked = stats.linked,
                unchanged = stats.unchanged,
                deleted = stats.deleted,
                "applied release {} to {}",
                release.version,
                self.dir
                    .as_ref()
                    .map_or(String::new(), |d| d.display().to_string())
            );
            self.hold(release)?;
            let _ = fs::remove_file(pending_path(&self.data));
        } else {
            self.hold(release)?;
        }
        Ok(())
    }

    /// Scans `dir` and cuts a new release if anything changed (origin only).
    pub async fn publish(self: &Arc<Self>) -> Result<PublishSummary, NodeError> {
        if self.role != Role::Origin {
            return Err(NodeError::NotOrigin(self.name.clone(), self.role));
        }
        let _guard = self.publish_lock.lock().await;
        let me = self.clone();
        let started = std::time::Instant::now();
        let (manifest, stats) = tokio::task::spawn_blocking(move || {
            let dir = me
                .dir
                .as_ref()
                .expect("the origin always has a dir (checked at start)");
            let cache_path = me.data.join("statcache.bin");
            me.store.begin_batch().map_err(ScanError::Store)?;
            let (manifest, cache, stats) = scan(dir, &me.store, &StatCache::load(&cache_path))?;
            me.store.commit_batch().map_err(ScanError::Store)?;
            if let Err(e) = cache.save(&cache_path) {
                tracing::warn!(path = %cache_path.display(), "cannot save the stat cache: {e}");
            }
            Ok::<_, ScanError>((manifest, stats))
        })
        .await
        .expect("scan task does not panic")?;
        tracing::info!(
            hashed = stats.hashed,
            hashed_bytes = stats.hashed_bytes,
            cached = stats.cached,
            ms = started.elapsed().as_millis() as u64,
            "scanned"
        );
        let prev = self.held_release();
        let summary = |version, changed| PublishSummary {
            version,
            changed,
            files: manifest.file_count(),
            bytes: manifest.total_bytes(),
        };
        if let Some(p) = &prev {
            if p.release.manifest.root_digest() == manifest.root_digest() {
                return Ok(summary(p.release.version, false));
            }
        }
        // Above anything a node reports, so a rebuilt origin never offers an "older" version.
        let reported = self.board.borrow().values().filter_map(|s| s.applied).max();
        let version = prev
            .map(|p| p.release.version)
            .max(reported)
            .map_or(1, |v| v + 1);
        let out = summary(version, true);
        tracing::info!(
            version,
            files = out.files,
            bytes = out.bytes,
            "published release"
        );
        self.hold(Release { version, manifest })?;
        Ok(out)
    }

    /// The node's own status followed by its subtree's.
    pub fn statuses(&self) -> Vec<NodeStatus> {
        self.set_own(|_| {});
        self.board.borrow().values().cloned().collect()
    }
}

/// The release this node holds completely.
fn release_path(data: &Path) -> PathBuf {
    data.join("release.bin")
}

/// The release being applied; present only while an apply may be incomplete.
fn pending_path(data: &Path) -> PathBuf {
    data.join("pending.bin")
}

fn save_release(path: &Path, release: &Release) -> Result<(), NodeError> {
    let tmp = path.with_extension("bin.tmp");
    let mut f = fs::File::create(&tmp).map_err(io_at(&tmp))?;
    f.write_all(&wire::encode(release))
        .and_then(|()| f.sync_all())
        .map_err(io_at(&tmp))?;
    fs::rename(&tmp, path).map_err(io_at(path))
}

fn load_release(path: &Path) -> Result<Option<Release>, NodeError> {
    match fs::read(path) {
        Ok(bytes) => wire::decode_frame(&bytes)
            .map(Some)
            .map_err(|e| NodeError::State {
                path: path.to_owned(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(NodeError::Io {
            path: path.to_owned(),
            source: e,
        }),
    }
}

/// A started node. Dropping it aborts its tasks; prefer [`RunningNode::shutdown`].
pub struct RunningNode {
    shared: Arc<Shared>,
    endpoint: Endpoint,
    tasks: JoinSet<()>,
}

impl RunningNode {
    /// Starts the node described by `cfg`: every check that can fail happens before any task
    /// is spawned, so a bad config returns one clear error.
    pub async fn start(cfg: NodeConfig) -> Result<Self, NodeError> {
        let topology = Topology::load(&cfg.topology)?;
        let me = topology
            .node(&cfg.name)
            .map_err(|_| NodeError::NotInTopology {
                name: cfg.name.clone(),
                topology: cfg.topology.clone(),
            })?
            .clone();
        match (me.role, &cfg.dir) {
            (Role::Origin, None) => return Err(NodeError::NeedsDir(me.name, me.role, "publish")),
            (Role::Leaf, None) => {
                return Err(NodeError::NeedsDir(me.name, me.role, "keep in sync"))
            }
            _ => {}
        }
        let identity =
            Identity::load(&cfg.certs, &cfg.name).map_err(|source| NodeError::Certs {
                name: cfg.name.clone(),
                source,
            })?;
        fs::create_dir_all(&cfg.data).map_err(io_at(&cfg.data))?;
        fs::set_permissions(&cfg.data, fs::Permissions::from_mode(0o700))
            .map_err(io_at(&cfg.data))?;
        let lock = lock_data_dir(&cfg.data)?;
        let store = Store::open(&cfg.data)?;
        let release = load_release(&release_path(&cfg.data))?;
        let pending = load_release(&pending_path(&cfg.data))?;
        if let (Some(dir), Role::Origin) = (&cfg.dir, me.role) {
            if !dir.is_dir() {
                return Err(NodeError::Io {
                    path: dir.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "directory to publish does not exist",
                    ),
                });
            }
        }
        // The parent first, then the backups, each with its listen address.
        let parents: Vec<(String, std::net::SocketAddr)> = me
            .parent
            .iter()
            .chain(&me.backup_parents)
            .filter_map(|p| Some((p.clone(), topology.node(p).ok()?.listen?)))
            .collect();
        // A node listens if it has children or serves as someone's backup parent.
        let adopts = topology
            .nodes()
            .iter()
            .any(|n| n.backup_parents.contains(&me.name));
        let listen = if me.children.is_empty() && !adopts {
            None
        } else {
            me.listen
        };
        let endpoint = link::endpoint(
            &identity,
            listen,
            parents.first().map(|p| p.1),
            cfg.link_timeout,
        )?;
        let admin = admin::bind(&cfg.data)?;

        let mut own = NodeStatus::new(&me.name);
        own.applied = release.as_ref().map(|r| r.version);
        own.connected = me.role == Role::Origin;
        let shared = Arc::new(Shared {
            name: me.name.clone(),
            role: me.role,
            topology,
            store,
            dir: cfg.dir.clone(),
            applier: cfg
                .dir
                .clone()
                .filter(|_| me.role != Role::Origin)
                .map(|dir| Applier {
                    dir,
                    mode: cfg.apply,
                    releases: cfg.data.join("releases"),
                    keep_bodies: listen.is_some(),
                }),
            data: cfg.data.clone(),
            offered: watch::Sender::new(None),
            held: watch::Sender::new(release.map(Offer::new)),
            flights: Flights::default(),
            serves: listen.is_some(),
            board: watch::Sender::new(Board::from([(me.name.clone(), own)])),
            sent_bytes: AtomicU64::new(0),
            upload: cfg.upload_limit.map(crate::limit::Limiter::new),
            publish_lock: Mutex::new(()),
        });

        tracing::info!(
            node = %me.name,
            role = %me.role,
            parent = me.parent.as_deref().unwrap_or("-"),
            children = %if me.children.is_empty() { "-".to_owned() } else { me.children.join(",") },
            listen = %listen.map_or("-".to_owned(), |l| l.to_string()),
            release = %shared.held_release().map_or("none".to_owned(), |h| h.release.version.to_string()),
            "node started"
        );

        recover(&shared, pending).await;
        shared.offered.send_replace(shared.held_release());

        let mut tasks = JoinSet::new();
        tasks.spawn(admin::serve(shared.clone(), admin, lock));
        if listen.is_some() {
            tasks.spawn(downstream::run(shared.clone(), endpoint.clone()));
        }
        if !parents.is_empty() {
            tasks.spawn(upstream::run(
                shared.clone(),
                endpoint.clone(),
                parents,
                cfg.failover_after,
            ));
        }
        Ok(RunningNode {
            shared,
            endpoint,
            tasks,
        })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The UDP address the node's endpoint is bound to.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    /// Publishes (origin only); see [`Shared::publish`].
    pub async fn publish(&self) -> Result<PublishSummary, NodeError> {
        self.shared.publish().await
    }

    /// The node's own status and its subtree's.
    pub fn statuses(&self) -> Vec<NodeStatus> {
        self.shared.statuses()
    }

    /// The release this node holds, if any.
    pub fn release(&self) -> Option<Manifest> {
        self.shared
            .held_release()
            .map(|h| h.release.manifest.clone())
    }

    /// Returns if one of the node's tasks ends on its own, which only a bug (a panic) can
    /// cause: the node would otherwise run on half-dead. Says what happened.
    pub async fn failed(&mut self) -> String {
        match self.tasks.join_next().await {
            Some(Err(e)) if e.is_panic() => {
                let p = e.into_panic();
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                tracing::error!("internal task panicked: {msg}");
                format!("internal task panicked: {msg}")
            }
            Some(_) => "an internal task stopped unexpectedly".to_owned(),
            None => std::future::pending().await,
        }
    }

    /// Closes every link with a shutdown code and stops every task.
    pub async fn shutdown(mut self) {
        link::close_endpoint(&self.endpoint, ErrorCode::Shutdown);
        self.tasks.shutdown().await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.endpoint.wait_idle())
            .await;
        let _ = fs::remove_file(admin::socket_path(&self.shared.data));
        tracing::info!(node = %self.shared.name, "node stopped");
    }
}

/// Brings `dir` back to a complete release after a restart: a release whose apply was
/// interrupted is finished (roll forward) if all its bodies are held; otherwise the held
/// release is applied again, which also undoes changes made to `dir` while the node was down.
/// If even that is impossible, the node forgets its release and fetches it again.
async fn recover(shared: &Arc<Shared>, pending: Option<Release>) {
    let Some(applier) = shared.applier.clone() else {
        return;
    };
    if let Some(p) = pending {
        // Bodies already moved into `dir` (see `Applier::keep_bodies`) count; the apply
        // confirms them by MD5.
        let complete = p.manifest.files().all(|(e, _, md5)| {
            shared.store.has(&md5)
                || (!applier.keep_bodies && crate::apply::held_in_place(&applier.dir, e))
        });
        let version = p.version;
        if complete
            && shared
                .held_release()
                .is_none_or(|h| h.release.version < version)
        {
            match shared.apply_and_hold(p).await {
                Ok(()) => {
                    return tracing::info!(
                        version,
                        "finished the apply interrupted by the last stop"
                    )
                }
                Err(e) => tracing::warn!(version, "cannot finish the interrupted apply: {e}"),
            }
        }
        let _ = fs::remove_file(pending_path(&shared.data));
    }
    let Some(held) = shared.held_release() else {
        return;
    };
    let me = shared.clone();
    let repaired = tokio::task::spawn_blocking(move || {
        applier.repair(held.release.version, &held.release.manifest, &me.store)
    })
    .await
    .expect("apply does not panic");
    match repaired {
        Ok(stats) if stats.written + stats.deleted > 0 => tracing::info!(
            written = stats.written,
            deleted = stats.deleted,
            "repaired dir to the held release"
        ),
        Ok(_) => {}
        Err(e) => {
            // Fetch the release again from the parent (only missing bodies travel).
            tracing::warn!("cannot restore dir to the held release: {e}; fetching it again");
            shared.held.send_replace(None);
            shared.set_own(|s| s.applied = None);
        }
    }
}

/// Holds an exclusive lock file in `data` for the life of the node.
pub struct DataLock {
    path: PathBuf,
}

impl Drop for DataLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn lock_data_dir(data: &Path) -> Result<DataLock, NodeError> {
    let path = data.join("node.pid");
    for _ in 0..2 {
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(mut f) => {
                let _ = write!(f, "{}", std::process::id());
                return Ok(DataLock { path });
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let pid = fs::read_to_string(&path).unwrap_or_default();
                let alive = pid
                    .trim()
                    .parse::<u32>()
                    .is_ok_and(|p| Path::new(&format!("/proc/{p}")).exists());
                if alive && pid.trim() != std::process::id().to_string() {
                    return Err(NodeError::AlreadyRunning(data.to_owned()));
                }
                // A stale lock from a killed process.
                let _ = fs::remove_file(&path);
            }
            Err(e) => return Err(NodeError::Io { path, source: e }),
        }
    }
    Err(NodeError::AlreadyRunning(data.to_owned()))
}
