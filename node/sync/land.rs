//! Landing a verified release: applying it to `dir` (where the node has one) and holding
//! it; and, after a restart, bringing `dir` back to a complete release.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::shared::Shared;
use super::SyncError;
use crate::data::Stage;
use crate::dir::{kept_conflicts, ApplyError};
use crate::hooks::{self, HookEnv};
use crate::status::MAX_KEPT;
use crate::tree::{newer, Manifest, Release};

/// Applies `release` to `dir` (if this node has one) and holds it. The release is saved as
/// pending first, so a node killed mid-apply finishes it when restarted. In atomic mode the
/// `check` hook sees the complete release directory before the switch and may refuse it; the
/// `on_release` hook is queued once the release is held. Files a fetch wrote to `stage` are
/// moved into `dir` from there.
pub async fn land(
    shared: &Arc<Shared>,
    release: Release,
    stage: Option<Arc<Stage>>,
) -> Result<(), SyncError> {
    let Some(applier) = shared.applier.clone() else {
        return Ok(shared.hold(release)?);
    };
    let _landing = shared.landing.lock().await;
    shared.held.begin_apply(&release)?;
    let me = shared.clone();
    let (release, changed, stats) = tokio::task::spawn_blocking(move || {
        let old = me.held.current();
        let empty = Manifest::empty();
        let old_manifest = old.as_ref().map_or(&empty, |h| &h.release.manifest);
        let changed = if me.hooks_want_changes() {
            release.manifest.diff_paths(old_manifest)
        } else {
            Vec::new()
        };
        let check = |target: &Path| {
            let h = &me.hooks;
            if h.hooks.check.is_empty() {
                return Ok(());
            }
            let env = HookEnv {
                node: &me.name,
                release: release.version,
                dir: target,
                changed: &changed,
                scratch: &h.scratch,
            };
            match hooks::run(&h.hooks.check, &env, h.hooks.timeout) {
                Ok(tail) => {
                    tracing::info!(version = release.version, output = %tail.trim(), "check hook passed");
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            }
        };
        let stats = applier.apply_checked(
            release.version,
            &release.manifest,
            old.as_ref()
                .map(|h| (h.release.version, &h.release.manifest)),
            &me.store,
            stage.as_deref(),
            check,
        );
        (release, changed, stats)
    })
    .await
    .expect("apply does not panic");
    let stats = match stats {
        Ok(s) => s,
        Err(ApplyError::Refused(why)) => {
            // The node stays on its release; the refused one is not retried.
            shared.held.end_apply();
            tracing::warn!(
                version = release.version,
                "release refused by the check hook: {why}"
            );
            shared.metrics.hook_failed("check");
            shared.board.set_own(|s| {
                s.hook_error = Some(format!("check refused v{}: {why}", release.version))
            });
            return Err(SyncError::Apply(ApplyError::Refused(why)));
        }
        Err(e) => return Err(SyncError::Apply(e)),
    };
    let dir = shared
        .applier
        .as_ref()
        .map_or_else(PathBuf::new, |a| a.dir.clone());
    tracing::info!(
        written = stats.written,
        linked = stats.linked,
        unchanged = stats.unchanged,
        touched = stats.touched,
        deleted = stats.deleted,
        "applied release {} to {}",
        release.version,
        dir.display()
    );
    let version = release.version;
    let kept = shared
        .applier
        .as_ref()
        .map(|a| kept_conflicts(&release.manifest, &a.keep))
        .unwrap_or_default();
    if !kept.is_empty() {
        tracing::warn!(
            paths = %kept.join(" "),
            "release {version} publishes paths this node keeps as its own (keep): left as they are"
        );
    }
    shared.hold(release)?;
    shared.held.end_apply();
    let checked = !shared.hooks.hooks.check.is_empty();
    shared.board.set_own(|s| {
        s.kept = kept.into_iter().take(MAX_KEPT).collect();
        if checked {
            s.hook_error = None;
        }
    });
    shared.released(version, dir, changed);
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
        // Files the fetch staged and the apply had not moved yet count (each checked again),
        // bodies already moved into `dir` too (the apply confirms them by their digests),
        // and so do those the held release left in place that only change mode or mtime.
        let (me, a, release) = (shared.clone(), applier.clone(), p.clone());
        let stage = tokio::task::spawn_blocking(move || {
            Stage::reopen(&me.store, release.version, &release.manifest, |e| {
                a.mode_of(e)
            })
        })
        .await
        .expect("reopening a stage does not panic")
        .unwrap_or_else(|e| {
            tracing::warn!("cannot use the stage of the interrupted apply: {e}");
            None
        })
        .map(Arc::new);
        let held = shared.held.current();
        let mut probe = applier.probe();
        let complete = p.manifest.indexed_files().all(|(i, e, _, id)| {
            stage.as_ref().is_some_and(|s| s.staged(i))
                || shared.store.has(&id)
                || applier.body_in_dir(&mut probe, held.as_ref().map(|h| &h.release.manifest), e)
        });
        let version = p.version;
        if complete && newer(version, shared.held.version()) {
            match land(shared, p, stage).await {
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
