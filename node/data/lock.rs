//! One node per data dir: an exclusive `flock` on `DATA/node.lock`, held for the node's
//! life. The kernel drops it when the process dies, however it dies, so there is never a
//! stale lock to clean up.

use fs_err::os::unix::fs::OpenOptionsExt;
use std::io;
use std::path::{Path, PathBuf};

use fs_err as fs;
use rustix::fs::{flock, FlockOperation};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("another node is already running with data dir {data} (it holds the lock on {lock})")]
    AlreadyRunning { data: PathBuf, lock: PathBuf },
}

/// Holds the lock until dropped.
#[derive(Debug)]
pub struct DataLock {
    _file: fs::File,
}

/// Takes the lock at `path` (in data dir `data`) without waiting.
pub fn lock(data: &Path, path: &Path) -> Result<DataLock, LockError> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)?;
    match flock(file.file(), FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(DataLock { _file: file }),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(LockError::AlreadyRunning {
            data: data.to_owned(),
            lock: path.to_owned(),
        }),
        Err(e) => Err(io::Error::new(
            io::Error::from(e).kind(),
            format!("failed to lock `{}`: {e}", path.display()),
        )
        .into()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_second_lock_is_refused_and_a_released_one_is_taken_again() {
        let tmp = tempfile::tempdir().unwrap();
        let data = crate::data::DataDir::new(tmp.path());
        let first = data.lock().unwrap();
        let e = data.lock().unwrap_err().to_string();
        assert!(
            e.contains("already running") && e.contains("node.lock"),
            "{e}"
        );
        drop(first);
        data.lock().unwrap();
        // A lock file left behind (say with a stale PID in it) does not block anyone.
        std::fs::write(&data.lock_file, "12345").unwrap();
        data.lock().unwrap();
    }
}
