//! Choosing the parent: dial it, and re-dial with capped exponential backoff when the link
//! drops. While it has been unreachable for `failover_after`, attach to the first reachable
//! backup parent instead, probe the parent meanwhile, and return to it once it answers.
//! Each attachment runs one [`session`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::{Connection, Endpoint};
use tracing::{info, warn, Instrument};

use super::session;
use super::shared::Shared;
use crate::net;
use crate::wire::ErrorCode;

const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How often the parent is probed while attached to a backup.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Runs the link upward until the task is aborted. `parents` is the parent followed by the
/// backup parents. While the parent has been unreachable for `failover_after`, the first
/// reachable backup is used; the parent is probed meanwhile and taken back once it answers.
pub async fn run(
    shared: Arc<Shared>,
    endpoint: Endpoint,
    parents: Vec<(String, SocketAddr)>,
    failover_after: Duration,
) {
    let span = tracing::info_span!("up", node = %shared.name);
    async move {
        let Some((primary, backups)) = parents.split_first() else {
            return;
        };
        let mut backoff = BACKOFF_MIN;
        let mut down_since: Option<Instant> = None;
        loop {
            let started = Instant::now();
            match net::connect_with(&endpoint, shared.keys.dial(), primary.1, &primary.0).await {
                Ok(conn) => {
                    down_since = None;
                    attached(&shared, &conn, &primary.0).await;
                    down_since.get_or_insert_with(Instant::now);
                }
                Err(e) => {
                    warn!("{e}");
                    down_since.get_or_insert(started);
                }
            }
            shared.board.set_own(|s| s.connected = false);
            if down_since.is_some_and(|t| t.elapsed() >= failover_after) && !backups.is_empty() {
                via_backup(&shared, &endpoint, primary, backups, failover_after).await;
            }
            if started.elapsed() > BACKOFF_MAX {
                backoff = BACKOFF_MIN;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
    .instrument(span)
    .await
}

/// Attaches to the first reachable backup and stays until that link ends or the primary
/// parent answers again.
async fn via_backup(
    shared: &Arc<Shared>,
    endpoint: &Endpoint,
    primary: &(String, SocketAddr),
    backups: &[(String, SocketAddr)],
    down_for: Duration,
) {
    for (name, addr) in backups {
        let conn = match net::connect_with(endpoint, shared.keys.dial(), *addr, name).await {
            Ok(c) => c,
            Err(e) => {
                warn!("backup parent: {e}");
                continue;
            }
        };
        warn!(
            "parent {} unreachable for more than {:.1} s: failing over to backup parent {name}",
            primary.0,
            down_for.as_secs_f64()
        );
        tokio::select! {
            () = attached(shared, &conn, name) => {}
            () = wait_until_reachable(shared, endpoint, primary) => {
                info!("parent {} is reachable again: leaving backup parent {name}", primary.0);
                net::close(&conn, ErrorCode::Ok, "returning to own parent");
            }
        }
        return;
    }
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

/// Runs one session over an established link and logs how it ended.
async fn attached(shared: &Arc<Shared>, conn: &Connection, parent: &str) {
    let span = tracing::info_span!("link", parent = %parent);
    match session::run(shared, conn, parent).instrument(span).await {
        Ok(()) => info!("parent {parent} closed the link"),
        Err(e) => warn!("link to parent {parent}: {e}"),
    }
}
