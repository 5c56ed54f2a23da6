//! Bodies the origin serves straight from its `dir`: a publish hashes files where they are
//! instead of copying them into the store (see [`crate::dir::Stored`]), so a child's request
//! for such a body is answered from the file, each piece checked against the manifest
//! before it is sent ([`crate::data::dir_body`]).
//!
//! A file found changed since the scan is never sent: the request is refused (the child
//! retries, or moves on to a newer release), and the path is reported to the publisher,
//! which copies its body into the store from then on (a file that changes once is likely to
//! again) and, on a watched origin, publishes it again.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::super::held::Offer;
use crate::data::dir_body::Wanted;
use crate::tree::{Blake3, ByBody, Entry, EntryKind};

/// Where the bodies of the held release lie in `dir`.
#[derive(Debug)]
pub struct InDir {
    pub dir: PathBuf,
    index: BodyIndex,
    /// Paths found changed since their scan, for the publisher.
    changed: mpsc::UnboundedSender<Changed>,
}

/// A file of release `version` whose bytes are no longer those it was published with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub version: u64,
    pub path: String,
    pub what: String,
}

/// Which file of the held release has each body, built for one release at the first lookup
/// after it changed. Also what a leaf that became a relay adopts bodies from `dir` by.
#[derive(Debug, Default)]
pub struct BodyIndex(Mutex<Option<Index>>);

#[derive(Debug)]
struct Index {
    offer: Arc<Offer>,
    /// Positions of the manifest's files, sorted by body: 8 bytes a file, where a map by
    /// body would take some 70.
    by_body: ByBody,
}

impl Index {
    fn find(&self, id: &Blake3) -> Option<u32> {
        let manifest = &self.offer.release.manifest;
        let at = self.by_body.position(id, |i| manifest.body_key(i))?;
        Some(self.by_body.items()[at])
    }
}

impl BodyIndex {
    /// The entry of `held` (the release the node holds) whose file has body `id`, if any.
    pub fn entry(&self, held: &Arc<Offer>, id: &Blake3) -> Option<Arc<Entry>> {
        let mut index = self.0.lock().expect("body index lock");
        if index.as_ref().is_none_or(|i| !Arc::ptr_eq(&i.offer, held)) {
            let manifest = &held.release.manifest;
            let files: Vec<u32> = manifest.indexed_files().map(|(i, ..)| i).collect();
            let by_body = ByBody::new(files, |i| manifest.body_key(i));
            *index = Some(Index {
                offer: held.clone(),
                by_body,
            });
        }
        let at = index.as_ref().expect("just built").find(id)?;
        Some(held.release.manifest.entries()[at as usize].clone())
    }
}

/// Body `id` as a file of `dir` holds it.
#[derive(Debug, Clone)]
pub struct Found {
    pub version: u64,
    /// Relative to `dir`.
    pub rel: String,
    pub abs: PathBuf,
    pub wanted: Wanted,
}

impl InDir {
    pub fn new(dir: PathBuf) -> (Self, mpsc::UnboundedReceiver<Changed>) {
        let (changed, rx) = mpsc::unbounded_channel();
        let me = InDir {
            dir,
            index: BodyIndex::default(),
            changed,
        };
        (me, rx)
    }

    /// The file of `held` (the release the node holds) that has body `id`, if any.
    pub fn find(&self, held: Option<Arc<Offer>>, id: &Blake3) -> Option<Found> {
        let held = held?;
        let entry = self.index.entry(&held, id)?;
        let EntryKind::File { size, chunks, .. } = &entry.kind else {
            return None;
        };
        Some(Found {
            version: held.version(),
            abs: self.dir.join(&entry.path),
            rel: entry.path.clone(),
            wanted: Wanted {
                blake3: *id,
                size: *size,
                chunks: chunks.clone(),
            },
        })
    }

    /// Tells the publisher that `found`'s file no longer holds its body.
    pub fn report(&self, found: &Found, what: String) {
        let _ = self.changed.send(Changed {
            version: found.version,
            path: found.rel.clone(),
            what,
        });
    }
}
