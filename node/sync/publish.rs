//! The origin's publisher: scan `dir` into a release, numbered above anything any node has
//! reported, and hold it (which offers it to the children).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use cascade_topology::Role;
use tokio::sync::Mutex;

use super::shared::Shared;
use crate::data::{StateError, StoreError};
use crate::dir::scan::{scan, ScanError, StatCache};
use crate::tree::Release;
use crate::wire::PublishSummary;

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
}

/// Publishes the origin's `dir`, one publish at a time.
#[derive(Debug)]
pub struct Publisher {
    shared: Arc<Shared>,
    dir: PathBuf,
    /// Where the stat cache is kept between publishes.
    stat_cache: PathBuf,
    lock: Mutex<()>,
}

impl Publisher {
    pub fn new(shared: Arc<Shared>, dir: PathBuf, stat_cache: PathBuf) -> Self {
        Publisher {
            shared,
            dir,
            stat_cache,
            lock: Mutex::new(()),
        }
    }

    /// Scans `dir` and cuts a new release if anything changed.
    pub async fn publish(&self) -> Result<PublishSummary, PublishError> {
        let _guard = self.lock.lock().await;
        let shared = &self.shared;
        let started = Instant::now();
        let (me, dir, cache_path) = (shared.clone(), self.dir.clone(), self.stat_cache.clone());
        let (manifest, stats) = tokio::task::spawn_blocking(move || {
            me.store.begin_batch()?;
            let (manifest, cache, stats) = scan(&dir, &me.store, &StatCache::load(&cache_path))?;
            me.store.commit_batch()?;
            if let Err(e) = cache.save(&cache_path) {
                tracing::warn!("cannot save the stat cache: {e}");
            }
            Ok::<_, PublishError>((manifest, stats))
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
        let prev = shared.held.current();
        let summary = |version, changed| PublishSummary {
            version,
            changed,
            files: manifest.file_count(),
            bytes: manifest.total_bytes(),
        };
        if let Some(p) = &prev {
            if p.release.manifest.root_digest() == manifest.root_digest() {
                return Ok(summary(p.version(), false));
            }
        }
        // Above anything a node reports, so a rebuilt origin never offers an "older" version.
        let version = prev
            .map(|p| p.version())
            .max(shared.board.highest_applied())
            .map_or(1, |v| v + 1);
        let out = summary(version, true);
        tracing::info!(
            version,
            files = out.files,
            bytes = out.bytes,
            "published release"
        );
        shared.hold(Release { version, manifest })?;
        Ok(out)
    }
}
