//! The control session with the parent: say hello with the release held, take its offers
//! (validating each manifest; a hostile one is refused whole and reported), fetch and land
//! the newest offer that is newer than what is held, and report the subtree's state up.

use std::sync::Arc;
use std::time::Duration;

use quinn::Connection;
use tokio::sync::watch;
use tracing::{info, warn, Instrument};

use super::fetch;
use super::shared::Shared;
use super::SyncError;
use crate::dir::ApplyError;
use crate::net::{self, LinkError};
use crate::status::NodeState;
use crate::tree::{newer, DeltaError, Release};
use crate::wire::{ErrorCode, Offered, RawDown, Up, WireError};

/// Least time between two status reports to the parent.
const REPORT_INTERVAL: Duration = Duration::from_millis(20);

/// Runs the control session over an established link to `parent` until it ends.
pub async fn run(shared: &Arc<Shared>, conn: &Connection, parent: &str) -> Result<(), SyncError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(LinkError::from)?;
    let held = shared.held.current();
    let have = held.as_ref().map(|h| h.version());
    net::send(
        &mut send,
        &Up::Hello {
            name: shared.name.clone(),
            have,
            root: held.as_ref().map(|h| h.root()),
            push: Some(shared.compress),
        },
    )
    .await?;
    info!(have = ?have, "connected to parent");
    shared.board.set_own(|s| {
        s.connected = true;
        s.parent = Some(parent.to_owned());
        s.down_since_ms = None;
    });
    *shared.parent_link.lock().expect("link lock") = Some(conn.clone());

    let (offers_tx, offers) = watch::channel::<Option<Arc<Release>>>(None);
    let result = tokio::select! {
        r = take_offers(shared, parent, &mut recv, &offers_tx) => r,
        r = report_up(shared, &mut send) => r,
        r = follow_offers(shared, conn, offers) => r,
        r = super::push::accept(shared, conn) => r,
        e = shared.keys.watch_peer(conn) => Err(e.into()),
    };
    let _ = send.finish();
    shared.parent_link.lock().expect("link lock").take();
    if let Err(SyncError::Link(LinkError::Wire(e))) = &result {
        net::close(conn, ErrorCode::Protocol, &e.to_string());
    }
    // Prefer the parent's own reason (e.g. "not a child", shutting down) over a stream error.
    match (result, conn.close_reason()) {
        (Err(_), Some(quinn::ConnectionError::ApplicationClosed(c))) => {
            Err(LinkError::Refused(format!(
                "parent closed the link: {} (code {})",
                String::from_utf8_lossy(&c.reason),
                c.error_code
            ))
            .into())
        }
        (r, _) => r,
    }
}

/// Reads the parent's offers, validates each manifest and passes the newest valid release
/// on to [`follow_offers`]. A hostile manifest is refused whole: the node keeps what it holds
/// and says why. A delta is rebuilt against the release it names (the one held, or the last
/// one offered on this link) and then checked like a whole manifest; one that cannot be
/// rebuilt ends the link, and the next hello gets a whole manifest.
async fn take_offers(
    shared: &Shared,
    parent: &str,
    recv: &mut quinn::RecvStream,
    offers: &watch::Sender<Option<Arc<Release>>>,
) -> Result<(), SyncError> {
    while let Some(msg) = net::recv::<_, RawDown>(recv).await? {
        let raw = match msg.offered().map_err(LinkError::Wire)? {
            Offered::Whole(raw) => raw,
            Offered::Delta(delta) => {
                let (last, held) = (offers.borrow().clone(), shared.held.current());
                let base = match (&last, &held) {
                    (Some(l), _) if l.version == delta.base => Some(&**l),
                    (_, Some(h)) if h.version() == delta.base => Some(&h.release),
                    _ => None,
                };
                let version = delta.version;
                let rebuilt = match base {
                    Some(base) => delta.rebuild(base),
                    None => Err(DeltaError::WrongBase {
                        version: delta.base,
                    }),
                };
                rebuilt.map_err(|e| {
                    LinkError::Wire(WireError::Malformed(format!(
                        "release {version} as a delta: {e}"
                    )))
                })?
            }
        };
        let version = raw.version;
        let checked = raw
            .validate()
            .map_err(|e| e.to_string())
            .and_then(|r| shared.trust.check(&r).map(|()| r));
        match checked {
            Ok(release) => {
                info!(version, "offered {release}");
                // The origin signed the topology with the release: run under it at once
                // (a move must not wait for the release's files).
                if let Some(text) = &release.topology {
                    match shared.layouts.adopt(text, version) {
                        Ok(true) => {
                            info!(
                                version,
                                "now running under the topology of release {version}"
                            );
                        }
                        Ok(false) => {}
                        Err(e) => warn!(
                            version,
                            "cannot run under the topology of release {version}: {e}"
                        ),
                    }
                }
                offers.send_replace(Some(Arc::new(release)));
            }
            Err(e) => {
                shared.metrics.verification_failed("release");
                warn!(
                    version,
                    "refused release {version} from the parent {parent}: {e}"
                );
                shared.board.set_own(|s| {
                    s.state = NodeState::Failed {
                        version,
                        error: format!("refused release from {parent}: {e}"),
                    }
                });
            }
        }
    }
    Ok(())
}

/// Sends the subtree's statuses to the parent now and after every change. The first change
/// after a quiet spell goes up at once; bursts are rate-limited to one report per interval.
async fn report_up(shared: &Shared, send: &mut quinn::SendStream) -> Result<(), SyncError> {
    let mut board = shared.board.subscribe();
    loop {
        let statuses: Vec<_> = board.borrow_and_update().values().cloned().collect();
        net::send(send, &Up::Status(statuses)).await?;
        tokio::time::sleep(REPORT_INTERVAL).await;
        board
            .changed()
            .await
            .map_err(|_| LinkError::Refused("node stopping".into()))?;
    }
}

/// Applies the newest offer whenever it is newer than what this node holds; a failed sync is
/// reported and retried after a pause (or at once if a newer offer arrives). A release the
/// `check` hook refused is not tried again; a newer one is.
async fn follow_offers(
    shared: &Arc<Shared>,
    conn: &Connection,
    mut offers: watch::Receiver<Option<Arc<Release>>>,
) -> Result<(), SyncError> {
    let mut refused = None;
    loop {
        let offer = offers.borrow_and_update().clone();
        let Some(release) =
            offer.filter(|r| newer(r.version, shared.held.version()) && Some(r.version) != refused)
        else {
            offers
                .changed()
                .await
                .map_err(|_| LinkError::Refused("link closed".into()))?;
            continue;
        };
        let span = tracing::info_span!("sync", version = release.version);
        match fetch::release(shared, conn, &release)
            .instrument(span)
            .await
        {
            Ok(()) => {}
            Err(SyncError::Link(e)) => return Err(e.into()),
            Err(SyncError::Apply(ApplyError::Refused(reason))) => {
                refused = Some(release.version);
                shared.board.set_own(|s| {
                    s.state = NodeState::Refused {
                        version: release.version,
                        reason,
                    }
                });
            }
            Err(e) => {
                warn!(version = release.version, "release failed: {e}; retrying");
                shared.board.set_own(|s| {
                    s.state = NodeState::Failed {
                        version: release.version,
                        error: e.to_string(),
                    }
                });
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    r = offers.changed() => r.map_err(|_| LinkError::Refused("link closed".into()))?,
                }
            }
        }
    }
}
