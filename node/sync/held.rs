//! The release a node holds and the one it offers its children, and their copies on disk.
//!
//! `held` is the newest release verified and applied completely, saved in `release.bin`
//! before anyone is told. `offered` is what children are offered: the held release, or a
//! newer one still arriving whose bodies are served as they come (cut-through). A release
//! whose apply may be unfinished is saved in `pending.bin` until it is held.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use tokio::sync::watch;

use crate::data::state::{self, Loaded};
use crate::data::{DataDir, StateError};
use crate::tree::{newer, Blake3, Release};
use crate::wire::{self, Compress, Delta, Down};

/// A release with its offer frames: the whole release (when a child first needs it) and,
/// when it follows another release, a delta against that; each also packed, for children
/// whose links compress. The delta is kept; the whole frame (some 80 bytes a file) only while
/// it is being sent: children that ask at once share one encoding, and a release held for
/// days does not keep a copy nobody needs.
#[derive(Debug)]
pub struct Offer {
    pub release: Release,
    whole: Mutex<Option<Weak<[u8]>>>,
    packed_whole: Mutex<Option<Weak<[u8]>>>,
    /// The previous release's version and root, and the delta frame against it.
    delta: Option<(u64, Blake3, Arc<[u8]>)>,
    packed_delta: OnceLock<Arc<[u8]>>,
}

impl Offer {
    pub fn new(release: Release) -> Arc<Self> {
        Self::with_delta(release, None)
    }

    /// `release`, with a delta against `previous` if that is an older release.
    pub fn after(release: Release, previous: Option<&Offer>) -> Arc<Self> {
        let delta = previous.filter(|p| p.version() < release.version).map(|p| {
            let frame =
                wire::encode_shared(&Down::OfferDelta(Delta::between(&p.release, &release)));
            (p.version(), p.root(), frame)
        });
        Self::with_delta(release, delta)
    }

    fn with_delta(release: Release, delta: Option<(u64, Blake3, Arc<[u8]>)>) -> Arc<Self> {
        Arc::new(Offer {
            release,
            whole: Mutex::new(None),
            packed_whole: Mutex::new(None),
            delta,
            packed_delta: OnceLock::new(),
        })
    }

    pub fn version(&self) -> u64 {
        self.release.version
    }

    pub fn root(&self) -> Blake3 {
        self.release.manifest.root_digest()
    }

    /// The frame to send a child known to hold the release `has` (version and root), and
    /// whether it is a delta: the delta against that release when there is one, the whole
    /// release otherwise; packed if the child's link compresses (`compress`) and that makes
    /// it smaller. Encoding and packing a large manifest takes a while: call it off the
    /// async threads.
    pub fn frame_for(&self, has: Option<(u64, Blake3)>, compress: Compress) -> (Arc<[u8]>, bool) {
        let pack =
            |frame: &Arc<[u8]>| wire::pack_down(frame, compress).unwrap_or_else(|_| frame.clone());
        match &self.delta {
            Some((v, root, frame)) if has == Some((*v, *root)) => match compress {
                Compress::Off => (frame.clone(), true),
                _ => (self.packed_delta.get_or_init(|| pack(frame)).clone(), true),
            },
            _ => match compress {
                Compress::Off => (self.whole(), false),
                _ => {
                    let mut cached = self.packed_whole.lock().expect("offer frame lock");
                    if let Some(frame) = cached.as_ref().and_then(Weak::upgrade) {
                        return (frame, false);
                    }
                    let frame = pack(&self.whole());
                    *cached = Some(Arc::downgrade(&frame));
                    (frame, false)
                }
            },
        }
    }

    /// The frame of the whole release: the one being sent if there is one, else encoded anew.
    pub fn whole(&self) -> Arc<[u8]> {
        let mut cached = self.whole.lock().expect("offer frame lock");
        if let Some(frame) = cached.as_ref().and_then(Weak::upgrade) {
            return frame;
        }
        let frame = wire::encode_offer(&self.release);
        *cached = Some(Arc::downgrade(&frame));
        frame
    }
}

#[derive(Debug)]
pub struct Held {
    data: DataDir,
    /// The version of a release saved by an older Cascade, not usable as it is (see
    /// [`state::Loaded::Older`]): the origin numbers its next release above it.
    older: Option<u64>,
    held: watch::Sender<Option<Arc<Offer>>>,
    offered: watch::Sender<Option<Arc<Offer>>>,
    /// When this node first had each recent release (offered or held; ms since the Unix
    /// epoch): how long a node below has been behind is measured from these.
    seen: std::sync::Mutex<BTreeMap<u64, u64>>,
    /// The release [`Held::begin_apply`] saved as pending (version and root digest): holding
    /// it renames that file instead of writing the same bytes again.
    pending: std::sync::Mutex<Option<(u64, Blake3)>>,
}

/// Releases whose first-seen time is kept.
const SEEN_KEPT: usize = 1024;

impl Held {
    /// Loads what `data` holds: the held release, and a release whose apply was interrupted
    /// (to be finished or dropped by the caller). Nothing is offered yet.
    pub fn load(data: DataDir) -> Result<(Self, Option<Release>), StateError> {
        let (held, older) = match state::load_release(&data.release)? {
            Some(Loaded::Release(r)) => (Some(*r), None),
            Some(Loaded::Older { version, format }) => {
                tracing::warn!(
                    path = %data.release.display(),
                    "release v{version} was saved by an older Cascade (state format {format}, before BLAKE3 digests): it is fetched (or, on the origin, published as v{}) again",
                    version.saturating_add(1)
                );
                (None, Some(version))
            }
            None => (None, None),
        };
        // An apply interrupted under an older Cascade is redone from the parent's release.
        let pending = match state::load_release(&data.pending)? {
            Some(Loaded::Release(r)) => Some(*r),
            _ => None,
        };
        // A release held before a restart was first had when it was saved, at the latest.
        let saved_ms = fs_err::metadata(&data.release)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64);
        let seen = held
            .as_ref()
            .zip(saved_ms)
            .map(|(r, t)| (r.version, t))
            .into_iter()
            .collect();
        let held = Held {
            data,
            older,
            held: watch::Sender::new(held.map(Offer::new)),
            offered: watch::Sender::new(None),
            seen: std::sync::Mutex::new(seen),
            pending: std::sync::Mutex::new(None),
        };
        Ok((held, pending))
    }

    /// The release held completely.
    pub fn current(&self) -> Option<Arc<Offer>> {
        self.held.borrow().clone()
    }

    pub fn version(&self) -> Option<u64> {
        self.held.borrow().as_ref().map(|h| h.version())
    }

    /// The version of a release saved by an older Cascade, if that is all this node has.
    pub fn older(&self) -> Option<u64> {
        self.older
    }

    /// Follows what children are offered.
    pub fn offers(&self) -> watch::Receiver<Option<Arc<Offer>>> {
        self.offered.subscribe()
    }

    /// Notes that this node has release `version` now, if it had not before.
    fn saw(&self, version: u64) {
        let mut seen = self.seen.lock().expect("seen lock");
        seen.entry(version).or_insert_with(crate::status::now_ms);
        while seen.len() > SEEN_KEPT {
            seen.pop_first();
        }
    }

    /// When this node first had a release newer than `applied` (ms since the Unix epoch):
    /// since then, a node that applied `applied` has been behind. `None` if not known.
    pub fn behind_since(&self, applied: Option<u64>) -> Option<u64> {
        let from = match applied {
            None => 0,
            Some(a) => a.checked_add(1)?,
        };
        let seen = self.seen.lock().expect("seen lock");
        seen.range(from..).map(|(_, t)| *t).min()
    }

    /// Offers `offer` to children unless something newer is offered already.
    pub fn offer(&self, offer: Arc<Offer>) {
        self.saw(offer.version());
        self.offered.send_if_modified(|o| {
            let newer = newer(offer.version(), o.as_ref().map(|o| o.version()));
            if newer {
                *o = Some(offer);
            }
            newer
        });
    }

    /// Offers the held release (once the node is ready to serve it).
    pub fn offer_held(&self) {
        if let Some(h) = self.current() {
            self.offer(h);
        }
    }

    /// The newest release offered (or, before anything is offered, held): deltas are made
    /// against it.
    fn last_offer(&self) -> Option<Arc<Offer>> {
        self.offered.borrow().clone().or_else(|| self.current())
    }

    /// Offers `release` to children (unless something newer is offered already), with a
    /// delta against the release offered before it.
    pub fn offer_release(&self, release: Release) {
        let previous = self.last_offer();
        self.offer(Offer::after(release, previous.as_deref()));
    }

    /// Records `release` as held: saved first, then offered. Returns the release held before.
    /// The offer made of it while it was arriving (cut-through) is kept, deltas included.
    pub fn hold(&self, release: Release) -> Result<(Arc<Offer>, Option<Arc<Offer>>), StateError> {
        let pending = self.pending.lock().expect("pending lock").take();
        let renamed = pending == Some((release.version, release.manifest.root_digest()))
            && state::promote(&self.data.pending, &self.data.release).is_ok();
        if !renamed {
            state::save_release(&self.data.release, &release)?;
        }
        self.saw(release.version);
        let previous = self.last_offer();
        let held = match previous {
            Some(o)
                if (o.version(), o.root()) == (release.version, release.manifest.root_digest()) =>
            {
                o
            }
            _ => Offer::after(release, previous.as_deref()),
        };
        let previous = self.held.send_replace(Some(held.clone()));
        self.offer(held.clone());
        Ok((held, previous))
    }

    /// Forgets the held release (its files are gone): the parent's next offer fetches it.
    pub fn forget(&self) {
        self.held.send_replace(None);
    }

    /// Saves `release` as being applied, so a node killed mid-apply finishes it on restart.
    pub fn begin_apply(&self, release: &Release) -> Result<(), StateError> {
        *self.pending.lock().expect("pending lock") = None;
        state::save_release(&self.data.pending, release)?;
        *self.pending.lock().expect("pending lock") =
            Some((release.version, release.manifest.root_digest()));
        Ok(())
    }

    /// The apply begun by [`Held::begin_apply`] is over (held, or given up).
    pub fn end_apply(&self) {
        *self.pending.lock().expect("pending lock") = None;
        let _ = fs_err::remove_file(&self.data.pending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::manifest::fixtures::file;
    use crate::tree::Manifest;

    fn release(version: u64, body: &[u8]) -> Release {
        Release {
            version,
            manifest: Manifest::from_entries(vec![file("index.html", body)]).unwrap(),
            revoked: Vec::new(),
            signature: vec![7; 64],
            topology: None,
            rotation: None,
        }
    }

    #[test]
    fn holding_the_release_being_applied_renames_its_pending_file() {
        let t = tempfile::tempdir().unwrap();
        let data = DataDir::new(t.path());
        data.create().unwrap();
        let (held, _) = Held::load(data.clone()).unwrap();
        let one = release(1, b"one");
        use std::os::unix::fs::MetadataExt;
        held.begin_apply(&one).unwrap();
        let pending_inode = std::fs::metadata(&data.pending).unwrap().ino();
        held.hold(one.clone()).unwrap();
        // The very file saved as pending, not written again.
        assert_eq!(
            std::fs::metadata(&data.release).unwrap().ino(),
            pending_inode
        );
        held.end_apply();
        assert!(!data.pending.exists());
        let (again, pending) = Held::load(data.clone()).unwrap();
        assert!(pending.is_none());
        assert_eq!(again.current().unwrap().release, one);
        // Another release than the one pending is saved whole; the pending file stays
        // until the apply ends.
        let (two, three) = (release(2, b"two"), release(3, b"three"));
        again.begin_apply(&two).unwrap();
        again.hold(three.clone()).unwrap();
        assert!(data.pending.exists());
        again.end_apply();
        let (last, pending) = Held::load(data).unwrap();
        assert!(pending.is_none());
        assert_eq!(last.current().unwrap().release, three);
    }
}
