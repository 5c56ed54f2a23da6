//! The `on_release` runner: one task running the hook after each release reached `dir`, in
//! release order. Releases that land while the hook still runs for an older one are run once
//! for the newest, with every changed path since.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::shared::Shared;
use crate::hooks::{self, HookEnv};

/// Runs until the queue's sender is dropped (the node stops).
pub async fn run(
    shared: Arc<Shared>,
    mut queue: mpsc::UnboundedReceiver<(u64, PathBuf, Vec<String>)>,
) {
    while let Some((mut version, mut dir, mut changed)) = queue.recv().await {
        while let Ok((v, d, c)) = queue.try_recv() {
            (version, dir) = (v, d);
            changed.extend(c);
        }
        changed.sort();
        changed.dedup();
        let me = shared.clone();
        let result = tokio::task::spawn_blocking(move || {
            let h = &me.hooks;
            let env = HookEnv {
                node: &me.name,
                release: version,
                dir: &dir,
                changed: &changed,
                scratch: &h.scratch,
            };
            hooks::run(&h.hooks.on_release, &env, h.hooks.timeout)
        })
        .await
        .expect("a hook run does not panic");
        match result {
            Ok(tail) => {
                info!(version, output = %tail.trim(), "on_release hook done");
                shared.board.set_own(|s| s.hook_error = None);
            }
            Err(e) => {
                warn!(version, "on_release hook: {e}");
                shared.metrics.hook_failed("on_release");
                shared
                    .board
                    .set_own(|s| s.hook_error = Some(format!("on_release for v{version}: {e}")));
            }
        }
    }
}
