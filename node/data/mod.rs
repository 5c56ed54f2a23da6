//! What a node keeps in its data dir: the content [`store`] of verified bodies (with the
//! [`writer`] that receives one), its saved [`state`] in a versioned format of its own, and
//! the [`lock`] that keeps a second node off the same dir. [`DataDir`] names every path.

pub mod lock;
pub mod state;
pub mod store;
pub mod writer;

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub use lock::{DataLock, LockError};
pub use state::StateError;
pub use store::{Store, StoreError};
pub use writer::{BodyWriter, Expected};

/// A node's data dir and the name of everything in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }

    /// Creates the dir (mode 0700: it holds the admin socket and the store).
    pub fn create(&self) -> io::Result<()> {
        fs_err::create_dir_all(&self.root)?;
        fs_err::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The release this node holds completely.
    pub fn release(&self) -> PathBuf {
        self.root.join("release.bin")
    }

    /// The release being applied; present only while an apply may be incomplete.
    pub fn pending(&self) -> PathBuf {
        self.root.join("pending.bin")
    }

    /// The origin's stat cache (path → stat and body of each file it last scanned).
    pub fn stat_cache(&self) -> PathBuf {
        self.root.join("statcache.bin")
    }

    /// The local admin socket (`cascade publish`, `cascade status`).
    pub fn admin_socket(&self) -> PathBuf {
        self.root.join("admin.sock")
    }

    /// Held locked while a node runs with this dir.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("node.lock")
    }

    /// The content store.
    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }

    /// Release directories of `apply = "atomic"`.
    pub fn releases(&self) -> PathBuf {
        self.root.join("releases")
    }

    /// Takes the lock that keeps a second node off this dir.
    pub fn lock(&self) -> Result<DataLock, LockError> {
        lock::lock(&self.root, &self.lock_file())
    }
}
