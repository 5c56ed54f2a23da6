//! What a node keeps about pushes (see [`super::push`]): on a parent, the children that take
//! them; on a child, the bodies pushed to it that wait for an offer. Held in
//! [`super::Shared`]; the work on them is in [`super::push`].

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::Connection;
use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::tree::{Blake3, Md5};
use crate::wire::Compress;

/// The parent's side: the children's links that take pushes, and the push streams still
/// being written (see [`super::push::for_scan`]).
#[derive(Debug)]
pub struct Pusher {
    pub(super) links: Mutex<Vec<Link>>,
    /// Push streams still being written.
    pub(super) sending: Arc<watch::Sender<usize>>,
}

impl Default for Pusher {
    fn default() -> Self {
        Pusher {
            links: Mutex::new(Vec::new()),
            sending: Arc::new(watch::Sender::new(0)),
        }
    }
}

/// A child that asked for pushes.
#[derive(Debug, Clone)]
pub(super) struct Link {
    pub conn: Connection,
    pub name: String,
    pub compress: Compress,
    /// Where its push streams are written from (the scan runs on threads of its own).
    pub runtime: Handle,
}

/// Keeps a child registered with its [`Pusher`] while the link lasts.
pub struct Registered<'a> {
    pusher: &'a Pusher,
    id: usize,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let mut links = self.pusher.links.lock().expect("push links lock");
        links.retain(|l| l.conn.stable_id() != self.id);
    }
}

impl Pusher {
    /// Waits (at most `limit`) until every push stream begun has been written out, so that
    /// a child opens it before it reads the offer that follows (and waits for it then).
    pub async fn written(&self, limit: Duration) {
        let mut sending = self.sending.subscribe();
        let _ = tokio::time::timeout(limit, sending.wait_for(|&n| n == 0)).await;
    }

    /// Pushes large bodies to child `name` over `conn`, packed as `compress` says, until the
    /// returned guard is dropped. Call from the runtime (the link's task).
    pub fn register<'a>(
        &'a self,
        conn: &Connection,
        name: &str,
        compress: Compress,
    ) -> Registered<'a> {
        let link = Link {
            conn: conn.clone(),
            name: name.to_owned(),
            compress,
            runtime: Handle::current(),
        };
        self.links.lock().expect("push links lock").push(link);
        Registered {
            pusher: self,
            id: conn.stable_id(),
        }
    }
}

/// The child's side: pushed bodies received whole and hashed, or cut off, waiting for an
/// offer to name them, and how many are still arriving.
#[derive(Debug)]
pub struct Received {
    pub(super) bodies: Mutex<Vec<PushedBody>>,
    /// Pushes the parent gave up: their first bytes, by the path and size they were for.
    pub(super) cut: Mutex<Vec<CutPush>>,
    pub(super) arriving: Arc<watch::Sender<usize>>,
    /// Bytes of the pushes kept and of those arriving (as announced).
    pub(super) pending: AtomicU64,
}

impl Default for Received {
    fn default() -> Self {
        Received {
            bodies: Mutex::new(Vec::new()),
            cut: Mutex::new(Vec::new()),
            arriving: Arc::new(watch::Sender::new(0)),
            pending: AtomicU64::new(0),
        }
    }
}

/// A pushed body received whole, and what it hashed to.
#[derive(Debug)]
pub(super) struct PushedBody {
    pub file: PathBuf,
    pub size: u64,
    pub md5: Md5,
    pub blake3: Blake3,
}

/// The first bytes of a push the parent gave up (reset the stream). If the next offer has a
/// file of that path and size whose body is not held, they become the partial body that its
/// fetch resumes after (and checks again, byte for byte, as it rebuilds its hash state).
#[derive(Debug)]
pub(super) struct CutPush {
    pub file: PathBuf,
    pub path: String,
    pub size: u64,
}

/// One of a count (pushes being written, or arriving), uncounted when dropped.
pub(super) struct Counted(Arc<watch::Sender<usize>>);

impl Counted {
    pub(super) fn new(count: &Arc<watch::Sender<usize>>) -> Self {
        count.send_modify(|n| *n += 1);
        Counted(count.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}
