//! The origin's publisher: scan `dir` into a release, numbered above anything any node has
//! reported, and hold it (which offers it to the children).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cascade_topology::Role;
use tokio::sync::{mpsc, Mutex};

use super::bodies::in_dir::Changed;
use super::shared::Shared;
use crate::data::{StateError, StoreError};
use crate::dir::scan::{scan_with, ScanError, Scanned, Scope, StatCache, Stored};
use crate::dir::watch::Batch;
use crate::dir::Rules;
use crate::tree::{EntryKind, Manifest, Release};
use crate::wire::{self, Down, PublishSummary};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("node {0:?} is a {1}; only the origin can publish")]
    NotOrigin(String, Role),
    #[error("publish failed: {0}")]
    Scan(#[from] ScanError),
    #[error("publish failed: {0}")]
    Store(#[from] StoreError),
    #[error("publish failed: {0}")]
    State(#[from] StateError),
    #[error("publish failed: no version is left above {0} (a node reports having applied it)")]
    Versions(u64),
    #[error("publish failed: the release of {files} files would be a {bytes}-byte offer, over the protocol's limit of {limit} bytes (exclude paths, or split the tree)")]
    TooLarge {
        files: u64,
        bytes: usize,
        limit: usize,
    },
    #[error("topology refused: {0}")]
    Topology(String),
}

/// Refuses a release whose offer would exceed `limit` bytes: every child would refuse the
/// frame, and the origin its own saved release after a restart. A cheap upper bound decides
/// for any tree of ordinary size; only near the limit is the offer encoded to measure it.
fn check_size(release: &Release, limit: usize) -> Result<(), PublishError> {
    let bound: usize = 64
        + release.signature.len()
        + release
            .manifest
            .entries()
            .iter()
            .map(|e| {
                let extra = match &e.kind {
                    EntryKind::File { chunks, .. } => chunks.len() * 16,
                    EntryKind::Symlink { target } => target.len(),
                    EntryKind::Dir => 0,
                };
                // Varints never exceed 10 bytes; the MD5, the path and the rest are bytes.
                e.path.len() + extra + 64
            })
            .sum::<usize>();
    if bound <= limit {
        return Ok(());
    }
    let bytes = wire::encode(&Down::Offer(release.clone())).len();
    if bytes <= limit {
        return Ok(());
    }
    Err(PublishError::TooLarge {
        files: release.manifest.file_count(),
        bytes,
        limit,
    })
}

/// The next release's version: above the origin's own, and above anything a node reports (a
/// rebuilt origin must never offer an "older" version), without wrapping around.
fn next_version(held: Option<u64>, reported: Option<u64>) -> Result<u64, PublishError> {
    match held.max(reported) {
        None => Ok(1),
        Some(v) => v.checked_add(1).ok_or(PublishError::Versions(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Entry, Md5};

    #[test]
    fn a_release_over_the_frame_limit_is_refused_at_publish() {
        let entries: Vec<Entry> = (0..2000)
            .map(|i| Entry {
                path: format!("file-with-a-longish-name-{i:05}.html"),
                mode: 0o644,
                kind: EntryKind::File {
                    size: 5,
                    md5: Md5::of(b"x"),
                    blake3: crate::tree::Blake3::of(b"x"),
                    mtime: 1_700_000_000,
                    chunks: vec![],
                },
            })
            .collect();
        let mut r = Release::unsigned(3, Manifest::from_entries(entries).unwrap());
        r.signature = vec![1; 64];
        let exact = wire::encode(&Down::Offer(r.clone())).len();
        assert!(check_size(&r, exact).is_ok());
        assert!(check_size(&r, exact * 10).is_ok());
        let e = check_size(&r, exact - 1).unwrap_err().to_string();
        assert!(
            e.contains("2000 files") && e.contains(&exact.to_string()),
            "{e}"
        );
    }

    #[test]
    fn versions_grow_past_every_report_and_never_wrap() {
        use super::next_version;
        assert_eq!(next_version(None, None).unwrap(), 1);
        assert_eq!(next_version(Some(4), Some(2)).unwrap(), 5);
        assert_eq!(next_version(None, Some(9)).unwrap(), 10);
        let e = next_version(Some(3), Some(u64::MAX))
            .unwrap_err()
            .to_string();
        assert!(e.contains("18446744073709551615"), "{e}");
    }
}

/// Publishes the origin's `dir`, one publish at a time.
#[derive(Debug)]
pub struct Publisher {
    shared: Arc<Shared>,
    dir: PathBuf,
    exclude: Arc<Rules>,
    /// Where the stat cache is kept between runs.
    stat_cache: PathBuf,
    state: Mutex<ScanState>,
    /// Files found changed under a scan or after one, and when they last were: see
    /// [`HOT_FOR`].
    hot: std::sync::Mutex<HashMap<String, Instant>>,
}

/// What the publisher remembers between scans (the lock also makes publishes one at a time).
#[derive(Debug, Default)]
struct ScanState {
    /// Loaded from disk at the first scan, then kept here.
    cache: Option<StatCache>,
    /// Whether the release held is what the last scan of this process found: a watched scan
    /// then takes every unchanged subtree from its manifest (one copy of the tree in memory).
    in_step: bool,
    /// When the cache was last written to disk.
    saved: Option<Instant>,
    /// The cache changed since (or was never written).
    unsaved: bool,
    /// Exclude patterns that matched nothing were reported.
    reported_unmatched: bool,
    /// A topology to run under from the next release on (`cascade topology apply`).
    topology: Option<String>,
}

/// A file found changed under a scan or after one has its body copied into the store for
/// this long after it last was: a body left in `dir` is lost when its file changes again.
const HOT_FOR: Duration = Duration::from_secs(600);

/// A watched origin writes its stat cache at most this often (a crash costs a re-read of what
/// changed since).
const SAVE_CACHE_EVERY: Duration = Duration::from_secs(30);
/// A manual publish scans again (this often, at most this many times) while files change
/// under it, before publishing them as they last were.
const UNSETTLED_RETRY: (Duration, usize) = (Duration::from_millis(200), 5);

impl Publisher {
    pub fn new(shared: Arc<Shared>, dir: PathBuf, stat_cache: PathBuf, exclude: Rules) -> Self {
        Publisher {
            shared,
            dir,
            exclude: Arc::new(exclude),
            stat_cache,
            state: Mutex::new(ScanState::default()),
            hot: Default::default(),
        }
    }

    /// Marks file `rel` as one that changes: its body is copied into the store from the next
    /// scan on, for [`HOT_FOR`].
    pub fn heat(&self, rel: &str) {
        self.hot
            .lock()
            .expect("hot lock")
            .insert(rel.to_owned(), Instant::now());
    }

    /// The files still hot (the others are forgotten).
    fn hot_paths(&self) -> HashSet<String> {
        let mut hot = self.hot.lock().expect("hot lock");
        hot.retain(|_, t| t.elapsed() < HOT_FOR);
        hot.keys().cloned().collect()
    }

    /// Follows the reports of files changed after the release that names them was published
    /// (a child asked for the body and the file no longer had it): each is copied into the
    /// store from then on, and the operator is told once per release and path. A watched
    /// origin publishes the change anyway; otherwise children that still need the body wait
    /// for the next publish.
    pub async fn follow_changes(
        self: Arc<Self>,
        mut changes: mpsc::UnboundedReceiver<Changed>,
        watched: bool,
    ) {
        let mut told: HashSet<(u64, String)> = HashSet::new();
        while let Some(c) = changes.recv().await {
            self.heat(&c.path);
            told.retain(|(v, _)| *v >= c.version);
            if !told.insert((c.version, c.path.clone())) {
                continue;
            }
            if watched {
                tracing::info!(
                    version = c.version,
                    "`{}` changed after the release that names it was published ({}): the watch publishes it again",
                    c.path,
                    c.what
                );
            } else {
                tracing::warn!(
                    version = c.version,
                    "`{}` changed after release {} was published ({}): children that do not hold it yet wait for the next `cascade publish`",
                    c.path,
                    c.version,
                    c.what
                );
            }
        }
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The node this publisher publishes for.
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    pub fn exclude(&self) -> &Rules {
        &self.exclude
    }

    /// Makes `text` the tree's topology: checked (every check of `topology check`, and the
    /// origin must stay this node), then carried by a new release to every node.
    pub async fn apply_topology(&self, text: String) -> Result<PublishSummary, PublishError> {
        let new = cascade_topology::Topology::parse(&text)
            .map_err(|e| PublishError::Topology(e.to_string()))?;
        let current = self.shared.layouts.current();
        current
            .topology
            .can_change_to(&new)
            .map_err(|e| PublishError::Topology(e.to_string()))?;
        // Set and published under one hold of the scan state: a publish running meanwhile
        // would otherwise carry the topology out itself, and this one find nothing changed.
        let first = {
            let mut state = self.state.lock().await;
            state.topology = Some(text);
            self.publish_in(&mut state, Batch::default()).await?
        };
        match first {
            (summary, unsettled) if unsettled.is_empty() => Ok(summary),
            // Files that were still changing are published as they settle, as a publish
            // would; the topology went out with the first release.
            (summary, _) => {
                let rest = self.publish().await?;
                Ok(PublishSummary {
                    changed: summary.changed || rest.changed,
                    ..rest
                })
            }
        }
    }

    /// Scans all of `dir` and cuts a new release if anything changed.
    pub async fn publish(&self) -> Result<PublishSummary, PublishError> {
        let mut tries = 0;
        loop {
            let (summary, unsettled) = self.publish_batch(Batch::default()).await?;
            tries += 1;
            if unsettled.is_empty() || tries > UNSETTLED_RETRY.1 {
                if !unsettled.is_empty() {
                    tracing::warn!(
                        files = unsettled.len(),
                        first = %unsettled[0],
                        "files kept changing during the scan: published as they last were"
                    );
                }
                return Ok(summary);
            }
            tokio::time::sleep(UNSETTLED_RETRY.0).await;
        }
    }

    /// Scans what `batch` names (everything if it names no paths) and cuts a new release if
    /// anything changed. Also returns the files held back because they were still changing.
    pub async fn publish_batch(
        &self,
        batch: Batch,
    ) -> Result<(PublishSummary, Vec<String>), PublishError> {
        self.publish_in(&mut *self.state.lock().await, batch).await
    }

    /// [`Publisher::publish_batch`] with the scan state held.
    async fn publish_in(
        &self,
        state: &mut ScanState,
        batch: Batch,
    ) -> Result<(PublishSummary, Vec<String>), PublishError> {
        let shared = &self.shared;
        let started = Instant::now();
        let held = shared.held.current();
        let cache = match state.cache.take() {
            Some(c) => c,
            None => StatCache::load(&self.stat_cache, held.as_ref().map(|h| &h.release.manifest)),
        };
        let in_step = std::mem::take(&mut state.in_step) && held.is_some();
        let incremental = batch.dirty.is_some() && in_step;
        let (me, dir, exclude) = (shared.clone(), self.dir.clone(), self.exclude.clone());
        let hot = self.hot_paths();
        let scanned = tokio::task::spawn_blocking(move || {
            let tee = super::push::for_scan(&me, held.as_ref().map(|h| &h.release.manifest));
            let scope = Scope {
                exclude: Some(&exclude),
                prev: held.as_ref().map(|h| &h.release.manifest),
                dirty: batch.dirty.as_ref().filter(|_| in_step),
                writing: Some(&batch.writing),
                // The other bodies stay in `dir`, served from there.
                stored: Stored::Only(&hot),
                // Large new files go to the children as they are read; not under an upload
                // limit, where the link decides the time and cut-through at the relays
                // (which a pushed body does not have) matters more.
                tee: me
                    .upload
                    .is_none()
                    .then_some(&tee as &dyn crate::dir::scan::Tee),
            };
            // Only copies need flushing (a copy of a file that changes is worth keeping).
            let copies = !hot.is_empty();
            if copies {
                me.store.begin_batch()?;
            }
            let scanned = scan_with(&dir, &me.store, cache, scope)?;
            if copies {
                me.store.commit_batch()?;
            }
            Ok::<_, PublishError>(scanned)
        })
        .await
        .expect("scan task does not panic")?;
        // The pushes of this scan go out before the offer, so that children wait for them.
        shared.pusher.written(super::push::WRITTEN).await;
        let Scanned {
            manifest,
            cache,
            cache_changed,
            stats,
            unsettled,
            matched,
        } = scanned;
        // Saved once the release is out: children need not wait for it.
        state.unsaved |= cache_changed;
        let save_cache = state.unsaved
            && (!incremental || state.saved.is_none_or(|t| t.elapsed() >= SAVE_CACHE_EVERY));
        state.cache = Some(cache);
        for rel in &unsettled {
            self.heat(rel);
        }
        if !incremental && !state.reported_unmatched {
            state.reported_unmatched = true;
            for p in self.exclude.patterns() {
                if !matched.contains(p) && !p.starts_with('!') {
                    tracing::warn!(dir = %self.dir.display(), "exclude pattern {p:?} matches nothing (yet)");
                }
            }
        }
        tracing::info!(
            hashed = stats.hashed,
            hashed_bytes = stats.hashed_bytes,
            cached = stats.cached,
            listed = stats.listed,
            held_back = unsettled.len(),
            ms = started.elapsed().as_millis() as u64,
            "scanned"
        );
        let prev = shared.held.current();
        let summary = |version, changed| PublishSummary {
            version,
            changed,
            files: manifest.file_count(),
            bytes: manifest.total_bytes(),
        };
        // The origin's own revocation list goes into every release it signs: a change to it
        // alone is a new release.
        let revoked = shared.keys.local();
        // So does the topology the tree runs under.
        let topology: String = match &state.topology {
            Some(t) => t.clone(),
            None => shared.layouts.current().text.to_string(),
        };
        if let Some(p) = &prev {
            if p.release.manifest.root_digest() == manifest.root_digest()
                && p.release.revoked == revoked
                && p.release.topology.as_deref() == Some(topology.as_str())
                && shared.trust.signed_now(&p.release)
            {
                state.in_step = true;
                // The cache refers to the release held, not to an equal copy of it.
                if let Some(c) = &mut state.cache {
                    c.share(&p.release.manifest);
                }
                if save_cache {
                    self.save_cache(state).await;
                }
                return Ok((summary(p.version(), false), unsettled));
            }
        }
        let version = next_version(
            prev.as_ref().map(|p| p.version()).or(shared.held.older()),
            shared.board.highest_applied(),
        )?;
        let out = summary(version, true);
        tracing::info!(
            version,
            files = out.files,
            bytes = out.bytes,
            "published release"
        );
        let changed = match &prev {
            _ if !shared.hooks_want_changes() => Vec::new(),
            Some(p) => manifest.diff_paths(&p.release.manifest),
            None => manifest.diff_paths(&Manifest::empty()),
        };
        let mut release = Release::unsigned(version, manifest);
        release.revoked = revoked;
        release.topology = Some(topology);
        shared.trust.sign(&mut release);
        check_size(&release, wire::MAX_FRAME)?;
        shared.hold(release)?;
        if let Some(t) = state.topology.take() {
            match shared.layouts.adopt(&t, version) {
                Ok(_) => tracing::info!(
                    version,
                    "the tree runs under a new topology from this release on"
                ),
                Err(e) => tracing::warn!("the new topology is published but not saved here: {e}"),
            }
        }
        state.in_step = true;
        shared.released(version, self.dir.clone(), changed);
        if save_cache {
            self.save_cache(state).await;
        }
        Ok((out, unsettled))
    }

    /// Writes the stat cache to disk (on a blocking thread: 100,000 files are megabytes).
    async fn save_cache(&self, state: &mut ScanState) {
        let Some(cache) = state.cache.take() else {
            return;
        };
        let path = self.stat_cache.clone();
        let (cache, saved) = tokio::task::spawn_blocking(move || {
            let saved = cache.save(&path);
            if let Err(e) = &saved {
                tracing::warn!("cannot save the stat cache: {e}");
            }
            (cache, saved.is_ok())
        })
        .await
        .expect("saving the stat cache does not panic");
        state.cache = Some(cache);
        state.saved = Some(Instant::now());
        state.unsaved &= !saved;
    }
}
