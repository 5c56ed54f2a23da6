//! The release a node holds and the one it offers its children, and their copies on disk.
//!
//! `held` is the newest release verified and applied completely, saved in `release.bin`
//! before anyone is told. `offered` is what children are offered: the held release, or a
//! newer one still arriving whose bodies are served as they come (cut-through). A release
//! whose apply may be unfinished is saved in `pending.bin` until it is held.

use std::sync::Arc;

use tokio::sync::watch;

use crate::data::state::{self, Loaded};
use crate::data::{DataDir, StateError};
use crate::tree::{newer, Release};
use crate::wire::{self, Down};

/// A release with its offer frame encoded once for all children.
#[derive(Debug)]
pub struct Offer {
    pub release: Release,
    pub offer_frame: Vec<u8>,
}

impl Offer {
    pub fn new(release: Release) -> Arc<Self> {
        let down = Down::Offer(release);
        let offer_frame = wire::encode(&down);
        let Down::Offer(release) = down;
        Arc::new(Offer {
            release,
            offer_frame,
        })
    }

    pub fn version(&self) -> u64 {
        self.release.version
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
}

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
        let held = Held {
            data,
            older,
            held: watch::Sender::new(held.map(Offer::new)),
            offered: watch::Sender::new(None),
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

    /// Offers `offer` to children unless something newer is offered already.
    pub fn offer(&self, offer: Arc<Offer>) {
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

    /// Records `release` as held: saved first, then offered. Returns the release held before.
    pub fn hold(&self, release: Release) -> Result<(Arc<Offer>, Option<Arc<Offer>>), StateError> {
        state::save_release(&self.data.release, &release)?;
        let held = Offer::new(release);
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
        state::save_release(&self.data.pending, release)
    }

    /// The apply begun by [`Held::begin_apply`] is over (held, or given up).
    pub fn end_apply(&self) {
        let _ = fs_err::remove_file(&self.data.pending);
    }
}
