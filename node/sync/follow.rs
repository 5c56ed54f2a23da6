//! A watching origin follows its `dir`: it publishes once at start (whatever changed while it
//! was down), then after every burst of changes, once they settle (`watch_settle` without an
//! event) or at the latest `watch_max_delay` after the first. Only what the events name is
//! scanned again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::{interval, sleep_until, MissedTickBehavior};
use tracing::{info, warn};

use super::publish::Publisher;
use crate::config::Watch;
use crate::dir::watch::{Batch, DirWatch};

/// How often the watched directory itself is checked (deleted, replaced).
const CHECK_ROOT: Duration = Duration::from_secs(1);

/// Starts watching the publisher's `dir`. Fails if even its top cannot be watched.
pub async fn start(publisher: &Publisher) -> Result<DirWatch, crate::dir::watch::WatchError> {
    let (dir, exclude) = (publisher.dir().to_owned(), publisher.exclude().clone());
    tokio::task::spawn_blocking(move || DirWatch::start(&dir, exclude))
        .await
        .expect("starting the watch does not panic")
}

/// Runs until the task is aborted.
pub async fn run(publisher: Arc<Publisher>, mut watch: DirWatch, settings: Watch) {
    info!(
        dir = %publisher.dir().display(),
        watches = watch.watches(),
        settle_ms = settings.settle.as_millis() as u64,
        max_delay_ms = settings.max_delay.as_millis() as u64,
        "watching"
    );
    let mut failing = false;
    publish(
        &publisher,
        &mut watch,
        Batch::default(),
        &mut failing,
        settings,
    )
    .await;
    let mut check = interval(CHECK_ROOT);
    check.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_full = Instant::now();
    loop {
        let due = watch.due(settings.settle, settings.max_delay);
        tokio::select! {
            ev = watch.recv() => match ev {
                Some(ev) => {
                    publisher.shared().metrics.watch_events.inc();
                    watch.note(ev);
                }
                None => {
                    warn!("the directory watch stopped; publish with `cascade publish`");
                    return;
                }
            },
            _ = sleep_until(due.unwrap_or_else(Instant::now).into()), if due.is_some() => {
                let batch = watch.take();
                if batch.dirty.is_none() {
                    last_full = Instant::now();
                }
                publish(&publisher, &mut watch, batch, &mut failing, settings).await;
            }
            _ = check.tick() => {
                watch.check_root();
                // Past the watch limit, unwatched directories are covered by full rescans.
                if watch.limited() && last_full.elapsed() >= settings.max_delay {
                    last_full = Instant::now();
                    watch.rescan();
                }
            }
        }
    }
}

/// Publishes what `batch` names. A failure is said once (until a publish succeeds again) and
/// retried after `max_delay`, scanning everything (the failure may have hidden changes).
async fn publish(
    publisher: &Publisher,
    watch: &mut DirWatch,
    batch: Batch,
    failing: &mut bool,
    settings: Watch,
) {
    match publisher.publish_batch(batch).await {
        Ok((_, unsettled)) => {
            if std::mem::take(failing) {
                info!("watched publish works again");
            }
            watch.again(unsettled);
        }
        Err(e) => {
            if *failing {
                tracing::debug!("watched publish failed again: {e}");
            } else {
                warn!(
                    "watched publish failed: {e}; trying again every {}s",
                    settings.max_delay.as_secs_f64()
                );
            }
            *failing = true;
            tokio::time::sleep(settings.max_delay).await;
            watch.rescan();
        }
    }
}
