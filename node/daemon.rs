//! A running node: loads its identity, store and last release, binds its endpoint, and runs
//! the halves its place in the tree calls for (the parent side if it has a parent, the
//! children side if it listens, the publisher on the origin), plus the local admin socket.
//!
//! Every task is owned by [`RunningNode`]; dropping it aborts them, and
//! [`RunningNode::shutdown`] closes links cleanly first.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use cascade_certs::{Identity, ReleaseKey, ReleasePub};
use cascade_topology::Role;
use quinn::Endpoint;
use tokio::task::JoinSet;

use crate::admin;
use crate::config::NodeConfig;
use crate::config::VerifyKind;
use crate::data::{DataDir, DataLock, LockError, StateError, Store, StoreError};
use crate::dir::Applier;
use crate::hooks;
use crate::net::{self, Limiter, LinkError};
use crate::status::NodeStatus;
use crate::sync::bodies::in_dir::InDir;
use crate::sync::flight::Flights;
use crate::sync::keys::{KeyFiles, Keys};
use crate::sync::layout::Layouts;
use crate::sync::{
    after, children, follow, land, parent, verify, Board, Held, HookSetup, PublishError, Publisher,
    Shared, Trust,
};
use crate::sync::{reload, role};
use crate::tree::Manifest;
use crate::wire::{ErrorCode, PublishSummary};

/// Why a node could not start; each names the file, node or address at fault.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Topology(#[from] cascade_topology::TopologyError),
    #[error("node {name:?} is not in topology {topology}")]
    NotInTopology { name: String, topology: PathBuf },
    #[error("node {0:?} is the {1} and needs `dir` (the directory to {2}) in its config")]
    NeedsDir(String, Role, &'static str),
    #[error("{0}: directory to publish does not exist")]
    NoDir(PathBuf),
    #[error("node {0:?} is a {1}: `{2}` applies only on {3}")]
    NotHere(String, Role, &'static str, &'static str),
    #[error(transparent)]
    Watch(#[from] crate::dir::watch::WatchError),
    #[error("node {name:?}: {source} (every host needs release.pub, the origin also release.key; `cascade certs init` makes them, `cascade certs release-key` adds them to an older deployment)")]
    ReleaseKey {
        name: String,
        source: cascade_certs::CertError,
    },
    #[error("{0}: release.key and release.pub are not one key pair")]
    KeyMismatch(PathBuf),
    #[error("certificates for node {name:?}: {source}")]
    Certs {
        name: String,
        source: cascade_certs::CertError,
    },
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A started node. Dropping it aborts its tasks; prefer [`RunningNode::shutdown`].
pub struct RunningNode {
    shared: Arc<Shared>,
    publisher: Option<Arc<Publisher>>,
    data: DataDir,
    endpoint: Endpoint,
    tasks: JoinSet<()>,
    /// Keeps a second node off the data dir while this one runs.
    _lock: DataLock,
}

impl RunningNode {
    /// Starts the node described by `cfg`: every check that can fail happens before any task
    /// is spawned, so a bad config returns one clear error.
    pub async fn start(cfg: NodeConfig) -> Result<Self, StartError> {
        let layouts = Layouts::load(&cfg.topology, &cfg.data)?;
        let layout = layouts.current();
        let topology = layout.topology.clone();
        let me = topology
            .node(&cfg.name)
            .map_err(|_| StartError::NotInTopology {
                name: cfg.name.clone(),
                // The topology a release brought wins at start: name it, so the operator
                // knows which file to look at (or delete).
                topology: if layout.version.is_some() {
                    cfg.data.join("topology.toml")
                } else {
                    cfg.topology.clone()
                },
            })?
            .clone();
        match (me.role, &cfg.dir) {
            (Role::Origin, None) => return Err(StartError::NeedsDir(me.name, me.role, "publish")),
            (Role::Leaf, None) => {
                return Err(StartError::NeedsDir(me.name, me.role, "keep in sync"))
            }
            (Role::Origin, Some(dir)) if !dir.is_dir() => {
                return Err(StartError::NoDir(dir.clone()))
            }
            _ => {}
        }
        let only_origin = [
            ("watch", cfg.watch.is_some()),
            ("exclude", !cfg.exclude.is_empty()),
        ];
        let only_receiver = [("keep", !cfg.keep.is_empty())];
        match me.role {
            Role::Origin => {
                if let Some((key, _)) = only_receiver.iter().find(|(_, set)| *set) {
                    return Err(StartError::NotHere(
                        me.name,
                        me.role,
                        key,
                        "a relay or a leaf",
                    ));
                }
            }
            _ => {
                if let Some((key, _)) = only_origin.iter().find(|(_, set)| *set) {
                    return Err(StartError::NotHere(me.name, me.role, key, "the origin"));
                }
            }
        }
        let identity =
            Identity::load(&cfg.certs, &cfg.name).map_err(|source| StartError::Certs {
                name: cfg.name.clone(),
                source,
            })?;
        let trust = load_trust(&cfg, me.role)?;
        let data = DataDir::new(&cfg.data);
        data.create()?;
        let lock = data.lock()?;
        let store = Store::open(&data.store)?;
        let (held, pending) = Held::load(data.clone())?;
        let committed = held
            .current()
            .iter()
            .map(|o| &o.release)
            .chain(pending.as_ref())
            .flat_map(|r| r.manifest.files().map(|(_, _, id)| id))
            .collect();
        let checked = store.recover(&committed)?;
        if checked > 0 {
            tracing::info!(
                checked,
                "re-verified the bodies of a batch a crash interrupted"
            );
        }
        let parents = layout.parents(&me.name);
        let listen = layout.listen(&me.name);
        let keys = Keys::new(
            topology.revoked(),
            held.current().as_ref().map(|o| &o.release),
        );
        let endpoint = net::endpoint(
            &identity,
            listen,
            parents.first().map(|p| p.1),
            cfg.link_timeout,
            &keys.revoked(),
        )?;
        keys.start_with(identity.clone(), listen.is_some());
        let admin = admin::bind(&data.admin_socket)?;
        let web = match cfg.metrics {
            Some(addr) => Some(crate::web::bind(addr).await?),
            None => None,
        };

        let mut own = NodeStatus::new(&me.name);
        own.applied = held.version();
        own.connected = me.role == Role::Origin;
        let serves = listen.is_some();
        let applier = cfg
            .dir
            .clone()
            .filter(|_| me.role != Role::Origin)
            .map(|dir| {
                Applier::new(dir, cfg.apply, data.releases.clone(), serves)
                    .keeping(cfg.keep.clone(), data.shared.clone())
                    .allowing_special_bits(cfg.allow_special_bits)
            });
        if let Some(a) = &applier {
            a.warn_kept_links();
        }
        for (key, argv) in [
            ("on_release", &cfg.hooks.on_release),
            ("check", &cfg.hooks.check),
        ] {
            hooks::precheck(key, argv);
        }
        let (hook_tx, hook_rx) = tokio::sync::mpsc::unbounded_channel();
        let has_dir = cfg.dir.is_some();
        let on_release = !cfg.hooks.on_release.is_empty() && has_dir;
        // The origin serves bodies from its `dir` (see `bodies::in_dir`).
        let (in_dir, dir_changes) = match (me.role, &cfg.dir) {
            (Role::Origin, Some(dir)) => {
                let (d, rx) = InDir::new(dir.clone());
                (Some(d), Some(rx))
            }
            _ => (None, None),
        };
        let shared = Arc::new(Shared {
            name: me.name.clone(),
            role: me.role,
            layouts,
            store,
            held,
            board: Board::new(own),
            flights: Flights::default(),
            applier,
            serves: serves.into(),
            in_dir,
            dir_bodies: Default::default(),
            upload: cfg.upload_limit.map(Limiter::new),
            compress: cfg.compress,
            hooks: HookSetup {
                hooks: cfg.hooks.clone(),
                scratch: data.root.clone(),
                queue: on_release.then_some(hook_tx),
            },
            parent_link: Default::default(),
            landing: Default::default(),
            verify_full: cfg.verify == VerifyKind::Full,
            trust,
            keys,
            metrics: Default::default(),
            pusher: Default::default(),
            pushed: Default::default(),
        });
        if me.role == Role::Origin {
            sign_held(&shared)?;
        }
        crate::sync::push::left_by_last_run(&shared);
        let publisher = match (me.role, &cfg.dir) {
            (Role::Origin, Some(dir)) => Some(Arc::new(Publisher::new(
                shared.clone(),
                dir.clone(),
                data.stat_cache.clone(),
                cfg.exclude.clone(),
            ))),
            _ => None,
        };

        tracing::info!(
            node = %me.name,
            role = %me.role,
            parent = me.parent.as_deref().unwrap_or("-"),
            children = %if me.children.is_empty() { "-".to_owned() } else { me.children.join(",") },
            listen = %listen.map_or("-".to_owned(), |l| l.to_string()),
            release = %shared.held.version().map_or("none".to_owned(), |v| v.to_string()),
            "node started"
        );

        let watch = match (&publisher, cfg.watch) {
            (Some(p), Some(w)) => Some((follow::start(p).await?, w)),
            _ => None,
        };

        land::recover(&shared, pending).await;
        // What the recovery did not use of an interrupted apply's stage.
        shared.store.clear_stages()?;
        shared.held.offer_held();

        let mut tasks = JoinSet::new();
        if on_release {
            tasks.spawn(after::run(shared.clone(), hook_rx));
        }
        if let (Some(period), true) = (cfg.verify_every, shared.applier.is_some()) {
            tasks.spawn(verify::every(shared.clone(), period));
        }
        tasks.spawn(admin::serve(shared.clone(), publisher.clone(), admin));
        if let Some(listener) = web {
            tracing::info!(
                addr = %listener.local_addr()?,
                "serving metrics on /metrics and the status page on /"
            );
            tasks.spawn(crate::web::serve(shared.clone(), listener));
        }
        tasks.spawn(reload::run(
            shared.clone(),
            endpoint.clone(),
            KeyFiles {
                certs: cfg.certs.clone(),
                topology: cfg.topology.clone(),
                idle: cfg.link_timeout,
            },
            identity,
            publisher.clone(),
        ));
        if listen.is_some() {
            tasks.spawn(children::run(shared.clone(), endpoint.clone()));
        }
        if me.role != Role::Origin {
            tasks.spawn(role::run(
                shared.clone(),
                endpoint.clone(),
                cfg.link_timeout,
                listen.is_some(),
            ));
        }
        if let (Some(p), Some(rx)) = (&publisher, dir_changes) {
            tasks.spawn(p.clone().follow_changes(rx, watch.is_some()));
        }
        if let (Some(p), Some((watch, settings))) = (&publisher, watch) {
            tasks.spawn(follow::run(p.clone(), watch, settings));
        }
        if me.role != Role::Origin {
            tasks.spawn(parent::run(
                shared.clone(),
                endpoint.clone(),
                cfg.failover_after,
            ));
        }
        Ok(RunningNode {
            shared,
            publisher,
            data,
            endpoint,
            tasks,
            _lock: lock,
        })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The UDP address the node's endpoint is bound to.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    /// Scans `dir` and cuts a new release if anything changed (origin only).
    pub async fn publish(&self) -> Result<PublishSummary, PublishError> {
        match &self.publisher {
            Some(p) => p.publish().await,
            None => Err(PublishError::NotOrigin(
                self.shared.name.clone(),
                self.shared.role,
            )),
        }
    }

    /// The node's own status and its subtree's.
    pub fn statuses(&self) -> Vec<NodeStatus> {
        self.shared.board.all()
    }

    /// The tree below this node, as `cascade status` shows it.
    pub fn tree_view(&self) -> crate::status::view::TreeView {
        self.shared.tree_view()
    }

    /// The release this node holds, if any.
    pub fn release(&self) -> Option<Manifest> {
        self.shared
            .held
            .current()
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
    pub async fn shutdown(self) {
        self.shutdown_because("asked to stop").await;
    }

    /// [`RunningNode::shutdown`], saying why in the one line it logs.
    pub async fn shutdown_because(mut self, why: &str) {
        net::close_endpoint(&self.endpoint, ErrorCode::Shutdown);
        self.tasks.shutdown().await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.endpoint.wait_idle())
            .await;
        let _ = fs_err::remove_file(&self.data.admin_socket);
        tracing::info!(node = %self.shared.name, "node stopped ({why})");
    }
}

/// The release-signing key's public half, and on the origin the key itself.
fn load_trust(cfg: &NodeConfig, role: Role) -> Result<Trust, StartError> {
    let err = |source| StartError::ReleaseKey {
        name: cfg.name.clone(),
        source,
    };
    let public = ReleasePub::load(&cfg.certs).map_err(err)?;
    let signing = match role {
        Role::Origin => {
            let key = ReleaseKey::load(&cfg.certs).map_err(err)?;
            if key.public() != public {
                return Err(StartError::KeyMismatch(cfg.certs.clone()));
            }
            let endorsement = cascade_certs::load_endorsement(&cfg.certs).map_err(err)?;
            Some((key, endorsement))
        }
        _ => None,
    };
    Trust::new(public, signing, cfg.data.join("release.pub")).map_err(err)
}

/// The origin signs a held release that is not signed by its key (saved by a Cascade from
/// before signing, or before the key was replaced), so its children accept it.
fn sign_held(shared: &Shared) -> Result<(), StartError> {
    let Some(held) = shared.held.current() else {
        return Ok(());
    };
    if shared.trust.signed_now(&held.release) {
        return Ok(());
    }
    let mut release = held.release.clone();
    shared.trust.sign(&mut release);
    tracing::info!(
        version = release.version,
        "signed the held release with the release key"
    );
    shared.hold(release)?;
    Ok(())
}
