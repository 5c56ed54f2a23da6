//! Landing a verified release: applying it to `dir` (where the node has one) and holding
//! it; and, after a restart, bringing `dir` back to a complete release.

use std::sync::Arc;

use super::shared::Shared;
use super::SyncError;
use crate::tree::{newer, Release};

/// Applies `release` to `dir` (if this node has one) and holds it. The release is saved as
/// pending first, so a node killed mid-apply finishes it when restarted.
pub async fn land(shared: &Arc<Shared>, release: Release) -> Result<(), SyncError> {
    let Some(applier) = shared.applier.clone() else {
        return Ok(shared.hold(release)?);
    };
    shared.held.begin_apply(&release)?;
    let me = shared.clone();
    let (release, stats) = tokio::task::spawn_blocking(move || {
        let old = me.held.current();
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
    let stats = stats.map_err(SyncError::Apply)?;
    tracing::info!(
        written = stats.written,
        linked = stats.linked,
        unchanged = stats.unchanged,
        deleted = stats.deleted,
        "applied release {} to {}",
        release.version,
        shared
            .applier
            .as_ref()
            .map_or(String::new(), |a| a.dir.display().to_string())
    );
    shared.hold(release)?;
    shared.held.end_apply();
    Ok(())
}

/// Brings `dir` back to a complete release after a restart: a release whose apply was
/// interrupted is finished (roll forward) if all its bodies are held; otherwise the held
/// release is applied again, which also undoes changes made to `dir` while the node was down.
/// If even that is impossible, the node forgets its release and fetches it again.
pub async fn recover(shared: &Arc<Shared>, pending: Option<Release>) {
    let Some(applier) = shared.applier.clone() else {
        return;
    };
    if let Some(p) = pending {
        // Bodies already moved into `dir` count; the apply confirms them by MD5.
        let complete = p
            .manifest
            .files()
            .all(|(e, _, md5)| shared.store.has(&md5) || applier.holds_in_dir(e));
        let version = p.version;
        if complete && newer(version, shared.held.version()) {
            match land(shared, p).await {
                Ok(()) => {
                    return tracing::info!(
                        version,
                        "finished the apply interrupted by the last stop"
                    )
                }
                Err(e) => tracing::warn!(version, "cannot finish the interrupted apply: {e}"),
            }
        }
        shared.held.end_apply();
    }
    let Some(held) = shared.held.current() else {
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
            shared.held.forget();
            shared.board.set_own(|s| s.applied = None);
        }
    }
}
