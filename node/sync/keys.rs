//! Certificates and revocations that change while the node runs, without a restart.
//!
//! - **Renewal.** The node re-reads `ca.pem`, `NAME.pem` and `NAME.key` when they change on
//!   disk (polled every [`super::reload::POLL`]) or on `SIGHUP`: every later handshake uses them, links
//!   already up keep theirs. A pair that does not load (half written, key and certificate
//!   mismatched, a key readable by others) is reported in one line and the current one kept.
//! - **Revocation.** The certificates refused at every handshake, both ways, are this node's
//!   topology's `revoked` list plus the list of the release it holds: the origin puts its own
//!   topology's list into every release it signs, and publishes again when that list changes,
//!   so one edit on the origin reaches every node with the next release. A link whose peer's
//!   certificate becomes revoked is closed at once ([`Keys::watch_peer`]).
//!
//! This module holds the state; [`super::reload`] is the task that follows the files.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use cascade_certs::{Fingerprint, Identity, Revoked};
use quinn::{Connection, Endpoint};
use tokio::sync::watch;

use crate::net::{self, LinkError};
use crate::tree::Release;
use crate::wire::ErrorCode;

/// This node's topology file's revocation list, and the held release's.
type Lists = (Vec<[u8; 32]>, Vec<[u8; 32]>);

/// The revocation lists a node enforces, and their union.
#[derive(Debug)]
pub struct Keys {
    lists: Mutex<Lists>,
    revoked: watch::Sender<Revoked>,
    /// What dials use once the keys changed (`None`: the endpoint's own, from the start).
    dial: Mutex<Option<quinn::ClientConfig>>,
    /// The certificate and key the node presents now.
    identity: Mutex<Option<Identity>>,
    /// Whether the endpoint accepts connections (has a server config to keep up to date).
    listening: std::sync::atomic::AtomicBool,
}

impl Keys {
    pub fn new(local: &[[u8; 32]], held: Option<&Release>) -> Self {
        let lists = (
            local.to_vec(),
            held.map(|r| r.revoked.clone()).unwrap_or_default(),
        );
        Keys {
            revoked: watch::Sender::new(union(&lists)),
            lists: Mutex::new(lists),
            dial: Mutex::new(None),
            identity: Mutex::new(None),
            listening: Default::default(),
        }
    }

    /// The certificates refused now.
    pub fn revoked(&self) -> Revoked {
        self.revoked.borrow().clone()
    }

    /// This node's own topology's list (what the origin signs into its releases).
    pub fn local(&self) -> Vec<[u8; 32]> {
        self.lists.lock().expect("keys lock").0.clone()
    }

    /// Replaces this node's topology's list; returns whether it changed.
    pub fn set_local(&self, list: &[[u8; 32]]) -> bool {
        self.update(|l| {
            let changed = l.0 != list;
            l.0 = list.to_vec();
            changed
        })
    }

    /// Takes the list of a release just held.
    pub fn release_held(&self, release: &Release) {
        self.update(|l| {
            let changed = l.1 != release.revoked;
            l.1 = release.revoked.clone();
            changed
        });
    }

    fn update(&self, f: impl FnOnce(&mut Lists) -> bool) -> bool {
        let mut lists = self.lists.lock().expect("keys lock");
        if !f(&mut lists) {
            return false;
        }
        let new = union(&lists);
        self.revoked.send_if_modified(|r| {
            let changed = **r != *new;
            *r = new;
            changed
        })
    }

    /// The client config a dial must use (see [`net::connect_with`]).
    pub fn dial(&self) -> Option<quinn::ClientConfig> {
        self.dial.lock().expect("keys lock").clone()
    }

    /// The identity the node starts with, and whether it listens.
    pub fn start_with(&self, id: Identity, listening: bool) {
        *self.identity.lock().expect("keys lock") = Some(id);
        self.listening
            .store(listening, std::sync::atomic::Ordering::Relaxed);
    }

    /// The identity the node presents now.
    pub fn identity(&self) -> Option<Identity> {
        self.identity.lock().expect("keys lock").clone()
    }

    /// Makes every later handshake use `id` and the revoked set `revoked`.
    pub(super) fn reconfigure(
        &self,
        endpoint: &Endpoint,
        id: &Identity,
        idle: Duration,
        revoked: &Revoked,
    ) -> Result<(), LinkError> {
        let listening = self.listening.load(std::sync::atomic::Ordering::Relaxed);
        let client = net::reconfigure(endpoint, id, idle, revoked, listening)?;
        *self.dial.lock().expect("keys lock") = Some(client);
        *self.identity.lock().expect("keys lock") = Some(id.clone());
        Ok(())
    }

    /// Starts accepting connections on `endpoint` (a node the topology made a relay).
    pub fn listen_on(&self, endpoint: &Endpoint, idle: Duration) -> Result<(), LinkError> {
        self.listening
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let id = self
            .identity()
            .ok_or_else(|| LinkError::Refused("no identity loaded yet".into()))?;
        self.reconfigure(endpoint, &id, idle, &self.revoked())
    }

    /// Stops accepting connections (a relay the topology left without children).
    pub fn stop_listening(&self, endpoint: &Endpoint) {
        self.listening
            .store(false, std::sync::atomic::Ordering::Relaxed);
        endpoint.set_server_config(None);
    }

    pub fn subscribe(&self) -> watch::Receiver<Revoked> {
        self.revoked.subscribe()
    }

    /// Resolves (closing `conn`) once the peer's certificate is revoked; never otherwise.
    pub async fn watch_peer(&self, conn: &Connection) -> LinkError {
        let peer = net::peer_certificate(conn).map(|c| Fingerprint::of(&c));
        let mut rx = self.subscribe();
        loop {
            if let Some(fp) = peer.filter(|fp| rx.borrow_and_update().contains(fp)) {
                net::close(conn, ErrorCode::NotAllowed, "certificate revoked");
                return LinkError::Refused(format!("the peer's certificate {fp} was revoked"));
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

fn union(lists: &Lists) -> Revoked {
    Arc::new(
        lists
            .0
            .iter()
            .chain(&lists.1)
            .map(|b| Fingerprint(*b))
            .collect::<BTreeSet<_>>(),
    )
}

/// Where a node's keys and topology live.
#[derive(Debug, Clone)]
pub struct KeyFiles {
    pub certs: PathBuf,
    pub topology: PathBuf,
    /// The link timeout the TLS configs are built with.
    pub idle: Duration,
}

impl KeyFiles {
    /// What identifies the current content of each file (a rewrite or a rename changes it).
    pub(super) fn stamp(&self, name: &str) -> Vec<Option<(SystemTime, u64, u64)>> {
        use std::os::unix::fs::MetadataExt;
        [
            self.certs.join("ca.pem"),
            self.certs.join(format!("{name}.pem")),
            self.certs.join(format!("{name}.key")),
            self.certs.join(cascade_certs::RELEASE_KEY),
            self.certs.join(cascade_certs::RELEASE_ENDORSEMENT),
            self.topology.clone(),
        ]
        .iter()
        .map(|p| {
            std::fs::metadata(p).ok().map(|m| {
                (
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    m.len(),
                    m.ino(),
                )
            })
        })
        .collect()
    }
}
