//! What a node keeps in its data dir: the content [`store`] of verified bodies (with the
//! [`writer`] that receives one), its saved [`state`] in a versioned format of its own, and
//! the [`lock`] that keeps a second node off the same dir. [`DataDir`] names every path.

pub mod dir_body;
pub mod lock;
mod objects;
pub mod stage;
pub mod state;
pub mod store;
pub mod writer;

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub use lock::{DataLock, LockError};
pub use stage::Stage;
pub use state::StateError;
pub use store::{Store, StoreError};
pub use writer::{BodyWriter, Expected, FlushAhead};

/// The free bytes of `path`'s filesystem when they are too few for `need` more bytes, with
/// room for metadata and rounding to blocks (1% and 1 MiB more); `None` when they suffice or
/// cannot be known. Every "is there room" check (before fetching, before applying) asks this.
pub fn short_of_room(path: &Path, need: u64) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    (need > 0 && need + need / 100 + (1 << 20) > free).then_some(free)
}

/// A node's data dir and the name of everything in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    pub root: PathBuf,
    /// The release this node holds completely.
    pub release: PathBuf,
    /// The release being applied; present only while an apply may be incomplete.
    pub pending: PathBuf,
    /// The origin's stat cache (path → stat and body of each file it last scanned).
    pub stat_cache: PathBuf,
    /// The local admin socket (`cascade publish`, `cascade status`).
    pub admin_socket: PathBuf,
    /// Held locked while a node runs with this dir.
    pub lock_file: PathBuf,
    /// The content store.
    pub store: PathBuf,
    /// Release directories of `apply = "atomic"`.
    pub releases: PathBuf,
    /// Atomic mode: the paths this node keeps (`keep`), linked from every release.
    pub shared: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root: PathBuf = root.into();
        DataDir {
            release: root.join("release.bin"),
            pending: root.join("pending.bin"),
            stat_cache: root.join("statcache.bin"),
            admin_socket: root.join("admin.sock"),
            lock_file: root.join("node.lock"),
            store: root.join("store"),
            releases: root.join("releases"),
            shared: root.join("shared"),
            root,
        }
    }

    /// Creates the dir, mode 0711: other users may not list it, but may pass through it, as
    /// a web server's workers must to read an atomic-mode release in `releases/` (or a kept
    /// path in `shared/`) that `dir` links to. Nothing in it is more private than what the
    /// node serves, except the admin socket, which is the owner's alone (mode 0600 from the
    /// moment it exists; see `admin::bind`).
    pub fn create(&self) -> io::Result<()> {
        fs_err::create_dir_all(&self.root)?;
        fs_err::set_permissions(&self.root, std::fs::Permissions::from_mode(0o711))
    }

    /// Takes the lock that keeps a second node off this dir.
    pub fn lock(&self) -> Result<DataLock, LockError> {
        lock::lock(&self.root, &self.lock_file)
    }
}
