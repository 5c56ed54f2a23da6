//! Drift repair: checking `dir` against the release held, and repairing what differs from the
//! store's bodies, or from the parent's when the store lacks them (a node whose `dir` is its
//! only copy). Run at `verify_every` and on `cascade verify`; no new publish is needed.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::bodies;
use super::shared::Shared;
use super::SyncError;
use crate::dir::{ApplyError, Verified};
use crate::tree::Blake3;
use crate::wire::VerifySummary;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("node {0:?} has no dir to verify")]
    NoDir(String),
    #[error("node {0:?} holds no release yet")]
    NoRelease(String),
    #[error("verify: {} bodies are missing and the parent is not connected", .0)]
    NoParent(usize),
    #[error("verify: {0}")]
    Apply(#[from] ApplyError),
    #[error("verify: {0}")]
    Sync(#[from] SyncError),
}

/// Checks `dir` against the held release (`full`: by MD5 and BLAKE3 too) and repairs it.
pub async fn verify(shared: &Arc<Shared>, full: bool) -> Result<VerifySummary, VerifyError> {
    let Some(applier) = shared.applier.clone() else {
        return Err(VerifyError::NoDir(shared.name.clone()));
    };
    let _landing = shared.landing.lock().await;
    let Some(held) = shared.held.current() else {
        return Err(VerifyError::NoRelease(shared.name.clone()));
    };
    let release = &held.release;
    let run = || {
        let (me, held, applier) = (shared.clone(), held.clone(), applier.clone());
        tokio::task::spawn_blocking(move || {
            let r = &held.release;
            applier.verify(r.version, &r.manifest, &me.store, full)
        })
    };
    let mut fetched = 0;
    let verified = match run().await.expect("verify does not panic") {
        Err(ApplyError::MissingBodies(missing)) => {
            fetched = missing.len() as u64;
            fetch(shared, release, missing).await?;
            run().await.expect("verify does not panic")?
        }
        r => r?,
    };
    let Verified { drifted, stats } = verified;
    let summary = VerifySummary {
        version: release.version,
        full,
        checked: release.manifest.file_count(),
        repaired: drifted,
        fetched,
    };
    if summary.repaired.is_empty() {
        info!(
            version = release.version,
            full, "verified: dir matches the release"
        );
    } else {
        for p in &summary.repaired {
            info!(path = %p, "repaired drift");
        }
        warn!(
            version = release.version,
            full,
            drifted = summary.repaired.len(),
            written = stats.written,
            deleted = stats.deleted,
            fetched,
            "verify repaired dir to the release"
        );
        let n = summary.repaired.len() as u64;
        shared.board.set_own(|s| s.repaired += n);
        shared.metrics.repaired_files.inc_by(n);
    }
    Ok(summary)
}

/// Fetches `missing` bodies of `release` from the parent into the store.
async fn fetch(
    shared: &Arc<Shared>,
    release: &crate::tree::Release,
    missing: Vec<Blake3>,
) -> Result<(), VerifyError> {
    let conn = shared.parent_link.lock().expect("link lock").clone();
    let Some(conn) = conn else {
        return Err(VerifyError::NoParent(missing.len()));
    };
    let mut missing: HashSet<Blake3> = missing.into_iter().collect();
    let wanted: Vec<u32> = release
        .manifest
        .indexed_files()
        .filter(|(.., id)| missing.remove(id))
        .map(|(i, ..)| i)
        .collect();
    info!(
        files = wanted.len(),
        "verify: fetching bodies from the parent"
    );
    let done = Arc::new(AtomicU64::new(0));
    bodies::fetch_all(shared, &conn, wanted, release, &done, None).await?;
    Ok(())
}

/// Verifies every `period` until the task is aborted.
pub async fn every(shared: Arc<Shared>, period: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match verify(&shared, shared.verify_full).await {
            Ok(_) | Err(VerifyError::NoRelease(_)) => {}
            Err(e) => warn!("scheduled {e}"),
        }
    }
}
