//! The task that re-reads a node's keys and its topology's revocation list when they change
//! on disk (polled every [`POLL`]) or on `SIGHUP`, and reconfigures the node's endpoint when
//! its identity or the revoked set changes (see [`super::keys`] for what each change means).

use std::sync::Arc;
use std::time::Duration;

use cascade_certs::Identity;
use cascade_topology::Topology;
use quinn::Endpoint;
use tracing::{info, warn};

use super::keys::KeyFiles;
use super::publish::Publisher;
use super::shared::Shared;

/// How often the key files and the topology are checked for changes.
pub const POLL: Duration = Duration::from_secs(2);

/// Follows the key files, the topology's revocation list, `SIGHUP` and the held release's
/// revocations; reconfigures `endpoint` whenever the identity or the revoked set changes.
pub async fn run(
    shared: Arc<Shared>,
    endpoint: Endpoint,
    files: KeyFiles,
    mut identity: Identity,
    publisher: Option<Arc<Publisher>>,
) {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(POLL);
    let mut seen = files.stamp(&shared.name);
    // The configured topology file as last read: applied on the origin when it changes (or
    // on SIGHUP), never merely because another watched file changed.
    let mut file_text = std::fs::read_to_string(&files.topology).ok();
    let mut revoked = shared.keys.subscribe();
    let mut applied = revoked.borrow_and_update().clone();
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            Some(()) = async {
                match &mut hup {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                info!("SIGHUP: reading the certificates and the topology's revocation list again");
                true
            }
            Ok(()) = revoked.changed() => false,
        };
        let stamp = files.stamp(&shared.name);
        if forced || stamp != seen {
            seen = stamp;
            let rotated = publisher.is_some() && reread_release_key(&shared, &files);
            let read = Reread {
                forced,
                publish: rotated,
            };
            reread_topology(&shared, &files, publisher.as_deref(), read, &mut file_text).await;
            match Identity::load(&files.certs, &shared.name) {
                Ok(id) if id.fingerprint() != identity.fingerprint() => {
                    let now = shared.keys.revoked();
                    match shared.keys.reconfigure(&endpoint, &id, files.idle, &now) {
                        Ok(()) => {
                            info!(
                                "certificate reloaded: later links present {}",
                                id.fingerprint()
                            );
                            identity = id;
                            applied = now;
                        }
                        Err(e) => {
                            warn!("keeping the current certificate: the new one does not load: {e}")
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => warn!("keeping the current certificate: {e}"),
            }
        }
        let now = revoked.borrow_and_update().clone();
        if now != applied {
            match shared
                .keys
                .reconfigure(&endpoint, &identity, files.idle, &now)
            {
                Ok(()) => {
                    info!(
                        revoked = now.len(),
                        "revocation list applied to every later handshake"
                    );
                    if now.contains(&identity.fingerprint()) {
                        warn!(
                            "this node's own certificate {} is revoked: issue it a new one (`cascade certs renew {}`)",
                            identity.fingerprint(),
                            shared.name
                        );
                    }
                    applied = now;
                }
                Err(e) => warn!("could not apply the revocation list: {e}"),
            }
        }
    }
}

/// The origin reads its release-signing key and endorsement again (after `cascade certs
/// rotate-release-key`); returns whether they changed.
fn reread_release_key(shared: &Shared, files: &KeyFiles) -> bool {
    let loaded = cascade_certs::ReleaseKey::load(&files.certs)
        .and_then(|k| cascade_certs::load_endorsement(&files.certs).map(|e| (k, e)));
    match loaded {
        Ok((key, endorsement)) => {
            let public = key.public();
            let changed = shared.trust.set_signing(key, endorsement);
            if changed {
                info!(key = %public, "release-signing key reloaded: releases are signed with it from now on");
            }
            changed
        }
        Err(e) => {
            warn!("keeping the current release-signing key: {e}");
            false
        }
    }
}

/// Why the files are read again.
struct Reread {
    /// `SIGHUP`: the origin runs under its configured topology file from now on.
    forced: bool,
    /// The signing key changed: publish even if nothing else did.
    publish: bool,
}

/// Reads this node's topology file again. Its `revoked` list is enforced at once. On the
/// origin, the file is applied (what `cascade topology apply` does) when it changed since it
/// was last read, or on `SIGHUP` when it differs from the topology the tree runs under; a
/// new revocation list or signing key is published.
async fn reread_topology(
    shared: &Shared,
    files: &KeyFiles,
    publisher: Option<&Publisher>,
    read: Reread,
    last: &mut Option<String>,
) {
    let text = match std::fs::read_to_string(&files.topology) {
        Ok(t) => t,
        Err(e) => {
            return warn!(
                "keeping the current topology and revocation list: {}: {e}",
                files.topology.display()
            )
        }
    };
    let topology = match Topology::parse(&text) {
        Ok(t) => t,
        Err(e) => {
            return warn!(
                "keeping the current topology and revocation list: {}: {e}",
                files.topology.display()
            )
        }
    };
    let changed = shared.keys.set_local(topology.revoked());
    if changed {
        info!(
            revoked = topology.revoked().len(),
            "the topology's revocation list changed"
        );
    }
    let Some(p) = publisher else {
        return;
    };
    let edited = last.as_deref() != Some(text.as_str());
    *last = Some(text.clone());
    if (edited || read.forced) && *shared.layouts.current().text != *text {
        match p.apply_topology(text).await {
            Ok(s) => info!(
                version = s.version,
                "applied the changed topology file: release {} carries it to every node", s.version
            ),
            Err(e) => warn!("keeping the current topology: {e}"),
        }
        return;
    }
    if !changed && !read.publish {
        return;
    }
    match p.publish().await {
        Ok(s) => info!(
            version = s.version,
            "published the revocation list and release key to every node"
        ),
        Err(e) => warn!("could not publish the revocation list and release key: {e}"),
    }
}
