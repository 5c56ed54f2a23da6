//! Choosing the parent: dial it, and re-dial with capped exponential backoff when the link
//! drops. While it has been unreachable for `failover_after`, attach to the first reachable
//! backup parent instead, probe the parent meanwhile, and return to it once it answers.
//! Each attachment runs one [`session`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::{Connection, Endpoint, VarInt};
use tracing::{debug, info, warn, Instrument};

use super::session;
use super::shared::Shared;
use crate::net;
use crate::wire::ErrorCode;

const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long a parent that said it was stopping may stay away before failed dials are
/// warnings again.
const QUIET_FOR: Duration = Duration::from_secs(30);
/// How often the parent is probed while attached to a backup.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Runs the link upward until the task is aborted, under the topology of the moment: the
/// parent followed by the backup parents. While the parent has been unreachable for
/// `failover_after`, the first reachable backup is used; the parent is probed meanwhile and
/// taken back once it answers. When a new topology gives this node other parents, the link
/// is closed (a release being applied finishes first) and the new parent dialled; when it no
/// longer has the node at all, the node stops syncing and keeps its `dir` as it is.
pub async fn run(shared: Arc<Shared>, endpoint: Endpoint, failover_after: Duration) {
    let span = tracing::info_span!("up", node = %shared.name);
    async move {
        let mut layouts = shared.layouts.subscribe();
        loop {
            let layout = layouts.borrow_and_update().clone();
            let parents = layout.parents(&shared.name);
            if parents.is_empty() {
                if layout.node(&shared.name).is_none() {
                    warn!(
                        "removed from the topology (release {:?}): no longer syncing; dir stays as it is",
                        layout.version
                    );
                    shared.board.set_own(|s| {
                        s.connected = false;
                        s.parent = None;
                    });
                }
                if layouts.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let moved = parents_change(&mut layouts, &shared.name, &parents);
            follow(&shared, &endpoint, &parents, failover_after, moved).await;
            info!(
                "the topology gives this node new parents: leaving {}",
                parents[0].0
            );
        }
    }
    .instrument(span)
    .await
}

/// Resolves once the topology gives `name` parents other than `parents`.
async fn parents_change(
    layouts: &mut tokio::sync::watch::Receiver<super::layout::Layout>,
    name: &str,
    parents: &[(String, SocketAddr)],
) {
    loop {
        if layouts.changed().await.is_err() {
            return std::future::pending().await;
        }
        if layouts.borrow_and_update().parents(name) != parents {
            return;
        }
    }
}

/// Attaches to `parents` (failing over to the backups) until `moved` resolves.
async fn follow(
    shared: &Arc<Shared>,
    endpoint: &Endpoint,
    parents: &[(String, SocketAddr)],
    failover_after: Duration,
    moved: impl std::future::Future<Output = ()>,
) {
    let Some((primary, backups)) = parents.split_first() else {
        return;
    };
    tokio::pin!(moved);
    let mut backoff = BACKOFF_MIN;
    let mut down_since: Option<Instant> = None;
    // Set when the parent said it was stopping: failed dials are expected for a while (its
    // restart) and logged at `debug`, until it has been away for QUIET_FOR.
    let mut quiet = false;
    loop {
        let started = Instant::now();
        let dialled = tokio::select! {
            r = net::connect_with(endpoint, shared.keys.dial(), primary.1, &primary.0) => r,
            () = &mut moved => return,
        };
        match dialled {
            Ok(conn) => {
                down_since = None;
                if attached_until(
                    shared,
                    &conn,
                    &primary.0,
                    &mut moved,
                    "moving to a new parent",
                    &mut quiet,
                )
                .await
                {
                    return;
                }
                down_since.get_or_insert_with(Instant::now);
            }
            Err(e) => {
                let away = *down_since.get_or_insert(started);
                if quiet && away.elapsed() < QUIET_FOR {
                    debug!("{e} (it said it was stopping)");
                } else {
                    if quiet {
                        warn!(
                            "parent {} stopped {:.0} s ago and is not back",
                            primary.0,
                            away.elapsed().as_secs_f64()
                        );
                        quiet = false;
                    }
                    warn!("{e}");
                }
            }
        }
        shared.board.set_own(|s| {
            s.connected = false;
            s.parent = None;
        });
        let fail_over =
            down_since.is_some_and(|t| t.elapsed() >= failover_after) && !backups.is_empty();
        if fail_over
            && via_backup(
                shared,
                endpoint,
                primary,
                backups,
                failover_after,
                &mut moved,
            )
            .await
        {
            return;
        }
        if started.elapsed() > BACKOFF_MAX {
            backoff = BACKOFF_MIN;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = &mut moved => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Runs the session on `conn` until it ends (false), or until `stop` resolves: then the link
/// is closed with `why` and the session winds down on its own, an apply in progress
/// finishing first, before this returns (true). `quiet` is set when the parent ended the
/// session by stopping (a planned restart).
async fn attached_until(
    shared: &Arc<Shared>,
    conn: &Connection,
    name: &str,
    stop: impl std::future::Future<Output = ()>,
    why: &str,
    quiet: &mut bool,
) -> bool {
    let session = attached(shared, conn, name);
    tokio::pin!(session);
    tokio::select! {
        ended = &mut session => {
            *quiet = ended == Ended::ParentStopped;
            false
        }
        () = stop => {
            net::close(conn, ErrorCode::Ok, why);
            session.await;
            true
        }
    }
}

/// Attaches to the first reachable backup and stays until that link ends or the primary
/// parent answers again; returns true if `moved` resolved meanwhile.
async fn via_backup(
    shared: &Arc<Shared>,
    endpoint: &Endpoint,
    primary: &(String, SocketAddr),
    backups: &[(String, SocketAddr)],
    down_for: Duration,
    moved: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> bool {
    for (name, addr) in backups {
        let conn = match net::connect_with(endpoint, shared.keys.dial(), *addr, name).await {
            Ok(c) => c,
            Err(e) => {
                warn!("backup parent: {e}");
                continue;
            }
        };
        shared.metrics.failovers.inc();
        warn!(
            "parent {} unreachable for more than {:.1} s: failing over to backup parent {name}",
            primary.0,
            down_for.as_secs_f64()
        );
        let back = std::sync::atomic::AtomicBool::new(false);
        let stop = async {
            tokio::select! {
                () = wait_until_reachable(shared, endpoint, primary) => {
                    info!("parent {} is reachable again: leaving backup parent {name}", primary.0);
                    back.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                () = moved.as_mut() => {}
            }
        };
        let why = "returning to own parent";
        let mut quiet = false;
        let stopped = attached_until(shared, &conn, name, stop, why, &mut quiet).await;
        return stopped && !back.load(std::sync::atomic::Ordering::Relaxed);
    }
    false
}

/// Returns once `peer` completes a handshake (the probe connection is closed at once).
async fn wait_until_reachable(shared: &Shared, endpoint: &Endpoint, peer: &(String, SocketAddr)) {
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        if let Ok(conn) = net::connect_with(endpoint, shared.keys.dial(), peer.1, &peer.0).await {
            net::close(&conn, ErrorCode::Ok, "probe");
            return;
        }
    }
}

/// How a session with a parent ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The parent said it is stopping (a planned restart): reconnect quietly.
    ParentStopped,
    /// This node closed the link (it is stopping, or moving): nothing to report.
    Here,
    /// Anything else: the link failed, and the log says why.
    Failed,
}

/// Runs one session over an established link and logs how it ended: a planned stop of the
/// parent is `info`, a link this node closed itself is `debug`, only a failure is a warning.
async fn attached(shared: &Arc<Shared>, conn: &Connection, parent: &str) -> Ended {
    let span = tracing::info_span!("link", parent = %parent);
    let result = session::run(shared, conn, parent).instrument(span).await;
    match (result, conn.close_reason()) {
        (_, Some(quinn::ConnectionError::LocallyClosed)) => {
            debug!("link to parent {parent} closed");
            Ended::Here
        }
        // A parent that stops closes its links with `Shutdown`; one whose last handle on a
        // link was dropped first (its tasks stopping) closes it with `Ok`: both are planned.
        (_, Some(quinn::ConnectionError::ApplicationClosed(c)))
            if [ErrorCode::Shutdown, ErrorCode::Ok]
                .iter()
                .any(|code| c.error_code == VarInt::from_u32(code.code())) =>
        {
            info!("parent {parent} is stopping: reconnecting when it is back");
            Ended::ParentStopped
        }
        (Ok(()), _) => {
            info!("parent {parent} closed the link");
            Ended::Failed
        }
        (Err(e), _) => {
            warn!("link to parent {parent}: {e}");
            Ended::Failed
        }
    }
}
